//! SPDY/3.1 session driver (see docs/ARCHITECTURE.md).
