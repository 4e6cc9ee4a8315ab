#!/usr/bin/env bash
# Checks the deployment files that tools can check without Docker or a
# cluster: the Prometheus config, the alert rules and their unit tests
# (promtool), and the Grafana dashboard JSON. Part of `make test`
# (`make check-deploy`); tests/tools.sh installs promtool.
#
# The compose file and the Kubernetes manifests are checked by the Rust test
# tests/e2e/deploy.rs, which also checks every metric name used here against
# a running courier.
set -uo pipefail
cd "$(dirname "$0")"

failures=()

step() {
    local name=$1
    shift
    echo "--- $name"
    if ! "$@"; then
        failures+=("$name")
        echo "FAILED: $name" >&2
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    echo "error: promtool not found; run tests/tools.sh (or make tools) first" >&2
    exit 1
fi

step "prometheus config" promtool check config prometheus/prometheus.yml
step "alert rules" promtool check rules prometheus/alerts.yml
step "alert rule unit tests" promtool test rules prometheus/alerts_test.yml

# Beyond "is it JSON": the things that break a provisioned dashboard quietly.
check_dashboard() {
    python3 - grafana/courier.json <<'PY'
import json, sys

path = sys.argv[1]
try:
    with open(path) as f:
        dashboard = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{path}: not valid JSON: {e}")

errors = []
for key in ("uid", "title", "panels", "templating", "schemaVersion"):
    if key not in dashboard:
        errors.append(f"missing top-level key {key!r}")

variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("needs a templating variable 'datasource' of type datasource, query prometheus")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

ids = set()
for p in panels(dashboard.get("panels", [])):
    title = p.get("title", "?")
    if p.get("id") in ids:
        errors.append(f"panel {title!r}: duplicate id {p.get('id')}")
    ids.add(p.get("id"))
    if "gridPos" not in p:
        errors.append(f"panel {title!r}: no gridPos")
    if p.get("type") == "row":
        continue
    targets = p.get("targets", [])
    if not targets:
        errors.append(f"panel {title!r}: no targets")
    for t in [p] + targets:
        uid = (t.get("datasource") or {}).get("uid")
        if uid != "${datasource}":
            errors.append(f"panel {title!r}: datasource uid {uid!r}, expected '${{datasource}}'")
    for t in targets:
        if not t.get("expr", "").strip():
            errors.append(f"panel {title!r}: target {t.get('refId')} has no expr")

if errors:
    sys.exit(f"{path}:\n  " + "\n  ".join(errors))
print(f"{path}: {len(ids)} panels OK")
PY
}
step "grafana dashboard" check_dashboard

# promtool parses PromQL only in rule files: wrap every dashboard query in a
# throwaway recording rule (Grafana's $__ interval macros become 5m) so a
# typo in a panel fails here rather than as an empty panel.
check_dashboard_queries() {
    local rules rc
    rules=$(mktemp --suffix=.yml)
    if ! python3 - grafana/courier.json >"$rules" <<'PY'
import json, re, sys

with open(sys.argv[1]) as f:
    dashboard = json.load(f)

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

print("groups:\n  - name: dashboard-queries\n    rules:")
for n, p in enumerate(panels(dashboard["panels"])):
    for t in p.get("targets", []):
        expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", t["expr"])
        print(f"      - record: dashboard:panel_{n}_{t['refId']}")
        print(f"        expr: {json.dumps(expr)}")
PY
    then
        rm -f "$rules"
        return 1
    fi
    promtool check rules "$rules"
    rc=$?
    rm -f "$rules"
    return $rc
}
step "grafana dashboard queries" check_dashboard_queries

if [ ${#failures[@]} -ne 0 ]; then
    echo >&2
    echo "deploy/check.sh: ${#failures[@]} check(s) failed: ${failures[*]}" >&2
    exit 1
fi
echo "deploy/check.sh: all deployment checks passed"
