#!/usr/bin/env python3
"""Checks of the Helm chart charts/komptroller (run by scripts/checks/chart.sh).

Lints and renders with Helm's own SDK (PyPI helm-python-sdk, `import
helm_python`), tests values-schema rejections, validates every rendered
manifest with kubernetes-validate --strict against Kubernetes 1.30 and 1.37,
compares the chart's CRDs with crds/ byte for byte, runs `promtool check
rules` on the PrometheusRule, and checks that alerts and the dashboard only
use metrics the operator exports (docs/metrics.md, generated from
operator/src/metrics.rs), and runs `promtool check metrics` on a real scrape
of `komptroller run` against the e2e control plane (a real kube-apiserver,
e2e/cluster/start), where the operator runs as the chart's ServiceAccount
with only the chart's rendered RBAC (it must admit a job,
write its ledger, Lease, keys, webhook configurations and a signed report
with no request denied), and compares the chart's webhook configurations
with those the operator writes itself. Exits non-zero on any problem, naming it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "komptroller"
NAMESPACE = "komptroller-system"
RELEASE = "komptroller"
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
# Kinds defined by other projects' CRDs: kubernetes-validate has no schema
# for them, so they are skipped there (and said so).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("kueue.x-k8s.io/v1beta2", "AdmissionCheck"),
}

failures: list[str] = []
# The webhook configurations `komptroller run` wrote itself (self-managed mode).
OPERATOR_WEBHOOKS: list[dict] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL: {msg}")


def ok(msg: str) -> None:
    print(f"  ok: {msg}")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


HA = load_yaml(CHART / "values-ha.yaml")
PROVIDED_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
SCENARIOS: dict[str, dict] = {
    "default": {},
    "ha overlay (values-ha.yaml)": HA,
    "cert-manager mode": {"webhook": {"certMode": "cert-manager"}},
    "cert-manager mode with an existing ClusterIssuer": {
        "webhook": {"certMode": "cert-manager", "certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}
    },
    "provided mode": {
        "webhook": {"certMode": "provided", "provided": {"secretName": "my-tls", "caBundle": PROVIDED_CA}}
    },
    "webhook disabled": {"webhook": {"enabled": False}},
    "plain HTTP metrics (a NetworkPolicy guards the port)": {
        "metrics": {"secure": False},
        "networkPolicy": {"enabled": True, "metricsFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]},
    },
    "secure metrics with a certificate Secret, an auditor group and Prometheus's ServiceAccount": {
        "metrics": {"certSecret": "metrics-tls",
                    "auditor": {"subjects": [{"kind": "Group", "name": "treaty-auditors",
                                              "apiGroup": "rbac.authorization.k8s.io"}]}},
        "serviceMonitor": {"enabled": True, "prometheusServiceAccount": {"name": "prometheus", "namespace": "monitoring"}},
    },
    "Kueue AdmissionCheck controller": {"kueue": {"enabled": True}},
    "all optional features on (+ HA, cert-manager)": deep_merge(
        HA,
        {
            "webhook": {"certMode": "cert-manager"},
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
            "kueue": {"enabled": True},
            "networkPolicy": {
                "enabled": True,
                "apiServerCIDRs": ["10.0.0.1/32"],
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            },
        },
    ),
}

# Values the schema must reject, and a word the message must contain.
REJECTIONS = [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"replicaCount": 0}, "replicaCount"),
    ({"webhook": {"certMode": "letsencrypt"}}, "certMode"),
    ({"webhook": {"timeoutSeconds": 60}}, "timeoutSeconds"),
    ({"webhook": {"failurePolicy": {"trainingJob": "fail"}}}, "trainingJob"),
    ({"webhook": {"certMode": "provided"}}, "secretName"),
    ({"serviceMonitor": {"enabled": "yes"}}, "enabled"),
    ({"prometheusRule": {"budgetUseRatio": 90}}, "budgetUseRatio"),
    ({"operator": {"logFormat": "xml"}}, "logFormat"),
    ({"operator": {"reportInterval": "hourly"}}, "reportInterval"),
    ({"image": {"repository": 42}}, "repository"),
    ({"replicas": 2}, "replicas"),  # a typo of replicaCount
    ({"metrics": {"secure": "yes"}}, "secure"),
    ({"kueue": {"enabled": "yes"}}, "enabled"),
    ({"metrics": {"auditor": {"subjects": [{"kind": "Robot", "name": "x"}]}}}, "kind"),
]


def docs_of(manifests: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for path, text in sorted(manifests.items()):
        if not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path, doc))
    return out


def check_lint_and_render(chart: helm.Chart) -> dict[str, list[tuple[str, dict]]]:
    print("\n--- helm lint (strict) and render, with helm-python-sdk", helm.helm_sdk_version())
    rendered = {}
    for name, values in SCENARIOS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        problems += [{"error": e} for e in report.get("errors", []) or []]
        if problems:
            for p in problems:
                fail(f"lint [{name}]: {p.get('path', '')} {p['error']}")
        else:
            ok(f"lint [{name}]: no warnings or errors")
        try:
            chart.validate_schema(values)
            manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            fail(f"render [{name}]: {e}")
            continue
        docs = docs_of(manifests)
        rendered[name] = docs
        ok(f"render [{name}]: {len(docs)} manifests: " + ", ".join(sorted({d['kind'] for _, d in docs})))
    return rendered


def check_schema_rejections(chart: helm.Chart) -> None:
    print("\n--- values.schema.json rejects wrong values with a clear message")
    for values, word in REJECTIONS:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as e:
            msg = " ".join(str(e).split())
            if word in msg:
                ok(f"{json.dumps(values)} rejected: {msg[:160]}")
            else:
                fail(f"{json.dumps(values)} rejected, but the message does not name {word!r}: {msg}")
            continue
        except helm.HelmError as e:
            fail(f"{json.dumps(values)}: unexpected error {type(e).__name__}: {e}")
            continue
        fail(f"{json.dumps(values)} was accepted by values.schema.json")


def check_kubernetes_validate(rendered: dict[str, list[tuple[str, dict]]]) -> None:
    print("\n--- kubernetes-validate --strict against Kubernetes", " and ".join(KUBE_VERSIONS))
    crd_docs = [(str(p.relative_to(ROOT)), load_yaml(p)) for p in sorted((CHART / "crds").glob("*.yaml"))]
    seen_skips: set[str] = set()
    for name, docs in list(rendered.items()) + [("chart crds/", crd_docs)]:
        count = 0
        for path, doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CRD_KINDS:
                seen_skips.add(f"{key[1]} ({key[0]})")
                continue
            for version in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    count += 1
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    fail(f"[{name}] {path} {doc['kind']}/{doc['metadata'].get('name')} on {version}: {where}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    fail(f"[{name}] {path}: {e.message}")
        ok(f"[{name}]: {count} validations passed")
    if seen_skips:
        print("  skipped (CRD-based kinds kubernetes-validate has no schema for): " + ", ".join(sorted(seen_skips)))


def check_crds() -> None:
    print("\n--- the chart's CRDs equal crds/ (byte compare)")
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    if not generated:
        fail("crds/ holds no CRDs")
    for n in sorted(set(generated) | set(in_chart)):
        if n not in in_chart:
            fail(f"charts/komptroller/crds/{n} is missing (cp crds/*.yaml charts/komptroller/crds/)")
        elif n not in generated:
            fail(f"charts/komptroller/crds/{n} is not in crds/ (remove it)")
        elif generated[n] != in_chart[n]:
            fail(f"charts/komptroller/crds/{n} differs from crds/{n} (cp crds/*.yaml charts/komptroller/crds/)")
        else:
            ok(f"crds/{n}")


def find(docs: list[tuple[str, dict]], kind: str) -> list[dict]:
    return [d for _, d in docs if d.get("kind") == kind]


def check_invariants(rendered: dict[str, list[tuple[str, dict]]], chart: helm.Chart) -> None:
    print("\n--- chart invariants (security context, RBAC, webhook modes, HA)")
    for name, docs in rendered.items():
        for dep in find(docs, "Deployment"):
            pod = dep["spec"]["template"]["spec"]
            psc = pod.get("securityContext", {})
            for c in pod["containers"]:
                sc = c.get("securityContext", {})
                bad = []
                if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                    bad.append("runAsNonRoot")
                if not sc.get("readOnlyRootFilesystem"):
                    bad.append("readOnlyRootFilesystem")
                if sc.get("allowPrivilegeEscalation") is not False:
                    bad.append("allowPrivilegeEscalation: false")
                if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
                    bad.append("capabilities.drop [ALL]")
                if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                    bad.append("seccompProfile RuntimeDefault")
                if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
                    bad.append("resources")
                if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    bad.append("livenessProbe /healthz")
                if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    bad.append("readinessProbe /readyz")
                if bad:
                    fail(f"[{name}] container {c['name']} lacks: {', '.join(bad)}")
        for kind in ("ClusterRole", "Role"):
            for role in find(docs, kind):
                for rule in role.get("rules", []):
                    for field in ("apiGroups", "resources", "verbs"):
                        if "*" in (rule.get(field) or []):
                            fail(f"[{name}] {kind} {role['metadata']['name']} has a wildcard in {field}: {rule}")
        # Webhook configurations by mode.
        mwc, vwc = find(docs, "MutatingWebhookConfiguration"), find(docs, "ValidatingWebhookConfiguration")
        mode = "self-managed"
        if "cert-manager" in name:
            mode = "cert-manager"
        elif "provided" in name:
            mode = "provided"
        elif "disabled" in name:
            mode = "disabled"
        if mode in ("self-managed", "disabled"):
            if mwc or vwc:
                fail(f"[{name}] renders webhook configurations; the operator manages them in self-managed mode")
        else:
            if len(mwc) != 1 or len(vwc) != 1:
                fail(f"[{name}] must render one Mutating and one ValidatingWebhookConfiguration")
            hooks = [w for c in mwc + vwc for w in c["webhooks"]]
            if len(hooks) != 5:
                fail(f"[{name}] expected 5 webhooks, found {len(hooks)}")
            for c in mwc + vwc:
                ann = (c["metadata"].get("annotations") or {}).get("cert-manager.io/inject-ca-from")
                if mode == "cert-manager" and ann != f"{NAMESPACE}/{RELEASE}-webhook":
                    fail(f"[{name}] {c['kind']} lacks cert-manager.io/inject-ca-from {NAMESPACE}/{RELEASE}-webhook")
                for w in c["webhooks"]:
                    if mode == "provided" and w["clientConfig"].get("caBundle") != PROVIDED_CA:
                        fail(f"[{name}] webhook {w['name']} lacks the provided caBundle")
            if mode == "cert-manager" and not find(docs, "Certificate"):
                fail(f"[{name}] renders no cert-manager Certificate")
        if "ha" in name.lower() or "HA" in name:
            dep = find(docs, "Deployment")[0]
            if dep["spec"]["replicas"] < 2:
                fail(f"[{name}] replicas < 2")
            if not find(docs, "PodDisruptionBudget"):
                fail(f"[{name}] no PodDisruptionBudget")
            if not dep["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity"):
                fail(f"[{name}] no pod anti-affinity")
            env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
            for k in ("KOMPTROLLER_TRAININGJOB_FAILURE_POLICY", "KOMPTROLLER_APPROVAL_FAILURE_POLICY", "KOMPTROLLER_POLICY_FAILURE_POLICY"):
                if env.get(k) != "Fail":
                    fail(f"[{name}] {k} is {env.get(k)}, the HA overlay wants Fail")
    # The metrics port: TLS with TokenReview + SubjectAccessReview unless metrics.secure is false.
    for name, docs in rendered.items():
        secure = ((SCENARIOS[name].get("metrics") or {}).get("secure", True))
        for dep in find(docs, "Deployment"):
            c = dep["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in c["env"]}
            schemes = {c[p]["httpGet"].get("scheme", "HTTP") for p in ("livenessProbe", "readinessProbe")}
            if secure and (env.get("KOMPTROLLER_METRICS_SECURE") != "true" or schemes != {"HTTPS"}):
                fail(f"[{name}] metrics.secure: the operator must serve HTTPS (KOMPTROLLER_METRICS_SECURE, probes scheme HTTPS)")
            if not secure and ("KOMPTROLLER_METRICS_SECURE" in env or schemes != {"HTTP"}):
                fail(f"[{name}] metrics.secure false: plain HTTP expected")
        rules = [r for role in find(docs, "ClusterRole") for r in role.get("rules", [])]
        reviews = {(g, res) for r in rules for g in r.get("apiGroups", []) for res in r.get("resources", [])
                   if "create" in r.get("verbs", [])}
        has_reviews = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")} <= reviews
        auditor = [r for role in find(docs, "ClusterRole") if role["metadata"]["name"] == f"{RELEASE}-auditor"
                   for r in role["rules"]]
        if secure and (not has_reviews or not auditor or auditor[0].get("nonResourceURLs") != ["/reports", "/reports/*", "/metrics"]):
            fail(f"[{name}] metrics.secure: the ClusterRole must create tokenreviews and subjectaccessreviews, "
                 "and the auditor ClusterRole grant get on /reports, /reports/* and /metrics")
        if not secure and (has_reviews or auditor):
            fail(f"[{name}] metrics.secure false: no review grants and no auditor role expected")
        for sm in find(docs, "ServiceMonitor"):
            ep = sm["spec"]["endpoints"][0]
            if secure and (ep.get("scheme") != "https" or not ep.get("bearerTokenFile")):
                fail(f"[{name}] metrics.secure: the ServiceMonitor must scrape https with its ServiceAccount token")
    # Every RBAC rule carries a comment saying why: read the rendered text.
    text = chart.render({}, name=RELEASE, namespace=NAMESPACE)["komptroller/templates/rbac.yaml"]
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(("- apiGroups:", "- nonResourceURLs:")) and not lines[i - 1].strip().startswith("#"):
            fail(f"RBAC rule without a comment saying why: {line.strip()} {lines[i + 1].strip()}")
    if not failures:
        ok("secure securityContext, probes, resources; RBAC commented and wildcard-free; webhook configurations per mode; HA overlay")


def exported_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    names: set[str] = set()
    for name, kind in re.findall(r"^\| `(komptroller_[a-z0-9_]+)` \| (\w+) \|", text, re.M):
        names.add(name)
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\bkomptroller_[a-z0-9_]+", expr))


def unknown_metrics(exprs: list[str], known: set[str]) -> set[str]:
    return {m for e in exprs for m in metric_refs(e)} - known


def check_alerts_and_dashboard(rendered: dict[str, list[tuple[str, dict]]]) -> None:
    docs = rendered.get("all optional features on (+ HA, cert-manager)", [])
    print("\n--- PrometheusRule: promtool check rules")
    rules = find(docs, "PrometheusRule")
    if len(rules) != 1:
        fail("the all-features render has no PrometheusRule")
        return
    groups = rules[0]["spec"]["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    wanted = {
        "KomptrollerLineageCrossedReportingThreshold",
        "KomptrollerApprovalPendingTooLong",
        "KomptrollerBudgetNearlyExhausted",
        "KomptrollerLedgerWriteFailures",
        "KomptrollerReportOverdue",
        "KomptrollerOperatorDown",
    }
    missing = wanted - {a["alert"] for a in alerts}
    if missing:
        fail(f"alerts missing: {sorted(missing)}")
    promtool = shutil.which("promtool")
    if not promtool:
        fail("promtool not found: install the Debian package prometheus (apt-get install prometheus); .ci/run does")
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump({"groups": groups}, f)
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip().replace(f.name, "prometheusrule.yaml")
        print("  " + out.replace("\n", "\n  "))
        if r.returncode != 0:
            fail("promtool check rules failed")
        else:
            ok(f"promtool check rules: {len(alerts)} alerts")

    print("\n--- alerts and dashboard reference only metrics the operator exports (docs/metrics.md)")
    known = exported_metrics()
    if len(known) < 10:
        fail(f"docs/metrics.md lists only {len(known)} metrics; the table format changed?")
    # Self-test: the check must catch a metric the operator does not export.
    if unknown_metrics(["rate(komptroller_made_up_total[5m])"], known) != {"komptroller_made_up_total"}:
        fail("self-test: the metric reference check did not catch an unknown metric")
    alert_exprs = [a["expr"] for a in alerts]
    bad = unknown_metrics(alert_exprs, known)
    if bad:
        fail(f"alerts reference metrics the operator does not export: {sorted(bad)}")
    for a in alerts:
        if not metric_refs(a["expr"]):
            fail(f"alert {a['alert']} references no komptroller metric")
    cms = [d for d in find(docs, "ConfigMap") if "komptroller.json" in d.get("data", {})]
    if len(cms) != 1:
        fail("the all-features render has no Grafana dashboard ConfigMap")
        return
    if cms[0]["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        fail("the dashboard ConfigMap lacks the sidecar label grafana_dashboard: \"1\"")
    dash = json.loads(cms[0]["data"]["komptroller.json"])
    dash_exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    bad = unknown_metrics(dash_exprs, known)
    if bad:
        fail(f"the dashboard references metrics the operator does not export: {sorted(bad)}")
    used = {m for e in alert_exprs + dash_exprs for m in metric_refs(e)}
    if not unknown_metrics(alert_exprs + dash_exprs, known):
        ok(f"{len(alert_exprs)} alert and {len(dash_exprs)} dashboard expressions use {len(used)} metrics, all exported")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_operator(rbac_docs: list[dict]) -> str | None:
    """Runs `komptroller run` against the e2e control plane (a real
    kube-apiserver with RBAC, built by e2e/cluster/build and started by
    e2e/cluster/start), as the chart's ServiceAccount (a TokenRequest token)
    bound by the chart's rendered RBAC only; admits the example TrainingJob under
    policies/default.yaml, waits for a signed report, and returns one
    /metrics scrape; None (with a failure) when it cannot."""
    # Where scripts/test.sh built them: $CARGO_TARGET_DIR/debug (default target/debug);
    # KOMPTROLLER_BIN_DIR overrides.
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    bin_dir = Path(os.environ.get("KOMPTROLLER_BIN_DIR", (ROOT / target / "debug")))
    bins = {n: bin_dir / n for n in ("komptroller",)}
    for n, b in bins.items():
        if not b.exists():
            fail(f"{b} is missing: build it with cargo build --workspace --all-targets (scripts/test.sh does)")
            return None
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="komptroller-chart-"))
    cluster = tmp / "cluster"
    try:
        sa_user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
        # carol approves: a static-token user (kube-apiserver --token-auth-file).
        (tmp / "tokens").write_text('approver-token,carol,uid-carol,"safety,system:masters"\n')
        st = subprocess.run([str(ROOT / "e2e" / "cluster" / "start"), "--dir", str(cluster), "--tokens",
                             str(tmp / "tokens"), "--nodes", "1", "--owner-pid", str(os.getpid())],
                            capture_output=True, text=True, timeout=600)
        if st.returncode != 0 or "ready" not in st.stdout:
            fail(f"the e2e control plane did not start: {st.stdout.strip()} {st.stderr.strip()[-2000:]}")
            return None
        print("  " + st.stdout.strip())
        kc = cluster / "kubeconfig"
        kubectl = str(cluster / "bin" / "kubectl")
        env = dict(os.environ, KUBECONFIG=str(kc))
        run = lambda *a: subprocess.run([kubectl, *a], env=env, capture_output=True, text=True, timeout=60)
        admin = yaml.safe_load(kc.read_text())
        for u in admin["users"]:
            u["user"] = {"token": "approver-token"}
        (tmp / "approver-kubeconfig").write_text(yaml.safe_dump(admin))
        (tmp / "escalate.yaml").write_text(yaml.safe_dump({
            "apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy", "metadata": {"name": "chart-check-escalate"},
            "spec": {"mode": "Enforce", "tiers": [{"name": "large", "threshold": 1e21, "action": "Escalate",
                                                   "approvals": {"required": 1, "groups": ["safety"]}}]}}))
        (tmp / "rbac.yaml").write_text(yaml.safe_dump_all(rbac_docs))
        for args in (["apply", "--server-side", "-f", str(ROOT / "crds")], ["create", "namespace", "research"],
                     ["create", "namespace", NAMESPACE], ["apply", "-f", str(tmp / "rbac.yaml")]):
            r = run(*args)
            if r.returncode != 0:
                fail(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
                return None
        # The operator's kubeconfig: the admin's with a TokenRequest token of
        # the chart's ServiceAccount.
        r = run("-n", NAMESPACE, "create", "token", RELEASE, "--duration", "1h")
        if r.returncode != 0:
            fail(f"kubectl create token {RELEASE}: {r.stderr.strip()}")
            return None
        for u in admin["users"]:
            u["user"] = {"token": r.stdout.strip()}
        (tmp / "operator-kubeconfig").write_text(yaml.safe_dump(admin))
        port, wport = free_port(), free_port()
        log = open(tmp / "operator.log", "w")
        op_env = dict(os.environ, KUBECONFIG=str(tmp / "operator-kubeconfig"), POD_NAMESPACE=NAMESPACE)
        op = subprocess.Popen([str(bins["komptroller"]), "run", "--metrics-addr", f"127.0.0.1:{port}",
                               "--webhook-addr", f"127.0.0.1:{wport}", "--webhook-url", f"https://127.0.0.1:{wport}",
                               "--webhook-configuration", RELEASE, "--report-interval", "1s"],
                              env=op_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(op)
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            r = run("get", "mutatingwebhookconfiguration,validatingwebhookconfiguration", "-o", "json")
            items = json.loads(r.stdout).get("items", []) if r.returncode == 0 else []
            if len(items) == 2:
                OPERATOR_WEBHOOKS.extend(items)
                break
            time.sleep(0.5)
        # After the operator's webhook configurations exist, so requests go through them.
        for args in (["apply", "-f", str(ROOT / "policies" / "default.yaml")], ["apply", "-f", str(tmp / "escalate.yaml")]):
            r = run(*args)
            if r.returncode != 0:
                fail(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
                return None
        # Wait until the controller has accepted the escalation policy, so it decides the job under it.
        deadline = time.monotonic() + 60
        accepted = ""
        while time.monotonic() < deadline and accepted != "True":
            accepted = run("get", "computepolicy", "chart-check-escalate", "-o",
                           'jsonpath={.status.conditions[?(@.type=="Accepted")].status}').stdout
            time.sleep(0.3)
        if accepted != "True":
            fail("the operator did not accept ComputePolicy chart-check-escalate within 60s")
            return None
        time.sleep(1)  # the webhook's policy cache is a separate watch
        r = run("apply", "-f", str(ROOT / "examples" / "trainingjob.yaml"))
        if r.returncode != 0:
            fail(f"kubectl apply examples/trainingjob.yaml: {r.stderr.strip()}")
            return None
        get = lambda path: run("-n", "research", "get", "trainingjob", "llama-ft-chat", "-o", f"jsonpath={{{path}}}").stdout
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and get(".status.phase") != "AwaitingApproval":
            time.sleep(0.5)
        if get(".status.phase") != "AwaitingApproval":
            fail(f"the example job did not escalate (phase {get('.status.phase')!r})")
            return None
        approval = {"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval",
                    "metadata": {"name": "chart-check", "namespace": "research"},
                    "spec": {"trainingJobName": "llama-ft-chat", "specHash": get(".status.specHash")}}
        (tmp / "approval.yaml").write_text(yaml.safe_dump(approval))
        r = subprocess.run([kubectl, "apply", "-f", str(tmp / "approval.yaml")], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, KUBECONFIG=str(tmp / "approver-kubeconfig")))
        if r.returncode != 0:
            fail(f"approving as carol (group safety): {r.stderr.strip()}")
            return None
        while time.monotonic() < deadline and get(".status.phase") not in ("Admitted", "Running"):
            time.sleep(0.5)
        if get(".status.phase") not in ("Admitted", "Running"):
            fail(f"the approved job was not admitted (phase {get('.status.phase')!r})")
            return None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
                if "komptroller_decisions_total{" in text and not re.search(
                        r"^komptroller_last_report_timestamp_seconds 0$", text, re.M):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            log.flush()
            fail("under the chart's RBAC the operator recorded no decision and signed no report within 60s; its log:\n"
                 + (tmp / "operator.log").read_text()[-3000:])
            return None
        log.flush()
        op_log = (tmp / "operator.log").read_text()
        denied = [l for l in op_log.splitlines() if re.search(r"forbidden|cannot (get|list|watch|create|patch|update|delete)", l, re.I)]
        if denied:
            fail("the chart's RBAC denied the operator: " + "\n    ".join(denied[:10]))
        for what, args in (("Lease", ["-n", NAMESPACE, "get", "lease", "komptroller-leader"]),
                           ("public-key ConfigMap", ["-n", NAMESPACE, "get", "configmap", "komptroller-signing-key-public"]),
                           ("signing-key Secret", ["-n", NAMESPACE, "get", "secret", "komptroller-signing-key"]),
                           ("webhook TLS Secret", ["-n", NAMESPACE, "get", "secret", "komptroller-webhook-tls"]),
                           ("ComputeReport", ["get", "computereports", "-o", "name"]),
                           ("ComputeLedgerEntry", ["get", "computeledgerentries", "-o", "name"]),
                           ("batch Job", ["-n", "research", "get", "jobs", "-o", "name"])):
            r = run(*args)
            if r.returncode != 0 or not r.stdout.strip():
                fail(f"under the chart's RBAC the operator did not write its {what}: {r.stderr.strip()}")
        if not denied:
            ok(f"under the chart's RBAC only ({sa_user}, real kube-apiserver with RBAC): webhook configurations, decision, "
               "an escalation approved, ledger, batch Job, Lease, keys and a signed report written; no request denied")
        return text
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([str(ROOT / "e2e" / "cluster" / "stop"), "--dir", str(cluster)], capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def check_scrape(rendered: dict[str, list[tuple[str, dict]]]) -> None:
    print("\n--- a real scrape of komptroller run (on the e2e control plane): promtool check metrics, names match docs/metrics.md")
    text = scrape_operator([d for _, d in rendered.get("default", []) if d.get("kind") in RBAC_KINDS])
    if text is None:
        return
    promtool = shutil.which("promtool")
    if not promtool:
        fail("promtool not found: install the Debian package prometheus")
        return
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    if r.returncode != 0:
        fail("promtool check metrics: " + (r.stdout + r.stderr).strip())
    else:
        ok("promtool check metrics: no problems")
    documented = dict(re.findall(r"^\| `(komptroller_[a-z0-9_]+)` \| (\w+) \|", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    scraped = dict(re.findall(r"^# TYPE (komptroller_[a-z0-9_]+) (\w+)$", text, re.M))
    for name, kind in sorted(scraped.items()):
        if documented.get(name) != kind:
            fail(f"scraped {name} ({kind}) is not in docs/metrics.md as a {kind}")
    ok(f"{len(scraped)} scraped metric families, all documented with their type in docs/metrics.md")


RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
# Rendered manifests the e2e suite applies to the control plane (so cargo test needs
# no Python): file -> (render scenario, kinds, what for).
E2E_FIXTURES = {
    ROOT / "e2e" / "tests" / "fixtures" / "chart-rbac.yaml": (
        "default", RBAC_KINDS,
        "The chart's RBAC (default values). Used by e2e/tests/chart_rbac.rs (every grant used, nothing denied)."),
    ROOT / "e2e" / "tests" / "fixtures" / "chart-rbac-kueue.yaml": (
        "Kueue AdmissionCheck controller", RBAC_KINDS,
        "The chart's RBAC with --set kueue.enabled=true. Used by e2e/tests/kueue_governance.rs (the operator runs as the chart's ServiceAccount)."),
    ROOT / "e2e" / "tests" / "fixtures" / "chart-cert-manager.yaml": (
        "cert-manager mode", {"Certificate", "Deployment", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"},
        "The cert-manager Certificate, Deployment and webhook configurations of --set webhook.certMode=cert-manager.\n"
        "# Used by e2e/tests/webhook_certs.rs (cainjector and the mounted Secret emulated)."),
}
FIXTURE_HEADER = """\
# Rendered from charts/komptroller (release komptroller in namespace
# komptroller-system) with Helm's SDK by scripts/checks/chart_checks.py, which
# fails when this file drifts from the chart. Regenerate:
#   KOMPTROLLER_UPDATE_FIXTURES=1 bash scripts/checks/chart.sh
# Labels are left out.
"""


def fixture_text(docs: list[tuple[str, dict]], kinds: set[str], what: str) -> str:
    out = []
    for _, d in docs:
        if d.get("kind") not in kinds:
            continue
        d = copy.deepcopy(d)
        d["metadata"].pop("labels", None)
        if not d["metadata"].get("annotations"):
            d["metadata"].pop("annotations", None)
        out.append(d)
    return FIXTURE_HEADER + "# " + what + "\n" + yaml.safe_dump_all(out, sort_keys=False, width=120)


def check_e2e_fixtures(rendered: dict[str, list[tuple[str, dict]]]) -> None:
    print("\n--- the e2e fixtures equal the chart's rendered manifests")
    for path, (scenario, kinds, what) in E2E_FIXTURES.items():
        rel = path.relative_to(ROOT)
        want = fixture_text(rendered.get(scenario, []), kinds, what)
        if os.environ.get("KOMPTROLLER_UPDATE_FIXTURES") == "1":
            path.write_text(want)
            ok(f"wrote {rel}")
            continue
        have = path.read_text() if path.exists() else ""
        if have != want:
            fail(f"{rel} differs from the chart's rendering [{scenario}]; regenerate it with "
                 "KOMPTROLLER_UPDATE_FIXTURES=1 bash scripts/checks/chart.sh and rerun cargo test -p e2e")
        else:
            ok(f"{rel} matches [{scenario}]")


WEBHOOK_FIELDS = ["rules", "failurePolicy", "matchPolicy", "sideEffects", "timeoutSeconds",
                  "admissionReviewVersions", "reinvocationPolicy"]


def check_webhooks_match_operator(rendered: dict[str, list[tuple[str, dict]]]) -> None:
    print("\n--- the chart's webhook configurations (cert-manager mode) equal those komptroller run writes itself")
    if len(OPERATOR_WEBHOOKS) != 2:
        fail("the operator did not write its two webhook configurations on the e2e control plane")
        return
    docs = rendered.get("cert-manager mode", [])
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        ours = {w["name"]: w for c in find(docs, kind) for w in c["webhooks"]}
        theirs = {w["name"]: w for c in OPERATOR_WEBHOOKS if c["kind"] == kind for w in c["webhooks"]}
        if set(ours) != set(theirs):
            fail(f"{kind}: chart webhooks {sorted(ours)} != operator's {sorted(theirs)}")
            continue
        for name, w in ours.items():
            t = theirs[name]
            for field in WEBHOOK_FIELDS:
                if w.get(field) != t.get(field):
                    fail(f"{kind} {name}: {field} is {w.get(field)!r} in the chart, {t.get(field)!r} from the operator")
            path = w["clientConfig"]["service"]["path"]
            if not t["clientConfig"].get("url", "").endswith(path):
                fail(f"{kind} {name}: chart path {path} vs operator url {t['clientConfig'].get('url')}")
        ok(f"{kind}: {len(ours)} webhooks with the same rules, policies, timeouts and paths")


def main() -> int:
    chart = helm.Chart.load(str(CHART))
    print(f"chart {chart.name} {chart.version}")
    rendered = check_lint_and_render(chart)
    check_schema_rejections(chart)
    check_kubernetes_validate(rendered)
    check_crds()
    check_e2e_fixtures(rendered)
    check_invariants(rendered, chart)
    check_alerts_and_dashboard(rendered)
    check_scrape(rendered)
    check_webhooks_match_operator(rendered)
    if failures:
        print(f"\nchart checks FAILED: {len(failures)} problem(s)")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("\nchart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
