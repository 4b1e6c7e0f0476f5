#!/usr/bin/env bash
# The GPU measurements issues 4 and 5 ask for, as one script for a CUDA host that has a
# built `fraudgraph` binary and a torch 2.11.0 install but no Rust toolchain:
#
#   1. `fraudgraph doctor`: libtorch, CUDA device, LightGBM;
#   2. half-precision accuracy (issue 4): `fraudgraph eval` of the default artifact on the
#      held-out period of its training world (`simulate --seed 1`) in f32, f16 and bf16 on
#      the device, each precision's PR-AUC change against f32 and how far its scores move;
#   3. single vs double buffering at saturation (issue 5): `fraudgraph bench pipeline`;
#   4. served latency (issue 5): `fraudgraph serve` on the device, then
#      `fraudgraph bench serve` at 5,000/s (the GPU target: p99 <= 5 ms) and at 500/s,
#      with the server's /metrics after the runs.
#
# Usage: deploy/gpu-check.sh [--bin PATH] [--out DIR] [--device cuda|cpu] [--quick]
#   --bin     the fraudgraph binary (default: target/gpu/fraudgraph, else target/release/fraudgraph)
#   --out     where the results go (default: $OUT when set, else ./gpu-check-out); at most
#             eight files: summary.md, summary.json (every figure below), doctor.txt,
#             pipeline.json, serve_5000.json, serve_500.json, metrics.txt, serve.log
#   --device  cuda (default) or cpu (a dry run of this script's plumbing on a CPU host)
#   --quick   small sizes (a 20,000-transaction world, short runs): checks the plumbing
#             in about two minutes on a 2-core CPU; its figures mean nothing
#
# On the device machine of this workplace (no Rust there): build here, strip the binary
# into an ignored folder and carry it (64 MiB limit):
#   cargo build --release -p fraudgraph-service
#   mkdir -p target/gpu && strip -o target/gpu/fraudgraph target/release/fraudgraph
#   run: deploy/gpu-check.sh   with carry ["target/gpu"], timeout_s 540
# The full run takes about 4-6 minutes there (most of it the three evaluations, whose
# replay and sampling run on the CPU). libtorch is found through TORCH_LIB (default: that
# machine's /opt/torch/.venv/.../torch/lib when present, else the binary's rpath).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=""
OUT_DIR="${OUT:-./gpu-check-out}"
DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in
  cuda|cpu) ;;
  *) echo "gpu-check: --device must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;;
esac
if [ -z "$BIN" ]; then
  for b in target/gpu/fraudgraph target/release/fraudgraph; do
    if [ -x "$b" ]; then BIN="$b"; break; fi
  done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "gpu-check: no fraudgraph binary (build it and pass --bin PATH)" >&2
  exit 2
fi
TORCH_LIB="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
if [ -d "$TORCH_LIB" ]; then
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
PY="$(command -v python3)"

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fraudgraph-gpu-check.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -INT "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$QUICK" = 1 ]; then
  WORLD=20000; REQUESTS=500; ROUNDS=1; DURATION=5; WARMUP=1
else
  WORLD=200000; REQUESTS=20000; ROUNDS=2; DURATION=20; WARMUP=3
fi
# On a GPU host, sampling (CPU) must keep up with 5,000/s: more sampler threads than the
# 2-core default, leaving cores for the load generator and the inference thread.
if [ "$DEVICE" = cuda ]; then
  SAMPLERS=$(( $(nproc) / 2 )); [ "$SAMPLERS" -gt 8 ] && SAMPLERS=8; [ "$SAMPLERS" -lt 2 ] && SAMPLERS=2
else
  SAMPLERS=2
fi
log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" >&2; }
# Runs one step, recording its exit status; a failed step does not stop the others.
STEPS=()
step() {
  local name="$1"; shift
  local started=$SECONDS rc=0
  log "$name: $*"
  "$@" || rc=$?
  STEPS+=("$name $rc $((SECONDS - started))")
  if [ "$rc" != 0 ]; then log "$name failed (exit $rc)"; fi
  return 0
}

# 1. The runtime.
step doctor sh -c "'$BIN' doctor > '$OUT_DIR/doctor.txt' 2>&1; \
  command -v nvidia-smi >/dev/null && nvidia-smi -L >> '$OUT_DIR/doctor.txt' 2>&1 || true"

# 2. Accuracy per precision on the training world's held-out period.
step simulate "$BIN" simulate --transactions "$WORLD" --seed 1 --out "$WORK/world.pb"
for p in f32 f16 bf16; do
  step "eval_$p" "$BIN" eval --artifact models/artifacts/default --data "$WORK/world.pb" \
    --report "$WORK/eval_$p" --device "$DEVICE" --precision "$p"
done

# 3. Single vs double buffering at saturation.
step pipeline sh -c "'$BIN' bench pipeline --device '$DEVICE' --warm-transactions '$WORLD' --sampler-threads '$SAMPLERS' \
  --requests '$REQUESTS' --rounds '$ROUNDS' --json > '$OUT_DIR/pipeline.json'"

# 4. Served latency: one server on the device, open-loop load at 5,000/s then 500/s.
GRPC="${GPU_CHECK_GRPC:-127.0.0.1:50571}"
METRICS="${GPU_CHECK_METRICS:-127.0.0.1:9571}"
serve() {
  "$BIN" serve --device "$DEVICE" --warm-transactions "$WORLD" --sampler-threads "$SAMPLERS" \
    --listen "$GRPC" --metrics-listen "$METRICS" > "$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  # Ready once /metrics says so (model loaded, graph warm); a server that exits fails it.
  "$PY" - "$METRICS" "$SERVER_PID" <<'PY'
import sys, time, urllib.request
url = f"http://{sys.argv[1]}/metrics"
for _ in range(600):
    try:  # gone, or a zombie its shell has not reaped yet
        alive = open(f"/proc/{sys.argv[2]}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        alive = False
    if not alive:
        sys.exit("the server exited before it was ready (see serve.log)")
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
        if any(l.split() == ["fraudgraph_ready", "1"] for l in text.splitlines()):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("the server did not become ready in 300 s")
PY
}
step serve_start serve
for rate in 5000 500; do
  step "serve_$rate" sh -c "'$BIN' bench serve --target '$GRPC' --rate '$rate' \
    --duration '$DURATION' --warmup '$WARMUP' --json > '$OUT_DIR/serve_$rate.json'"
done
step metrics "$PY" -c "import urllib.request,sys; \
  open(sys.argv[2],'w').write(urllib.request.urlopen('http://'+sys.argv[1]+'/metrics').read().decode())" \
  "$METRICS" "$OUT_DIR/metrics.txt"
if [ -n "$SERVER_PID" ]; then
  kill -INT "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
fi
cp "$WORK/serve.log" "$OUT_DIR/serve.log" 2>/dev/null || true

# The summary: what each step gave, and what the issues' targets ask.
printf '%s\n' "${STEPS[@]}" > "$WORK/steps.txt"
"$PY" - "$WORK" "$OUT_DIR" "$DEVICE" "$QUICK" <<'PY'
import csv, json, os, sys
work, out, device, quick = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
steps = [dict(zip(("step", "exit", "seconds"), l.split())) for l in open(f"{work}/steps.txt")]

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def scores(p):
    try:
        with open(f"{work}/eval_{p}/scores.csv") as f:
            return {r["txn_id"]: float(r["gnn"]) for r in csv.DictReader(f)}
    except OSError:
        return None

evals = {}
base = scores("f32")
for p in ("f32", "f16", "bf16"):
    m = load(f"{work}/eval_{p}/metrics.json")
    if m is None:
        continue
    gnn = m["gnn"]
    entry = {k: {"pr_auc": v["pr_auc"], "roc_auc": v["roc_auc"]} for k, v in gnn.items()
             if isinstance(v, dict) and "pr_auc" in v}
    s = scores(p)
    if p != "f32" and s is not None and base is not None:
        diffs = [abs(s[t] - base[t]) for t in base if t in s]
        entry["scores_vs_f32"] = {
            "rows": len(diffs),
            "max_abs_diff": max(diffs, default=0.0),
            "mean_abs_diff": sum(diffs) / max(len(diffs), 1),
        }
        entry["pr_auc_change_vs_f32"] = {
            k: entry[k]["pr_auc"] - evals["f32"][k]["pr_auc"]
            for k in entry if k in evals.get("f32", {}) and "pr_auc" in entry[k]
        }
    evals[p] = entry

serve = {r: load(f"{out}/serve_{r}.json") for r in ("5000", "500")}
pipeline = load(f"{out}/pipeline.json")
doctor = open(f"{out}/doctor.txt").read() if os.path.exists(f"{out}/doctor.txt") else ""
summary = {"device": device, "quick": quick, "steps": steps, "eval": evals,
           "pipeline": pipeline, "serve": serve}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)

lines = [f"# fraudgraph GPU check ({device}{', quick: figures mean nothing' if quick else ''})", "",
         "## Runtime", "", "```", doctor.strip(), "```", "", "## Steps", "",
         "| step | exit | seconds |", "| --- | --- | --- |"]
lines += [f"| {s['step']} | {s['exit']} | {s['seconds']} |" for s in steps]
sets = [k for k in evals.get("f32", {}) if isinstance(evals["f32"][k], dict) and "pr_auc" in evals["f32"][k]]
lines += ["", "## GNN PR-AUC per precision (held-out period of the training world)", "",
          "Change against f32 in brackets; the last column is the largest change of any "
          "transaction's score.", "",
          "| precision | " + " | ".join(k.removeprefix("TYPOLOGY_").lower() for k in sets) + " | max score change |",
          "| --- |" + " --- |" * (len(sets) + 1)]
for p, e in evals.items():
    change = e.get("pr_auc_change_vs_f32", {})
    cells = [f"{e[k]['pr_auc']:.4f}" + (f" ({change[k]:+.4f})" if k in change else "")
             for k in sets if k in e]
    moved = e.get("scores_vs_f32", {}).get("max_abs_diff")
    lines.append(f"| {p} | " + " | ".join(cells) + f" | {'' if moved is None else f'{moved:.2e}'} |")
lines += ["", "## Served (`bench serve`; GPU target: p99 <= 5 ms at 5,000/s)", "",
          "| rate | achieved | p50 ms | p99 ms | p99.9 ms | GNN share | errors | health p99 ms |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
def cell(v, spec):
    return "" if v is None else format(v, spec)
for r, d in serve.items():
    if d:
        lines.append(f"| {r}/s | {cell(d.get('achieved_rps'), '.0f')} | {cell(d.get('p50_ms'), '.2f')} | "
                     f"{cell(d.get('p99_ms'), '.2f')} | {cell(d.get('p999_ms'), '.2f')} | "
                     f"{cell(d.get('gnn_share'), '.3f')} | {d.get('errors')} | {cell(d.get('health_p99_ms'), '.2f')} |")
if pipeline:
    lines += ["", "## Single vs double buffering (`bench pipeline`)", "", "```",
              json.dumps(pipeline, indent=1)[:3000], "```"]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
failed = [s["step"] for s in steps if s["exit"] != "0"]
if failed:
    sys.exit(f"gpu-check: steps failed: {', '.join(failed)}")
PY
