//! SPDY/3.1 (PROTOCOL.md §3).
