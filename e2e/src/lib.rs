//! End-to-end harness and the kube-standin API-server stand-in.
#![forbid(unsafe_code)]
