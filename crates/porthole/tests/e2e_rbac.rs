//! examples/rbac.yaml: the token user `developer` may port-forward in namespace `dev` only, and
//! a denial carries Kubernetes' exact message.

use std::path::Path;

use anyhow::{ensure, Result};
use porthole_test::{example, http_get, Cluster, Forward, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

#[test]
fn developer_may_port_forward_in_dev_only() {
    if !porthole_test::require_pods("developer_may_port_forward_in_dev_only") {
        return;
    }
    let work = TempDir::new("rbac").unwrap();
    let cluster = Cluster::up(
        Path::new(bin()),
        work.path(),
        &[example("rbac.yaml"), example("web.yaml")],
    )
    .unwrap();
    let developer = cluster.data_dir.join("developer.kubeconfig");
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("dev", "web")?;
        cluster.wait_pod_ready("default", "web")?;

        // Allowed: dev/web, with kubectl and with porthole.
        let mut cmd = cluster.kubectl_cmd_as(&cluster.kubectl, &developer);
        cmd.args(["-n", "dev", "port-forward", "pod/web", ":8000"]);
        Forward::with("developer-kubectl", cmd, &cluster.work, 8000, |port| {
            let (status, _) = http_get(port, "/")?;
            ensure!(status == 200, "developer via kubectl in dev: {status}");
            Ok(())
        })?;

        let mut cmd = cluster.porthole_cmd();
        cmd.env("KUBECONFIG", &developer)
            .args(["port-forward", "-n", "dev", "web", ":8000"]);
        Forward::with("developer-porthole", cmd, &cluster.work, 8000, |port| {
            let (status, _) = http_get(port, "/")?;
            ensure!(status == 200, "developer via porthole in dev: {status}");
            Ok(())
        })?;

        // Denied: default/web. kubectl reads the pod first, so the denial is on `get pods`.
        let out = cluster
            .kubectl_cmd_as(&cluster.kubectl, &developer)
            .args(["-n", "default", "port-forward", "pod/web", ":8000"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "developer forwarded in default");
        ensure!(
            stderr.contains(r#"pods "web" is forbidden: User "developer" cannot get resource "pods" in API group "" in the namespace "default""#),
            "denial message: {stderr}"
        );
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}
