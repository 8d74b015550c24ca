#!/usr/bin/env bash
# The GPU check: everything seal-trl should show on a CUDA machine, in one script, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh prepare    # here, with PyPI: the wheels the GPU box lacks, into .whl/ (~44 MB)
#   bash benchmarks/gpu_check.sh run        # on the GPU box (no network): install .whl/, then the checks
#   bash benchmarks/gpu_check.sh dry-run    # on a CPU: the same steps at toy sizes, fp32, no install
#
# Assumed on the GPU box: python3 with torch, transformers, peft, accelerate, pyarrow, pandas (as on the lent
# H200 image); missing there: trl, datasets (+ dill, multiprocess) and bitsandbytes, which travel as wheels. No
# model weights travel: the benchmarks build randomly initialised models with real shapes
# (benchmarks/model_configs/*.json) and the tests' tiny tokenizer.
#
# Steps (each one's output under $OUT, default runs/gpu-check/):
#   1. the GPU-marked tests (tests/test_gpu.py): bf16 inner loop vs fp32, the 4-bit inner loop on CUDA, the
#      grouped_mm bf16 batched engine equal to sequential
#   2. the batched inner loop, K = 1 4 16 32 and "auto" (what it chooses), on SmolLM2-135M, Qwen2.5-0.5B and
#      Qwen2.5-1.5B shapes (bf16)
#   3. one SEALTrainer round in bf16 on SmolLM2-135M shapes
#   4. a summary table, $OUT/gpu_check.md
set -euo pipefail
MODE="${1:-run}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/runs/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WHEELS="$ROOT/.whl"
MODELS="${MODELS_DIR:-/tmp/seal-gpu-check-models}"

case "$MODE" in
  prepare)
    mkdir -p "$WHEELS"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$WHEELS" \
      trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2
    du -sh "$WHEELS"
    echo "prepared: carry .whl (and keep it out of git: echo /.whl/ >> .git/info/exclude)"
    exit 0 ;;
  run)
    DEVICE=cuda; DTYPE=bfloat16; KS="1 4 16 32 auto"; PLANS=32; EPOCHS=3; LAYERS=""; STEP_FLAGS="--bf16"
    CONFIGS="smollm2-135m qwen2.5-0.5b qwen2.5-1.5b"
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl
      export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi ;;
  dry-run)
    DEVICE=cpu; DTYPE=float32; KS="1 2 auto"; PLANS=2; EPOCHS=1; LAYERS="--layers 1"; STEP_FLAGS="--cpu --passages 2 --self-edits 2"
    CONFIGS="smollm2-135m" ;;
  *)
    echo "usage: $0 prepare|run|dry-run" >&2; exit 2 ;;
esac
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "trl", "datasets") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing {missing}: run 'bash benchmarks/gpu_check.sh prepare' where PyPI is reachable and carry .whl")
import torch, transformers, peft, trl
print(f"torch {torch.__version__} (cuda {torch.version.cuda}, {torch.cuda.device_count()} GPU), transformers "
      f"{transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}")
EOF
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check run: torch sees no CUDA device (use dry-run on a CPU)')"
fi

start=$(date +%s)
echo "== 1. GPU-marked tests"
set +e
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
set -e

echo "== 2. batched inner loop, K = $KS"
for name in $CONFIGS; do
  dir="$MODELS/$name"
  [ -f "$dir/config.json" ] || "$PY" benchmarks/random_model.py "benchmarks/model_configs/$name.json" "$dir" \
    --dtype "$DTYPE" $LAYERS
  "$PY" benchmarks/inner_loop.py --model "$dir" --batched $KS --plans "$PLANS" --epochs "$EPOCHS" \
    --device "$DEVICE" --dtype "$DTYPE" --json "$OUT/batched_$name.json"
done

echo "== 3. one SEALTrainer round"
"$PY" benchmarks/trainer_step.py --model "$MODELS/smollm2-135m" $STEP_FLAGS --json "$OUT/trainer_step.json"

echo "== 4. summary"
"$PY" - "$OUT" "$tests_rc" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
from pathlib import Path
out, tests_rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tail = (out / "gpu_tests.log").read_text().strip().splitlines()[-1]
lines = [f"GPU tests: {tail} (exit {tests_rc}); whole check {seconds} s", "",
         "| model shapes | device / dtype | K | s / self-edit | speed-up vs K=1 | achieved TFLOP/s | share of matmul peak "
         "| peak GPU MiB | max reward diff vs K=1 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
for path in sorted(out.glob("batched_*.json")):
    data = json.loads(path.read_text())
    results = data["results"]
    first = results[min((k for k in results if k.isdigit()), key=int)]
    flops = first["flops_first_run"]
    for k, r in results.items():
        per_edit = r["total_seconds"] / data["plans"]
        achieved = flops * data["plans"] / r["total_seconds"] / 1e12 if flops else float("nan")
        diff = max(abs(a - b) for a, b in zip(r["rewards"], first["rewards"]))
        name = f"auto (K={r['chosen_slots']}, {r['measure_seconds']:.1f} s to choose)" if k == "auto" else k
        lines.append(f"| {path.stem[len('batched_'):]} | {data['device']} / {data['dtype']} | {name} | {per_edit:.3f} | "
                     f"{first['total_seconds'] / r['total_seconds']:.2f}x | {achieved:.2f} | "
                     f"{achieved * 1e3 / data['matmul_gflops']:.0%} | {r.get('peak_gpu_mib') or 0:.0f} | {diff:.1e} |")
step = json.loads((out / "trainer_step.json").read_text())
lines += ["", f"SEALTrainer round ({step['device']}, bf16={step['bf16']}, policy {step['policy_dtype']}, inner "
          f"{step['inner_dtype']}): {step['self_edits']} self-edits, {step['failed']} failed, mean reward "
          f"{step['mean_reward']:+.4f}, {step['seconds']} s, peak GPU {step['peak_gpu_mib']} MiB"]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit "$tests_rc"
