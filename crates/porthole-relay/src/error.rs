//! The one way porthole turns an error and its `source()` chain into a line of text, shared by
//! every crate above this one so logs and user messages read alike.

use std::error::Error;

/// An error chain as one line (`outer: inner: innermost`). A cause whose text an outer layer
/// already printed is skipped, because many wrappers (kube, hyper, thiserror types that keep
/// `{0}` in their message) repeat their source, and top-level texts such as "client error
/// (Connect)" say little on their own.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{what}")]
    struct Wrap {
        what: &'static str,
        #[source]
        source: io::Error,
    }

    #[test]
    fn joins_sources() {
        let e = Wrap {
            what: "bind 127.0.0.1:8080",
            source: io::Error::other("address in use"),
        };
        assert_eq!(chain(&e), "bind 127.0.0.1:8080: address in use");
    }

    #[test]
    fn skips_causes_already_printed() {
        let e = Wrap {
            what: "bind: address in use",
            source: io::Error::other("address in use"),
        };
        assert_eq!(chain(&e), "bind: address in use");
    }
}
