//! A container's environment: the minimal base it starts from, the spec's `env` (values,
//! `fieldRef`s) and Kubernetes' `$(VAR)` expansion in `env`, `command` and `args`.

use k8s_openapi::api::core::v1::Container;

use super::PodHandle;

/// PATH given to containers, which do not inherit the agent's environment.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Expands `$(VAR)` references like Kubernetes: defined variables are substituted, `$$(X)`
/// escapes to a literal `$(X)`, undefined references stay as written.
pub(super) fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: a minimal base (containers do not inherit the agent's
/// environment, which could hold credentials) plus the spec's `env`, in order.
pub(super) fn container_env(h: &PodHandle, c: &Container) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), h.name.clone()),
    ];
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            expand(v, &env)
        } else if let Some(field) = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            match field.field_path.as_str() {
                "metadata.name" => h.name.clone(),
                "metadata.namespace" => h.namespace.clone(),
                "metadata.uid" => h.uid.clone(),
                "spec.nodeName" => h.rt.node_name.clone(),
                "spec.serviceAccountName" => h
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.hostIP" | "status.hostIPs" => h.rt.host_ip.clone(),
                other => {
                    tracing::warn!(pod = %h.key(), container = %c.name, field = other, "unsupported env fieldRef; variable left empty");
                    String::new()
                }
            }
        } else if var.value_from.is_some() {
            tracing::warn!(pod = %h.key(), container = %c.name, var = %var.name, "only value and fieldRef env sources are supported; variable left empty");
            String::new()
        } else {
            String::new()
        };
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }
}
