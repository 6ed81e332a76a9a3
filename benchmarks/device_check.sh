#!/usr/bin/env bash
# Device check on a machine with one GPU, from a fresh checkout, in at most 8 minutes:
#   benchmarks/device_check.sh [REPORT_DIR]        (default benchmarks/reports/device_check/)
#
# 1. creates a separate venv (.venv-cuda, so a CPU .venv is left alone) through the Makefile with a CUDA build of
#    torch 2.13.0 (at most 4 minutes; skipped when the venv is already installed);
# 2. runs the `gpu`-marked tests (at most 1 minute);
# 3. runs experiments/device_check.py (at most 3 minutes): rasterizer faces/s, host syncs, R-Net training
#    images/s for `default` and `paper_ict`, and writes device_check.md + device_check.json into REPORT_DIR.
#
# The torch build: TORCH_SPEC defaults to torch==2.13.0 from PyPI, whose Linux x86-64 wheel is a CUDA build that
# brings its own CUDA runtime (nvidia-* wheels): only the NVIDIA driver is needed, and PyPI is the one index
# every machine here can reach. Where download.pytorch.org is reachable, a wheel for a specific CUDA can be
# chosen instead, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
# (CUDA 12.6 runs on any CUDA-12 driver >= 525 through minor-version compatibility and covers Volta to Hopper,
# e.g. V100, A100, H100, H200; Blackwell GPUs need cu128 or newer).
# Other overrides: VENV (default .venv-cuda), PYTHON (interpreter that creates the venv).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-benchmarks/reports/device_check}"
VENV="${VENV:-.venv-cuda}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/3 venv $VENV with TORCH_SPEC='$TORCH_SPEC'"
if ! timeout 240 make setup VENV="$VENV" TORCH_SPEC="$TORCH_SPEC" PYTHON="$PYTHON" >"$OUT/setup.log" 2>&1; then
    echo "make setup failed or ran past 240 s; see $OUT/setup.log" >&2
    tail -n 20 "$OUT/setup.log" >&2
    exit 2
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "torch in $VENV sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)')): check" \
         "nvidia-smi and the driver, or choose another build with TORCH_SPEC (see the top of this script)" >&2
    exit 3
fi

echo "== 2/3 gpu-marked tests"
timeout 60 "$VENV/bin/pytest" -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests/ >"$OUT/gpu_tests.log" 2>&1
tests_rc=$?
tail -n 5 "$OUT/gpu_tests.log"

echo "== 3/3 device check"
timeout 180 "$PY" -m experiments.device_check --device cuda --out "$OUT" --gpu-tests-log "$OUT/gpu_tests.log"
check_rc=$?

echo "== done in $(( $(date +%s) - start )) s: gpu tests exit $tests_rc, device check exit $check_rc; report in $OUT/"
[ "$tests_rc" -eq 0 ] && [ "$check_rc" -eq 0 ]
