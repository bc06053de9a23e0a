#!/usr/bin/env bash
# The GPU proof run (issue 14); benchmarks/gpu/PLAN.md says how a session spends its
# device minutes. On the lent H200, from the repository root, every call runs the same
# command (the carried parts differ) until it prints ALL DONE:
#
#   bash benchmarks/gpu/run_h200.sh
#
# Here, the dry run on the CPU build (.venv) with the bench checkpoint:
#
#   bash benchmarks/gpu/run_h200.sh --cpu
#
# Results go to $OUT (the device tool's folder; here .cache/gpu-out): results.json,
# gpu_h200.png, server-logs.txt, bench.tar.xz and this run's log, run.log.
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-$PWD/.cache/gpu-out}"
export OUT
mkdir -p "$OUT"
if [[ " $* " == *" --cpu "* ]]; then
    PY="${PYTHON:-.venv/bin/python}"
else
    PY="${PYTHON:-python3}"  # the image's Python, the one with torch
fi
export PYTHONUNBUFFERED=1
"$PY" -m benchmarks.gpu.device_run --out "$OUT" "$@" 2>&1 | tee -a "$OUT/run.log"
