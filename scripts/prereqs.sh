#!/usr/bin/env bash
# What the checks need beyond Rust, installed when missing (idempotent, quick
# when everything is there). scripts/test.sh runs this first, so the README's
# test command works on a fresh machine; .ci/run runs exactly scripts/test.sh.
#   - Debian packages: prometheus (promtool and a real Prometheus server),
#     openssl and curl (the e2e control plane's certificates and probes)
#   - the Python venv under target/venv for the chart tools
#   - the real Kubernetes control plane, kubectl and helm, built from pinned
#     Go modules by e2e/cluster/build (cached; seconds when built)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
      || echo "WARNING: could not install ${need_apt[*]}; the checks that need them will fail loudly"
  else
    echo "WARNING: ${need_apt[*]} missing and no apt-get here; the checks that need them will fail loudly"
  fi
fi

if [ -f scripts/requirements.txt ]; then
  [ -x target/venv/bin/python ] || python3 -m venv target/venv
  target/venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
fi

if ! command -v go >/dev/null 2>&1; then
  echo "ERROR: go not found: the e2e suite runs on a Kubernetes control plane built from Go modules (Go 1.26+)" >&2
  exit 1
fi
# The control plane build is long the first time (≈ 20 min on 2 cores):
# scripts/test.sh runs it in the background beside the Rust build
# (--no-cluster here); run on its own, this script builds it now.
if [ "${1:-}" != "--no-cluster" ]; then
  t0=$SECONDS
  e2e/cluster/build >/dev/null
  echo "control plane binaries ready ($((SECONDS - t0)) s): $(e2e/cluster/build 2>/dev/null | tail -n 1)"
fi
