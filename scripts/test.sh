#!/usr/bin/env bash
# Every check komptroller has, in one command. CI (.ci/run) calls exactly this
# after installing prerequisites; developers run it before pushing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --all-targets

step "generated CRDs match the Rust types (komptroller crd --check crds)"
"${CARGO_TARGET_DIR:-target}/debug/komptroller" crd --check crds

step "tests (cargo test --workspace)"
cargo test --workspace

for extra in scripts/checks/*.sh; do
  [ -e "$extra" ] || continue
  step "$extra"
  bash "$extra"
done

printf '\nall checks passed\n'
