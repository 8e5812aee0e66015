//! Fuzz target [`protobuf_decode`](super::protobuf_decode): protobuf request bodies (`k8s\0` +
//! runtime.Unknown) decode to a bounded object of the expected kind.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use serde_json::Value;

use super::create::create_from;
use super::depth;
use crate::resources::RESOURCES;

/// Kinds whose protobuf schema `protobuf::decode` knows, plus one it does not.
const PROTO_KINDS: &[&str] = &[
    "Namespace",
    "Service",
    "Pod",
    "Deployment",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "Secret",
    "ConfigMap",
    "CertificateSigningRequest",
    "Lease",
];

/// `protobuf::decode`: the first byte picks the expected kind (low nibble) and, with its top
/// bit, prefixes the `k8s\0` magic so mutations need not keep it. A decoded body is an object
/// of a kind with a schema, no deeper than the schema's nesting limit, at most a constant
/// factor larger than the input (bounded work), and the same on a second decode. It then goes
/// through the create path (normalise, default, validate) without panicking.
pub fn protobuf_decode(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let kind = PROTO_KINDS[usize::from(first & 0x0f) % PROTO_KINDS.len()];
    let body = if first & 0x80 != 0 {
        [b"k8s\0".as_slice(), rest].concat()
    } else {
        rest.to_vec()
    };
    let Ok(v) = crate::protobuf::decode(&body, kind) else {
        return;
    };
    let obj = v.as_object().expect("a decoded protobuf body is an object");
    let decoded_kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .expect("a decoded body has a kind");
    let info = RESOURCES.iter().find(|r| r.kind == decoded_kind);
    assert!(
        info.is_some(),
        "decoded a kind the server does not serve: {decoded_kind}"
    );
    // 32 nested messages plus map/list wrappers and scalar leaves.
    assert!(depth(&v) <= 40, "decoded object nests {} deep", depth(&v));
    let out = serde_json::to_vec(&v).expect("serialises");
    assert!(
        out.len() <= 64 * body.len() + 256,
        "{} bytes of protobuf decoded to {} bytes of JSON",
        body.len(),
        out.len()
    );
    assert_eq!(
        crate::protobuf::decode(&body, kind).ok().as_ref(),
        Some(&v),
        "decode is not deterministic"
    );
    if let Some(info) = info {
        create_from(info, "default", v);
    }
}
