#!/usr/bin/env bash
# The federated Prometheus example (examples/federation): promtool checks the
# recording and alerting rules and runs their unit tests (union-only crossing,
# replicas not double-counted, the _other overflow left out, silence), and the
# Grafana dashboard queries only series the rules record or the operator exports.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=examples/federation
promtool check rules "$dir/recording-rules.yaml"
(cd "$dir" && promtool test rules rules-test.yaml)
python3 - "$dir" <<'PY'
import json, re, sys, pathlib
d = pathlib.Path(sys.argv[1])
rules = d.joinpath("recording-rules.yaml").read_text()
recorded = set(re.findall(r"record:\s*(\S+)", rules))
exported = {m for m in re.findall(r"`(komptroller_[a-z_]+)`", pathlib.Path("docs/metrics.md").read_text())}
dash = json.loads(d.joinpath("grafana-dashboard.json").read_text())
bad = []
for p in dash["panels"]:
    for t in p.get("targets", []):
        for name in re.findall(r"[a-z_]+:[a-z_:]+|komptroller_[a-z_]+", t["expr"]):
            if name not in recorded and name not in exported:
                bad.append(f'panel "{p["title"]}": {name}')
if bad:
    sys.exit("the dashboard queries series nothing records or exports:\n  " + "\n  ".join(bad))
print(f"dashboard: {len(dash['panels'])} panels, every series recorded by the rules or exported by the operator")
PY
