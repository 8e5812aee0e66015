//! etcd's TLS files, read and checked up front, and what a failed first connection means, so a
//! wrong flag is reported with its name and path rather than as a TLS library error later.

use std::path::PathBuf;

use super::members::describe;
use super::EtcdConfig;

pub(super) fn tls_options(cfg: &EtcdConfig) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
    let endpoints = cfg.endpoints.join(",");
    // Read and check each file here, so that a wrong path or a file of the wrong kind is
    // reported with its flag and path, not as the TLS library's error at the first request.
    let read = |flag: &str, what: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {flag} {} ({what} for etcd at {endpoints}): {e}; give the path of \
                 an existing PEM file",
                p.display()
            )
        })
    };
    let certs = |flag: &str, what: &str, p: &PathBuf| -> anyhow::Result<Vec<u8>> {
        let pem = read(flag, what, p)?;
        let n = rustls_pemfile::certs(&mut pem.as_slice())
            .filter(|c| c.is_ok())
            .count();
        if n == 0 {
            anyhow::bail!(
                "{flag} {} ({what} for etcd at {endpoints}) holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----); give a PEM certificate file",
                p.display()
            );
        }
        Ok(pem)
    };
    let mut tls = etcd_client::TlsOptions::new();
    let mut any = false;
    if let Some(ca) = &cfg.ca_file {
        let pem = certs("--etcd-cafile", "the CA of etcd's serving certificate", ca)?;
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        any = true;
    }
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            let cert = certs("--etcd-certfile", "the client certificate", c)?;
            let key = read("--etcd-keyfile", "the client certificate's key", k)?;
            if !matches!(
                rustls_pemfile::private_key(&mut key.as_slice()),
                Ok(Some(_))
            ) {
                anyhow::bail!(
                    "--etcd-keyfile {} (the client certificate's key for etcd at {endpoints}) \
                     holds no PEM private key; give the key of --etcd-certfile {}",
                    k.display(),
                    c.display()
                );
            }
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            any = true;
        }
        (None, None) => {}
        _ => anyhow::bail!("--etcd-certfile and --etcd-keyfile go together: give both or neither"),
    }
    if any && cfg.endpoints.iter().any(|e| e.starts_with("http://")) {
        anyhow::bail!(
            "--etcd-cafile/--etcd-certfile are set but --etcd-servers has an http:// URL; use https:// URLs for TLS"
        );
    }
    Ok(any.then_some(tls))
}

/// The error for a failed first contact with etcd: what failed, and what to do about it. TLS
/// failures are told apart by the text of the error chain (tonic and rustls give no types to
/// match on), so each gets advice about the flag that is most likely wrong.
pub(super) fn connect_failure(
    cfg: &EtcdConfig,
    endpoints: &str,
    e: &etcd_client::Error,
) -> anyhow::Error {
    let detail = describe(e);
    let tls = cfg.endpoints.iter().any(|u| u.starts_with("https://"));
    let file = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let has = |needles: &[&str]| needles.iter().any(|n| detail.contains(n));
    let advice = if has(&["NotValidForName", "not valid for name"]) {
        "etcd's serving certificate does not name the host in --etcd-servers: use a host \
         name or IP address that the certificate's subjectAltName lists, or reissue etcd's \
         certificate (its --cert-file) with this one"
            .to_string()
    } else if has(&[
        "Expired",
        "certificate expired",
        "NotValidYet",
        "not valid yet",
    ]) {
        "etcd's serving certificate is outside its validity period: renew etcd's certificate \
         (its --cert-file), or check this host's clock"
            .to_string()
    } else if has(&["InvalidPurpose", "extended key usage"]) {
        "etcd's serving certificate is not for TLS servers: reissue it (its --cert-file) with \
         extendedKeyUsage serverAuth"
            .to_string()
    } else if has(&["invalid peer certificate", "UnknownIssuer", "BadSignature"]) {
        match file(&cfg.ca_file) {
            Some(ca) => format!(
                "TLS: etcd's serving certificate is not signed by the CA in --etcd-cafile {ca}; \
                 give --etcd-cafile the CA certificate that signed etcd's --cert-file"
            ),
            None => "TLS: etcd's serving certificate is not trusted, and no --etcd-cafile was \
                     given; give --etcd-cafile the CA certificate that signed etcd's --cert-file"
                .to_string(),
        }
    } else if has(&["KeyMismatch", "InconsistentKeys", "not be consistent"]) {
        format!(
            "TLS: the key in --etcd-keyfile {} does not belong to the certificate in \
             --etcd-certfile {}; give the matching key",
            file(&cfg.key_file).unwrap_or_default(),
            file(&cfg.cert_file).unwrap_or_default()
        )
    } else if tls && has(&["tls handshake eof", "InvalidContentType", "corrupt message"]) {
        "etcd did not answer the TLS handshake: if this etcd serves plain HTTP (no --cert-file), \
         use an http:// URL in --etcd-servers and no --etcd-cafile/--etcd-certfile/--etcd-keyfile"
            .to_string()
    } else if tls
        && has(&[
            "connection closed",
            "BadCertificate",
            "UnknownCA",
            "CertificateRequired",
            "AccessDenied",
            "fatal alert",
            "reset by peer",
            "broken pipe",
        ])
    {
        match file(&cfg.cert_file) {
            Some(cert) => format!(
                "TLS: etcd ended the connection, so it most likely rejected the client \
                 certificate in --etcd-certfile {cert}; etcd with --client-cert-auth \
                 accepts only client certificates signed by its --trusted-ca-file: give \
                 --etcd-certfile/--etcd-keyfile of such a certificate"
            ),
            None => "TLS: etcd ended the connection, so it most likely requires a client \
                     certificate (etcd's --client-cert-auth), and none was given: give \
                     --etcd-certfile and --etcd-keyfile of a certificate signed by etcd's \
                     --trusted-ca-file"
                .to_string(),
        }
    } else if !tls && has(&["broken pipe", "connection closed", "reset by peer"]) {
        "etcd closed the connection: if it serves TLS (its --cert-file), use an https:// URL in \
         --etcd-servers with --etcd-cafile, --etcd-certfile and --etcd-keyfile"
            .to_string()
    } else {
        "check that etcd is running there and that --etcd-servers (and --etcd-cafile/\
         --etcd-certfile/--etcd-keyfile for TLS) are right"
            .to_string()
    };
    anyhow::anyhow!("cannot reach etcd at {endpoints}: {detail}; {advice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_checked_up_front_naming_flag_file_and_endpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let crt = dir.path().join("client.crt");
        let key = dir.path().join("client.key");
        std::fs::write(&crt, pair.cert.pem()).expect("write cert");
        std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write key");
        let missing = dir.path().join("missing.crt");
        let url = "https://127.0.0.1:2379";
        let cfg = |ca: Option<&PathBuf>, cert: &PathBuf, key: &PathBuf| {
            let mut cfg = EtcdConfig::new(vec![url.into()]);
            cfg.ca_file = ca.cloned();
            cfg.cert_file = Some(cert.clone());
            cfg.key_file = Some(key.clone());
            cfg
        };
        assert!(tls_options(&cfg(Some(&crt), &crt, &key)).is_ok());
        for (cfg, flag, file, what) in [
            (
                cfg(Some(&missing), &crt, &key),
                "--etcd-cafile",
                &missing,
                "cannot read",
            ),
            (
                cfg(None, &missing, &key),
                "--etcd-certfile",
                &missing,
                "cannot read",
            ),
            (
                cfg(None, &key, &key),
                "--etcd-certfile",
                &key,
                "no PEM certificate",
            ),
            (
                cfg(None, &crt, &crt),
                "--etcd-keyfile",
                &crt,
                "no PEM private key",
            ),
        ] {
            let err = tls_options(&cfg).expect_err("must fail").to_string();
            for want in [flag, &file.display().to_string(), url, what] {
                assert!(err.contains(want), "{want:?} in: {err}");
            }
        }
    }
}
