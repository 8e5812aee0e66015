//! `porthole token create|list|delete`: bootstrap tokens for joining nodes, kubeadm's
//! `kubeadm token` CLI on porthole's API (the Secrets of `porthole_bootstrap::token`).
//!
//! `create` also makes sure `kube-public/cluster-info` exists (kubeadm's `init` does that) with
//! the cluster CA from the kubeconfig, waits until the API server has signed it for the new
//! token (so the printed command works at once), and prints the join command:
//! `porthole node --join https://HOST:PORT --token <id>.<secret> --ca-cert-hash sha256:<hex>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::TryStreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use porthole_bootstrap::token as bt;
use porthole_bootstrap::{BootstrapToken, CaCertHash};

/// How long `create` waits for the API server to sign `cluster-info` for the new token.
const SIGNATURE_TIMEOUT: Duration = Duration::from_secs(30);

/// `porthole token` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// kubeconfig of a cluster admin (default: $KUBECONFIG, e.g. DIR/admin.kubeconfig from
    /// `porthole certs create`).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token and print the command that joins a node with it.
    Create(CreateArgs),
    /// List the bootstrap tokens.
    List,
    /// Delete bootstrap tokens (by id, or the whole token).
    Delete {
        /// `<id>` or `<id>.<secret>`.
        #[arg(required = true, value_name = "TOKEN_ID")]
        tokens: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// How long the token is valid (`24h`, `30m`, `90s`); 0 = it never expires.
    #[arg(long, default_value = "24h", value_parser = porthole_node::config::parse_duration)]
    ttl: Duration,
    /// A description shown by `token list`.
    #[arg(long)]
    description: Option<String>,
    /// The API server URL nodes should join (default: the kubeconfig's server), e.g. a load
    /// balancer in front of several API servers.
    #[arg(long, value_name = "URL")]
    server_url: Option<String>,
}

/// Runs `porthole token ...`.
pub async fn run(args: Args) -> Result<()> {
    let admin = Admin::connect(args.kubeconfig).await?;
    match args.command {
        TokenCommand::Create(c) => create(&admin, c).await,
        TokenCommand::List => list(&admin).await,
        TokenCommand::Delete { tokens } => delete(&admin, &tokens).await,
    }
}

/// A client for the cluster plus what the join command needs from the kubeconfig.
struct Admin {
    client: Client,
    server: String,
    ca_der: Vec<u8>,
    kubeconfig: PathBuf,
}

impl Admin {
    async fn connect(kubeconfig: Option<PathBuf>) -> Result<Admin> {
        let path = match kubeconfig {
            Some(p) => p,
            None => match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
                // A KUBECONFIG list: the first file, as kubectl reads the cluster from it.
                Some(v) => std::env::split_paths(&v)
                    .next()
                    .context("KUBECONFIG is empty")?,
                None => bail!(
                    "no kubeconfig: pass --kubeconfig FILE or set KUBECONFIG (e.g. DIR/admin.kubeconfig from `porthole certs create`)"
                ),
            },
        };
        let parsed = kube::config::Kubeconfig::read_from(&path)
            .with_context(|| format!("read the kubeconfig {}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(
            parsed,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("load the kubeconfig {}", path.display()))?;
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let ca_der = config
            .root_cert
            .as_ref()
            .and_then(|r| r.first())
            .cloned()
            .with_context(|| {
                format!(
                    "{} has no certificate-authority(-data) for its cluster: the join command's --ca-cert-hash is computed from it",
                    path.display()
                )
            })?;
        let client = Client::try_from(config)
            .with_context(|| format!("build a client from {}", path.display()))?;
        Ok(Admin {
            client,
            server,
            ca_der,
            kubeconfig: path,
        })
    }

    /// An API error with what to do about it.
    fn explain(&self, what: &str, e: kube::Error) -> anyhow::Error {
        match e {
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => anyhow!(
                "{what}: the API server refused (HTTP {}: {}); porthole token needs a cluster admin's kubeconfig, e.g. DIR/admin.kubeconfig from `porthole certs create` (used: {})",
                s.code,
                s.message,
                self.kubeconfig.display()
            ),
            kube::Error::Api(s) => anyhow!("{what}: HTTP {}: {}", s.code, s.message),
            e => anyhow!(
                "{what}: cannot reach the API server at {}: {e}; check that it is running and the kubeconfig's server",
                self.server
            ),
        }
    }
}

fn ca_pem(der: &[u8]) -> String {
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in B64.encode(der).as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The kubeconfig kubeadm puts into `cluster-info`: one nameless cluster, no user.
fn cluster_info_kubeconfig(server: &str, ca_der: &[u8]) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n",
        serde_json::to_string(server).unwrap_or_default(),
        B64.encode(ca_pem(ca_der))
    )
}

/// Create `cluster-info` if missing; if present, it must hold our CA (otherwise the printed pin
/// would never match what joining nodes download).
async fn ensure_cluster_info(admin: &Admin, server: &str) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(admin.client.clone(), bt::CLUSTER_INFO_NAMESPACE);
    let what = format!(
        "read {}/{}",
        bt::CLUSTER_INFO_NAMESPACE,
        bt::CLUSTER_INFO_NAME
    );
    let pin = CaCertHash::of_certificate(&admin.ca_der)?;
    match api.get_opt(bt::CLUSTER_INFO_NAME).await {
        Ok(Some(cm)) => {
            let kubeconfig = cm
                .data
                .as_ref()
                .and_then(|d| d.get(bt::CLUSTER_INFO_KUBECONFIG_KEY))
                .cloned()
                .unwrap_or_default();
            let ours = kube::config::Kubeconfig::from_yaml(&kubeconfig)
                .ok()
                .and_then(|k| k.clusters.into_iter().next())
                .and_then(|c| c.cluster)
                .and_then(|c| c.certificate_authority_data)
                .and_then(|d| B64.decode(d.trim()).ok())
                .is_some_and(|pem| {
                    pem_certificates(&pem)
                        .iter()
                        .any(|der| pin.matches_certificate(der))
                });
            if !ours {
                bail!(
                    "{}/{} holds another CA than the kubeconfig's ({pin}); fix it, or delete it (kubectl -n {} delete configmap {}) to have it created again",
                    bt::CLUSTER_INFO_NAMESPACE,
                    bt::CLUSTER_INFO_NAME,
                    bt::CLUSTER_INFO_NAMESPACE,
                    bt::CLUSTER_INFO_NAME
                );
            }
            Ok(())
        }
        Ok(None) => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(bt::CLUSTER_INFO_NAME.into()),
                    namespace: Some(bt::CLUSTER_INFO_NAMESPACE.into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    bt::CLUSTER_INFO_KUBECONFIG_KEY.to_string(),
                    cluster_info_kubeconfig(server, &admin.ca_der),
                )])),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                // Another `token create` won the race: same content.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(admin.explain("create kube-public/cluster-info", e)),
            }
        }
        Err(e) => Err(admin.explain(&what, e)),
    }
}

fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Ok((r, block)) = x509_parser::pem::parse_x509_pem(rest) {
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
        if r.len() == rest.len() {
            break;
        }
        rest = r;
    }
    out
}

async fn create(admin: &Admin, args: CreateArgs) -> Result<()> {
    let server = args
        .server_url
        .clone()
        .unwrap_or_else(|| admin.server.clone());
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("--server-url {server:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        bail!("the join URL {server:?} must be https://HOST:PORT (set --server-url)");
    }
    ensure_cluster_info(admin, &server).await?;
    let token = BootstrapToken::generate();
    let mut data = BTreeMap::from([
        (bt::KEY_TOKEN_ID.to_string(), token.id().to_string()),
        (bt::KEY_TOKEN_SECRET.to_string(), token.secret().to_string()),
        (bt::KEY_USAGE_AUTHENTICATION.to_string(), "true".to_string()),
        (bt::KEY_USAGE_SIGNING.to_string(), "true".to_string()),
        (
            bt::KEY_EXTRA_GROUPS.to_string(),
            bt::DEFAULT_EXTRA_GROUP.to_string(),
        ),
    ]);
    let expiration = if args.ttl.is_zero() {
        None
    } else {
        // Whole seconds (RFC 3339 as Kubernetes writes it), rounded up so the token lives at
        // least --ttl.
        let ttl = jiff::SignedDuration::try_from(args.ttl).context("--ttl is too long")?;
        let at = jiff::Timestamp::now()
            .checked_add(ttl)
            .and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(1)))
            .context("--ttl is too long")?;
        let at = jiff::Timestamp::from_second(at.as_second()).context("--ttl is too long")?;
        data.insert(
            bt::KEY_EXPIRATION.to_string(),
            at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        Some(at)
    };
    if let Some(d) = &args.description {
        data.insert(bt::KEY_DESCRIPTION.to_string(), d.clone());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(token.secret_name()),
            namespace: Some(bt::SECRET_NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some(bt::SECRET_TYPE.into()),
        string_data: Some(data),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(admin.client.clone(), bt::SECRET_NAMESPACE);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|e| admin.explain("create the bootstrap token", e))?;
    // The API server never signs for an expired token: a very short --ttl stops the wait early.
    let until_expiry = expiration
        .map(|at| {
            let left = at.as_second() - jiff::Timestamp::now().as_second();
            Duration::from_secs(u64::try_from(left).unwrap_or(0))
        })
        .unwrap_or(SIGNATURE_TIMEOUT);
    let wait = SIGNATURE_TIMEOUT.min(until_expiry);
    let signed = tokio::time::timeout(wait, wait_for_signature(admin, token.id())).await;
    match signed {
        Ok(r) => r?,
        Err(_) if wait < SIGNATURE_TIMEOUT => eprintln!(
            "porthole token: token {} expired before the API server signed cluster-info for it; the command below will be refused",
            token.id()
        ),
        Err(_) => bail!(
            "the API server did not sign cluster-info for token {} within {SIGNATURE_TIMEOUT:?} (a porthole API server does it in its controllers); the token exists: remove it with `porthole token delete {}`",
            token.id(),
            token.id()
        ),
    }
    let pin = CaCertHash::of_certificate(&admin.ca_der)?;
    println!(
        "porthole node --join {server} --token {} --ca-cert-hash {pin}",
        token.expose()
    );
    Ok(())
}

/// Until `cluster-info` has `jws-kubeconfig-<id>`: read, then watch that one object.
async fn wait_for_signature(admin: &Admin, id: &str) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(admin.client.clone(), bt::CLUSTER_INFO_NAMESPACE);
    let key = format!("{}{id}", bt::CLUSTER_INFO_JWS_PREFIX);
    let signed = |cm: &ConfigMap| cm.data.as_ref().is_some_and(|d| d.contains_key(&key));
    loop {
        let cm = api
            .get(bt::CLUSTER_INFO_NAME)
            .await
            .map_err(|e| admin.explain("read kube-public/cluster-info", e))?;
        if signed(&cm) {
            return Ok(());
        }
        let rv = cm.metadata.resource_version.unwrap_or_default();
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", bt::CLUSTER_INFO_NAME))
            .timeout(30);
        let stream = api
            .watch(&wp, &rv)
            .await
            .map_err(|e| admin.explain("watch kube-public/cluster-info", e))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream
            .try_next()
            .await
            .map_err(|e| admin.explain("watch kube-public/cluster-info", e))?
        {
            match ev {
                WatchEvent::Added(cm) | WatchEvent::Modified(cm) if signed(&cm) => return Ok(()),
                WatchEvent::Error(_) => break,
                _ => {}
            }
        }
    }
}

async fn list(admin: &Admin) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(admin.client.clone(), bt::SECRET_NAMESPACE);
    let all = secrets
        .list(&ListParams::default())
        .await
        .map_err(|e| admin.explain("list bootstrap tokens", e))?;
    let now = jiff::Timestamp::now();
    let mut rows = vec![[
        "TOKEN".to_string(),
        "TTL".to_string(),
        "EXPIRES".to_string(),
        "USAGES".to_string(),
        "DESCRIPTION".to_string(),
        "EXTRA GROUPS".to_string(),
    ]];
    for s in all
        .items
        .iter()
        .filter(|s| s.type_.as_deref() == Some(bt::SECRET_TYPE))
    {
        let get = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .unwrap_or_default()
        };
        let token = format!("{}.{}", get(bt::KEY_TOKEN_ID), get(bt::KEY_TOKEN_SECRET));
        let expiration = get(bt::KEY_EXPIRATION);
        let (ttl, expires) = match expiration.parse::<jiff::Timestamp>() {
            Ok(t) if t <= now => ("<invalid>".to_string(), expiration.clone()),
            Ok(t) => (
                porthole_apiserver::table::human_duration(t.as_second() - now.as_second()),
                expiration.clone(),
            ),
            Err(_) if expiration.is_empty() => ("<forever>".to_string(), "<never>".to_string()),
            Err(_) => ("<invalid>".to_string(), expiration.clone()),
        };
        let mut usages = Vec::new();
        if get(bt::KEY_USAGE_AUTHENTICATION) == "true" {
            usages.push("authentication");
        }
        if get(bt::KEY_USAGE_SIGNING) == "true" {
            usages.push("signing");
        }
        let none = |v: String| {
            if v.is_empty() {
                "<none>".to_string()
            } else {
                v
            }
        };
        rows.push([
            token,
            ttl,
            expires,
            none(usages.join(",")),
            none(get(bt::KEY_DESCRIPTION)),
            none(get(bt::KEY_EXTRA_GROUPS)),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
    Ok(())
}

async fn delete(admin: &Admin, tokens: &[String]) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(admin.client.clone(), bt::SECRET_NAMESPACE);
    for t in tokens {
        let id = t.split('.').next().unwrap_or("");
        if !bt::is_valid_id(id) {
            bail!("{t:?} is not a bootstrap token id: want [a-z0-9]{{6}} (or the whole token <id>.<secret>)");
        }
        match secrets
            .delete(&bt::secret_name(id), &DeleteParams::default())
            .await
        {
            Ok(_) => println!("bootstrap token \"{id}\" deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                bail!("bootstrap token \"{id}\" not found (see `porthole token list`)")
            }
            Err(e) => return Err(admin.explain(&format!("delete bootstrap token {id}"), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_info_kubeconfig_parses_with_our_ca() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let text = cluster_info_kubeconfig("https://198.18.0.2:6443", cert.der());
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://198.18.0.2:6443"));
        let pem = B64
            .decode(cluster.certificate_authority_data.as_deref().unwrap())
            .unwrap();
        assert_eq!(pem_certificates(&pem), vec![cert.der().to_vec()]);
    }
}
