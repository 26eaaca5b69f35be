#!/usr/bin/env bash
# `msrn compare` on the built-in scenes benchmark: every registered head on the tiny backbone, under the GCN and
# the transformer recipes and each head's paper's, over seeds 0 1 2, in the background; rerun the same line to continue an interrupted
# study (finished runs are kept in OUT/compare.json, a run cut short continues from its last.pt).
#
#   bash benchmarks/compare_scenes.sh [OUT]              # default OUT: runs/compare-scenes
#   tail -f OUT/compare.log                              # one line per finished run, with the time left
#
# SIZE=demo gives the demo's data and schedule (2000/600 images, 18 epochs: about 3 h on one free core);
# the default (800/300 images, 10 epochs: 63 trainings of 40-70 s) takes about 50 minutes on the quiet 2-core
# machine, longer when it is loaded.
set -euo pipefail
OUT=${1:-runs/compare-scenes}
if [ "${SIZE:-small}" = demo ]; then
  SIZE_ARGS=(--scenes-size 2000 600 128)
else
  SIZE_ARGS=(--scenes-size 800 300 128 --epochs 10)
fi
mkdir -p "$OUT"
# one thread: on a shared CPU more threads than free cores make OpenMP spin
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nohup msrn compare --dataset scenes --out "$OUT" \
  --recipes gcn transformer paper --seeds 0 1 2 "${SIZE_ARGS[@]}" --workers 0 > "$OUT/compare.log" 2>&1 &
echo "msrn compare running as process $! -> $OUT/compare.log, $OUT/report.md, $OUT/compare.json"
