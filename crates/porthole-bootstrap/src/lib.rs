//! What a joining node and the control plane must agree on byte for byte (kubeadm's model,
//! `docs/CLUSTER.md` "Joining a node"):
//!
//! - [`token`]: bootstrap tokens `[a-z0-9]{6}.[a-z0-9]{16}` and the names and keys of the
//!   `kube-system/bootstrap-token-<id>` Secret that stores them;
//! - [`jws`]: the detached HS256 JWS with which the control plane signs the kubeconfig in
//!   `kube-public/cluster-info` (key = token secret, key id = token id), so a node that knows
//!   the token can trust the CA it downloads without sending the token anywhere;
//! - [`pin`]: `sha256:<hex>` of a CA certificate's SubjectPublicKeyInfo (RFC 7469), the value
//!   of `--ca-cert-hash`.
//!
//! Sans-IO: no sockets, files or clocks (expiry is compared by the callers). The API server,
//! the node agent and the `porthole token` CLI all use this crate, so they cannot drift apart.
//!
//! Specs: `k8s.io/cluster-bootstrap/token/{api,jws,util}`; kubeadm's
//! `cmd/kubeadm/app/discovery/token`; RFC 7515 Appendix F (detached content); RFC 7469 §2.4.

pub mod jws;
pub mod pin;
pub mod token;

pub use pin::CaCertHash;
pub use token::BootstrapToken;

/// CSR `spec.signerName` of node client certificates (for the API server).
pub const SIGNER_KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// CSR `spec.signerName` of node serving certificates (for the streaming endpoint).
pub const SIGNER_KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
