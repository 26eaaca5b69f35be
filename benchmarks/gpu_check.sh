#!/usr/bin/env bash
# The GPU check (issue 15): one prepared run that fits in 8 minutes on one H200 GPU.
# It runs benchmarks/gpu_check.py: the CUDA-marked tests, reference-layout parity on CUDA (fp32,
# TF32 off), training steps in fp32/bf16/fp16 autocast, msrn evaluate on a small synthetic set, and
# images per second at 448 / batch 32 for MSRN against the bare backbone; one summary at the end.
#
#   benchmarks/gpu_check.sh             on a CUDA machine; with OUT set, figures go to $OUT/gpu_check.json
#   benchmarks/gpu_check.sh --dry-run   the same steps on the CPU at tiny sizes (about 1.5 min on 2 cores)
#
# PYTHON picks the interpreter (default python3); msrn is imported from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
json=()
if [ -n "${OUT:-}" ]; then
  json=(--json "$OUT/gpu_check.json")
fi
exec timeout 480 "${PYTHON:-python3}" benchmarks/gpu_check.py "$@" ${json[@]+"${json[@]}"}
