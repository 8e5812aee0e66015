//! WebSocket framing and channel protocol (PROTOCOL.md §2.3–§2.4, §5).
