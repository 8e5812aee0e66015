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

use http::{header, HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};

use crate::authn::UserInfo;
use crate::request::Route;
use crate::resources::{self, ResourceInfo, RESOURCES};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{self, Store, StoreError, Watch};

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

// ---------------------------------------------------------------------------------------------
// protobuf

/// Kinds whose protobuf schema `protobuf::decode` knows, plus one it does not.
const PROTO_KINDS: &[&str] = &[
    "Namespace",
    "Service",
    "Pod",
    "Deployment",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "Secret",
    "ConfigMap",
    "CertificateSigningRequest",
    "Lease",
];

/// `protobuf::decode`: the first byte picks the expected kind (low nibble) and, with its top
/// bit, prefixes the `k8s\0` magic so mutations need not keep it. A decoded body is an object
/// of a kind with a schema, no deeper than the schema's nesting limit, at most a constant
/// factor larger than the input (bounded work), and the same on a second decode. It then goes
/// through the create path (normalise, default, validate) without panicking.
pub fn protobuf_decode(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let kind = PROTO_KINDS[usize::from(first & 0x0f) % PROTO_KINDS.len()];
    let body = if first & 0x80 != 0 {
        [b"k8s\0".as_slice(), rest].concat()
    } else {
        rest.to_vec()
    };
    let Ok(v) = crate::protobuf::decode(&body, kind) else {
        return;
    };
    let obj = v.as_object().expect("a decoded protobuf body is an object");
    let decoded_kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .expect("a decoded body has a kind");
    let info = RESOURCES.iter().find(|r| r.kind == decoded_kind);
    assert!(
        info.is_some(),
        "decoded a kind the server does not serve: {decoded_kind}"
    );
    // 32 nested messages plus map/list wrappers and scalar leaves.
    assert!(depth(&v) <= 40, "decoded object nests {} deep", depth(&v));
    let out = serde_json::to_vec(&v).expect("serialises");
    assert!(
        out.len() <= 64 * body.len() + 256,
        "{} bytes of protobuf decoded to {} bytes of JSON",
        body.len(),
        out.len()
    );
    assert_eq!(
        crate::protobuf::decode(&body, kind).ok().as_ref(),
        Some(&v),
        "decode is not deterministic"
    );
    if let Some(info) = info {
        create_from(info, "default", v);
    }
}

// ---------------------------------------------------------------------------------------------
// patches

/// Realistic current objects (what the store holds) for the generator mode.
fn base_object(b: u8) -> Value {
    match b % 4 {
        0 => json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "uid": "u1", "resourceVersion": "7", "finalizers": ["a"]},
            "spec": {"containers": [
                {"name": "app", "image": "nginx:1.25",
                 "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "busybox"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }),
        1 => json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}
        }),
        2 => json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }),
        _ => json!({"metadata": {"name": "x"}, "l": [1, 2, 3], "o": {"a": {"b": null}}}),
    }
}

/// The resource a current object is of (by kind), or one picked by `b`.
fn resource_of(obj: &Value, b: u8) -> &'static ResourceInfo {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| resource(b))
}

/// The three patch types. First byte: low two bits the type (merge, strategic, JSON patch),
/// the rest the resource for the update path; top bit set = text mode, where the rest is
/// `target JSON \0 patch JSON` (the shape of real `kubectl patch` traffic). Otherwise both
/// documents come from the structural generator.
pub fn patch(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let text = if first & 0x80 != 0 {
        split_nul(rest).and_then(|(t, p)| {
            Some((
                serde_json::from_slice::<Value>(t).ok()?,
                serde_json::from_slice::<Value>(p).ok()?,
            ))
        })
    } else {
        None
    };
    let mode = first & 3;
    let (target, patch) = match text {
        Some(tp) => tp,
        None => {
            let mut g = Gen::new(rest);
            let b = g.byte();
            let target = if b & 1 == 0 {
                base_object(b >> 1)
            } else {
                g.value(0)
            };
            let patch = if mode == 2 {
                json_patch_ops(&mut g, &target)
            } else {
                Value::Object(g.object(0))
            };
            (target, patch)
        }
    };
    let info = resource_of(&target, first >> 2);
    let patched = match mode {
        0 => check_merge(&target, &patch),
        1 => check_strategic(&target, &patch),
        _ => match check_json_patch(&target, &patch) {
            Some(v) => v,
            None => return,
        },
    };
    if target.is_object() {
        through_update(info, &target, patched);
    }
}

fn json_patch_ops(g: &mut Gen<'_>, target: &Value) -> Value {
    let n = usize::from(g.byte() % 6);
    let mut ops = Vec::new();
    for _ in 0..n {
        let op = g.pick(&["add", "remove", "replace", "move", "copy", "test", "bogus"]);
        let mut o = Map::new();
        o.insert("op".into(), json!(op));
        let b = g.byte();
        if !b.is_multiple_of(8) {
            o.insert("path".into(), json!(g.pointer(target)));
        }
        if b % 8 != 1 && matches!(op, "add" | "replace" | "test") {
            o.insert("value".into(), g.value(1));
        }
        if b % 8 != 2 && matches!(op, "move" | "copy") {
            o.insert("from".into(), json!(g.pointer(target)));
        }
        ops.push(Value::Object(o));
    }
    Value::Array(ops)
}

/// RFC 7386: applying a merge patch twice is applying it once; a non-object patch replaces
/// the target; a null member removes the key; a non-object member is set as given.
fn check_merge(target: &Value, patch: &Value) -> Value {
    let mut once = target.clone();
    crate::patch::merge_patch(&mut once, patch);
    let mut twice = once.clone();
    crate::patch::merge_patch(&mut twice, patch);
    assert_eq!(once, twice, "merge patch is not idempotent");
    match patch {
        Value::Object(p) => {
            for (k, v) in p {
                match v {
                    Value::Null => assert!(once.get(k).is_none(), "null did not remove {k:?}"),
                    Value::Object(_) => assert!(once.get(k).is_some_and(Value::is_object)),
                    other => assert_eq!(once.get(k), Some(other), "member {k:?} not set"),
                }
            }
        }
        other => assert_eq!(&once, other, "a non-object merge patch replaces the target"),
    }
    once
}

/// Strategic merge patch: idempotent as well (`kubectl apply` sends the same patch again).
fn check_strategic(target: &Value, patch: &Value) -> Value {
    let mut once = target.clone();
    crate::patch::strategic_merge_patch(&mut once, patch);
    let mut twice = once.clone();
    crate::patch::strategic_merge_patch(&mut twice, patch);
    assert_eq!(once, twice, "strategic merge patch is not idempotent");
    once
}

/// RFC 6902, one operation at a time: the whole patch succeeds exactly when every operation
/// succeeds in turn and then equals their sequence; every successful operation meets its
/// post-condition (`add`/`replace`/`copy`/`move` put the value where `path` points, `remove`
/// is undone by adding the removed value back, `test` changes nothing). A failing patch's
/// partial changes are the handler's to drop: `handlers::write::apply_patch` patches a clone.
fn check_json_patch(target: &Value, ops: &Value) -> Option<Value> {
    let mut whole = target.clone();
    let result = crate::patch::json_patch(&mut whole, ops);
    let Some(list) = ops.as_array() else {
        assert!(result.is_err(), "a non-array JSON patch was accepted");
        return None;
    };
    let mut doc = target.clone();
    for op in list {
        let before = doc.clone();
        if crate::patch::json_patch(&mut doc, &Value::Array(vec![op.clone()])).is_err() {
            assert!(
                result.is_err(),
                "an operation failed alone but the whole patch succeeded: {op}"
            );
            return None;
        }
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let at = |d: &Value| -> Option<Value> {
            if let Some(parent) = path.strip_suffix("/-") {
                // `-` appends: the new element is the last one.
                if d.pointer(parent).is_some_and(Value::is_array) {
                    return d.pointer(parent)?.as_array()?.last().cloned();
                }
            }
            d.pointer(path).cloned()
        };
        match op.get("op").and_then(Value::as_str).unwrap_or("") {
            "add" | "replace" => assert_eq!(
                at(&doc).as_ref(),
                op.get("value"),
                "{op}: the value is not at the path afterwards"
            ),
            "copy" | "move" => {
                let from = op.get("from").and_then(Value::as_str).unwrap_or("");
                assert_eq!(
                    at(&doc),
                    before.pointer(from).cloned(),
                    "{op}: the value from `from` is not at the path afterwards"
                );
            }
            "remove" => {
                let removed = before
                    .pointer(path)
                    .cloned()
                    .unwrap_or_else(|| panic!("{op}: removed a path that does not resolve"));
                let mut undo = doc.clone();
                let readd = json!([{"op": "add", "path": path, "value": removed}]);
                assert!(
                    crate::patch::json_patch(&mut undo, &readd).is_ok() && undo == before,
                    "{op}: adding the removed value back does not restore the document"
                );
            }
            "test" => assert_eq!(doc, before, "test changed the document"),
            other => panic!("unknown operation {other:?} succeeded"),
        }
    }
    assert!(
        result.is_ok(),
        "every operation succeeded in turn but the patch failed"
    );
    assert_eq!(whole, doc, "the patch differs from its operations in turn");
    Some(whole)
}

// ---------------------------------------------------------------------------------------------
// selectors

/// Label maps over a small alphabet, so selector values match now and then.
fn label_maps(g: &mut Gen<'_>) -> Vec<Value> {
    let mut out = vec![json!({}), json!({"app": "web", "tier": "db", "env": "a"})];
    for _ in 0..3 {
        let n = usize::from(g.byte() % 4);
        let mut m = Map::new();
        for _ in 0..n {
            let k = g.pick(&["app", "tier", "env", "legacy", "a", "b.c/d"]);
            let v = g.pick(&["web", "db", "a", "b", "", "x"]);
            m.insert(k.into(), json!(v));
        }
        out.push(Value::Object(m));
    }
    out
}

/// `metav1.LabelSelector` in query syntax (as `metav1.LabelSelectorAsSelector(...).String()`).
fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// Label and field selectors. `data` = `a \0 b \0 rest`: `a` and `b` are selector texts
/// (lossy UTF-8), `rest` drives the label maps, objects and a structured selector.
///
/// - If `a` and `b` parse, `a,b` parses and matches exactly the label maps both match
///   (a selector is the conjunction of its requirements), for label and field selectors.
/// - A `matchLabels`/`matchExpressions` object selects the same label maps through
///   `LabelSelector::from_object` as its query-syntax form does through `LabelSelector::parse`.
///
/// `select.rs` has no printer (no `Display`) of its own, so a parse → print → parse round trip
/// cannot be checked; the printer here is of `metav1.LabelSelector` objects.
pub fn selector(data: &[u8]) {
    let (a, rest) = split_nul(data).unwrap_or((data, &[]));
    let (b, rest) = split_nul(rest).unwrap_or((rest, &[]));
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let mut g = Gen::new(rest);
    let maps = label_maps(&mut g);

    let (la, lb) = (LabelSelector::parse(&a), LabelSelector::parse(&b));
    if let (Ok(la), Ok(lb)) = (&la, &lb) {
        let both = LabelSelector::parse(&format!("{a},{b}"))
            .unwrap_or_else(|e| panic!("{a:?} and {b:?} parse but {a:?},{b:?} does not: {e}"));
        for m in &maps {
            assert_eq!(
                both.matches(m),
                la.matches(m) && lb.matches(m),
                "{a:?},{b:?} is not the conjunction of {a:?} and {b:?} on {m}"
            );
        }
    }

    let kind = resource(g.byte()).kind;
    let objects: Vec<Value> = maps
        .iter()
        .map(|m| {
            json!({"metadata": {"name": m.get("app").cloned().unwrap_or(json!("web")),
                                "namespace": m.get("env").cloned().unwrap_or(json!("a")),
                                "labels": m},
                   "spec": {"nodeName": m.get("tier").cloned().unwrap_or(Value::Null),
                            "hostNetwork": m.get("a").is_some()},
                   "status": {"phase": m.get("b").cloned().unwrap_or(json!("Running"))}})
        })
        .collect();
    let (fa, fb) = (
        FieldSelector::parse(&a, kind),
        FieldSelector::parse(&b, kind),
    );
    if let (Ok(fa), Ok(fb)) = (&fa, &fb) {
        let both = FieldSelector::parse(&format!("{a},{b}"), kind)
            .unwrap_or_else(|e| panic!("{a:?} and {b:?} parse but {a:?},{b:?} does not: {e}"));
        for o in &objects {
            assert_eq!(
                both.matches(o),
                fa.matches(o) && fb.matches(o),
                "field selector {a:?},{b:?} is not the conjunction on {o}"
            );
        }
    }

    // A structured selector over the label maps' alphabet.
    let mut sel = Map::new();
    let mut ml = Map::new();
    for _ in 0..g.byte() % 3 {
        let k = g.pick(&["app", "tier", "env", "legacy", "a"]);
        ml.insert(k.into(), json!(g.pick(&["web", "db", "a", "b", "x"])));
    }
    if !ml.is_empty() {
        sel.insert("matchLabels".into(), Value::Object(ml));
    }
    let mut exprs = Vec::new();
    for _ in 0..g.byte() % 3 {
        let key = g.pick(&["app", "tier", "env", "legacy", "a"]);
        let op = g.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
        let n = if matches!(op, "In" | "NotIn") {
            1 + g.byte() % 3
        } else {
            0
        };
        let values: Vec<&str> = (0..n)
            .map(|_| g.pick(&["web", "db", "a", "b", "x"]))
            .collect();
        exprs.push(json!({"key": key, "operator": op, "values": values}));
    }
    if !exprs.is_empty() {
        sel.insert("matchExpressions".into(), Value::Array(exprs));
    }
    let sel = Value::Object(sel);
    let text = selector_string(&sel);
    let from_object = LabelSelector::from_object(Some(&sel)).expect("well-formed selector object");
    let parsed = LabelSelector::parse(&text)
        .unwrap_or_else(|e| panic!("printed selector {text:?} does not parse: {e}"));
    for m in &maps {
        assert_eq!(
            from_object.matches(m),
            parsed.matches(m),
            "{sel} and its query form {text:?} disagree on {m}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// routing

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT",
];

/// Kubernetes' `path.IsValidPathSegmentName`: what a name or namespace in a request path
/// may be (names that break the store key `plural/namespace/name` are refused).
fn valid_path_segment(s: &str) -> bool {
    s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

/// A request line: first byte the method, the rest `path?query` (lossy UTF-8, as the `http`
/// crate hands over only valid URIs). A route that parses names a served resource with a
/// subresource it has, names and namespaces that are path segments Kubernetes accepts and at
/// most 253 bytes; the verb agrees with the method and the name; attributes copy the route;
/// every query parameter the handlers read (selectors, resourceVersion, timeoutSeconds,
/// watch, ports) parses or is refused without a panic. Non-resource paths reach discovery.
pub fn route(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes())
        .expect("a standard method");
    let line = String::from_utf8_lossy(rest);
    let (path, raw_query) = match line.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*line, None),
    };
    let query = crate::http_util::Query::parse(raw_query);
    for key in [
        "labelSelector",
        "fieldSelector",
        "watch",
        "resourceVersion",
        "ports",
    ] {
        assert_eq!(query.get(key), query.all(key).first().map(String::as_str));
    }
    let _ = crate::portforward::parse_ports(&query);
    let _ = crate::health::is_health_path(path);
    let r = match crate::request::route(path) {
        Ok(Route::Resource(r)) => r,
        Ok(Route::NonResource) => {
            let _ = crate::discovery::handle(path, "application/json");
            let _ = crate::discovery::handle(
                path,
                "application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io",
            );
            return;
        }
        Err(_) => return,
    };
    assert!(RESOURCES.iter().any(|i| std::ptr::eq(i, r.info)));
    for (what, s) in [("name", &r.name), ("namespace", &r.namespace)] {
        assert!(s.len() <= 253, "{what} of {} bytes routed", s.len());
        assert!(
            s.is_empty() || valid_path_segment(s),
            "{path:?} routed with {what} {s:?}, which Kubernetes refuses as a path segment"
        );
    }
    assert!(
        r.subresource.is_empty()
            || r.info
                .subresources
                .iter()
                .any(|(s, _, _)| *s == r.subresource)
    );
    assert!(r.subresource.is_empty() || !r.name.is_empty());
    assert!(r.rest.is_empty() || r.subresource == "proxy");
    if let Ok(verb) = crate::request::verb(&method, &r, &query) {
        use crate::request::Verb;
        let collection = r.name.is_empty();
        match method.as_str() {
            "GET" if r.subresource.is_empty() && collection => {
                assert!(matches!(verb, Verb::List | Verb::Watch))
            }
            "GET" => assert_eq!(verb, Verb::Get),
            "DELETE" if collection => assert_eq!(verb, Verb::DeleteCollection),
            "DELETE" => assert_eq!(verb, Verb::Delete),
            _ => {}
        }
        let attrs = crate::request::attributes(&verb, &r);
        let ra = attrs.resource.expect("resource attributes");
        assert_eq!(
            (
                ra.resource.as_str(),
                ra.name.as_str(),
                ra.namespace.as_str()
            ),
            (r.info.plural, r.name.as_str(), r.namespace.as_str())
        );
    } else {
        assert!(!matches!(
            method.as_str(),
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
        ));
    }
    // What list and watch read (`handlers::Selection::from_query` and `handlers::read::watch`).
    let _ = LabelSelector::parse(query.get("labelSelector").unwrap_or(""));
    let _ = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), r.info.kind);
    let _ = query.get("resourceVersion").map(str::parse::<u64>);
    let _ = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
}

// ---------------------------------------------------------------------------------------------
// create

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/json; charset=utf-8",
];

/// The create path after decoding: kind check, normalise, `prepare_new` (defaults, validation).
fn create_from(info: &ResourceInfo, namespace: &str, input: Value) {
    if !input.is_object() {
        return;
    }
    if input
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != info.kind)
    {
        return;
    }
    let _ = resources::normalize(info, input.clone());
    let namespace = if info.namespaced { namespace } else { "" };
    let Ok(obj) = crate::registry::prepare_new(info, namespace, input) else {
        return;
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(!name.is_empty(), "{}: created without a name", info.kind);
    assert!(
        resources::name_errors(info, name, "metadata.name").is_empty(),
        "{}: created with the invalid name {name:?}",
        info.kind
    );
    if info.namespaced {
        assert_eq!(
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            Some(namespace)
        );
    }
    check_stable(info, &obj);
}

/// A create request body: first byte the resource (low nibble) and content type (bits 4–5),
/// the rest the body. Whatever is decoded goes through the handler's create path; an object
/// that comes out is valid, named by its kind's rule, in the request's namespace, and stable
/// (re-serialised, re-normalised and re-validated, it is the same).
pub fn create_object(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let info = resource(first & 0x0f);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPES[usize::from(first >> 4) % CONTENT_TYPES.len()]),
    );
    let Ok(input) = crate::body::parse_body_as(&headers, body, info.kind) else {
        return;
    };
    let _ = crate::body::body_name(&headers, body, info.kind);
    create_from(info, "default", input);
}

// ---------------------------------------------------------------------------------------------
// stored values

/// A store that holds one object (under `key`, or under every key when `key` is `None`).
struct OneObject {
    key: Option<String>,
    object: Value,
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
fn same_up_to_float_ulps(a: &Value, b: &Value) -> bool {
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

// ---------------------------------------------------------------------------------------------
// bootstrap tokens

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

// ---------------------------------------------------------------------------------------------
// certificate signing requests

/// A node's certificate request. First byte: signer (bit 0: kubelet client or serving; bit 1:
/// some other signer) and usages (bits 2–4); the rest is the request, PEM if it starts with
/// `-----`, else DER that is wrapped into a `CERTIFICATE REQUEST` PEM block (so mutations hit
/// the ASN.1, not the base64). An accepted request names a node whose name is a DNS subdomain
/// of at most 253 bytes; a client request has no SANs, a serving one has 1–32 valid ones;
/// the usages include the signer's required one and nothing it forbids; and the CSR object
/// that carries it is well formed (`check_well_formed`, the check every create runs).
pub fn csr_request(data: &[u8]) {
    use base64::Engine as _;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let signer = match (first & 3, first & 1) {
        (2 | 3, _) if first & 0x80 != 0 => "example.com/other",
        (_, 0) => crate::csr::SIGNER_KUBELET_CLIENT,
        _ => crate::csr::SIGNER_KUBELET_SERVING,
    };
    let usage_sets: &[&[&str]] = &[
        &["digital signature", "client auth"],
        &["digital signature", "key encipherment", "client auth"],
        &["digital signature", "server auth"],
        &["digital signature", "key encipherment", "server auth"],
        &["client auth", "server auth"],
        &[],
        &["digital signature"],
        &["client auth", "cert sign"],
    ];
    let usages: Vec<String> = usage_sets[usize::from(first >> 2) & 7]
        .iter()
        .map(|u| u.to_string())
        .collect();
    let pem = if rest.starts_with(b"-----") {
        rest.to_vec()
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
        let mut p = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            p.push_str(&String::from_utf8_lossy(chunk));
            p.push('\n');
        }
        p.push_str("-----END CERTIFICATE REQUEST-----\n");
        p.into_bytes()
    };
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "node-csr-x"},
        "spec": {"signerName": signer, "usages": usages,
                 "request": base64::engine::general_purpose::STANDARD.encode(&pem)}
    });
    let well_formed = crate::csr::check_well_formed(&csr);
    let _ = resources::validate(resource_of(&csr, 0), &csr);
    let Ok(req) = crate::csr::validate_node_request(signer, &pem, &usages) else {
        return;
    };
    assert!(
        well_formed.is_ok(),
        "a node request passed the node checks but not check_well_formed: {well_formed:?}"
    );
    assert_eq!(req.signer, signer);
    assert!(
        !req.node_name.is_empty()
            && req.node_name.len() <= 253
            && crate::names::is_subdomain(&req.node_name),
        "accepted node name {:?}",
        req.node_name
    );
    let sans = req.dns_names.len() + req.ip_addresses.len();
    if signer == crate::csr::SIGNER_KUBELET_CLIENT {
        assert_eq!(sans, 0, "a client request with SANs was accepted");
        assert!(usages.iter().any(|u| u == "client auth"));
        assert!(!usages.iter().any(|u| u == "server auth"));
    } else {
        assert!(
            (1..=crate::csr::MAX_SANS).contains(&sans),
            "{sans} SANs accepted"
        );
        assert!(req
            .dns_names
            .iter()
            .all(|d| d.len() <= 253 && crate::names::is_subdomain(d)));
        assert!(usages.iter().any(|u| u == "server auth"));
        assert!(!usages.iter().any(|u| u == "client auth"));
    }
    assert!(!usages.iter().any(|u| u == "cert sign"));
}

#[cfg(test)]
mod tests {
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
