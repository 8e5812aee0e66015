//! Fuzz entry points (issue 18): one function per parser of the API server that reads bytes
//! from outside, each checking an invariant beyond "no panic". The targets in `fuzz/` are
//! wrappers that call these; the unit tests below call them on odd inputs.
//!
//! | function | parser | invariant |
//! |---|---|---|
//! | [`protobuf_decode`] | `protobuf::decode` | result is an object of the expected kind, bounded size and depth, deterministic; the create path accepts or rejects it |
//! | [`patch`] | `patch::{merge_patch, strategic_merge_patch, json_patch}` | merge patch idempotent and RFC 7386 shaped; strategic merge idempotent; JSON patch ops meet their post-conditions one by one; the update path validates or errs, and a valid result re-validates identically |
//! | [`selector`] | `select::{LabelSelector, FieldSelector}` | conjunction: `a,b` matches what both match; `matchLabels/matchExpressions` printed in query syntax select the same labels |
//! | [`route`] | `request::{route, verb, attributes}`, `Query`, list/watch/port-forward parameters | names in a route are path segments Kubernetes accepts; verbs and attributes agree with the route |
//! | [`create_object`] | `body::parse_body_as` + `registry::prepare_new` (JSON, YAML, protobuf) | a created object is valid, named by the kind's rules, and re-serialises and re-validates identically |
//! | [`store_value`] | `store::decode_value` (etcd and redb values) and the readers of stored objects | only objects decode; every reader (get, table, RBAC, bootstrap tokens, CSR controller) survives them |
//! | [`bootstrap_token`] | `BootstrapToken::parse`, `bootstrap::parse_token_secret`, `bootstrap::authenticate` | authentication succeeds only with the stored secret of a valid, unexpired, authentication token |
//! | [`csr_request`] | `csr::validate_node_request`, `csr::check_well_formed` | an accepted node request has a valid node name, SANs and usages for its signer, and is well formed |
//!
//! Not a public API: hidden from the docs, used only by the fuzz targets and tests.
//!
//! Layout: this file holds the input helpers every target shares (the byte-driven JSON
//! generator, the checks a created or patched object must pass) and the tests; each target is
//! a file of its own named after what it parses (`protobuf.rs`, `patches.rs`, `selectors.rs`,
//! `routing.rs`, `create.rs`, `stored_values.rs`, `bootstrap_tokens.rs`, `csr_requests.rs`),
//! since the eight invariants share nothing beyond those helpers.

use serde_json::{json, Map, Value};

use crate::resources::{self, ResourceInfo, RESOURCES};

mod bootstrap_tokens;
mod create;
mod csr_requests;
mod patches;
mod protobuf;
mod routing;
mod selectors;
mod stored_values;

pub use self::bootstrap_tokens::bootstrap_token;
pub use self::create::create_object;
pub use self::csr_requests::csr_request;
pub use self::patches::patch;
pub use self::protobuf::protobuf_decode;
pub use self::routing::route;
pub use self::selectors::selector;
pub use self::stored_values::store_value;

// ---------------------------------------------------------------------------------------------
// Input helpers

/// A byte-driven generator of JSON values: every choice reads one byte (0 once the input is
/// used up, which ends every structure), so the value is bounded by the input's length and
/// [`MAX_GEN_DEPTH`]. Keys and strings come mostly from a dictionary of Kubernetes field names,
/// so merges, merge keys and directives actually meet.
struct Gen<'a> {
    data: &'a [u8],
    pos: usize,
}

const MAX_GEN_DEPTH: usize = 7;

const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "containers",
    "initContainers",
    "image",
    "env",
    "value",
    "ports",
    "containerPort",
    "port",
    "protocol",
    "volumes",
    "volumeMounts",
    "mountPath",
    "conditions",
    "type",
    "status",
    "replicas",
    "selector",
    "matchLabels",
    "template",
    "app",
    "tier",
    "finalizers",
    "ownerReferences",
    "uid",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
    "a",
    "b",
    "",
    "~",
    "/",
    "0",
    "-",
];

const STRINGS: &[&str] = &[
    "web",
    "db",
    "nginx",
    "nginx:1.25",
    "delete",
    "replace",
    "merge",
    "True",
    "Ready",
    "TCP",
    "Always",
    "a/b",
    "~1",
    "",
];

impl<'a> Gen<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[usize::from(self.byte()) % from.len()]
    }

    /// A short string: from the dictionary, or up to 7 raw bytes (lossy UTF-8).
    fn string(&mut self, dict: &[&str]) -> String {
        let b = self.byte();
        if b & 0x80 == 0 {
            return dict[usize::from(b) % dict.len()].to_string();
        }
        let n = usize::from(b & 7);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        String::from_utf8_lossy(&self.data[start..end]).into_owned()
    }

    fn value(&mut self, depth: usize) -> Value {
        let b = self.byte();
        let choice = if depth >= MAX_GEN_DEPTH { b % 5 } else { b % 8 };
        match choice {
            0 => Value::Null,
            1 => Value::Bool(b & 0x80 != 0),
            2 => {
                if b & 0x80 != 0 {
                    let mut n = [0u8; 8];
                    for x in &mut n {
                        *x = self.byte();
                    }
                    json!(i64::from_le_bytes(n))
                } else {
                    json!(i64::from(self.byte()) - 64)
                }
            }
            3 | 4 => Value::String(self.string(STRINGS)),
            5 | 6 => Value::Object(self.object(depth)),
            _ => {
                let n = usize::from(self.byte() % 5);
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
        }
    }

    fn object(&mut self, depth: usize) -> Map<String, Value> {
        let n = usize::from(self.byte() % 5);
        let mut m = Map::new();
        for _ in 0..n {
            let k = self.string(KEYS);
            let v = self.value(depth + 1);
            m.insert(k, v);
        }
        m
    }

    /// A JSON pointer, mostly one that walks `doc` (so operations hit existing paths), with
    /// odd last tokens (`-`, `01`, `+0`, `-1`, escapes) now and then.
    fn pointer(&mut self, doc: &Value) -> String {
        let mut out = String::new();
        let mut cur = Some(doc);
        loop {
            let b = self.byte();
            if b.is_multiple_of(4) {
                return out;
            }
            let token = match cur {
                Some(Value::Object(m)) if b % 4 != 3 && !m.is_empty() => {
                    let (k, v) = m
                        .iter()
                        .nth(usize::from(self.byte()) % m.len())
                        .unwrap_or_else(|| unreachable!("index taken modulo the map's length"));
                    cur = Some(v);
                    k.replace('~', "~0").replace('/', "~1")
                }
                Some(Value::Array(a)) if b % 4 != 3 && !a.is_empty() => {
                    let i = usize::from(self.byte()) % (a.len() + 1);
                    cur = a.get(i);
                    i.to_string()
                }
                _ => {
                    cur = None;
                    self.pick(&["-", "01", "+0", "-1", "0", "~0", "~1", "x", "name", "", "~"])
                        .to_string()
                }
            };
            out.push('/');
            out.push_str(&token);
        }
    }
}

/// Split `data` at the first NUL: `(before, after)`; `None` without one.
fn split_nul(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = data.iter().position(|b| *b == 0)?;
    Some((&data[..i], &data[i + 1..]))
}

fn resource(b: u8) -> &'static ResourceInfo {
    &RESOURCES[usize::from(b) % RESOURCES.len()]
}

/// The longest chain of nested arrays/objects in `v`.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// After a successful normalise + default + validate, the object must be a fixed point:
/// re-serialised, re-parsed, normalised and defaulted again it is the same object, and still
/// valid (what the store writes is what a later update reads back and checks).
fn check_stable(info: &ResourceInfo, obj: &Value) {
    let bytes = serde_json::to_vec(obj).expect("a JSON value serialises");
    let back: Value = serde_json::from_slice(&bytes).expect("our own JSON parses");
    assert_eq!(
        &back, obj,
        "{}: JSON round trip changed the object",
        info.kind
    );
    let mut again = match resources::normalize(info, back) {
        Ok(o) => o,
        Err(e) => panic!(
            "{}: a validated object does not normalise again: {e:?}",
            info.kind
        ),
    };
    resources::apply_defaults(info, &mut again);
    assert_eq!(
        &again, obj,
        "{}: normalising a validated object again changed it",
        info.kind
    );
    if let Err(e) = resources::validate(info, &again) {
        panic!(
            "{}: a validated object no longer validates: {e:?}",
            info.kind
        );
    }
}

/// The update path after a patch (`registry::update_with` without the store): merge with the
/// current object, normalise, default, validate. Never panics; a valid result is stable.
fn through_update(info: &ResourceInfo, current: &Value, patched: Value) {
    if !patched.is_object() {
        return; // `require_object` answers 400
    }
    let merged = crate::registry::merge_update(info, "", current, patched);
    let Ok(mut obj) = resources::normalize(info, merged) else {
        return;
    };
    resources::apply_defaults(info, &mut obj);
    if resources::validate(info, &obj).is_ok() {
        check_stable(info, &obj);
    }
}

#[cfg(test)]
mod tests {
    use super::stored_values::same_up_to_float_ulps;
    use super::*;

    /// Odd inputs every target gets: empty, one byte of each value, deep nesting, huge
    /// numbers, a NUL split with junk, long runs.
    fn odd_inputs() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![Vec::new()];
        for b in 0..=255u8 {
            v.push(vec![b]);
            v.push(vec![b, 0, b, 0xff]);
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let deep_obj = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        for prefix in [0x00u8, 0x80, 0x81, 0x82, 0x13, 0x23] {
            for body in [
                deep.as_bytes(),
                deep_obj.as_bytes(),
                b"1e999999".as_slice(),
                b"{\"metadata\":{\"name\":18446744073709551616}}",
                b"{\"spec\":{\"replicas\":-99999999999999999999}}",
                b"{}\x00[{\"op\":\"add\",\"path\":\"/a\",\"value\":1}]",
                b"\xff\xfe\x00\x00",
                &[0x80; 64],
                &[0xff; 300],
            ] {
                v.push([&[prefix][..], body].concat());
            }
        }
        v
    }

    #[test]
    fn every_target_survives_odd_input() {
        for d in odd_inputs() {
            protobuf_decode(&d);
            patch(&d);
            selector(&d);
            route(&d);
            create_object(&d);
            store_value(&d);
            bootstrap_token(&d);
            csr_request(&d);
        }
    }

    #[test]
    fn protobuf_deep_nesting_and_huge_varints_are_refused() {
        // 40 nested metadata messages and a 10-byte varint.
        let mut inner = vec![0x0a, 0x00];
        for _ in 0..40 {
            let mut m = vec![0x0a, inner.len() as u8];
            m.extend(&inner);
            inner = m;
            if inner.len() > 120 {
                break;
            }
        }
        protobuf_decode(&[&[0x82][..], &[0x12, inner.len() as u8], &inner].concat());
        protobuf_decode(&[
            0x82, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        // A real Namespace body decodes and is created.
        let body = b"\x80\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x07\x0a\x05\x0a\x03tmp";
        protobuf_decode(body);
    }

    #[test]
    fn patches_in_text_mode() {
        let t = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"},"spec":{"containers":[{"name":"a","image":"nginx"}]}}"#;
        for (mode, p) in [
            (0x80u8, &br#"{"metadata":{"labels":{"app":"web"}}}"#[..]),
            (0x81, br#"{"spec":{"containers":[{"name":"a","image":"nginx:2"},{"name":"b","image":"x"}]}}"#),
            (0x81, br#"{"spec":{"containers":[{"name":"a","$patch":"delete"}]}}"#),
            (0x82, br#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}},{"op":"test","path":"/metadata/name","value":"web"}]"#),
            (0x82, br#"[{"op":"replace","path":"/spec/containers/0/image","value":"x"},{"op":"remove","path":"/nope"}]"#),
            (0x82, br#"[{"op":"move","from":"/spec","path":"/spec/x"}]"#),
            (0x82, br#"{"op":"add"}"#),
        ] {
            patch(&[&[mode][..], t, b"\0", p].concat());
        }
    }

    #[test]
    fn selectors_from_kubectl() {
        for s in [
            &b"app=web,tier!=db\0env in (a,b),!legacy\0\x01\x02\x03"[..],
            b"app in (web)\0app notin (db)\0",
            b"metadata.name=x\0spec.nodeName=\0",
            b"\0\0",
            b"a=b=c\0x==y\0",
            // The fuzzer's first find: a value with `(` swallowed the next requirement.
            b"app=web,tier!=db\xff\xff\xff(\0e\n\0\0\0nv in (a,b),!legacy\0\x03\x01\x02\x05\0\x07\t\x04\x02\x02\x01\x01",
        ] {
            selector(s);
        }
    }

    #[test]
    fn kubectl_request_lines() {
        for l in [
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb&limit=500",
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion=12&timeoutSeconds=99999999999999999999",
            "/apis/apps/v1/namespaces/x/deployments/y/scale",
            "/api/v1/namespaces/x/pods/y/portforward?ports=80,8080",
            "/api/v1/nodes/n1/proxy/portForward/default/web",
            "/api/v1/namespaces/default/pods/a%2Fb",
            "/api/v1/namespaces/%2E%2E/pods",
            "/apis",
            "/openapi/v2",
        ] {
            for m in 0..8u8 {
                route(&[&[m][..], l.as_bytes()].concat());
            }
        }
    }

    #[test]
    fn stored_non_objects_do_not_reach_the_readers() {
        for b in [
            &b"[1]"[..],
            b"1",
            b"\"x\"",
            b"null",
            b"{}",
            b"{\"metadata\":7}",
        ] {
            for first in [0u8, 1, 2, 7, 8, 0x30] {
                store_value(&[&[first][..], b].concat());
            }
        }
    }

    /// The store_value target's find: a long float in a stored value moves by an ulp through
    /// serde_json's parse → print → parse (tolerated, see `same_up_to_float_ulps`).
    #[test]
    fn stored_floats_may_move_by_an_ulp() {
        store_value(b"\x08{\"spec\":{\"x\":863999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999.9}}");
        for t in [
            "0.1",
            "1e300",
            "8.639999999999999e107",
            "-2.5e-308",
            "123456789012345678901234567890.0",
        ] {
            store_value(format!("\x01{{\"n\":{t}}}").as_bytes());
        }
        assert!(!same_up_to_float_ulps(&json!(1.0), &json!(1.5)));
        assert!(!same_up_to_float_ulps(
            &json!({"a": 1}),
            &json!({"a": 1, "b": 2})
        ));
    }

    #[test]
    fn bootstrap_tokens() {
        let good = "abcdef.0123456789abcdef\nabcdef\n0123456789abcdef\n\ntrue\nsystem:bootstrappers:x,system:masters\nabcdef";
        bootstrap_token(good.as_bytes());
        // Same Secret, other secret in the bearer.
        bootstrap_token(
            good.replacen("0123456789abcdef", "0123456789abcdee", 1)
                .as_bytes(),
        );
        bootstrap_token(b"abcdef.0123456789abcdef\nabcdef\n0123456789abcdef\n2000-01-01T00:00:00Z\ntrue\n\nabcdef");
    }
}
