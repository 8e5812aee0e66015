//! The port-forward stream protocol (PROTOCOL.md §4).
