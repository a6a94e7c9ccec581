#!/usr/bin/env bash
# Every check komptroller has, in one command. CI (.ci/run) calls exactly this;
# developers run it before pushing. It installs what it needs first
# (scripts/prereqs.sh), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
warn_loud() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
  printf '!!! WARNING: %s\n' "$*"
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
}

step "prerequisites (scripts/prereqs.sh)"
scripts/prereqs.sh --no-cluster

# The Kubernetes control plane the e2e tests run on, built from pinned Go
# modules in the background while Rust builds (both use the two cores; the
# first build takes about 20 minutes, later ones seconds).
step "control plane build (e2e/cluster/build, in the background; log target/cluster-build.log)"
mkdir -p target
( e2e/cluster/build > target/cluster-build.log 2>&1; echo $? > target/cluster-build.rc ) &
cluster_build=$!
trap 'kill $cluster_build 2>/dev/null || true' EXIT

step "formatting (cargo fmt --check)"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  warn_loud "rustfmt is not installed here: the formatting check DID NOT RUN (rustup component add rustfmt)"
fi

step "lints (cargo clippy -D warnings)"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets -- -D warnings
else
  warn_loud "clippy is not installed here: the lint check DID NOT RUN (rustup component add clippy)"
fi

step "build"
cargo build --workspace --all-targets

step "generated CRDs match the Rust types (komptroller crd --check crds)"
"${CARGO_TARGET_DIR:-target}/debug/komptroller" crd --check crds

step "the README's first command, exactly as written"
readme_cmd=$(awk '/^## Quick start/{q=1} q && /^```sh/{getline; print; exit}' README.md)
[ -n "$readme_cmd" ] || { echo "README.md: no sh block under '## Quick start'" >&2; exit 1; }
echo "\$ $readme_cmd"
out=$(bash -c "$readme_cmd" 2>&1) || { printf '%s\n' "$out" | tail -n 30; echo "the README's first command failed: $readme_cmd" >&2; exit 1; }
printf '%s\n' "$out" | tail -n 5
printf '%s\n' "$out" | grep -q "^komptroller simulate" && printf '%s\n' "$out" | grep -q "^TIMELINE" \
  || { echo "the README's first command printed no simulation report (komptroller simulate …, TIMELINE): $readme_cmd" >&2; exit 1; }

step "waiting for the control plane build"
t0=$SECONDS
wait $cluster_build || true
trap - EXIT
grep -E "^built|^error" target/cluster-build.log || true
if [ "$(cat target/cluster-build.rc 2>/dev/null)" != 0 ]; then
  tail -n 30 target/cluster-build.log
  echo "e2e/cluster/build failed (log above): the e2e tests need the control plane" >&2
  exit 1
fi
echo "control plane ready (waited $((SECONDS - t0)) s): $(tail -n 1 target/cluster-build.log)"

step "tests (cargo test --workspace)"
cargo test --workspace

for extra in scripts/checks/*.sh; do
  [ -e "$extra" ] || continue
  step "$extra"
  bash "$extra"
done

printf '\nall checks passed\n'
