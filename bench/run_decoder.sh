#!/usr/bin/env bash
# Issue #12's benchmark: SmolLM2-135M on WikiText-2, incentive training against post-hoc rivals (Wanda-style,
# activation, magnitude) at the same structure, then timing and scoring (bench/decoder.py). Resumable: rerun
# to continue; finished trials are kept and stopped trainings resume from their checkpoints.
# Stages in priority order: budget 0.6 and its rivals with no recovery, those rivals with recovery, then
# budget 0.4 and its rivals, then budget 0.8 and its rivals, then the attention / FFN ablation and the
# paper-scale FFN tax (stage 5), then the magnitude rival with no recovery at budgets 0.4 and 0.8 (stage 6).
# Plan on 2 CPU cores (measured: about 7 s a step of 4 x 256 tokens): each
# training about 15-25 min, each rival without recovery about 5 min, each with recovery about 17 min,
# timing and scoring (python bench/decoder.py score && python bench/decoder.py time) about 15 min.
#
#   bench/run_decoder.sh                                   # outputs in runs/bench/decoder
#   ECONLM_BENCH_OUT=/data/bench bench/run_decoder.sh      # outputs in /data/bench/decoder
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ECONLM_DATA:-}" ] && [ -d ../shared/data ]; then export ECONLM_DATA="$(cd ../shared/data && pwd)"; fi
out="${ECONLM_BENCH_OUT:-runs/bench}/decoder"
.venv/bin/econlm sweep bench/sweeps/decoder_wikitext2.yaml --out "$out"
.venv/bin/econlm sweep bench/sweeps/decoder_wikitext2_recovery.yaml --out "$out"
.venv/bin/econlm sweep bench/sweeps/decoder_wikitext2_b04.yaml --out "$out"
.venv/bin/econlm sweep bench/sweeps/decoder_wikitext2_b08.yaml --out "$out"
.venv/bin/econlm sweep bench/sweeps/decoder_wikitext2_ablation.yaml --out "$out"
.venv/bin/econlm sweep bench/sweeps/decoder_wikitext2_magnitude.yaml --out "$out"
