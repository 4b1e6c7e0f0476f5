#!/usr/bin/env bash
# Checks fraudgraph's deployment files without a container engine or a cluster: renders the
# Kubernetes overlays, validates them offline, parses every YAML and JSON file, and parses
# and unit-tests the alert rules. deploy/test.sh runs it; it takes a few seconds once the
# tools are cached (deploy/setup.sh --deploy-tools-only, which this runs first).
#
#   deploy/check.sh               run every check
#   deploy/check.sh --sync-rules  regenerate deploy/k8s/base/prometheusrule.yaml from
#                                 deploy/prometheus/alerts.yaml, then check
#
# What runs, in order:
#   1. kubectl kustomize deploy/k8s/overlays/{cpu,gpu}   with Debian 12's kubectl 1.20
#      (kubernetes-client; kustomize v2.0.3), and, when another kubectl is on PATH, with it
#      too: both must render the same objects (users run newer kustomize)
#   2. deploy/tools/deploycheck.py: YAML/JSON parse, strict offline schema validation of the
#      rendered objects (kubernetes-validate for Kubernetes 1.29 and 1.37; hand-written
#      schemas for ServiceMonitor and PrometheusRule), cross-checks of the manifests,
#      configs, metric names, dashboard, compose file and Dockerfile
#   3. promtool (Debian's prometheus 2.42): check rules, check config, test rules, and a
#      parse of every dashboard query
#   4. when a fraudgraph binary built from the current sources exists (target/{debug,release};
#      deploy/test.sh runs this after cargo test): `fraudgraph serve --config FILE
#      --print-config` accepts every config file we ship and uses every value in it
#
# Environment: FRAUDGRAPH_CACHE (tools cache, default ~/.cache/fraudgraph),
# FRAUDGRAPH_KUBECTL / FRAUDGRAPH_PROMTOOL (use these binaries instead of the cached ones).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SYNC_RULES=0
for arg in "$@"; do
    case "$arg" in
        --sync-rules) SYNC_RULES=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "deploy/check.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

./deploy/setup.sh --deploy-tools-only

TOOLS=${FRAUDGRAPH_CACHE:-$HOME/.cache/fraudgraph}/deploy-tools
KUBECTL=${FRAUDGRAPH_KUBECTL:-$TOOLS/bin/kubectl}
PROMTOOL=${FRAUDGRAPH_PROMTOOL:-$TOOLS/bin/promtool}
PYTHON=$TOOLS/venv/bin/python
K8S_VERSIONS=(1.29 1.37)
OVERLAYS=(cpu gpu)

if [[ $SYNC_RULES -eq 1 ]]; then
    "$PYTHON" deploy/tools/deploycheck.py --sync-rules
fi

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT

START=$SECONDS
OK=0
FAILED=()
run_step() {
    local name=$1
    shift
    echo "[check] $name" >&2
    if "$@" >"$TMP/step.log" 2>&1; then
        sed 's/^/  /' "$TMP/step.log" >&2
        OK=$((OK + 1))
    else
        sed 's/^/  /' "$TMP/step.log" >&2
        echo "  FAILED: $name" >&2
        FAILED+=("$name")
    fi
}

# 1. Render.
kubectl_version() {
    "$1" version --client 2>/dev/null | sed -n 's/.*GitVersion:"\([^"]*\)".*/\1/p; s/^Client Version: \(.*\)/\1/p' | head -n1
}
for overlay in "${OVERLAYS[@]}"; do
    run_step "kubectl $(kubectl_version "$KUBECTL") kustomize deploy/k8s/overlays/$overlay" \
        bash -c '"$1" kustomize "$2" >"$3" && echo "$(grep -c "^kind:" "$3") objects"' _ \
        "$KUBECTL" "deploy/k8s/overlays/$overlay" "$TMP/$overlay.yaml"
done
ALT_ARGS=()
other=$(command -v kubectl || true)
if [[ -n $other && $(readlink -f "$other") != $(readlink -f "$KUBECTL") ]]; then
    for overlay in "${OVERLAYS[@]}"; do
        run_step "kubectl $(kubectl_version "$other") ($other) kustomize deploy/k8s/overlays/$overlay" \
            bash -c '"$1" kustomize "$2" >"$3" 2>"$3.err"; rc=$?; grep -v "is deprecated" "$3.err"; exit $rc' _ \
            "$other" "deploy/k8s/overlays/$overlay" "$TMP/$overlay.alt.yaml"
        ALT_ARGS+=(--rendered-alt "$overlay=$TMP/$overlay.alt.yaml")
    done
else
    echo "[check] no second kubectl on PATH: rendered with Debian's kubectl only" >&2
fi

# 2. Parse, validate, cross-check.
RENDERED_ARGS=()
for overlay in "${OVERLAYS[@]}"; do
    [[ -s $TMP/$overlay.yaml ]] && RENDERED_ARGS+=(--rendered "$overlay=$TMP/$overlay.yaml")
done
VERSION_ARGS=()
for v in "${K8S_VERSIONS[@]}"; do VERSION_ARGS+=(--k8s-version "$v"); done
run_step "deploycheck.py (YAML, JSON, schemas, manifests, configs, metrics, dashboard, compose, Dockerfile)" \
    "$PYTHON" deploy/tools/deploycheck.py "${RENDERED_ARGS[@]}" "${ALT_ARGS[@]+"${ALT_ARGS[@]}"}" \
    "${VERSION_ARGS[@]}" --dashboard-rules-out "$TMP/dashboard-rules.yaml"

# 3. Prometheus rules and config with Prometheus' own parser.
PV=$("$PROMTOOL" --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')
run_step "promtool $PV check rules deploy/prometheus/alerts.yaml" "$PROMTOOL" check rules deploy/prometheus/alerts.yaml
run_step "promtool $PV check config deploy/prometheus/prometheus.yml" "$PROMTOOL" check config deploy/prometheus/prometheus.yml
run_step "promtool $PV test rules deploy/prometheus/alerts.test.yaml" "$PROMTOOL" test rules deploy/prometheus/alerts.test.yaml
if [[ -s $TMP/dashboard-rules.yaml ]]; then
    run_step "promtool $PV parses every dashboard query" "$PROMTOOL" check rules "$TMP/dashboard-rules.yaml"
fi

# 4. The service itself accepts our config files (when a binary has been built from the
# current sources): it prints the merged configuration, which must contain every value of
# the file (nothing ignored, nothing renamed).
check_config_with_binary() {
    local bin=$1 cfg=$2
    env -i PATH="$PATH" HOME="$HOME" "$bin" serve --config "$cfg" --print-config >"$TMP/merged.json" || return 1
    "$PYTHON" - "$cfg" "$TMP/merged.json" <<'PY'
import json, sys
want = json.load(open(sys.argv[1]))
try:
    got = json.load(open(sys.argv[2]))
except json.JSONDecodeError:
    sys.exit("--print-config printed no JSON")
def walk(w, g, path):
    for k, v in w.items():
        if isinstance(v, dict):
            walk(v, g.get(k) or {}, f"{path}{k}.")
        elif g.get(k) != v:
            sys.exit(f"{path}{k}: the file says {v!r}, the service uses {g.get(k)!r}")
walk(want, got, "")
print(f"accepted; all {sys.argv[1]} values in effect")
PY
}
BIN=$(ls -t target/debug/fraudgraph target/release/fraudgraph 2>/dev/null | head -n1 || true)
if [[ -z $BIN ]]; then
    echo "[check] no built fraudgraph under target/: config files checked against service/src only" >&2
elif [[ -n $(find service/src -newer "$BIN" -name '*.rs' -print -quit) ]]; then
    echo "[check] $BIN is older than service/src: not asking it about the config files" >&2
else
    for cfg in deploy/k8s/base/config.json deploy/k8s/overlays/gpu/config.json deploy/docker/compose-config.json; do
        run_step "$BIN serve --config $cfg --print-config" check_config_with_binary "$BIN" "$cfg"
    done
fi

TOTAL=$((OK + ${#FAILED[@]}))
if [[ ${#FAILED[@]} -eq 0 ]]; then
    echo "[check] deploy: all $TOTAL steps ok in $((SECONDS - START))s" >&2
else
    echo "[check] deploy: ${#FAILED[@]} of $TOTAL steps FAILED:" >&2
    printf '[check]   %s\n' "${FAILED[@]}" >&2
    exit 1
fi
