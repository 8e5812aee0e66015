//! Patch application: JSON merge patch (RFC 7386), strategic merge patch for the list fields
//! kubectl and the node agent touch (merge keys below), and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// Merge key of a strategic-merge list of maps: the list `field` of a map that is itself the
/// value of (or an element of the list) `parent`. Lists without one are replaced.
fn merge_key(parent: &str, field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "containerStatuses"
        | "initContainerStatuses"
        | "imagePullSecrets" => "name",
        "conditions" => "type",
        "volumeMounts" => "mountPath",
        "ownerReferences" => "uid",
        "addresses" => "type",
        // `Container.ports` merge by containerPort, `ServiceSpec.ports` by port.
        "ports" if is_container_list(parent) => "containerPort",
        "ports" if parent == "spec" => "port",
        _ => return None,
    })
}

fn is_container_list(field: &str) -> bool {
    matches!(
        field,
        "containers" | "initContainers" | "ephemeralContainers"
    )
}

/// Lists of scalars with `patchStrategy:"merge"` (`ObjectMeta.finalizers`): the patch's items
/// are added, not replacing the list.
fn merges_scalars(parent: &str, field: &str) -> bool {
    parent == "metadata" && field == "finalizers"
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch as kubectl and the API server apply it (`kubectl apply`, `label`,
/// `annotate`, `edit`, `patch --type strategic`; apimachinery's `strategicpatch`): maps merge
/// like merge patch; lists with a merge key (above) merge by that key, the patch's items first
/// in patch order and the other items after them in their order, `$patch: delete` items remove
/// theirs and a `$patch: replace` item replaces the list; `metadata.finalizers` merge as a
/// set; `$setElementOrder/<list>` orders a list, `$deleteFromPrimitiveList/<list>` removes
/// values, `$retainKeys` drops the map's other keys, `$patch: replace|delete` on a map
/// replaces or deletes it. Other lists are replaced.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    smp(target, patch, "");
}

fn smp(target: &mut Value, patch: &Value, parent: &str) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = Value::Null;
        let mut rest = p.clone();
        rest.remove("$patch");
        smp(&mut clean, &Value::Object(rest), parent);
        *target = clean;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    // `$setElementOrder` places the other items by where they were before the patch.
    let before: Map<String, Value> = if p.keys().any(|k| k.starts_with("$setElementOrder/")) {
        t.clone()
    } else {
        Map::new()
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        if v.get("$patch").and_then(Value::as_str) == Some("delete") {
            // apimachinery's mergeMap answers an empty map for a deleted one.
            t.insert(k.clone(), Value::Object(Map::new()));
            continue;
        }
        match v {
            Value::Array(items) => {
                if let Some(key) = merge_key(parent, k).filter(|key| keyed(items, key)) {
                    let list = list_field(t, k);
                    merge_keyed_list(list, items, key, k);
                } else if merges_scalars(parent, k) && items.iter().all(is_scalar) {
                    let list = list_field(t, k);
                    let original = list.clone();
                    for i in items {
                        if !list.contains(i) {
                            list.push(i.clone());
                        }
                    }
                    let order = dedup(items.clone());
                    reorder(list, &order, &original, |e| Some(e.clone()));
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
            Value::Object(_) => smp(t.entry(k.clone()).or_insert(Value::Null), v, k),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (t.get_mut(field), v.as_array()) {
                list.retain(|e| !gone.contains(e));
            }
        }
    }
    for (k, v) in p {
        let Some(field) = k.strip_prefix("$setElementOrder/") else {
            continue;
        };
        let (Some(order), Some(Value::Array(_))) = (v.as_array(), t.get(field)) else {
            continue;
        };
        let original = match before.get(field) {
            Some(Value::Array(o)) => o.clone(),
            _ => Vec::new(),
        };
        let key = merge_key(parent, field);
        let id = |e: &Value| match key {
            Some(key) => e.get(key).cloned(),
            None => Some(e.clone()),
        };
        let order: Vec<Value> = order.iter().filter_map(id).collect();
        if let Some(Value::Array(list)) = t.get_mut(field) {
            reorder(list, &order, &original, id);
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
}

fn is_scalar(v: &Value) -> bool {
    !v.is_array() && !v.is_object()
}

/// Every item is a `$patch` directive or has a scalar, non-null value under `key`.
fn keyed(items: &[Value], key: &str) -> bool {
    items.iter().all(|i| {
        i.get("$patch").is_some() && i.is_object()
            || i.get(key).is_some_and(|v| is_scalar(v) && !v.is_null())
    })
}

/// The list under `k`, created (or replacing a non-list) if needed.
fn list_field<'a>(t: &'a mut Map<String, Value>, k: &str) -> &'a mut Vec<Value> {
    let slot = t.entry(k.to_string()).or_insert(Value::Null);
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(list) => list,
        _ => unreachable!("just made an array"),
    }
}

fn dedup(items: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn merge_keyed_list(list: &mut Vec<Value>, items: &[Value], key: &str, field: &str) {
    let mut regular = Vec::new();
    let mut replace = false;
    for item in items {
        match item.get("$patch").and_then(Value::as_str) {
            Some("delete") => {
                let id = item.get(key);
                list.retain(|e| e.get(key) != id || id.is_none());
            }
            Some("replace") => replace = true,
            _ => regular.push(item),
        }
    }
    if replace {
        *list = regular
            .iter()
            .map(|i| {
                let mut fresh = Value::Null;
                smp(&mut fresh, i, field);
                fresh
            })
            .collect();
        return;
    }
    let original = list.clone();
    for item in &regular {
        let id = item.get(key);
        match list.iter().position(|e| e.get(key) == id) {
            Some(i) => smp(&mut list[i], item, field),
            None => {
                let mut fresh = Value::Null;
                smp(&mut fresh, item, field);
                list.push(fresh);
            }
        }
    }
    let order = dedup(regular.iter().filter_map(|i| i.get(key).cloned()).collect());
    reorder(list, &order, &original, |e| e.get(key).cloned());
}

/// apimachinery's `normalizeElementOrder`: the items whose id is in `order` first, sorted by
/// it, then the other (server-only) items merged in by their place in `original`
/// (`mergeSortedSlice`: a server-only item goes before a patch item only when both were in
/// the original list and it came first there).
fn reorder(
    list: &mut Vec<Value>,
    order: &[Value],
    original: &[Value],
    id: impl Fn(&Value) -> Option<Value>,
) {
    let pos = |ids: &[Value], e: &Value| id(e).and_then(|x| ids.iter().position(|o| *o == x));
    let original_ids: Vec<Value> = original.iter().filter_map(&id).collect();
    let (mut ours, theirs): (Vec<Value>, Vec<Value>) =
        list.drain(..).partition(|e| pos(order, e).is_some());
    ours.sort_by_key(|e| pos(order, e));
    let (mut i, mut j) = (0, 0);
    while i < theirs.len() || j < ours.len() {
        let take_server = if i >= theirs.len() {
            false
        } else if j >= ours.len() {
            true
        } else {
            match (pos(&original_ids, &theirs[i]), pos(&original_ids, &ours[j])) {
                (Some(a), Some(b)) => a < b,
                _ => false,
            }
        };
        if take_server {
            list.push(theirs[i].clone());
            i += 1;
        } else {
            list.push(ours[j].clone());
            j += 1;
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((path[..idx].to_string(), unescape(&path[idx + 1..])))
}

/// An RFC 6901 array index: `0` or digits without a leading zero (no sign), as serde_json's
/// pointers (used by `test`, `copy` and `move`'s `from`) read them too.
fn array_index(token: &str) -> Result<usize, String> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return Err(format!("invalid array index {token:?}"));
    }
    token
        .parse::<usize>()
        .map_err(|_| format!("invalid array index {token:?}"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("add operation does not apply: doc is missing path: {path:?}"))?;
    match target {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                array_index(&last)?
            };
            if i > a.len() {
                return Err(format!("array index {i} out of bounds"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        )),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("remove operation does not apply: doc is missing path: {path:?}"))?;
    match target {
        Value::Object(m) => m.remove(&last).ok_or_else(|| {
            format!("remove operation does not apply: doc is missing key: {path:?}")
        }),
        Value::Array(a) => {
            let i = array_index(&last)?;
            if i >= a.len() {
                return Err(format!("array index {i} out of bounds"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        )),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("{kind} operation without \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or(format!("{kind} operation without \"from\""))
        };
        match kind {
            "add" => add(doc, path, value()?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                let value = value()?;
                if path.is_empty() {
                    // The whole document (RFC 6902 §4.3 with RFC 6901's "" pointer).
                    *doc = value;
                } else {
                    remove(doc, path)?;
                    add(doc, path, value)?;
                }
            }
            "move" => {
                let v = remove(doc, from()?)?;
                add(doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("copy from a missing path {path:?}"))?;
                add(doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected kind: {other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_conditions_by_type() {
        let mut t = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]}});
        strategic_merge_patch(
            &mut t,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "$setElementOrder/x": []}),
        );
        assert_eq!(t["status"]["conditions"][0]["status"], "True");
        assert_eq!(t["status"]["conditions"][1]["type"], "X");
        let mut m = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut m, &json!({"a": {"b": null}, "l": [3]}));
        assert_eq!(m, json!({"a": {"c": 2}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"metadata": {"labels": {"a": "1"}}, "l": [1]});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
                {"op": "add", "path": "/l/-", "value": 2},
                {"op": "test", "path": "/l/1", "value": 2}
            ]),
        )
        .expect("patch");
        assert_eq!(
            d,
            json!({"metadata": {"labels": {"a": "x", "b": "2"}}, "l": [1, 2]})
        );
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    /// Regression (issue 18, fuzz target patch): array indices are RFC 6901's (`0` or no
    /// leading zero, no sign) in every operation; `add` used to take `01` and `+0` (Rust's
    /// `usize` parse) where `test` and `copy` (serde_json pointers) did not, so `add /l/01`
    /// then `test /l/01` failed. A `replace` without `value` no longer removes first.
    #[test]
    fn json_patch_array_indices_are_rfc_6901() {
        for bad in ["01", "+0", "+1", "-1", " 1", "1e0", ""] {
            let mut d = json!({"l": [1, 2]});
            let add = json!([{"op": "add", "path": format!("/l/{bad}"), "value": 9}]);
            assert!(json_patch(&mut d, &add).is_err(), "add at {bad:?}");
            let rm = json!([{"op": "remove", "path": format!("/l/{bad}")}]);
            assert!(json_patch(&mut d, &rm).is_err(), "remove at {bad:?}");
            assert_eq!(d, json!({"l": [1, 2]}));
        }
        let mut d = json!({"l": [1, 2]});
        json_patch(&mut d, &json!([{"op": "add", "path": "/l/0", "value": 0}, {"op": "add", "path": "/l/10", "value": 9}]))
            .expect_err("index 10 is out of bounds");
        let mut d2 = json!({"l": [1, 2]});
        json_patch(&mut d2, &json!([{"op": "add", "path": "/l/2", "value": 3}, {"op": "test", "path": "/l/2", "value": 3}]))
            .expect("append by index");
        assert_eq!(d2, json!({"l": [1, 2, 3]}));
        let _ = d;
        let mut r = json!({"a": 1});
        json_patch(
            &mut r,
            &json!([{"op": "replace", "path": "", "value": {"b": 2}}]),
        )
        .expect("root");
        assert_eq!(r, json!({"b": 2}));
        let mut keep = json!({"a": 1});
        assert!(json_patch(&mut keep, &json!([{"op": "replace", "path": "/a"}])).is_err());
        assert_eq!(
            keep,
            json!({"a": 1}),
            "a replace without value removed the member"
        );
    }

    /// Regression (issue 18, patch differential against kubectl): strategic merge orders a
    /// merged list like apimachinery (the patch's items first, in patch order, then the rest),
    /// merges `Container.ports` by containerPort and `ServiceSpec.ports` by port, adds to
    /// `metadata.finalizers` instead of replacing it, and follows `$setElementOrder`,
    /// `$deleteFromPrimitiveList`, `$retainKeys` and list/map `$patch` directives.
    #[test]
    fn strategic_merge_matches_kubectl() {
        let mut pod = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}]},
            {"name": "side"}]}});
        strategic_merge_patch(
            &mut pod,
            &json!({"metadata": {"finalizers": ["b"]}, "spec": {"containers": [
            {"name": "new", "image": "x"},
            {"name": "app", "ports": [{"containerPort": 81, "name": "m"}, {"containerPort": 9090}]}]}}),
        );
        assert_eq!(
            pod,
            json!({"metadata": {"finalizers": ["b", "a"]}, "spec": {"containers": [
            {"name": "new", "image": "x"},
            {"name": "app", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81, "name": "m"}, {"containerPort": 9090}]},
            {"name": "side"}]}})
        );
        let mut svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}});
        strategic_merge_patch(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 443, "name": "https"}, {"port": 80, "$patch": "delete"}]}}),
        );
        assert_eq!(
            svc,
            json!({"spec": {"ports": [{"port": 443, "name": "https"}]}})
        );
        let mut p = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "metadata": {"finalizers": ["x", "y"], "labels": {"k": "v"}}});
        strategic_merge_patch(
            &mut p,
            &json!({
            "spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}], "containers": [{"name": "c", "image": "i"}]},
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "labels": {"$patch": "delete"}}}),
        );
        assert_eq!(
            p,
            json!({"spec": {"containers": [{"name": "c", "image": "i"}, {"name": "a"}, {"name": "b"}]},
                             "metadata": {"finalizers": ["y"], "labels": {}}})
        );
        let mut d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}, "containers": [{"name": "a"}]}});
        strategic_merge_patch(
            &mut d,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                                                       "containers": [{"$patch": "replace"}, {"name": "z"}]}}),
        );
        assert_eq!(
            d,
            json!({"spec": {"strategy": {"type": "Recreate"}, "containers": [{"name": "z"}]}})
        );
    }
}
