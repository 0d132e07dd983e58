#!/usr/bin/env bash
# Issue #10's benchmark: incentive training against fair post-hoc rivals, the latency price, the paper's scale.
# Resumable (rerun to continue); outputs in runs/bench_fair/<task>. Plan (2 CPU cores, 2 seeds): STS-B about
# 9 CPU-hours, CoLA about 20, the paper-scale grid about 1 (docs/frontier.md states what ran and what it cost).
#
#   bench/run_fair.sh            # the latency table, then STS-B, CoLA and the paper-scale grid
#   bench/run_fair.sh stsb       # one of them: stsb, cola or paper, or market (issue #14's market on CoLA's frontier)
#   bench/run_fair.sh cola-b03   # one session's share of cola (about 2 hours): seed 1 at FLOPs budget 0.3, two rivals
#   bench/run_fair.sh cola-start # after cola-b03, same teacher: students started from it (gates open, Fisher-ordered)
#   bench/run_fair.sh stsb-start # STS-B seeds 1 and 2, the student started from its teacher, Fisher rivals
#   bench/run_fair.sh stsb-clear # after stsb-start: the same student with more steps for the price to clear
#   bench/run_fair.sh cola-clear # after cola-start: the same schedule on CoLA (Fisher-ordered student, same teachers)
#   bench/run_fair.sh stsb-clear-b05 # after stsb-start: the cleared schedule at FLOPs budget 0.5, seed 1 then seed 2
#   bench/run_fair.sh stsb-anchor-b05 # after stsb-start: budget 0.5 with the anchor at rho 1000 and 300 (seed 1, side by side), then rho 1000 on seed 2
#   bench/run_fair.sh stsb-early-b05  # after stsb-anchor-b05: the same anchored student with the gates frozen at 40% (seeds 1 and 2 side by side)
#   bench/run_fair.sh stsb-early-b03  # after stsb-start: run 6's recipe at budget 0.3 (seeds 1 and 2 side by side)
#   bench/run_fair.sh stsb-fisher-b03 # after stsb-start: run 7's recipe with Fisher-ordered gates (seeds 1 and 2 side by side)
#   bench/run_fair.sh stsb-fisher-b05 # run 8's recipe at budget 0.5 (seeds 1 and 2 side by side; trains a missing teacher first)
#   bench/run_fair.sh stsb-fisher-b04 # the same at budget 0.4, the recipe's third budget (seeds 1 and 2 side by side)
#   bench/run_fair.sh stsb-norepair   # after stsb-fisher-b04 and -b05: their Fisher rivals again, retrained from the unrepaired structure
#   bench/run_fair.sh stsb-layerwise  # the same rivals (Fisher's own allocation) repaired layer by layer, as Kwon et al. do
#   bench/run_fair.sh stsb-norepair-b03 # run 8's student at 0.3 trained again, with its Fisher rivals from the unrepaired structure (seeds side by side)
#   bench/run_fair.sh stsb-hidden-b03   # run 11: run 8's recipe with hidden-state distillation, its rivals learning with the same loss (seeds side by side)
#   bench/run_fair.sh cola-norepair-clear # CoLA's run 3 (teacher, student) trained again, with its Fisher rivals from the unrepaired structure (seeds side by side)
#   bench/run_fair.sh cola-b04           # after cola-norepair-clear, same teachers: its recipe at FLOPs budget 0.4 (seeds side by side)
#   bench/run_fair.sh cola-b05           # the same at 0.5, the recipe's third budget (seeds side by side)
#   bench/run_fair.sh stsb-colarecipe   # run 12: CoLA's recipe on STS-B at 0.3, 0.4 and 0.5 (seeds side by side, one budget after another)
#   bench/run_fair.sh cola-seeded       # the CoLA recipe's rivals again, Fisher on the student's examples, both starts (seeds side by side; unrepaired at 0.3, 0.4, 0.5, then repaired)
#   bench/run_fair.sh cola-seeded-unrepaired stsb-colarecipe cola-seeded  # the order run: STS-B's run 12 before CoLA's repaired rivals
#   BUDGETS="05 04" bench/run_fair.sh cola-seeded   # stsb-colarecipe and cola-seeded*: only these budgets, in this order
#   ECONLM_BENCH_OUT=/data/fair bench/run_fair.sh   # outputs elsewhere (default runs/bench_fair)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ECONLM_DATA:-}" ] && [ -d ../shared/data ]; then export ECONLM_DATA="$(cd ../shared/data && pwd)"; fi
table=bench/latency/minilm_b1_s128_t2.json
[ -f "$table" ] || .venv/bin/econlm latency-table minilm --batch 1 --seq-len 128 --threads 2 --out "$table"
out="${ECONLM_BENCH_OUT:-runs/bench_fair}"
parts=("$@")
budgets="${BUDGETS:-03 04 05}"  # stsb-colarecipe and cola-seeded*: which budgets, in which order
[ ${#parts[@]} -gt 0 ] || parts=(stsb cola paper)
for part in "${parts[@]}"; do
  case "$part" in
    stsb|cola) .venv/bin/econlm sweep "bench/sweeps/fair_$part.yaml" --out "$out/$part" ;;
    cola-b03)
      .venv/bin/econlm sweep bench/sweeps/fair_cola_b03.yaml --out "$out/cola"
      .venv/bin/econlm sweep bench/sweeps/fair_cola_b03_activation.yaml --out "$out/cola" ;;
    cola-start)  # two students side by side, one thread each: as fast as one at two threads
      for f in fair_cola_b03_start fair_cola_b03_fisherstart; do
        OMP_NUM_THREADS=1 .venv/bin/econlm sweep "bench/sweeps/$f.yaml" --out "$out/cola" &
      done
      wait ;;
    stsb-start) .venv/bin/econlm sweep bench/sweeps/fair_stsb_start.yaml --out "$out/stsb" ;;
    stsb-clear) .venv/bin/econlm sweep bench/sweeps/fair_stsb_clear.yaml --out "$out/stsb" ;;
    cola-clear) .venv/bin/econlm sweep bench/sweeps/fair_cola_clear.yaml --out "$out/cola" ;;
    stsb-clear-b05)  # one seed's student and rivals before the next seed's student
      for f in fair_stsb_clear_b05 fair_stsb_clear_b05_s2; do
        .venv/bin/econlm sweep "bench/sweeps/$f.yaml" --out "$out/stsb"
      done ;;
    stsb-anchor-b05)  # two students side by side, one thread each; then seed 2 of the one nearer the budget
      for f in fair_stsb_anchor_b05_r1000 fair_stsb_anchor_b05_r300; do
        OMP_NUM_THREADS=1 .venv/bin/econlm sweep "bench/sweeps/$f.yaml" --out "$out/stsb" &
      done
      wait
      .venv/bin/econlm sweep bench/sweeps/fair_stsb_anchor_b05_r1000_s2.yaml --out "$out/stsb" ;;
    stsb-norepair|stsb-layerwise)  # one seed per core: budget 0.4, then 0.5 (the students and teachers exist; only rivals train)
      for s in "" _s2; do
        (for b in 04 05; do OMP_NUM_THREADS=1 .venv/bin/econlm sweep "bench/sweeps/fair_${part//-/_}_b$b$s.yaml" --out "$out/stsb"; done) &
      done
      wait ;;
    stsb-colarecipe)  # one seed per core; each budget's student and rivals before the next budget
      for s in "" _s2; do
        (for b in $budgets; do OMP_NUM_THREADS=1 .venv/bin/econlm sweep "bench/sweeps/fair_stsb_colarecipe_b$b$s.yaml" --out "$out/stsb"; done) &
      done
      wait ;;
    cola-seeded-unrepaired|cola-seeded)  # one seed per core; the unrepaired rivals at every budget first (the start
      # runs 4 to 6's best rivals had), then (cola-seeded) the files whole: the repaired ones. Same trials either
      # way, an id hashes its own settings.
      unrepaired="$(mktemp -d)"
      for s in "" _s2; do
        (for b in $budgets; do
           f="fair_cola_seeded_b$b$s.yaml"
           sed 's/rescale: \[false, true\]/rescale: [false]/' "bench/sweeps/$f" > "$unrepaired/$f"
           OMP_NUM_THREADS=1 .venv/bin/econlm sweep "$unrepaired/$f" --out "$out/cola"
         done
         if [ "$part" = cola-seeded ]; then
           for b in $budgets; do OMP_NUM_THREADS=1 .venv/bin/econlm sweep "bench/sweeps/fair_cola_seeded_b$b$s.yaml" --out "$out/cola"; done
         fi) &
      done
      wait; rm -rf "$unrepaired" ;;
    paper) .venv/bin/econlm sweep bench/sweeps/paper_scale_stsb.yaml --out "$out/paper" ;;
    market) .venv/bin/econlm sweep bench/sweeps/market_cola.yaml --out "$out/cola" ;;
    stsb-early-b05|stsb-early-b03|stsb-fisher-b03|stsb-fisher-b05|stsb-fisher-b04|stsb-norepair-b03|stsb-hidden-b03|cola-norepair-clear|cola-b04|cola-b05)  # both seeds side by side, one thread each
      f1="fair_${part//-/_}"
      for f in "$f1" "${f1}_s2"; do
        OMP_NUM_THREADS=1 .venv/bin/econlm sweep "bench/sweeps/$f.yaml" --out "$out/${part%%-*}" &
      done
      wait ;;
    *) echo "run_fair.sh: unknown part '$part'; use stsb, cola, cola-b03, cola-start, stsb-start, stsb-clear, cola-clear, stsb-clear-b05, stsb-anchor-b05, stsb-early-b05, stsb-early-b03, stsb-fisher-b03, stsb-fisher-b05, stsb-fisher-b04, stsb-norepair, stsb-norepair-b03, stsb-hidden-b03, cola-norepair-clear, cola-b04, cola-b05, stsb-layerwise, stsb-colarecipe, cola-seeded-unrepaired, cola-seeded, paper or market" >&2; exit 2 ;;
  esac
done
