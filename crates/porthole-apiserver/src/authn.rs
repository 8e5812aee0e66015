//! Authentication: static bearer tokens, bootstrap tokens (Secrets in the store, see
//! [`crate::bootstrap`]), X.509 client certificates, the WebSocket bearer subprotocol, and
//! anonymous access (when enabled, or for the one public discovery object a joining node
//! reads before it may send its token).
//!
//! The token file is Kubernetes' static token CSV: `token,user,uid,"group1,group2"`. Tokens
//! are never logged: only the user name a token maps to is.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use http::HeaderMap;

/// Subprotocol prefix carrying a bearer token for clients that cannot set headers.
pub const WS_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (`admin`, `system:node:n1`, `system:anonymous`).
    pub name: String,
    /// UID from the token file, if any.
    pub uid: String,
    /// Groups, always including `system:authenticated` for authenticated users.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// An authenticated user: `system:authenticated` is added to `groups`.
    pub(crate) fn authenticated(name: String, uid: String, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo { name, uid, groups }
    }

    /// The user of a request without credentials.
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// The identity of a TLS client certificate: CN = user, O = groups.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let cn = subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect();
        Some(Self::authenticated(cn, String::new(), groups))
    }
}

/// Parsed static token file.
#[derive(Debug, Default)]
pub struct TokenFile {
    tokens: HashMap<String, UserInfo>,
}

/// Split one CSV line honouring double quotes (`"a,b"` is one field, `""` an escaped quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

impl TokenFile {
    /// Parse the CSV text; errors name the line so an operator can fix it.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = split_csv(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                anyhow::bail!(
                    "token file line {}: want token,user,uid[,\"group1,group2\"]",
                    i + 1
                );
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                f[0].clone(),
                UserInfo::authenticated(f[1].clone(), f[2].clone(), groups),
            );
        }
        Ok(Self { tokens })
    }

    /// Read and parse `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The user a token belongs to.
    pub fn lookup(&self, token: &str) -> Option<&UserInfo> {
        self.tokens.get(token)
    }
}

/// Result of looking at a request's credentials.
#[derive(Debug)]
pub enum Outcome {
    /// Authenticated (or anonymous when enabled).
    User(UserInfo),
    /// Credentials were presented but are wrong, or none were presented and anonymous is off.
    Unauthorized,
}

/// The bearer token from `Authorization` or the WebSocket subprotocol entry.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_string());
        }
        return None;
    }
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for proto in value.split(',').map(str::trim) {
            if let Some(enc) = proto.strip_prefix(WS_BEARER_PREFIX) {
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(enc.trim_end_matches('='))
                    .ok()?;
                return String::from_utf8(decoded).ok();
            }
        }
    }
    None
}

/// Authenticate: a bearer token wins over the client certificate (as in Kubernetes, any
/// authenticator may succeed; a wrong token is a 401 even with a certificate). Static tokens
/// are looked up first, then tokens of the bootstrap shape are given to `bootstrap` (which
/// reads the store: [`crate::bootstrap::authenticate`]). `anonymous` lets a request without
/// credentials in as `system:anonymous`; the caller sets it for `--anonymous-auth` and for the
/// public `cluster-info` read (kube-apiserver 1.34 allows the same with its per-endpoint
/// anonymous configuration, and kubeadm's discovery depends on it).
pub fn authenticate(
    headers: &HeaderMap,
    cert_user: Option<&UserInfo>,
    tokens: &TokenFile,
    anonymous: bool,
    bootstrap: impl FnOnce(&str) -> Option<UserInfo>,
) -> Outcome {
    if let Some(token) = bearer_token(headers) {
        if let Some(u) = tokens.lookup(&token) {
            return Outcome::User(u.clone());
        }
        let from_bootstrap = porthole_bootstrap::BootstrapToken::parse(&token)
            .is_ok()
            .then(|| bootstrap(&token))
            .flatten();
        return match from_bootstrap {
            Some(u) => Outcome::User(u),
            None => match cert_user {
                Some(u) => Outcome::User(u.clone()),
                None => Outcome::Unauthorized,
            },
        };
    }
    if headers.contains_key(http::header::AUTHORIZATION) {
        // A non-bearer scheme (Basic) is not supported: reject rather than fall through.
        return match cert_user {
            Some(u) => Outcome::User(u.clone()),
            None => Outcome::Unauthorized,
        };
    }
    if let Some(u) = cert_user {
        return Outcome::User(u.clone());
    }
    if anonymous {
        return Outcome::User(UserInfo::anonymous());
    }
    Outcome::Unauthorized
}

/// Did the request bring any credentials (a client certificate, an `Authorization` header, a
/// bearer subprotocol)? Requests without any may read the public health paths.
pub fn presents_credentials(headers: &HeaderMap, cert_user: Option<&UserInfo>) -> bool {
    cert_user.is_some()
        || headers.contains_key(http::header::AUTHORIZATION)
        || bearer_token(headers).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_with_quoted_groups() {
        let f = TokenFile::parse("t1,alice,1,\"dev,ops\"\nt2,bob,2\n").expect("parse");
        let a = f.lookup("t1").expect("alice");
        assert_eq!(a.name, "alice");
        assert_eq!(a.groups, vec!["dev", "ops", "system:authenticated"]);
        assert_eq!(
            f.lookup("t2").expect("bob").groups,
            vec!["system:authenticated"]
        );
        assert!(TokenFile::parse("onlytoken\n").is_err());
    }

    #[test]
    fn websocket_bearer_subprotocol() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("sekret");
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            format!("v4.channel.k8s.io, {WS_BEARER_PREFIX}{enc}")
                .parse()
                .expect("header"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("sekret"));
    }
}
