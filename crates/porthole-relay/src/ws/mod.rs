//! WebSocket driver and tunnel byte-stream adapter (see docs/ARCHITECTURE.md).
