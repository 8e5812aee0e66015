//! Fuzz target [`patch`](super::patch): merge, strategic merge and JSON patches, each checked
//! against its own post-conditions, then through the update path.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use serde_json::{json, Map, Value};

use super::{resource, split_nul, through_update, Gen};
use crate::resources::{ResourceInfo, RESOURCES};

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
pub(super) fn resource_of(obj: &Value, b: u8) -> &'static ResourceInfo {
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
