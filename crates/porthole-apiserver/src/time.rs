//! Timestamps as Kubernetes writes them (RFC 3339, second precision, UTC). Shared by the
//! registry, controllers, audit records and leases, so every writer formats time one way.

/// RFC 3339 "now" with second precision, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// RFC 3339 time `secs` from now.
pub fn later_rfc3339(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
