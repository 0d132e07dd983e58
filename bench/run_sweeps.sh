#!/usr/bin/env bash
# The benchmark sweeps (hours on 2 CPU cores; resumable: rerun to continue). Outputs go to runs/bench_sweep/
# (checkpoints are too large for the repository); bench/summarize.py turns them into docs/ tables.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ECONLM_DATA:-}" ] && [ -d ../shared/data ]; then export ECONLM_DATA="$(cd ../shared/data && pwd)"; fi
for task in stsb cola; do
  .venv/bin/econlm sweep bench/sweeps/minilm_$task.yaml --out runs/bench_sweep/$task
done
for task in stsb cola; do
  .venv/bin/econlm sweep bench/sweeps/seed2_$task.yaml --out runs/bench_sweep/$task
done
.venv/bin/python bench/summarize.py
