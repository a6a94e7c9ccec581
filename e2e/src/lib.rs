//! End-to-end harness and the kube-standin API-server stand-in.
//!
//! - [`standin`]: an API-server stand-in serving the Kubernetes REST API over
//!   HTTPS on a loopback port (`StandIn::start`), also built as the
//!   `kube-standin` binary.
//! - [`harness`]: what e2e scenarios use: a cluster (the stand-in, or a real
//!   one named by `KOMPTROLLER_E2E_KUBECONFIG`), temporary namespaces,
//!   manifests, waiting for conditions, and starting/killing binaries.
#![forbid(unsafe_code)]

pub mod harness;
pub mod standin;
pub mod tls;
