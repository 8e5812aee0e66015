//! Detached JWS (RFC 7515 Appendix F) with HS256, as `k8s.io/cluster-bootstrap/token/jws`
//! computes it: the protected header is `{"alg":"HS256","kid":"<token id>"}`, the key is the
//! token secret, and the payload part of the compact serialisation is left out
//! (`<header>..<signature>`).
//!
//! The control plane publishes one such signature of the `cluster-info` kubeconfig per
//! signing token; a joining node recomputes it with the token it was given. Both sides run
//! [`detached_signature`], so the output is compared, never parsed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ring::hmac;

/// The detached signature of `content` with token `token_id` / `token_secret`.
pub fn detached_signature(content: &str, token_id: &str, token_secret: &str) -> String {
    // go-jose writes the header with its keys sorted; serde_json's map is sorted too, and it
    // escapes the id, so even an odd id cannot break out of the JSON.
    let header = serde_json::json!({"alg": "HS256", "kid": token_id}).to_string();
    let header_b64 = B64URL.encode(header.as_bytes());
    let signing_input = format!("{header_b64}.{}", B64URL.encode(content.as_bytes()));
    let key = hmac::Key::new(hmac::HMAC_SHA256, token_secret.as_bytes());
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{header_b64}..{}", B64URL.encode(tag.as_ref()))
}

/// Whether `detached` is the signature of `content` with this token, compared in constant
/// time (the signature is as good as the secret for an attacker who can time the check).
pub fn verify_detached(detached: &str, content: &str, token_id: &str, token_secret: &str) -> bool {
    let expected = detached_signature(content, token_id, token_secret);
    crate::token::constant_time_eq(expected.as_bytes(), detached.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from k8s.io/cluster-bootstrap/token/jws/jws_test.go (go-jose v2 era).
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const SECRET: &str = "my voice is my passcode";
    const ID: &str = "joshua";

    #[test]
    fn matches_kubernetes_vectors() {
        assert_eq!(
            detached_signature(CONTENT, ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
        );
        assert_eq!(
            detached_signature("", ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            detached_signature(CONTENT, ID, ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
    }

    #[test]
    fn verification_fails_on_any_difference() {
        let sig = detached_signature(CONTENT, ID, SECRET);
        assert!(verify_detached(&sig, CONTENT, ID, SECRET));
        assert!(!verify_detached(
            &sig,
            "Hello from the other side.",
            ID,
            SECRET
        ));
        assert!(!verify_detached(&sig, CONTENT, "joshub", SECRET));
        assert!(!verify_detached(
            &sig,
            CONTENT,
            ID,
            "my voice is my passcodf"
        ));
        assert!(!verify_detached("", CONTENT, ID, SECRET));
        // A full (non-detached) JWS is not accepted in place of a detached one.
        let full = sig.replacen("..", &format!(".{}.", B64URL.encode(CONTENT)), 1);
        assert!(!verify_detached(&full, CONTENT, ID, SECRET));
    }
}
