//! Fuzz target [`store_value`](super::store_value): values read back from etcd or redb, and every
//! reader of stored objects.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use serde_json::{json, Value};

use super::resource;
use crate::authn::UserInfo;
use crate::store::{self, Store, StoreError, Watch};

/// A store that holds one object (under `key`, or under every key when `key` is `None`).
pub(super) struct OneObject {
    pub(super) key: Option<String>,
    pub(super) object: Value,
}

impl Store for OneObject {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(match &self.key {
            Some(k) if k != key => None,
            _ => Some(self.object.clone()),
        })
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError> {
        let hit = self.key.as_ref().is_none_or(|k| k.starts_with(prefix));
        Ok((hit.then(|| self.object.clone()).into_iter().collect(), 7))
    }

    fn create(&self, _key: &str, object: Value) -> Result<Value, StoreError> {
        Ok(object)
    }

    fn update(
        &self,
        _key: &str,
        object: Value,
        _expected_revision: Option<u64>,
    ) -> Result<Value, StoreError> {
        Ok(object)
    }

    fn delete(&self, _key: &str, _expected_revision: Option<u64>) -> Result<Value, StoreError> {
        Ok(self.object.clone())
    }

    fn watch(&self, _revision: u64) -> Result<Watch, StoreError> {
        Err(StoreError::Backend {
            step: "watching",
            message: "the fuzzing store does not watch".into(),
        })
    }

    fn revision(&self) -> u64 {
        7
    }
}

fn user(b: u8) -> UserInfo {
    let (name, groups): (&str, &[&str]) = match b % 4 {
        0 => ("alice", &["system:authenticated"]),
        1 => ("system:node:n1", &["system:nodes", "system:authenticated"]),
        2 => ("system:bootstrap:abcdef", &["system:bootstrappers"]),
        _ => (
            "system:serviceaccount:default:x",
            &["system:serviceaccounts"],
        ),
    };
    UserInfo {
        name: name.into(),
        uid: String::new(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// A value read back from etcd (or redb): first byte the resource and reader, the rest the
/// stored bytes. Only JSON objects decode (with the revision as `resourceVersion`); every
/// reader of stored objects then survives them: `registry::get` (which adds `kind`), the Table
/// printer `kubectl get` asks for, RBAC (the value as every Role and binding), the bootstrap
/// token authenticator and the CSR controller. A decoded object re-encodes to itself.
pub fn store_value(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let Ok(mut v) = store::decode_value(bytes) else {
        return;
    };
    assert!(v.is_object(), "a stored value decoded to a non-object");
    let rev = u64::from(first) * 1_000_003;
    store::set_resource_version(&mut v, rev);
    assert_eq!(store::resource_version(&v), rev);
    // etcd's encode: the object without resourceVersion.
    let mut stored = v.clone();
    if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let mut back = store::decode_value(&serde_json::to_vec(&stored).expect("serialises"))
        .expect("our own encoding decodes");
    store::set_resource_version(&mut back, rev);
    assert!(
        same_up_to_float_ulps(&back, &v),
        "encode then decode changed a stored object: {v} became {back}"
    );

    let info = resource(first);
    let st = OneObject {
        key: None,
        object: v.clone(),
    };
    let req = crate::request::ResourceRequest {
        info,
        namespace: if info.namespaced {
            "default".into()
        } else {
            String::new()
        },
        name: "x".into(),
        subresource: String::new(),
        rest: String::new(),
    };
    let got = crate::registry::get(&st, &req).expect("the store answers");
    assert_eq!(got["kind"], json!(info.kind));
    let t = crate::table::table(info, std::slice::from_ref(&got), "7", None, true);
    assert_eq!(t["rows"].as_array().map(Vec::len), Some(1));
    let _ = crate::table::table(info, &[v.clone()], "7", Some("Object"), false);
    let attrs = crate::request::attributes(&crate::request::Verb::Get, &req);
    let _ = crate::authz::authorize(&st, &user(first >> 4), &attrs);
    let _ = crate::bootstrap::parse_token_secret(&v);
    let _ = crate::bootstrap::authenticate(&st, "abcdef.0123456789abcdef");
    crate::csr::approve_and_sign(&st, None);
    let _ = crate::registry::merge_update(info, "status", &v, json!({"status": {}}));
    let _ = crate::registry::merge_update(info, "approval", &v, v.clone());
}

/// Equal, except that floats may differ in their last bits. serde_json (built without its
/// `float_roundtrip` feature) parses some long decimals one ulp away from the nearest f64, so
/// a float read from a stored value, written back and read again can move by an ulp (found by
/// this target: `8.639999999999999e107` came back as `8.64e107`). No served kind has a float
/// field (normalisation through k8s-openapi refuses floats for integers), so only a value that
/// did not come through the API can hold one.
pub(super) fn same_up_to_float_ulps(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_up_to_float_ulps(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| same_up_to_float_ulps(a, b)))
        }
        _ => a == b,
    }
}
