//! Bootstrap tokens and the Secret that stores them (`k8s.io/cluster-bootstrap/token/api`).
//!
//! A token is `<id>.<secret>`: the id is public (it names the Secret and appears in logs and in
//! the user name `system:bootstrap:<id>`), the secret is what proves possession. Only the id is
//! ever printed by [`BootstrapToken`]'s `Debug`.

use std::fmt;

use rand::Rng as _;

/// Length of the public token id.
pub const ID_LEN: usize = 6;
/// Length of the token secret.
pub const SECRET_LEN: usize = 16;

/// Namespace of bootstrap token Secrets.
pub const SECRET_NAMESPACE: &str = "kube-system";
/// Secret names are this prefix plus the token id.
pub const SECRET_NAME_PREFIX: &str = "bootstrap-token-";
/// `type` of a bootstrap token Secret.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// `data` key: the token id (must equal the suffix of the Secret's name).
pub const KEY_TOKEN_ID: &str = "token-id";
/// `data` key: the token secret.
pub const KEY_TOKEN_SECRET: &str = "token-secret";
/// `data` key: RFC 3339 time after which the token is invalid (absent = never expires).
pub const KEY_EXPIRATION: &str = "expiration";
/// `data` key: "true" when the token may authenticate to the API server.
pub const KEY_USAGE_AUTHENTICATION: &str = "usage-bootstrap-authentication";
/// `data` key: "true" when the token may sign `cluster-info`.
pub const KEY_USAGE_SIGNING: &str = "usage-bootstrap-signing";
/// `data` key: comma-separated groups beyond `system:bootstrappers`.
pub const KEY_EXTRA_GROUPS: &str = "auth-extra-groups";
/// `data` key: a human description.
pub const KEY_DESCRIPTION: &str = "description";

/// User name prefix of a token's identity (`system:bootstrap:<id>`).
pub const USER_PREFIX: &str = "system:bootstrap:";
/// The group every bootstrap identity is in.
pub const GROUP: &str = "system:bootstrappers";
/// The extra group `porthole token create` puts its tokens in (kubeadm's is
/// `system:bootstrappers:kubeadm:default-node-token`).
pub const DEFAULT_EXTRA_GROUP: &str = "system:bootstrappers:porthole:default-node-token";

/// Namespace of the public discovery ConfigMap.
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
/// Name of the public discovery ConfigMap.
pub const CLUSTER_INFO_NAME: &str = "cluster-info";
/// `cluster-info` key holding a kubeconfig with the cluster's CA and server.
pub const CLUSTER_INFO_KUBECONFIG_KEY: &str = "kubeconfig";
/// `cluster-info` keys holding detached JWS signatures are this prefix plus a token id.
pub const CLUSTER_INFO_JWS_PREFIX: &str = "jws-kubeconfig-";

/// A bootstrap token that was given in the wrong shape. The token itself is never part of
/// the message: it may be a real secret with a typo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bootstrap token has the form [a-z0-9]{{6}}.[a-z0-9]{{16}} (e.g. abcdef.0123456789abcdef); check --token")]
pub struct TokenFormatError;

/// A parsed bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `id` is a well-formed token id (`[a-z0-9]{6}`).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(is_token_char)
}

/// Whether `secret` is a well-formed token secret (`[a-z0-9]{16}`).
pub fn is_valid_secret(secret: &str) -> bool {
    secret.len() == SECRET_LEN && secret.bytes().all(is_token_char)
}

/// The Secret name of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("{SECRET_NAME_PREFIX}{id}")
}

/// Whether `group` may appear in `auth-extra-groups`: Kubernetes' pattern
/// `system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]`, so a token can never claim
/// `system:masters` or `system:nodes`.
pub fn is_valid_extra_group(group: &str) -> bool {
    let Some(rest) = group.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    let bytes = rest.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes
            .iter()
            .all(|&b| is_token_char(b) || b == b':' || b == b'-')
        && is_token_char(bytes[bytes.len() - 1])
}

/// Compare two byte strings in time that depends only on their lengths, so a network caller
/// cannot learn a secret's prefix from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold into an early-exit loop.
    std::hint::black_box(diff) == 0
}

impl BootstrapToken {
    /// Parse `<id>.<secret>`.
    pub fn parse(s: &str) -> Result<Self, TokenFormatError> {
        let (id, secret) = s.trim().split_once('.').ok_or(TokenFormatError)?;
        if !is_valid_id(id) || !is_valid_secret(secret) {
            return Err(TokenFormatError);
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A new random token (from the OS-seeded thread RNG, a CSPRNG).
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = pick(ID_LEN);
        let secret = pick(SECRET_LEN);
        Self { id, secret }
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `kube-system/<this>`: the name of the Secret that stores this token.
    pub fn secret_name(&self) -> String {
        secret_name(&self.id)
    }

    /// The whole token, `<id>.<secret>`, for a join command or an `Authorization` header.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    /// The id only: a token in a log line would be a credential in a log file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_the_kubernetes_shape() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").expect("valid");
        assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
        assert_eq!(t.secret_name(), "bootstrap-token-abcdef");
        assert_eq!(t.expose(), "abcdef.0123456789abcdef");
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            ".0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdefg.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdefg",
            "ABCDEF.0123456789abcdef",
            "abcdef:0123456789abcdef",
            "abcdef.0123456789abcde\u{e9}",
            "abcdef.0123.56789abcdef",
        ] {
            assert_eq!(BootstrapToken::parse(bad), Err(TokenFormatError), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let shown = format!("{t:?}");
        assert!(
            shown.contains("abcdef") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
        let err = TokenFormatError.to_string();
        assert!(err.contains("[a-z0-9]{6}.[a-z0-9]{16}"), "{err}");
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = BootstrapToken::generate();
        let b = BootstrapToken::generate();
        assert_eq!(BootstrapToken::parse(&a.expose()).as_ref(), Ok(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn extra_groups_stay_under_system_bootstrappers() {
        assert!(is_valid_extra_group(DEFAULT_EXTRA_GROUP));
        assert!(is_valid_extra_group("system:bootstrappers:a1"));
        for bad in [
            "system:masters",
            "system:nodes",
            "system:bootstrappers",
            "system:bootstrappers:",
            "system:bootstrappers:x-",
            "system:bootstrappers:X",
            "system:bootstrappersx:y",
        ] {
            assert!(!is_valid_extra_group(bad), "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!constant_time_eq(b"short", b"shorter"));
        assert!(constant_time_eq(b"", b""));
    }
}
