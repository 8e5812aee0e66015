//! `porthole up -f FILE`: reading Kubernetes objects from YAML or JSON files and creating them.
//!
//! A file may hold several YAML documents (`---`), a JSON object, or a `kind: List`. Objects are
//! created in file order, except that Namespaces go first so that a file may list a namespace
//! after the objects in it. An object that already exists (a restart on the same data dir) is
//! left as it is, like `kubectl create` followed by "already exists", but not an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde::Deserialize;

/// One object read from a file, with where it came from for error messages.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The object as the file had it.
    pub object: serde_json::Value,
    /// `FILE` or `FILE#N` (the N-th document, from 1).
    pub origin: String,
}

impl Manifest {
    fn str_field(&self, pointer: &str) -> Option<&str> {
        self.object.pointer(pointer).and_then(|v| v.as_str())
    }

    /// `kind/name` for messages, lowercased like kubectl prints it (`pod/web`).
    pub fn display_name(&self) -> String {
        format!(
            "{}/{}",
            self.str_field("/kind").unwrap_or("?").to_lowercase(),
            self.str_field("/metadata/name").unwrap_or("?")
        )
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Created now.
    Created,
    /// Already there (kept unchanged).
    Exists,
}

/// Reads every object in `paths`, failing on the first file that cannot be read or parsed.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<Manifest>> {
    let mut all = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        all.extend(parse(&text, path)?);
    }
    // Stable: namespaces first, everything else keeps its order.
    all.sort_by_key(|m| m.str_field("/kind") != Some("Namespace"));
    Ok(all)
}

/// Parses one file's text. JSON is valid YAML, so one parser reads both.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("{}#{}", path.display(), index + 1);
        let value = serde_json::Value::deserialize(document)
            .with_context(|| format!("{origin}: not valid YAML or JSON"))?;
        match value {
            serde_json::Value::Null => continue, // an empty document (e.g. a trailing `---`)
            serde_json::Value::Object(_) => {}
            _ => {
                bail!("{origin}: expected a Kubernetes object (a mapping with apiVersion and kind)")
            }
        }
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for (n, item) in items.into_iter().enumerate() {
                let manifest = Manifest {
                    object: item,
                    origin: format!("{origin} item {n}"),
                };
                check(&manifest)?;
                out.push(manifest);
            }
            continue;
        }
        let manifest = Manifest {
            object: value,
            origin,
        };
        check(&manifest)?;
        out.push(manifest);
    }
    Ok(out)
}

fn check(m: &Manifest) -> Result<()> {
    for field in ["/apiVersion", "/kind", "/metadata/name"] {
        if m.str_field(field).is_none_or(str::is_empty) {
            bail!(
                "{}: missing {} (every object needs apiVersion, kind and metadata.name)",
                m.origin,
                field[1..].replace('/', ".")
            );
        }
    }
    Ok(())
}

/// The resource of a kind porthole serves, without a discovery round trip; other kinds are
/// looked up through discovery.
fn known_resource(gvk: &GroupVersionKind) -> Option<(ApiResource, bool)> {
    let (plural, namespaced) = match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => ("pods", true),
        ("", "Service") => ("services", true),
        ("", "Namespace") => ("namespaces", false),
        ("", "ConfigMap") => ("configmaps", true),
        ("", "Secret") => ("secrets", true),
        ("", "ServiceAccount") => ("serviceaccounts", true),
        ("apps", "Deployment") => ("deployments", true),
        ("rbac.authorization.k8s.io", "Role") => ("roles", true),
        ("rbac.authorization.k8s.io", "RoleBinding") => ("rolebindings", true),
        ("rbac.authorization.k8s.io", "ClusterRole") => ("clusterroles", false),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => ("clusterrolebindings", false),
        _ => return None,
    };
    Some((ApiResource::from_gvk_with_plural(gvk, plural), namespaced))
}

/// Creates `m` unless it exists.
pub async fn create(client: &Client, m: &Manifest) -> Result<Outcome> {
    let api_version = m.str_field("/apiVersion").unwrap_or_default();
    let kind = m.str_field("/kind").unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, namespaced) = match known_resource(&gvk) {
        Some(known) => known,
        None => {
            let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(concise)
                .with_context(|| {
                    format!(
                        "{}: the API server does not serve {api_version} {kind}",
                        m.origin
                    )
                })?;
            (resource, caps.scope == kube::discovery::Scope::Namespaced)
        }
    };
    let object: DynamicObject = serde_json::from_value(m.object.clone())
        .with_context(|| format!("{}: not a valid Kubernetes object", m.origin))?;
    let api: Api<DynamicObject> = if namespaced {
        let ns = m.str_field("/metadata/namespace").unwrap_or("default");
        Api::namespaced_with(client.clone(), ns, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(Outcome::Created),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Exists),
        Err(err) => {
            Err(concise(err)).with_context(|| format!("{}: create {}", m.origin, m.display_name()))
        }
    }
}

/// The API server's own words for a refusal (kube's Display of a Status repeats it three times
/// with every empty field), found wherever it sits in the error's chain; other errors as they
/// are.
fn concise(err: kube::Error) -> anyhow::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        let status = e.downcast_ref::<kube::core::Status>().or_else(|| {
            e.downcast_ref::<Box<kube::core::Status>>()
                .map(|b| b.as_ref())
        });
        if let Some(status) = status {
            return anyhow::anyhow!("{} ({} {})", status.message, status.code, status.reason);
        }
        cause = e.source();
    }
    err.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_list_and_json() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\n\
                    apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n\
                    ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: dev}\n";
        let got = parse(yaml, Path::new("x.yaml")).unwrap();
        let names: Vec<_> = got.iter().map(Manifest::display_name).collect();
        assert_eq!(names, ["pod/a", "service/s", "namespace/dev"]);

        let json = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"}}"#;
        assert_eq!(
            parse(json, Path::new("x.json")).unwrap()[0].display_name(),
            "deployment/d"
        );
    }

    #[test]
    fn namespaces_are_created_first() {
        let dir = std::env::temp_dir().join(format!("porthole-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: dev}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: dev}\n",
        )
        .unwrap();
        let got = read_files(&[file]).unwrap();
        assert_eq!(got[0].display_name(), "namespace/dev");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_fields_are_named() {
        let err = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {}\n",
            Path::new("p.yaml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("p.yaml#1: missing metadata.name"),
            "{err}"
        );
        let err = parse("- 1\n", Path::new("p.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("expected a Kubernetes object"),
            "{err}"
        );
    }
}
