#!/usr/bin/env bash
# One command for a lent GPU (<= 8 minutes on one H100/H200): the test suite on CUDA, `flowsdf
# bench`, the training step's throughput over the GPU path's choices with a profile of one step
# (benchmarks/step_throughput.py), and the seed protocol (Stage 1 with the whole step captured in
# a CUDA graph, then Phase 1 + Phase 2) with its per-part times, every figure written as JSON into
# OUT_DIR. Each part has its own time limit, so a hang costs only its part; parts/<name>.json
# records each part's exit status and wall time.
#
#   benchmarks/gpu_check.sh [OUT_DIR]            on the GPU (default OUT_DIR: outputs/gpu_check)
#   benchmarks/gpu_check.sh --dry-run [OUT_DIR]  the same steps on the CPU at the tiny preset (CI runs it)
#
# Needs torch, numpy, scipy, scikit-image, safetensors, tqdm, matplotlib, pillow and trimesh
# (a GPU image without trimesh: `pip download --no-deps trimesh` here, install the wheel there).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-outputs/gpu_check}"
mkdir -p "$OUT/parts"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

# Stage 1 as the GPU trains it: the shape-static search (exact: it is the exhaustive one), TF32 for
# its matrix products, and the whole step in one CUDA graph (train/graphed.py); on a CPU the
# same step runs eagerly, which is what the dry run checks.
GRAPHED="--set render.search=static --set render.search_dtype=tf32 --set stage1.graph=true"
if [[ $DRY == 1 ]]; then
  # One thread: on a shared 2-core CPU two threads per process are many times slower than one.
  DEVICE=cpu PRESET=tiny BENCH="--quick --threads 1" TESTS="tests/test_device.py tests/test_fast_sampler.py tests/test_graphed.py" THREADS="--threads 1"
  THROUGHPUT="--dry-run --threads 1"
  # Generous limits: the dry run checks that every step works, on a CPU that may be shared.
  T_TESTS=900 T_BENCH=600 T_THROUGHPUT=600 T_DATA=600 T_S1=600 T_FLOW=900
else
  # The GPU image lacks gradio and playwright: the viewer's tests stay on the CPU (CI). Eight
  # test processes share the card.
  DEVICE=cuda PRESET=seed BENCH="" THREADS=""
  TESTS="-n 8 --ignore=tests/test_viewer_backend.py --ignore=tests/test_viewer_browser.py --ignore=tests/test_viewer_latent.py --ignore=tests/test_view_cli.py --ignore=tests/test_viewer_server.py"
  # The grid stops itself at 70 s (its rows so far are kept), then profiles one step.
  THROUGHPUT="--device cuda --budget-s 70"
  # Budget (seconds): 480 in all. Measured on an H200 (2026-11-27): tests 86, bench 13, data 4,
  # Stage 1 ~125 uncaptured (97 of training, 13 of it compiling); Phase 1 + Phase 2 did not finish in 300.
  T_TESTS=75 T_BENCH=25 T_THROUGHPUT=100 T_DATA=15 T_S1=110 T_FLOW=150
fi

part() {  # part NAME LIMIT_S CMD...: run with a time limit; record status and wall time as JSON
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/parts/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$OUT/parts/$name.log"
  printf '{"part": "%s", "rc": %d, "timed_out": %s, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$rc" "$([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)" "$((SECONDS - t0))" "$limit" \
    > "$OUT/parts/$name.json"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
}

"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}))" > "$OUT/environment.json"
cat "$OUT/environment.json"

# 1. The suite. Its training tests stay on the CPU (tests/conftest.py: they check bit-exact
#    properties); tests/test_device.py runs its checks on FLOWSDF_TEST_DEVICE.
part tests "$T_TESTS" env FLOWSDF_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider $TESTS

# 2. Speed figures.
part bench "$T_BENCH" "$PY" -m flowsdf bench --device "$DEVICE" $BENCH --out "$OUT/bench.json"

# 3. The training step over search modes, precisions, batches and both decoders; a profile of one step.
part throughput "$T_THROUGHPUT" "$PY" benchmarks/step_throughput.py $THROUGHPUT --out "$OUT/throughput.json"

# 4. The seed protocol, Stage 1 then Stage 2 (Phase 1 + Phase 2) in one run folder.
RUN="$OUT/run"
rm -rf "$RUN"
part data "$T_DATA" "$PY" -m flowsdf data --preset "$PRESET" --quiet
# Progress bars go to the parts' logs (their rates are the figures when a part runs out of time).
# Phase 1's ablation (a second flow distilled without noise scaling) is not part of the protocol.
part stage1 "$T_S1" "$PY" -m flowsdf train --stage cnn --preset "$PRESET" --out "$RUN" --device "$DEVICE" $THREADS $GRAPHED
part stage2 "$T_FLOW" "$PY" -m flowsdf train --stage flow --preset "$PRESET" --init "$RUN" --out "$RUN" --device "$DEVICE" $THREADS \
  --set phase1.ablation=false

# Every figure as JSON: summaries as they are, per-epoch metrics as JSON lists.
"$PY" - "$RUN" "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
record = {"parts": {p.stem: json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))}}
for stage in ("stage1", "phase1", "phase2"):
    summary, metrics = run / stage / "summary.json", run / stage / "metrics.jsonl"
    if summary.exists():
        record[f"{stage}_summary"] = json.loads(summary.read_text())
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        record[f"{stage}_metrics"] = rows
        record[f"{stage}_train_seconds"] = sum(r["seconds"] for r in rows)
# Where the protocol's time goes: each phase's own training time beside its part's wall time.
record["breakdown_s"] = {
    "stage1_training": record.get("stage1_train_seconds"),
    "phase1_training": record.get("phase1_summary", {}).get("seconds"),
    "phase1_ablation_included": record.get("phase1_summary", {}).get("without_scaling") is not None,
    "phase2_training": record.get("phase2_train_seconds"),
    "stage1_part_wall": record["parts"].get("stage1", {}).get("seconds"),
    "stage2_part_wall": record["parts"].get("stage2", {}).get("seconds"),
}
(out / "protocol.json").write_text(json.dumps(record, indent=1))
print("protocol breakdown (s):", json.dumps(record["breakdown_s"]))
failed = [k for k, v in record["parts"].items() if v["rc"] != 0]
print(f"wrote {out}/protocol.json; parts failed: {failed or 'none'}")
sys.exit(1 if failed else 0)
PYEOF
