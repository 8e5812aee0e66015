//! Half-close-aware relay (owned by the SPDY work; see docs/ARCHITECTURE.md).
