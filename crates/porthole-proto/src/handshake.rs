//! HTTP upgrade negotiation (PROTOCOL.md §2).
