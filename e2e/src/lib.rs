//! End-to-end harness and the kube-standin API-server stand-in.
//!
//! - [`standin`]: an API-server stand-in serving the Kubernetes REST API over
//!   HTTPS on a loopback port (`StandIn::start`), also built as the
//!   `kube-standin` binary.
//! - [`control_plane`]: the real Kubernetes control plane (etcd,
//!   kube-apiserver, kube-controller-manager, kube-scheduler, kwok nodes)
//!   built from Go modules by `e2e/cluster/build`, one per test binary.
//! - [`harness`]: what e2e scenarios use: a cluster (the control plane by
//!   default, or the one `KOMPTROLLER_E2E_KUBECONFIG` names), temporary
//!   namespaces, manifests, waiting for conditions, and starting/killing binaries.
//! - [`fault_proxy`]: a fault-injecting reverse proxy in front of a real kube-apiserver.
#![forbid(unsafe_code)]

pub mod control_plane;
pub mod fault_proxy;
pub mod harness;
pub mod standin;
pub mod tls;
