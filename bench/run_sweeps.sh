#!/usr/bin/env bash
# The benchmark sweeps (hours on 2 CPU cores; resumable: rerun to continue). Outputs go to runs/bench_sweep/
# (checkpoints are too large for the repository); bench/summarize.py turns them into docs/ tables.
# Order: the trials compaction and the frontiers need first, the attention-cost comparison, the second seed
# of the STS-B frontier, the full lambda grids, then the remaining second seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ECONLM_DATA:-}" ] && [ -d ../shared/data ]; then export ECONLM_DATA="$(cd ../shared/data && pwd)"; fi
for config in priority_stsb priority_cola attention_stsb seed2_stsb minilm_cola minilm_stsb seed2_cola seed2_grid_stsb; do
  task=${config##*_}
  .venv/bin/econlm sweep "bench/sweeps/$config.yaml" --out "runs/bench_sweep/$task"
done
.venv/bin/python bench/summarize.py
