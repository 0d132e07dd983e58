#!/usr/bin/env bash
# Issue #11: PoWER-BERT's retraining step. Each seed's lambda = 0 fine-tune (issue #10's STS-B teachers, trained
# by bench/run_fair.sh stsb-start) is fine-tuned again for 3 epochs with a fixed token schedule in force
# (econlm train --token-budget), distilled from itself at full length (prediction layer only: dropped tokens have
# no later hidden states to match). Resumable: rerun to continue an interrupted run.
#
#   bench/run_tokens_retrain.sh 0.5 1     # schedule 0.5, seed 1 (about 20 minutes at one thread)
#   ECONLM_BENCH_OUT=/data/fair bench/run_tokens_retrain.sh 0.7,0.5,0.35,0.25,0.2,0.2 2
#   bench/run_tokens_retrain.sh 0.5 1 DIR units-b0.4  # both levers: start from a compacted model DIR of the same
#                                                    # seed (an incentive student), still distilled from the teacher
#
# Then: python bench/tokens.py score stsb --model retrained-<schedule>-s<seed>=DIR (see docs/tokens_stsb.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ECONLM_DATA:-}" ] && [ -d ../shared/data ]; then export ECONLM_DATA="$(cd ../shared/data && pwd)"; fi
schedule="$1"
seed="$2"
out="${ECONLM_BENCH_OUT:-runs/bench_fair}"
teacher=$(ls -d "$out"/stsb/trials/train-stsb-ffn_l1-lam0-s"$seed"-*/model | head -1)
[ -n "$teacher" ] || { echo "no seed-$seed teacher under $out/stsb: run bench/run_fair.sh stsb-start first" >&2; exit 2; }
start="${3:-$teacher}"
run="$out/tokens_retrain/stsb${4:+-$4}-$schedule-s$seed"
resume=()
[ -f "$run/train_config.json" ] && resume=(--resume)
[ -f "$run/metrics.json" ] && { echo "$run is finished"; exit 0; }
.venv/bin/econlm train --model "$start" --teacher "$teacher" --task stsb --token-budget "$schedule" \
  --lam 0 --cost ffn_l1 --epochs 3 --lr 1e-4 --batch-size 32 --max-length 128 --seed "$seed" --save-every 100 \
  --out "$run" "${resume[@]}"
