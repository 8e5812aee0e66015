//! Bootstrap tokens on the server side (kube-apiserver's bootstrap token authenticator and
//! kube-controller-manager's `tokencleaner` and `bootstrapsigner`):
//!
//! - [`authenticate`]: a bearer token `<id>.<secret>` whose Secret `kube-system/bootstrap-token-<id>`
//!   exists, matches, has not expired and allows authentication is the user
//!   `system:bootstrap:<id>` in `system:bootstrappers` plus the Secret's extra groups;
//! - [`remove_expired_tokens`]: deletes token Secrets past their expiration;
//! - [`sign_cluster_info`]: keeps one detached JWS per signing token in
//!   `kube-public/cluster-info`, so a joining node can check the CA it downloads with its
//!   token before sending it (`porthole_bootstrap::jws`).
//!
//! Only the store's methods are used, so this works on any [`Store`] (the embedded one, etcd).
//! Token secrets are never logged; token ids are public and are.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use porthole_bootstrap::token::{self as bt, BootstrapToken};
use serde_json::{Map, Value};

use crate::authn::UserInfo;
use crate::resources;
use crate::store::{resource_version, Store};

/// The decoded `data` of a bootstrap token Secret.
#[derive(Debug, Clone)]
pub struct TokenSecret {
    /// `token-id` (checked against the Secret's name).
    pub id: String,
    /// `token-secret`.
    pub secret: String,
    /// `expiration`; `None` = never expires. An unparsable value makes the whole Secret invalid.
    pub expiration: Option<jiff::Timestamp>,
    /// `usage-bootstrap-authentication` is "true".
    pub usage_authentication: bool,
    /// `usage-bootstrap-signing` is "true".
    pub usage_signing: bool,
    /// `auth-extra-groups`, only those under `system:bootstrappers:`.
    pub extra_groups: Vec<String>,
    /// `description`.
    pub description: String,
}

impl TokenSecret {
    /// Whether the token has expired at `now`.
    pub fn expired(&self, now: jiff::Timestamp) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }
}

fn data_str(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    String::from_utf8(B64.decode(b64).ok()?).ok()
}

/// Why a Secret is not a usable bootstrap token (for debug logs; never contains the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTokenSecret {
    /// `type` is not `bootstrap.kubernetes.io/token`.
    #[error("the Secret's type is not {}", bt::SECRET_TYPE)]
    WrongType,
    /// `token-id` or `token-secret` missing or malformed, or the id does not match the name.
    #[error("token-id/token-secret are missing, malformed or do not match the Secret's name")]
    BadToken,
    /// `expiration` is not RFC 3339.
    #[error("expiration is not an RFC 3339 time")]
    BadExpiration,
}

/// Decode a bootstrap token Secret (as stored: `data` values base64).
pub fn parse_token_secret(secret: &Value) -> Result<TokenSecret, InvalidTokenSecret> {
    if secret.get("type").and_then(Value::as_str) != Some(bt::SECRET_TYPE) {
        return Err(InvalidTokenSecret::WrongType);
    }
    let name = secret
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let id = data_str(secret, bt::KEY_TOKEN_ID).ok_or(InvalidTokenSecret::BadToken)?;
    let token_secret =
        data_str(secret, bt::KEY_TOKEN_SECRET).ok_or(InvalidTokenSecret::BadToken)?;
    if !bt::is_valid_id(&id) || !bt::is_valid_secret(&token_secret) || name != bt::secret_name(&id)
    {
        return Err(InvalidTokenSecret::BadToken);
    }
    let expiration = match data_str(secret, bt::KEY_EXPIRATION) {
        None => None,
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(
            s.trim()
                .parse::<jiff::Timestamp>()
                .map_err(|_| InvalidTokenSecret::BadExpiration)?,
        ),
    };
    let flag = |key: &str| data_str(secret, key).is_some_and(|v| v.trim() == "true");
    let extra_groups = data_str(secret, bt::KEY_EXTRA_GROUPS)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| bt::is_valid_extra_group(g))
        .map(str::to_string)
        .collect();
    Ok(TokenSecret {
        id,
        secret: token_secret,
        expiration,
        usage_authentication: flag(bt::KEY_USAGE_AUTHENTICATION),
        usage_signing: flag(bt::KEY_USAGE_SIGNING),
        extra_groups,
        description: data_str(secret, bt::KEY_DESCRIPTION).unwrap_or_default(),
    })
}

fn secrets() -> &'static resources::ResourceInfo {
    resources::core("secrets")
}

/// The identity of a bearer token that is a valid bootstrap token, or `None` (not that shape,
/// unknown, wrong secret, expired, not for authentication). Store failures are `None` too, with
/// a warning: authentication must not fail open.
pub fn authenticate(store: &dyn Store, bearer: &str) -> Option<UserInfo> {
    let token = BootstrapToken::parse(bearer).ok()?;
    let key = secrets().key(bt::SECRET_NAMESPACE, &token.secret_name());
    let stored = match store.get(&key) {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::debug!(token_id = %token.id(), "bootstrap token rejected: no such token");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, token_id = %token.id(), "bootstrap token rejected: the store could not be read");
            return None;
        }
    };
    let parsed = match parse_token_secret(&stored) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(token_id = %token.id(), reason = %e, "bootstrap token rejected: invalid Secret");
            return None;
        }
    };
    if !bt::constant_time_eq(parsed.secret.as_bytes(), token.secret().as_bytes()) {
        tracing::debug!(token_id = %token.id(), "bootstrap token rejected: wrong secret");
        return None;
    }
    if parsed.expired(jiff::Timestamp::now()) {
        tracing::debug!(token_id = %token.id(), "bootstrap token rejected: expired");
        return None;
    }
    if !parsed.usage_authentication {
        tracing::debug!(token_id = %token.id(), "bootstrap token rejected: not for authentication");
        return None;
    }
    let mut groups = vec![bt::GROUP.to_string()];
    groups.extend(parsed.extra_groups);
    Some(UserInfo::authenticated(
        format!("{}{}", bt::USER_PREFIX, token.id()),
        String::new(),
        groups,
    ))
}

/// Every bootstrap token Secret in `kube-system`, decoded (invalid ones skipped), with the
/// stored object.
fn token_secrets(store: &dyn Store) -> Vec<(Value, Result<TokenSecret, InvalidTokenSecret>)> {
    let Ok((items, _)) = store.list(&secrets().prefix(bt::SECRET_NAMESPACE)) else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some(bt::SECRET_TYPE))
        .map(|s| {
            let parsed = parse_token_secret(&s);
            (s, parsed)
        })
        .collect()
}

/// `tokencleaner`: delete bootstrap token Secrets whose expiration has passed (level-triggered:
/// safe to run on every controller pass).
pub fn remove_expired_tokens(store: &dyn Store, now: jiff::Timestamp) {
    for (secret, parsed) in token_secrets(store) {
        let Ok(parsed) = parsed else { continue };
        if !parsed.expired(now) {
            continue;
        }
        let key = secrets().key(bt::SECRET_NAMESPACE, &bt::secret_name(&parsed.id));
        match store.delete(&key, Some(resource_version(&secret))) {
            Ok(_) => tracing::info!(token_id = %parsed.id, "deleted an expired bootstrap token"),
            Err(e) => {
                tracing::debug!(error = %e, token_id = %parsed.id, "deleting an expired bootstrap token raced; will retry")
            }
        }
    }
}

/// `bootstrapsigner`: make the `jws-kubeconfig-<id>` entries of `kube-public/cluster-info`
/// exactly one signature of its `kubeconfig` per valid signing token: new tokens get theirs,
/// expired and deleted ones lose theirs. Writes only when something differs.
pub fn sign_cluster_info(store: &dyn Store, now: jiff::Timestamp) {
    let info = resources::core("configmaps");
    let key = info.key(bt::CLUSTER_INFO_NAMESPACE, bt::CLUSTER_INFO_NAME);
    let Ok(Some(mut cm)) = store.get(&key) else {
        return;
    };
    let Some(content) = cm
        .pointer(&format!("/data/{}", bt::CLUSTER_INFO_KUBECONFIG_KEY))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return;
    };
    let mut wanted: Map<String, Value> = Map::new();
    for (_, parsed) in token_secrets(store) {
        let Ok(t) = parsed else { continue };
        if t.usage_signing && !t.expired(now) {
            let sig = porthole_bootstrap::jws::detached_signature(&content, &t.id, &t.secret);
            wanted.insert(
                format!("{}{}", bt::CLUSTER_INFO_JWS_PREFIX, t.id),
                Value::String(sig),
            );
        }
    }
    let Some(data) = cm.get_mut("data").and_then(Value::as_object_mut) else {
        return;
    };
    let current: Map<String, Value> = data
        .iter()
        .filter(|(k, _)| k.starts_with(bt::CLUSTER_INFO_JWS_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if current == wanted {
        return;
    }
    data.retain(|k, _| !k.starts_with(bt::CLUSTER_INFO_JWS_PREFIX));
    data.extend(wanted);
    let rv = resource_version(&cm);
    if let Some(m) = cm.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    match store.update(&key, cm, Some(rv)) {
        Ok(_) => tracing::debug!("updated the token signatures in kube-public/cluster-info"),
        Err(e) => tracing::debug!(error = %e, "signing cluster-info raced; will retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;
    use serde_json::json;

    fn token_secret(id: &str, secret: &str, expiration: &str, auth: bool) -> Value {
        let e = |s: &str| json!(B64.encode(s));
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": bt::SECRET_TYPE,
            "metadata": {"name": bt::secret_name(id), "namespace": "kube-system"},
            "data": {
                "token-id": e(id), "token-secret": e(secret), "expiration": e(expiration),
                "usage-bootstrap-authentication": e(if auth { "true" } else { "false" }),
                "usage-bootstrap-signing": e("true"),
                "auth-extra-groups": e("system:bootstrappers:porthole:default-node-token,system:masters"),
            }
        })
    }

    struct TempStore(std::path::PathBuf, RedbStore);
    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp_store() -> TempStore {
        let dir = std::env::temp_dir().join(format!("porthole-bootstrap-{}", uuid::Uuid::new_v4()));
        let s = RedbStore::open(&dir).expect("open store");
        TempStore(dir, s)
    }

    fn put(store: &dyn Store, secret: Value) {
        let name = secret["metadata"]["name"].as_str().unwrap().to_string();
        store
            .create(&secrets().key("kube-system", &name), secret)
            .expect("create secret");
    }

    #[test]
    fn authenticator_checks_secret_expiry_and_usage() {
        let t = temp_store();
        let s = &t.1;
        let future = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(1))
            .unwrap()
            .to_string();
        let past = "2020-01-01T00:00:00Z";
        put(s, token_secret("abcdef", "0123456789abcdef", &future, true));
        put(s, token_secret("expird", "0123456789abcdef", past, true));
        put(
            s,
            token_secret("noauth", "0123456789abcdef", &future, false),
        );

        let u = authenticate(s, "abcdef.0123456789abcdef").expect("valid token");
        assert_eq!(u.name, "system:bootstrap:abcdef");
        // The extra group outside system:bootstrappers: is dropped.
        assert_eq!(
            u.groups,
            vec![
                "system:bootstrappers",
                "system:bootstrappers:porthole:default-node-token",
                "system:authenticated"
            ]
        );
        assert!(
            authenticate(s, "abcdef.0123456789abcdeg").is_none(),
            "wrong secret"
        );
        assert!(
            authenticate(s, "abcdeg.0123456789abcdef").is_none(),
            "unknown id"
        );
        assert!(
            authenticate(s, "expird.0123456789abcdef").is_none(),
            "expired"
        );
        assert!(
            authenticate(s, "noauth.0123456789abcdef").is_none(),
            "not for auth"
        );
        assert!(authenticate(s, "not-a-bootstrap-token").is_none());

        // A Secret whose token-id disagrees with its name is not a token.
        let mut bad = token_secret("zzzzzz", "0123456789abcdef", &future, true);
        bad["metadata"]["name"] = json!("bootstrap-token-yyyyyy");
        put(s, bad);
        assert!(authenticate(s, "yyyyyy.0123456789abcdef").is_none());
    }

    #[test]
    fn cleaner_and_signer_follow_the_tokens() {
        let t = temp_store();
        let s = &t.1;
        let now = jiff::Timestamp::now();
        let future = now
            .checked_add(jiff::SignedDuration::from_hours(1))
            .unwrap()
            .to_string();
        put(s, token_secret("abcdef", "0123456789abcdef", &future, true));
        put(
            s,
            token_secret("expird", "0123456789abcdef", "2020-01-01T00:00:00Z", true),
        );
        let cm_key = resources::core("configmaps").key("kube-public", "cluster-info");
        s.create(
            &cm_key,
            json!({"metadata": {"name": "cluster-info", "namespace": "kube-public"},
                   "data": {"kubeconfig": "apiVersion: v1\n", "jws-kubeconfig-gone00": "stale"}}),
        )
        .unwrap();

        sign_cluster_info(s, now);
        let cm = s.get(&cm_key).unwrap().unwrap();
        let data = cm["data"].as_object().unwrap();
        let keys: Vec<&String> = data.keys().collect();
        assert_eq!(keys, vec!["jws-kubeconfig-abcdef", "kubeconfig"], "{cm}");
        assert!(porthole_bootstrap::jws::verify_detached(
            data["jws-kubeconfig-abcdef"].as_str().unwrap(),
            "apiVersion: v1\n",
            "abcdef",
            "0123456789abcdef"
        ));
        let rv = resource_version(&cm);
        sign_cluster_info(s, now);
        assert_eq!(
            resource_version(&s.get(&cm_key).unwrap().unwrap()),
            rv,
            "no-op pass writes nothing"
        );

        remove_expired_tokens(s, now);
        assert!(s
            .get(&secrets().key("kube-system", "bootstrap-token-expird"))
            .unwrap()
            .is_none());
        assert!(s
            .get(&secrets().key("kube-system", "bootstrap-token-abcdef"))
            .unwrap()
            .is_some());
    }
}
