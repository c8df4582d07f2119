#!/usr/bin/env bash
# One call on a lent GPU: the data-scale probe at 10,000 training shapes, with and without the
# input camera's pose given to the encoder (benchmarks/pose_probe.py), then the test suite if time
# is left. Every part has a limit inside one overall deadline; figures and logs go to OUT_DIR.
#
#   benchmarks/gpu_quality.sh [OUT_DIR] [TOTAL_S]          on the GPU
#   DRY=1 benchmarks/gpu_quality.sh [OUT_DIR] [TOTAL_S]    the same steps on the CPU, tiny variants
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_quality}"; TOTAL="${2:-530}"
mkdir -p "$OUT/parts"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
START=$SECONDS
if [[ "${DRY:-0}" == 1 ]]; then
  DEVICE=cpu N=60 POSE=t-pose WORLD=t-world WORKERS=2 TESTS="tests/test_dataset.py" THREADS=1
else
  DEVICE=cuda N=10000 POSE=g-pose-10k WORLD=g-world-10k WORKERS=15 THREADS=4
  TESTS="-n 8 --ignore=tests/test_viewer_backend.py --ignore=tests/test_viewer_browser.py --ignore=tests/test_viewer_latent.py --ignore=tests/test_view_cli.py"
fi

part() {  # part NAME LIMIT_S CMD...: at most LIMIT_S and never past the overall deadline
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL - (SECONDS - START)))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "== $name: skipped (no time left)"; return; fi
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$OUT/parts/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$OUT/parts/$name.log"
  printf '{"part": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" > "$OUT/parts/$name.json"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
}

"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'cpus': __import__('os').cpu_count()}))" | tee "$OUT/environment.json"
part data 150 "$PY" -m flowsdf data --preset quick --set data.n_train_shapes=$N --workers $WORKERS --quiet
Q="$OUT/q"
part pose 200 "$PY" benchmarks/pose_probe.py --pose --train-eval-shapes 500 --out "$Q" --refine 0 --device $DEVICE --threads $THREADS --only $POSE
part world 180 "$PY" benchmarks/pose_probe.py --train-eval-shapes 500 --out "$Q" --refine 0 --device $DEVICE --threads $THREADS --only $WORLD
part tests 90 env FLOWSDF_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider $TESTS
"$PY" benchmarks/pose_probe.py --out "$Q" --collect
echo "total ${SECONDS}s"
