#!/usr/bin/env bash
# No import circles between the modules of the engine, the operator and the
# e2e harness (scripts/checks/module_cycles.py says how they are found).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 scripts/checks/module_cycles.py
