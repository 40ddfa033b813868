#!/usr/bin/env bash
# The prepared check of the target-hardware work on a lent GPU machine: the cuda target by runtime, a
# latency table measured there and NVML energy (benchmarks/bench_target.py), in one short call.
#
#   bash benchmarks/device_check.sh --download   # here, once: the wheels that machine lacks, into .whl/
#                                                 # (pinned to this checkout's .venv; add /.whl/ to .git/info/exclude)
#   bash benchmarks/device_check.sh [ARGS]        # there, through the device tool with carry [".whl"]:
#                                                 # writes $OUT/bench_target.json, $OUT/nvidia-smi.csv, $OUT/log
# ARGS go to bench_target.py (e.g. --candidates 50); LIMIT (seconds, default 480) bounds the run.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
NEEDS="optuna alembic colorlog mako sqlalchemy tensorly torch-pruning"   # not in the accelerator image
if [ "$1" = "--download" ]; then
    pins=$(.venv/bin/python -m pip freeze 2>/dev/null | grep -i -E "^($(echo $NEEDS | tr ' ' '|'))==" | tr '\n' ' ')
    [ -n "$pins" ] || { echo "error: no .venv here to pin versions from (run make setup)" >&2; exit 2; }
    plats=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        plats="$plats --platform $p"
    done
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $plats -d .whl $pins
fi
ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no wheels in .whl/: run '$0 --download' here and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit,clocks.sm --format=csv | tee "$OUT/nvidia-smi.csv"
timeout "${LIMIT:-480}" python3 benchmarks/bench_target.py --device cuda --out "$OUT/bench_target.json" "$@" 2>&1 \
    | tee "$OUT/log"
