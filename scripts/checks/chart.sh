#!/usr/bin/env bash
# Chart checks: lint and render with Helm's SDK, schema rejections,
# kubernetes-validate --strict on 1.30 and 1.37, chart CRDs == crds/,
# promtool check rules, metric references. Details: chart_checks.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=target/venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV from scripts/requirements.txt"
  python3 -m venv "$VENV"
fi
# Install (or confirm) the pinned tools; quick when already satisfied.
"$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt

exec "$VENV/bin/python" scripts/checks/chart_checks.py
