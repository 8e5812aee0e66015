//! The `porthole` binary: parses arguments, installs tracing, calls the role's `run()`.
fn main() {}
