#!/usr/bin/env bash
# The GPU check (issues 15 and 23): one prepared run that fits in 8 minutes on one H200 GPU.
# It runs benchmarks/gpu_check.py: the CUDA-marked tests, reference-layout parity on CUDA (fp32,
# TF32 off), the attention alone against float64 and its speed, training steps at lr 0.01 in
# fp32/bf16/fp16 autocast against float64, msrn evaluate on a small synthetic set, torchrun with
# NCCL, images per second at 448 / batch 32 for MSRN against the bare backbone with the targets as
# PASS/FAIL lines, and the loader's images per second; one summary at the end.
#
#   benchmarks/gpu_check.sh             on a CUDA machine; with OUT set, figures go to $OUT/gpu_check.json
#   benchmarks/gpu_check.sh --dry-run   the same steps on the CPU at tiny sizes (4-7 min on 2 busy cores)
#
# PYTHON picks the interpreter (default python3); msrn is imported from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
json=()
if [ -n "${OUT:-}" ]; then
  json=(--json "$OUT/gpu_check.json")
fi
limit=480  # the GPU run's 8 minutes; the dry run on a shared CPU gets 15
case " $* " in *" --dry-run "*) limit=900 ;; esac
exec timeout "$limit" "${PYTHON:-python3}" benchmarks/gpu_check.py "$@" ${json[@]+"${json[@]}"}
