#!/usr/bin/env bash
# The GPU benchmark plan (baseline, pr493, pr1413, pr1855): see benchmarks/bench_gpu.py.
#   bash benchmarks/bench_gpu.sh             # on the GPU machine: appends rows to docs/benchmarks.md
#   bash benchmarks/bench_gpu.sh --dry-run   # the same plan at CPU size
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src"
exec python3 benchmarks/bench_gpu.py "$@"
