//! komptroller's end-to-end harness, on a real Kubernetes control plane.
//!
//! - [`base`]: the harness's error type and the repository root.
//! - [`control_plane`]: the real control plane (etcd, kube-apiserver,
//!   kube-controller-manager, kube-scheduler; kwok for nodes and pods) built
//!   from pinned Go modules by `e2e/cluster/build`, one per test binary.
//! - [`harness`]: what e2e scenarios use: a cluster (the control plane by
//!   default, or the one `KOMPTROLLER_E2E_KUBECONFIG` names), temporary
//!   namespaces, manifests, users, waiting for conditions, and
//!   starting/killing binaries.
//! - [`fault_proxy`]: a fault-injecting reverse proxy in front of a real
//!   kube-apiserver (500s, 409s, 429s, latency, dropped watches, a pause).
//! - [`tls`]: throwaway CAs and certificates for test webhook servers.
//! - [`kueue`]: real Kueue (its manager, out of cluster) on the control
//!   plane, and its queue objects (ResourceFlavor, ClusterQueue, LocalQueue,
//!   AdmissionCheck).
#![forbid(unsafe_code)]

pub mod base;
pub mod control_plane;
pub mod fault_proxy;
pub mod harness;
pub mod kueue;
pub mod tls;
