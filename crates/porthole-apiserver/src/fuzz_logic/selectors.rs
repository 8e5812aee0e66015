//! Fuzz target [`selector`](super::selector): label and field selectors, and selector objects
//! printed in query syntax.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use serde_json::{json, Map, Value};

use super::{resource, split_nul, Gen};
use crate::select::{FieldSelector, LabelSelector};

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
