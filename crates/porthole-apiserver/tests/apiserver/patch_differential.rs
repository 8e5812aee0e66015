//! Differential test of `patch.rs` against kubectl (issue 18): a fixed-seed set of JSON merge
//! patches (RFC 7386), JSON patches (RFC 6902) and strategic merge patches on realistic Pod and
//! Deployment objects (containers merged by name, env by name, ports by containerPort, labels,
//! finalizers), each applied by our `patch` module and by
//! `kubectl patch --local -f obj.json --type merge|json|strategic -p PATCH -o json`; the results
//! must be the same JSON value. kubectl is found like every other test finds it
//! (`porthole_test::Clients::from_env`: `$PORTHOLE_KUBECTL`, default `/usr/bin/kubectl`); a
//! missing kubectl fails the test (CI has it), it never skips.
//!
//! No field is ignored in the comparison: with `--local`, kubectl patches the unstructured
//! object and prints it as it is (it adds no defaults, timestamps or status), so the two
//! results are compared whole. JSON object key order is not compared (serde_json's `Value`
//! equality ignores it; kubectl prints keys sorted).
//!
//! Documented deliberate differences are the cases in [`known_differences`], each asserted to
//! still differ the documented way, so the list stays true.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use porthole_apiserver::patch::{json_patch, merge_patch, strategic_merge_patch};
use serde_json::{json, Value};

/// xorshift64*: a fixed seed gives the same cases on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Type {
    Merge,
    Json,
    Strategic,
}

impl Type {
    fn flag(self) -> &'static str {
        match self {
            Type::Merge => "merge",
            Type::Json => "json",
            Type::Strategic => "strategic",
        }
    }
}

struct Case {
    ty: Type,
    object: Value,
    patch: Value,
}

const NAMES: &[&str] = &["app", "side", "proxy", "init"];
const IMAGES: &[&str] = &["nginx:1.25", "nginx:1.27", "busybox", "envoy:v1"];
const LABEL_KEYS: &[&str] = &["app", "tier", "env", "app.kubernetes.io/name", "team"];
const LABEL_VALUES: &[&str] = &["web", "db", "prod", "a", "b"];
const ENV_NAMES: &[&str] = &["A", "B", "C", "LOG_LEVEL"];

fn container(r: &mut Rng, name: &str) -> Value {
    let mut c = json!({"name": name, "image": r.pick(IMAGES)});
    if r.chance(70) {
        let n = 1 + r.below(3);
        let env: Vec<Value> = ENV_NAMES[..n]
            .iter()
            .map(|e| json!({"name": e, "value": format!("{}", r.below(10))}))
            .collect();
        c["env"] = json!(env);
    }
    if r.chance(60) {
        let mut ports = vec![json!({"containerPort": 80, "protocol": "TCP"})];
        if r.chance(50) {
            ports.push(json!({"containerPort": 8080, "name": "metrics", "protocol": "TCP"}));
        }
        c["ports"] = json!(ports);
    }
    if r.chance(30) {
        c["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    }
    c
}

fn labels(r: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..1 + r.below(3) {
        m.insert(r.pick(LABEL_KEYS).into(), json!(r.pick(LABEL_VALUES)));
    }
    Value::Object(m)
}

fn pod_spec(r: &mut Rng) -> Value {
    let n = 1 + r.below(3);
    let containers: Vec<Value> = NAMES[..n].iter().map(|c| container(r, c)).collect();
    let mut spec = json!({"containers": containers, "restartPolicy": "Always"});
    if r.chance(30) {
        spec["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    }
    spec
}

fn object(r: &mut Rng) -> Value {
    if r.chance(50) {
        let mut meta = json!({"name": "web", "namespace": "default", "labels": labels(r)});
        if r.chance(40) {
            meta["finalizers"] = json!(["example.com/a"]);
        }
        if r.chance(30) {
            meta["annotations"] = json!({"note": "x"});
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(r)})
    } else {
        let l = labels(r);
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default", "labels": l.clone()},
               "spec": {"replicas": 1 + r.below(5), "selector": {"matchLabels": l.clone()},
                        "template": {"metadata": {"labels": l}, "spec": pod_spec(r)}}})
    }
}

/// The pod spec inside an object, and its JSON pointer.
fn spec_of(obj: &Value) -> (&Value, &'static str) {
    if obj["kind"] == "Deployment" {
        (&obj["spec"]["template"]["spec"], "/spec/template/spec")
    } else {
        (&obj["spec"], "/spec")
    }
}

/// Wrap a pod-spec patch at the object's pod spec.
fn at_spec(obj: &Value, spec_patch: Value) -> Value {
    if obj["kind"] == "Deployment" {
        json!({"spec": {"template": {"spec": spec_patch}}})
    } else {
        json!({"spec": spec_patch})
    }
}

fn container_names(obj: &Value) -> Vec<String> {
    spec_of(obj)
        .0
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

fn merge_case(r: &mut Rng, obj: &Value) -> Value {
    match r.below(5) {
        0 => {
            let k = r.pick(LABEL_KEYS);
            let v = if r.chance(30) {
                Value::Null
            } else {
                json!(r.pick(LABEL_VALUES))
            };
            json!({"metadata": {"labels": {k: v}}})
        }
        1 => {
            json!({"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z", "gone": null}}})
        }
        2 => at_spec(
            obj,
            json!({"containers": [{"name": "app", "image": r.pick(IMAGES)}]}),
        ),
        3 => {
            if obj["kind"] == "Deployment" {
                json!({"spec": {"replicas": r.below(10), "paused": r.chance(50)}})
            } else {
                json!({"spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 30}})
            }
        }
        _ => json!({"metadata": {"labels": null, "finalizers": ["example.com/b"]},
                    "spec": {"nonexistent": {"deep": {"x": null, "y": 1}}}}),
    }
}

fn json_case(r: &mut Rng, obj: &Value) -> Value {
    let (spec, base) = spec_of(obj);
    let n = container_names(obj).len();
    let ci = r.below(n.max(1));
    let c = &spec["containers"][ci];
    let envs = c.get("env").and_then(Value::as_array).map_or(0, Vec::len);
    let mut ops = Vec::new();
    for _ in 0..1 + r.below(3) {
        ops.push(match r.below(10) {
            0 => json!({"op": "add", "path": format!("/metadata/labels/{}", r.pick(LABEL_KEYS).replace('/', "~1")), "value": r.pick(LABEL_VALUES)}),
            1 => json!({"op": "replace", "path": format!("{base}/containers/{ci}/image"), "value": r.pick(IMAGES)}),
            2 => json!({"op": "add", "path": format!("{base}/containers/{ci}/env/-"), "value": {"name": "NEW", "value": "1"}}),
            3 => json!({"op": "add", "path": format!("{base}/containers/{}", r.below(n + 1)), "value": {"name": "extra", "image": "busybox"}}),
            4 if envs > 0 => json!({"op": "remove", "path": format!("{base}/containers/{ci}/env/{}", r.below(envs))}),
            5 => json!({"op": "test", "path": "/metadata/name", "value": if r.chance(70) { "web" } else { "other" }}),
            6 => json!({"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"}),
            7 if n > 1 => json!({"op": "move", "from": format!("{base}/containers/0"), "path": format!("{base}/containers/{}", n - 1)}),
            8 => json!({"op": "remove", "path": format!("/metadata/labels/{}", r.pick(LABEL_KEYS).replace('/', "~1"))}),
            _ => json!({"op": "replace", "path": format!("{base}/containers/{}/name", n + r.below(2)), "value": "x"}),
        });
    }
    Value::Array(ops)
}

fn strategic_case(r: &mut Rng, obj: &Value) -> Value {
    let names = container_names(obj);
    let existing = names[r.below(names.len())].clone();
    match r.below(9) {
        0 => at_spec(
            obj,
            json!({"containers": [{"name": existing, "image": r.pick(IMAGES)}]}),
        ),
        1 => at_spec(
            obj,
            json!({"containers": [{"name": "sidecar", "image": "envoy:v1"}]}),
        ),
        2 => at_spec(
            obj,
            json!({"containers": [{"name": existing, "$patch": "delete"}]}),
        ),
        3 => at_spec(
            obj,
            json!({"containers": [{"name": existing, "env": [
            {"name": r.pick(ENV_NAMES), "value": "changed"}, {"name": "B", "$patch": "delete"}]}]}),
        ),
        4 => at_spec(
            obj,
            json!({"containers": [{"name": existing, "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 9090}]}]}),
        ),
        5 => {
            let k = r.pick(LABEL_KEYS);
            json!({"metadata": {"labels": {k: if r.chance(30) { Value::Null } else { json!(r.pick(LABEL_VALUES)) }}}})
        }
        6 => at_spec(
            obj,
            json!({"containers": [
            {"name": "sidecar", "image": "envoy:v1"},
            {"name": existing, "image": r.pick(IMAGES)}]}),
        ),
        7 => at_spec(
            obj,
            json!({"containers": [{"name": existing, "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
                                 "volumes": [{"name": "cache", "emptyDir": {}}]}),
        ),
        _ => json!({"metadata": {"finalizers": ["example.com/b"]}}),
    }
}

/// Shapes the generator does not make: what `kubectl apply` sends (`$setElementOrder`,
/// `$retainKeys`, `$deleteFromPrimitiveList`), list and map directives, Service ports (merge
/// key `port`), and JSON patch edge cases.
fn fixed_cases() -> Vec<Case> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "finalizers": ["a", "b"]},
        "spec": {"containers": [
            {"name": "app", "image": "nginx", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "busybox"},
            {"name": "proxy", "image": "envoy"}]}});
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                                                        {"name": "https", "port": 443, "protocol": "TCP"}]}});
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}});
    let s = |object: &Value, patch: Value| Case {
        ty: Type::Strategic,
        object: object.clone(),
        patch,
    };
    let j = |object: &Value, patch: Value| Case {
        ty: Type::Json,
        object: object.clone(),
        patch,
    };
    let m = |object: &Value, patch: Value| Case {
        ty: Type::Merge,
        object: object.clone(),
        patch,
    };
    vec![
        // kubectl apply: change one container, keep the order it lists.
        s(
            &pod,
            json!({"spec": {"$setElementOrder/containers": [{"name": "app"}, {"name": "side"}, {"name": "proxy"}],
                                "containers": [{"name": "side", "image": "busybox:2"}]}}),
        ),
        s(
            &pod,
            json!({"spec": {"$setElementOrder/containers": [{"name": "proxy"}, {"name": "app"}, {"name": "side"}],
                                "containers": [{"name": "proxy", "image": "envoy:2"}]}}),
        ),
        s(
            &pod,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}}),
        ),
        s(
            &pod,
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "a"]}}),
        ),
        s(
            &pod,
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}),
        ),
        s(
            &pod,
            json!({"spec": {"containers": [{"name": "app", "env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}]}]}}),
        ),
        s(
            &pod,
            json!({"metadata": {"labels": {"$patch": "replace", "tier": "fe"}}}),
        ),
        s(&pod, json!({"metadata": {"labels": {"$patch": "delete"}}})),
        s(
            &pod,
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]}]}}),
        ),
        s(
            &svc,
            json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}, {"port": 8080, "name": "alt"}]}}),
        ),
        s(
            &svc,
            json!({"spec": {"ports": [{"port": 80, "$patch": "delete"}]}}),
        ),
        s(
            &dep,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        ),
        s(
            &dep,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "X", "value": "1", "valueFrom": null}]}]}}}}),
        ),
        m(
            &pod,
            json!({"spec": {"containers": [{"name": "only"}]}, "metadata": {"finalizers": null}}),
        ),
        j(
            &pod,
            json!([{"op": "replace", "path": "/spec/containers/1", "value": {"name": "side2", "image": "x"}}]),
        ),
        j(
            &pod,
            json!([{"op": "move", "from": "/spec/containers/2", "path": "/spec/containers/0"}]),
        ),
        j(
            &pod,
            json!([{"op": "add", "path": "/spec/containers/5", "value": {"name": "far"}}]),
        ),
        j(
            &pod,
            json!([{"op": "remove", "path": "/metadata/labels/app"}, {"op": "test", "path": "/metadata/labels", "value": {}}]),
        ),
        j(
            &pod,
            json!([{"op": "add", "path": "/metadata/annotations", "value": {}}, {"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "1"}]),
        ),
        j(
            &pod,
            json!([{"op": "copy", "from": "/spec/containers/0", "path": "/spec/containers/-"}]),
        ),
        j(
            &pod,
            json!([{"op": "test", "path": "/spec/containers/0/ports/0/containerPort", "value": 80}, {"op": "remove", "path": "/spec/containers/0/ports"}]),
        ),
        j(
            &pod,
            json!([{"op": "replace", "path": "", "value": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "z"}}}]),
        ),
        j(
            &pod,
            json!([{"op": "replace", "path": "/spec/containers/7/image", "value": "x"}]),
        ),
        j(
            &pod,
            json!([{"op": "move", "from": "/metadata", "path": "/metadata/labels/x"}]),
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut r = Rng(0x5eed_1818_2026_0001);
    let mut out: Vec<Case> = (0..102)
        .map(|i| {
            let object = object(&mut r);
            let ty = [Type::Merge, Type::Json, Type::Strategic][i % 3];
            let patch = match ty {
                Type::Merge => merge_case(&mut r, &object),
                Type::Json => json_case(&mut r, &object),
                Type::Strategic => strategic_case(&mut r, &object),
            };
            Case { ty, object, patch }
        })
        .collect();
    out.extend(fixed_cases());
    out
}

/// Our result: `Err` when the patch fails (only JSON patches can).
fn ours(ty: Type, object: &Value, patch: &Value) -> Result<Value, String> {
    let mut doc = object.clone();
    match ty {
        Type::Merge => merge_patch(&mut doc, patch),
        Type::Strategic => strategic_merge_patch(&mut doc, patch),
        Type::Json => json_patch(&mut doc, patch)?,
    }
    Ok(doc)
}

fn kubectl_path() -> PathBuf {
    match porthole_test::Clients::from_env() {
        Ok(c) => c.kubectl,
        Err(e) => panic!(
            "the patch differential test needs kubectl: {e:#} \
             (source /root/.cache/porthole-tools/env.sh or run scripts/install-test-deps.sh)"
        ),
    }
}

/// kubectl's result: `Err(stderr)` when it refuses the patch.
fn theirs(
    kubectl: &Path,
    dir: &Path,
    ty: Type,
    object: &Value,
    patch: &Value,
) -> Result<Value, String> {
    let file = dir.join("obj.json");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(object.to_string().as_bytes()))
        .expect("write the object");
    let out = Command::new(kubectl)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args(["patch", "--local", "-o", "json", "--type", ty.flag(), "-f"])
        .arg(&file)
        .arg("-p")
        .arg(patch.to_string())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()));
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kubectl printed something that is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        }))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn scratch(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("porthole-patch-diff-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("kubeconfig"), "").expect("empty kubeconfig");
    dir
}

#[test]
fn patches_agree_with_kubectl() {
    let kubectl = kubectl_path();
    let dir = scratch("cases");
    let cases = cases();
    let mut disagreements = Vec::new();
    let mut counts = [0usize; 3];
    for (i, c) in cases.iter().enumerate() {
        let a = ours(c.ty, &c.object, &c.patch);
        let b = theirs(&kubectl, &dir, c.ty, &c.object, &c.patch);
        let agree = match (&a, &b) {
            (Ok(x), Ok(y)) => x == y,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if agree {
            counts[c.ty as usize] += 1;
        } else {
            disagreements.push(format!(
                "case {i} ({}):\n  object: {}\n  patch:  {}\n  ours:   {}\n  kubectl: {}",
                c.ty.flag(),
                c.object,
                c.patch,
                a.map_or_else(|e| format!("error: {e}"), |v| v.to_string()),
                b.map_or_else(|e| format!("error: {e}"), |v| v.to_string()),
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "patch differential: {} cases, {} agree (merge {}, json {}, strategic {}), {} disagree",
        cases.len(),
        counts.iter().sum::<usize>(),
        counts[0],
        counts[1],
        counts[2],
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} patches disagree with kubectl:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}

/// Deliberate differences from kubectl, each asserted to still be one (with why).
fn known_differences() -> Vec<(&'static str, Type, Value, Value)> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}, {"name": "side", "image": "busybox"}]}});
    let add_at = |i: &str| json!([{"op": "add", "path": format!("/spec/containers/{i}"), "value": {"name": "x", "image": "y"}}]);
    vec![
        (
            "a merge patch that is not an object replaces the target (RFC 7386 §2); kubectl refuses              it client-side. Through the API both fail: the result must be an object (400)",
            Type::Merge,
            pod.clone(),
            json!(["not", "an", "object"]),
        ),
        (
            "replace of a missing object member fails (RFC 6902 §4.3: the target must exist, as in              evanphx/json-patch v5); kubectl's json-patch v4 adds the member",
            Type::Json,
            pod.clone(),
            json!([{"op": "replace", "path": "/metadata/missing", "value": 1}]),
        ),
        (
            "array index 01 is refused (RFC 6901 §4: no leading zeros; serde_json's pointers agree, so              test/copy/move see the same indices); kubectl's strconv.Atoi takes it",
            Type::Json,
            pod.clone(),
            add_at("01"),
        ),
        ("array index +1 is refused (RFC 6901 §4); kubectl takes it", Type::Json, pod.clone(), add_at("+1")),
        (
            "negative array indices are refused (RFC 6901 §4); kubectl's json-patch v4 counts them              from the end (SupportNegativeIndices)",
            Type::Json,
            pod.clone(),
            add_at("-1"),
        ),
        (
            "add at the root pointer \"\" replaces the document (RFC 6902 §4.1); kubectl refuses it",
            Type::Json,
            pod,
            json!([{"op": "add", "path": "", "value": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "z"}}}]),
        ),
    ]
}

#[test]
fn documented_differences_still_differ() {
    let kubectl = kubectl_path();
    let dir = scratch("known");
    for (why, ty, object, patch) in known_differences() {
        let a = ours(ty, &object, &patch);
        let b = theirs(&kubectl, &dir, ty, &object, &patch);
        let same = match (&a, &b) {
            (Ok(x), Ok(y)) => x == y,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        assert!(
            !same,
            "documented difference no longer differs ({why}): {patch}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
