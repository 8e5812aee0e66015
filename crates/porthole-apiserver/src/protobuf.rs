//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! kubectl's typed clients (`kubectl create namespace|deployment|service|role|rolebinding|
//! clusterrole|clusterrolebinding|secret|configmap`, `kubectl run`, `kubectl certificate
//! approve|deny`) send protobuf and do not fall back to JSON
//! on 415, so the server must read it. The envelope is the 4-byte magic `k8s\0` followed by a
//! `runtime.Unknown` message whose `raw` field holds the object. Decoding is driven by the
//! field tables below (numbers from `k8s.io/api/*/generated.proto`); it covers the fields those
//! commands set, skips unknown fields, and produces the same JSON the object would have had.
//! Responses are always JSON, which every client accepts.

use serde_json::{Map, Value};

/// The protobuf envelope magic.
const MAGIC: &[u8] = b"k8s\0";
/// Nesting limit: objects are shallow; hostile input must not recurse deeply.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// `bytes`: base64 in the JSON form.
    Bytes,
    Int,
    Bool,
    Time,
    IntOrString,
    /// `resource.Quantity` (message with field 1 = string).
    Quantity,
    Msg(&'static [Field]),
    /// map<string, V>.
    Map(&'static Ty),
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
    }
}

const STR_MAP: Ty = Ty::Map(&Ty::Str);
const QTY_MAP: Ty = Ty::Map(&Ty::Quantity);

static OWNER_REF: &[Field] = &[
    f(5, "apiVersion", Ty::Str),
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

static OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(11, "labels", STR_MAP),
    f(12, "annotations", STR_MAP),
    r(13, "ownerReferences", Ty::Msg(OWNER_REF)),
    r(14, "finalizers", Ty::Str),
];

static SELECTOR_REQ: &[Field] = &[
    f(1, "key", Ty::Str),
    f(2, "operator", Ty::Str),
    r(3, "values", Ty::Str),
];
static LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", STR_MAP),
    r(2, "matchExpressions", Ty::Msg(SELECTOR_REQ)),
];

static NAMESPACE_SPEC: &[Field] = &[r(1, "finalizers", Ty::Str)];
static NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(NAMESPACE_SPEC)),
];

static SERVICE_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "protocol", Ty::Str),
    f(3, "port", Ty::Int),
    f(4, "targetPort", Ty::IntOrString),
    f(5, "nodePort", Ty::Int),
    f(6, "appProtocol", Ty::Str),
];
static SERVICE_SPEC: &[Field] = &[
    r(1, "ports", Ty::Msg(SERVICE_PORT)),
    f(2, "selector", STR_MAP),
    f(3, "clusterIP", Ty::Str),
    r(18, "clusterIPs", Ty::Str),
    f(4, "type", Ty::Str),
    r(5, "externalIPs", Ty::Str),
    f(7, "sessionAffinity", Ty::Str),
    f(10, "externalName", Ty::Str),
    f(11, "externalTrafficPolicy", Ty::Str),
    r(19, "ipFamilies", Ty::Str),
    f(17, "ipFamilyPolicy", Ty::Str),
    f(22, "internalTrafficPolicy", Ty::Str),
];
static SERVICE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(SERVICE_SPEC)),
];

static CONTAINER_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "hostPort", Ty::Int),
    f(3, "containerPort", Ty::Int),
    f(4, "protocol", Ty::Str),
    f(5, "hostIP", Ty::Str),
];
static ENV_VAR: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)];
static RESOURCES: &[Field] = &[f(1, "limits", QTY_MAP), f(2, "requests", QTY_MAP)];
static CONTAINER: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "image", Ty::Str),
    r(3, "command", Ty::Str),
    r(4, "args", Ty::Str),
    f(5, "workingDir", Ty::Str),
    r(6, "ports", Ty::Msg(CONTAINER_PORT)),
    r(7, "env", Ty::Msg(ENV_VAR)),
    f(8, "resources", Ty::Msg(RESOURCES)),
    f(13, "terminationMessagePath", Ty::Str),
    f(20, "terminationMessagePolicy", Ty::Str),
    f(14, "imagePullPolicy", Ty::Str),
    f(16, "stdin", Ty::Bool),
    f(17, "stdinOnce", Ty::Bool),
    f(18, "tty", Ty::Bool),
];
static POD_SPEC: &[Field] = &[
    r(20, "initContainers", Ty::Msg(CONTAINER)),
    r(2, "containers", Ty::Msg(CONTAINER)),
    f(3, "restartPolicy", Ty::Str),
    f(4, "terminationGracePeriodSeconds", Ty::Int),
    f(5, "activeDeadlineSeconds", Ty::Int),
    f(6, "dnsPolicy", Ty::Str),
    f(7, "nodeSelector", STR_MAP),
    f(8, "serviceAccountName", Ty::Str),
    f(10, "nodeName", Ty::Str),
    f(11, "hostNetwork", Ty::Bool),
    f(16, "hostname", Ty::Str),
    f(17, "subdomain", Ty::Str),
    f(19, "schedulerName", Ty::Str),
    f(24, "priorityClassName", Ty::Str),
    f(30, "enableServiceLinks", Ty::Bool),
];
static POD_TEMPLATE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(POD_SPEC)),
];
static POD: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(POD_SPEC)),
];

static ROLLING_UPDATE: &[Field] = &[
    f(1, "maxUnavailable", Ty::IntOrString),
    f(2, "maxSurge", Ty::IntOrString),
];
static STRATEGY: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "rollingUpdate", Ty::Msg(ROLLING_UPDATE)),
];
static DEPLOYMENT_SPEC: &[Field] = &[
    f(1, "replicas", Ty::Int),
    f(2, "selector", Ty::Msg(LABEL_SELECTOR)),
    f(3, "template", Ty::Msg(POD_TEMPLATE)),
    f(4, "strategy", Ty::Msg(STRATEGY)),
    f(5, "minReadySeconds", Ty::Int),
    f(6, "revisionHistoryLimit", Ty::Int),
    f(7, "paused", Ty::Bool),
    f(9, "progressDeadlineSeconds", Ty::Int),
];
static DEPLOYMENT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(DEPLOYMENT_SPEC)),
];

static POLICY_RULE: &[Field] = &[
    r(1, "verbs", Ty::Str),
    r(2, "apiGroups", Ty::Str),
    r(3, "resources", Ty::Str),
    r(4, "resourceNames", Ty::Str),
    r(5, "nonResourceURLs", Ty::Str),
];
static ROLE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "rules", Ty::Msg(POLICY_RULE)),
];
static SUBJECT: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "apiGroup", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "namespace", Ty::Str),
];
static ROLE_REF: &[Field] = &[
    f(1, "apiGroup", Ty::Str),
    f(2, "kind", Ty::Str),
    f(3, "name", Ty::Str),
];
static BINDING: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "subjects", Ty::Msg(SUBJECT)),
    f(3, "roleRef", Ty::Msg(ROLE_REF)),
];

const BYTES_MAP: Ty = Ty::Map(&Ty::Bytes);

static SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", BYTES_MAP),
    f(3, "type", Ty::Str),
    f(4, "stringData", STR_MAP),
    f(5, "immutable", Ty::Bool),
];
static CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", STR_MAP),
    f(3, "binaryData", BYTES_MAP),
    f(4, "immutable", Ty::Bool),
];

// k8s.io/api/certificates/v1/generated.proto. `extra` (6) is skipped: the server replaces it.
static CSR_SPEC: &[Field] = &[
    f(1, "request", Ty::Bytes),
    f(2, "username", Ty::Str),
    f(3, "uid", Ty::Str),
    r(4, "groups", Ty::Str),
    r(5, "usages", Ty::Str),
    f(7, "signerName", Ty::Str),
    f(8, "expirationSeconds", Ty::Int),
];
static CSR_CONDITION: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "reason", Ty::Str),
    f(3, "message", Ty::Str),
    f(4, "lastUpdateTime", Ty::Time),
    f(5, "lastTransitionTime", Ty::Time),
    f(6, "status", Ty::Str),
];
static CSR_STATUS: &[Field] = &[
    r(1, "conditions", Ty::Msg(CSR_CONDITION)),
    f(2, "certificate", Ty::Bytes),
];
static CSR: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(CSR_SPEC)),
    f(3, "status", Ty::Msg(CSR_STATUS)),
];

static TYPE_META: &[Field] = &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)];
static UNKNOWN: &[Field] = &[f(1, "typeMeta", Ty::Msg(TYPE_META))];

fn schema_for(kind: &str) -> Option<&'static [Field]> {
    Some(match kind {
        "Namespace" => NAMESPACE,
        "Service" => SERVICE,
        "Pod" => POD,
        "Deployment" => DEPLOYMENT,
        "Role" | "ClusterRole" => ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "Secret" => SECRET,
        "ConfigMap" => CONFIG_MAP,
        "CertificateSigningRequest" => CSR,
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(format!("unsupported wire type {w}")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        if self.pos + n > self.buf.len() {
            return Err("truncated field".into());
        }
        self.pos += n;
        Ok(())
    }
}

fn text(b: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(b)
        .map(|s| Value::String(s.to_string()))
        .map_err(|_| "string field is not UTF-8".to_string())
}

fn value(ty: Ty, wire: u64, rd: &mut Reader<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("message nesting too deep".into());
    }
    let need_len = !matches!(ty, Ty::Int | Ty::Bool);
    if need_len != (wire == 2) {
        return Err(format!("wire type {wire} does not match the field"));
    }
    Ok(match ty {
        Ty::Int => Value::from(rd.varint()? as i64),
        Ty::Bool => Value::Bool(rd.varint()? != 0),
        Ty::Str => text(rd.bytes()?)?,
        Ty::Bytes => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(rd.bytes()?))
        }
        Ty::Msg(fields) => message(fields, rd.bytes()?, depth + 1)?,
        Ty::Quantity => message(&[f(1, "string", Ty::Str)], rd.bytes()?, depth + 1)?
            .get("string")
            .cloned()
            .unwrap_or(Value::String("0".into())),
        Ty::Time => {
            let m = message(
                &[f(1, "seconds", Ty::Int), f(2, "nanos", Ty::Int)],
                rd.bytes()?,
                depth + 1,
            )?;
            let secs = m.get("seconds").and_then(Value::as_i64).unwrap_or(0);
            jiff::Timestamp::from_second(secs)
                .map(|t| Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
                .map_err(|e| format!("bad time: {e}"))?
        }
        Ty::IntOrString => {
            let m = message(
                &[
                    f(1, "type", Ty::Int),
                    f(2, "intVal", Ty::Int),
                    f(3, "strVal", Ty::Str),
                ],
                rd.bytes()?,
                depth + 1,
            )?;
            if m.get("type").and_then(Value::as_i64) == Some(1) {
                m.get("strVal")
                    .cloned()
                    .unwrap_or(Value::String(String::new()))
            } else {
                m.get("intVal").cloned().unwrap_or(Value::from(0))
            }
        }
        Ty::Map(_) => return Err("map handled by the caller".into()),
    })
}

fn message(fields: &[Field], buf: &[u8], depth: usize) -> Result<Value, String> {
    let mut rd = Reader { buf, pos: 0 };
    let mut out = Map::new();
    while rd.pos < buf.len() {
        let key = rd.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let Some(field) = fields.iter().find(|fl| fl.num == num) else {
            rd.skip(wire)?;
            continue;
        };
        if let Ty::Map(vt) = field.ty {
            if wire != 2 {
                return Err(format!("map field {} has wire type {wire}", field.name));
            }
            let entry = message(
                &[f(1, "k", Ty::Str), f(2, "v", *vt)],
                rd.bytes()?,
                depth + 1,
            )?;
            let k = entry
                .get("k")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let v = entry
                .get("v")
                .cloned()
                .unwrap_or(Value::String(String::new()));
            if let Value::Object(m) = out
                .entry(field.name)
                .or_insert_with(|| Value::Object(Map::new()))
            {
                m.insert(k, v);
            }
            continue;
        }
        if field.repeated && wire == 2 && matches!(field.ty, Ty::Int | Ty::Bool) {
            // Packed repeated scalars.
            let packed = rd.bytes()?;
            let mut inner = Reader {
                buf: packed,
                pos: 0,
            };
            while inner.pos < packed.len() {
                let v = value(field.ty, 0, &mut inner, depth)?;
                push(&mut out, field.name, v);
            }
            continue;
        }
        let v = value(field.ty, wire, &mut rd, depth)?;
        if field.repeated {
            push(&mut out, field.name, v);
        } else {
            out.insert(field.name.to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    if let Value::Array(a) = out.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
        a.push(v);
    }
}

/// Decode a protobuf body for `expected_kind` into the object's JSON form.
pub fn decode(body: &[u8], expected_kind: &str) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("protobuf body does not start with the k8s\\0 magic")?;
    // runtime.Unknown: typeMeta (1), raw (2), contentEncoding (3), contentType (4).
    let mut rd = Reader { buf: rest, pos: 0 };
    let mut raw: Option<&[u8]> = None;
    let mut type_meta = Value::Null;
    while rd.pos < rest.len() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => type_meta = message(UNKNOWN[0].ty_fields(), rd.bytes()?, 1)?,
            (2, 2) => raw = Some(rd.bytes()?),
            (_, w) => rd.skip(w)?,
        }
    }
    let kind = type_meta
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or(expected_kind)
        .to_string();
    let schema = schema_for(&kind)
        .ok_or_else(|| format!("protobuf bodies for kind {kind} are not supported; send JSON"))?;
    let mut obj = message(schema, raw.unwrap_or(&[]), 1)?;
    if let Value::Object(m) = &mut obj {
        if let Some(av) = type_meta.get("apiVersion").cloned() {
            m.insert("apiVersion".into(), av);
        }
        m.insert("kind".into(), Value::String(kind));
    }
    Ok(obj)
}

impl Field {
    fn ty_fields(&self) -> &'static [Field] {
        match self.ty {
            Ty::Msg(f) => f,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn namespace_and_rolebinding() {
        // Namespace{metadata{name:"tmp", labels{a:b}}}
        let mut meta = ld(1, b"tmp");
        let mut entry = ld(1, b"a");
        entry.extend(ld(2, b"b"));
        meta.extend(ld(11, &entry));
        let ns = ld(1, &meta);
        let mut tm = ld(1, b"v1");
        tm.extend(ld(2, b"Namespace"));
        let mut body = b"k8s\0".to_vec();
        body.extend(ld(1, &tm));
        body.extend(ld(2, &ns));
        let v = decode(&body, "Namespace").expect("decode");
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp", "labels": {"a": "b"}}})
        );
        assert!(decode(b"k8s\0\x12\xff", "Namespace").is_err());
        assert!(decode(b"{}", "Namespace").is_err());
    }

    #[test]
    fn secret_bytes_become_base64() {
        // Secret{metadata{name:"s"}, data{k: 00 ff}, type:"Opaque"}, kubectl create secret's shape.
        let mut entry = ld(1, b"k");
        entry.extend(ld(2, &[0x00, 0xff]));
        let mut secret = ld(1, &ld(1, b"s"));
        secret.extend(ld(2, &entry));
        secret.extend(ld(3, b"Opaque"));
        let mut tm = ld(1, b"v1");
        tm.extend(ld(2, b"Secret"));
        let mut body = b"k8s\0".to_vec();
        body.extend(ld(1, &tm));
        body.extend(ld(2, &secret));
        let v = decode(&body, "Secret").expect("decode");
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                               "data": {"k": "AP8="}, "type": "Opaque"})
        );
    }
}
