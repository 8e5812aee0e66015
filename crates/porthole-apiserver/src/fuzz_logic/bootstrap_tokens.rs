//! Fuzz target [`bootstrap_token`](super::bootstrap_token): bearer tokens against bootstrap token
//! Secrets.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use serde_json::{json, Map, Value};

use super::stored_values::OneObject;
use crate::resources::{self};

/// Bearer token and token Secret. `data` = lines: bearer, then (when the rest is not a JSON
/// Secret) the Secret's `token-id`, `token-secret`, `expiration`,
/// `usage-bootstrap-authentication`, `auth-extra-groups` and name suffix, base64-encoded into
/// a Secret of type `bootstrap.kubernetes.io/token` the way `kubeadm`/`porthole token create`
/// store them.
///
/// - A bearer that parses is `<id>.<secret>` with a valid id and secret, and prints back as
///   the (trimmed) input.
/// - A Secret that parses has a valid id and secret, is named after its id, and only extra
///   groups under `system:bootstrappers:`.
/// - `authenticate` succeeds only when the stored Secret parses, is for authentication, has
///   not expired and holds exactly the bearer's secret, and then names the bearer's id.
pub fn bootstrap_token(data: &[u8]) {
    use base64::Engine as _;
    use porthole_bootstrap::token as bt;
    let text = String::from_utf8_lossy(data);
    let (bearer, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let token = bt::BootstrapToken::parse(bearer);
    if let Ok(t) = &token {
        assert!(bt::is_valid_id(t.id()) && bt::is_valid_secret(t.secret()));
        assert_eq!(t.expose(), bearer.trim());
        assert_eq!(t.secret_name(), format!("bootstrap-token-{}", t.id()));
    }
    let secret = match serde_json::from_str::<Value>(rest) {
        Ok(v) if v.is_object() => v,
        _ => {
            let mut f = rest.split('\n');
            let mut field = || f.next().unwrap_or("").to_string();
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let (id, sec, exp, usage, groups, name) =
                (field(), field(), field(), field(), field(), field());
            let mut data = Map::new();
            for (k, v) in [
                (bt::KEY_TOKEN_ID, &id),
                (bt::KEY_TOKEN_SECRET, &sec),
                (bt::KEY_EXPIRATION, &exp),
                (bt::KEY_USAGE_AUTHENTICATION, &usage),
                (bt::KEY_EXTRA_GROUPS, &groups),
            ] {
                if !v.is_empty() {
                    data.insert(k.into(), json!(b64(v)));
                }
            }
            json!({"apiVersion": "v1", "kind": "Secret", "type": bt::SECRET_TYPE,
                   "metadata": {"name": format!("bootstrap-token-{name}"), "namespace": "kube-system"},
                   "data": data})
        }
    };
    let parsed = crate::bootstrap::parse_token_secret(&secret);
    if let Ok(p) = &parsed {
        assert!(bt::is_valid_id(&p.id) && bt::is_valid_secret(&p.secret));
        assert_eq!(
            secret.pointer("/metadata/name").and_then(Value::as_str),
            Some(bt::secret_name(&p.id).as_str())
        );
        assert!(p.extra_groups.iter().all(|g| bt::is_valid_extra_group(g)));
    }
    // The Secret stored under the key of its own name, as the store keeps it.
    let name = secret
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let key = resources::core("secrets").key(bt::SECRET_NAMESPACE, name);
    let st = OneObject {
        key: Some(key),
        object: secret.clone(),
    };
    if let Some(u) = crate::bootstrap::authenticate(&st, bearer) {
        let t = token.expect("authenticated a bearer that does not parse");
        let p = parsed.expect("authenticated against a Secret that does not parse");
        assert_eq!(p.id, t.id(), "authenticated under another token's id");
        assert_eq!(p.secret, t.secret(), "authenticated with the wrong secret");
        assert!(
            p.usage_authentication,
            "authenticated with a signing-only token"
        );
        assert!(
            !p.expired(jiff::Timestamp::now()),
            "authenticated an expired token"
        );
        assert_eq!(u.name, format!("system:bootstrap:{}", t.id()));
        assert!(u.groups.iter().any(|g| g == bt::GROUP));
        assert!(!u
            .groups
            .iter()
            .any(|g| g == "system:masters" || g == "system:nodes"));
    }
}
