#!/usr/bin/env bash
# The GPU check: what seal-trl must show on one CUDA GPU, in at most 8 minutes, as ONE JSON of figures.
#
# The exact device call (after 'prepare' here): the device tool's `run` with
#     command "bash benchmarks/gpu_check.sh run", carry [".whl"], timeout_s 540
# then read runs/gpu-check/gpu_check.json and gpu_check.md from the files that come back ($OUT is set there).
#
#   bash benchmarks/gpu_check.sh prepare    # here, with PyPI: the packages the GPU box lacks, unpacked into .whl/
#   bash benchmarks/gpu_check.sh run        # on the GPU box (no network): .whl/ on PYTHONPATH, then the steps
#   bash benchmarks/gpu_check.sh dry-run    # (or --dry-run) on a CPU: the same steps at toy sizes, fp32, no install
#
# The GPU box's image has python 3.12 (assumed), torch 2.11 (CUDA 13), transformers, peft, accelerate; it lacks
# trl, datasets, deepspeed and bitsandbytes, which travel unpacked at constraints.txt's pinned versions (with the
# dependencies the image may lack: each goes on PYTHONPATH only if the image has no such distribution).
# bitsandbytes travels trimmed to its Python code and its CUDA 13.0 library. No weights travel: the steps build
# random models with real shapes (benchmarks/model_configs/) or the tests' tiny ones.
#
# Steps (benchmarks/gpu_check.py, one function each; each records pass/fail/skip, the reason and its wall time;
# a failing step does not stop the others; the exit code is 1 if any failed): versions actually imported; the
# GPU-marked tests (tests/test_gpu.py); CUDA 4-bit inner runs (Qwen2-style with biases, Llama-style without); a
# LoRA and a QLoRA policy through a 2-step SEALTrainer run with the re-sync check; bf16 autocast against fp32; K in {1, 4, 8, 16} seconds per self-edit
# against the FLOP floor; the preflight's peak memory against torch.cuda.max_memory_allocated (and the planner's,
# if seal_trl.planning exists); ZeRO-3 through `accelerate launch` with one process; vLLM colocate if importable.
set -euo pipefail
MODE="${1:-run}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/runs/gpu-check}"
PY="${PYTHON:-python3}"
CARRY="$ROOT/.whl"
MODELS="${MODELS_DIR:-/tmp/seal-gpu-check-models}"
# distribution==version (from constraints.txt); the first four always travel, the rest only where missing
PINNED="trl datasets deepspeed bitsandbytes"
DEPS="dill multiprocess xxhash hjson ninja py-cpuinfo msgpack pytest pluggy iniconfig pygments"
pin() { grep -i "^$1==" "$ROOT/constraints.txt" | head -1; }

case "$MODE" in
  prepare)
    rm -rf "$CARRY"; mkdir -p "$CARRY/wheels" "$CARRY/pkgs"
    specs=(); for d in $PINNED $DEPS; do [ "$d" = deepspeed ] || specs+=("$(pin "$d")"); done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$CARRY/wheels" "${specs[@]}"
    # deepspeed publishes only an sdist: build its pure-Python wheel (ops compile at run time, none are needed)
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CARRY/wheels" "$(pin deepspeed)"
    for wheel in "$CARRY"/wheels/*.whl; do
      dist="$(basename "$wheel" | cut -d- -f1 | tr '_' '-' | tr 'A-Z' 'a-z')"
      "$PY" -m zipfile -e "$wheel" "$CARRY/pkgs/$dist"
    done
    rm -rf "$CARRY/wheels"
    # bitsandbytes: its Python code and the CUDA 13.0 library only
    find "$CARRY/pkgs/bitsandbytes/bitsandbytes" -name 'libbitsandbytes_*' ! -name 'libbitsandbytes_cuda130.so' -delete
    find "$CARRY/pkgs" -name '__pycache__' -prune -exec rm -rf {} +
    for d in "$CARRY"/pkgs/*; do
      echo "$(basename "$d") $(ls "$d" | sed -n 's/.*-\([^-]*\)\.dist-info$/\1/p') $(du -sh "$d" | cut -f1)"
    done | tee "$CARRY/VERSIONS"
    echo "total: $(du -sh "$CARRY" | cut -f1) in $CARRY (git-ignored; carry it as \".whl\")"
    exit 0 ;;
  run)
    [ -d "$CARRY/pkgs" ] || { echo "gpu_check run: no $CARRY/pkgs: run 'bash benchmarks/gpu_check.sh prepare' where PyPI is reachable, and carry .whl" >&2; exit 2; }
    paths=""
    for d in "$CARRY"/pkgs/*; do
      dist="$(basename "$d")"
      if [[ " $PINNED " == *" $dist "* ]] || ! "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
        paths="$paths:$d"
      fi
    done
    export PYTHONPATH="$ROOT$paths${PYTHONPATH:+:$PYTHONPATH}"
    export DS_BUILD_OPS=0 DS_SKIP_CUDA_CHECK=1 ;;
  dry-run|--dry-run)
    MODE=dry-run
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" ;;
  *)
    echo "usage: $0 prepare|run|dry-run" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$MODE" --out "$OUT" --models "$MODELS"
