//! Kubernetes' name patterns (RFC 1123 labels and subdomains), shared by object validation and
//! the checks of certificate requests.

/// A lowercase RFC 1123 label (length checked separately).
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes' DNS-1123 subdomain pattern (dot-separated labels; length checked separately,
/// as Kubernetes reports the two failures as two causes).
pub fn is_subdomain(s: &str) -> bool {
    s.split('.').all(is_label)
}
