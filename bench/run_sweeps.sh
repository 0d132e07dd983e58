#!/usr/bin/env bash
# The benchmark sweeps (hours on 2 CPU cores; resumable: rerun to continue). Outputs go to runs/bench_sweep/
# (checkpoints are too large for the repository); bench/summarize.py turns them into docs/ tables.
#
#   bench/run_sweeps.sh              # every task, one after the other, then the summary
#   bench/run_sweeps.sh stsb         # one task's sweeps only (no summary), e.g. two tasks side by side:
#   OMP_NUM_THREADS=1 bench/run_sweeps.sh stsb & OMP_NUM_THREADS=1 bench/run_sweeps.sh cola & wait
#
# Per task, in order: the trials compaction and the frontiers need first, the attention-cost comparison, the
# second seed of the frontier points, the full lambda grids, then the remaining second seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ECONLM_DATA:-}" ] && [ -d ../shared/data ]; then export ECONLM_DATA="$(cd ../shared/data && pwd)"; fi
declare -A configs=(
  [stsb]="priority_stsb attention_stsb seed2_stsb ablation_stsb minilm_stsb seed2_grid_stsb"
  [cola]="priority_cola seed2_cola posthoc_cola ablation_cola minilm_cola"
)
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(stsb cola)
for task in "${tasks[@]}"; do
  [ -n "${configs[$task]:-}" ] || { echo "run_sweeps.sh: unknown task '$task'; use one of: ${!configs[*]}" >&2; exit 2; }
  for config in ${configs[$task]}; do
    .venv/bin/econlm sweep "bench/sweeps/$config.yaml" --out "runs/bench_sweep/$task"
  done
done
[ $# -gt 0 ] || .venv/bin/python bench/summarize.py
