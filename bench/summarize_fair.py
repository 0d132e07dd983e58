"""Issue #10's benchmark tables: incentive training against fair post-hoc rivals, from bench/run_fair.sh's sweeps.

    python bench/summarize_fair.py stsb [--repeats 30]      # reads $ECONLM_BENCH_OUT/stsb (default runs/bench_fair)
    python bench/summarize_fair.py stsb --render            # the doc again from bench/results (no timing)

For every seed, the lambda = 0 fine-tune (the teacher) and every final model of that seed (compacted
incentive models, post-hoc rivals) are timed in one interleaved run (batch 1 and 32, 128 tokens, 2 threads,
median of --repeats rounds after warm-up), so each speedup is a ratio measured in one run. Writes
bench/results/fair_<task>.json and docs/fair_<task>.md; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INDEX_BEGIN, INDEX_END, RESULTS, ROOT, markdown_table, save, with_index  # noqa: E402

from econlm.prices import UNDERSHOOT  # noqa: E402  (a share this far below its budget gave up allowed compute)
from econlm.sweep import RIVAL_CALIBRATION  # noqa: E402  (the rivals that measured on the student's examples)

THREADS = 2
SEQ_LEN = 128
BATCHES = (1, 32)
TABLE = ROOT / "bench" / "latency" / "minilm_b1_s128_t2.json"
TARGETS = {"stsb": (2.0, 0.005), "cola": (1.6, 0.02)}  # (batch-1 speedup, largest score loss)
# What each task's benchmark tried and what is left: the Reading section's last line.
# The students whose planned rivals missing from the table never will be in it, and why: a recipe's count in the
# issue's form is final against the rivals in the table once every pair still missing rivals is one of these, and
# says how many are not (`_issue_form_text`); a pair missing rivals for any other reason keeps it provisional.
_GONE = (
    "the machine holding their students went between two sessions before they ran or were timed, and a rebuilt "
    "student is another model: seed 2's at 0.5 scored 0.2837 against 0.3191, so no rival of it completes the "
    "table's pair; see fair_cola.md's Tried"
)
RIVALS_LEFT_OUT = {
    student: _GONE
    for student in (
        "train-cola-flops-lam0-b0.4-s1-4eb75a2f3d",
        "train-cola-flops-lam0-b0.4-s2-7a20408377",
        "train-cola-flops-lam0-b0.5-s1-d652f1209e",
        "train-cola-flops-lam0-b0.5-s2-9b471e219e",
    )
}
TRIED = {
    "stsb": (
        "- Tried so far (the method names give each recipe; the `run` column is the timing run, not the recipe): "
        "first the latency price at the default pace, then FLOPs gates with a price four times as fast, the budget "
        "reached at 40% of training and the gates frozen at 60%, so that 40% of the steps distil on a fixed "
        "structure (CoFiPruning's order: prune, then fine-tune). Then (`bench/sweeps/fair_stsb_start.yaml`, seeds 1 "
        "and 2) the same FLOPs recipe with the student starting from the teacher's weights rather than the "
        "pretrained model (as CoFiPruning prunes the fine-tuned model, and as every post-hoc rival starts), against "
        "Fisher importance choosing its own allocation and handed the student's. Last (`fair_stsb_clear.yaml`, seeds 1 "
        "and 2, same teachers): that student with only the schedule moved so the price has the steps to clear the "
        "budget (budget reached at 25% of training, gates frozen at 70%), against the same two rivals matched to "
        "the FLOPs it reached. Then (`fair_stsb_clear_b05.yaml`, `fair_stsb_clear_b05_s2.yaml`, same teachers) the same "
        "student at FLOPs budget 0.5, so the final recipe is counted at a second point of the frontier, against the "
        "same two rivals (both seeds' students, seed 1's rivals and then seed 2's, trained side by side in one "
        "session). At 0.5 the price overshot (shares 0.357 and 0.370): it wound up while the gates, which start "
        "open, had not yet answered. Then (`fair_stsb_anchor_b05_r1000.yaml`, `_r300.yaml`, run 5, same teachers) "
        "the same student at 0.5 with a stronger anchor (the controller's proportional term, see the reading): rho "
        "1000 at price_lr 2 and rho 300 at price_lr 0.5 side by side on seed 1, the one whose share ended nearest "
        "0.5 without passing 0.51 carried to seed 2 (`fair_stsb_anchor_b05_r1000_s2.yaml`), a rule fixed before any "
        "score was read: rho 1000 (0.489 against 0.476); rho 300's rivals ran too, so it counts as a recipe tried. "
        "At 0.5 the anchored student lost on both seeds to Fisher handed its structure, while that structure beat "
        "Fisher's own allocation on both: the gates chose well and the student had 30% of its steps to recover on "
        "the structure against the rival's 100%. So last (run 6, `fair_stsb_early_b05.yaml` and `_s2.yaml`, same "
        "teachers and steps): the anchored student with the budget in force at 15% of training and the gates frozen "
        "at 40%, 60% of the steps distilling on a fixed structure, a schedule the anchor makes possible (the share "
        "reaches the budget within tens of steps of it). Then (run 7, `fair_stsb_early_b03.yaml` and `_s2.yaml`, same "
        "teachers and steps) run 6's recipe at budget 0.3, where the unanchored cleared recipe had won both seeds, so "
        "one recipe is counted at two budgets; the question was fixed before any score was read. At 0.3 the anchored "
        "share stalls near budget - lambda / rho (0.258 and 0.260 with lambda about 40): below that the anchor "
        "outweighs the price and reopens gates. Run 7's students "
        "scored 0.8578 and 0.8561 (0.20 and 0.25 points below their teachers) at about 2.9x and 3.0x at batch 1 (the table has the latest timing), the "
        "fastest STS-B models within 0.5 points; against their best rivals: seed 1 -0.0025 (Fisher choosing its own "
        "allocation), seed 2 +0.0003 (Fisher handed its structure). Run 6's seed 2 pair, finished in the same "
        "session: -0.0005 against Fisher's own allocation, +0.0036 against Fisher handed its structure. So the "
        "recipe won 1 of its 4 pairs across the two budgets, mean -0.0008, no gap larger than 0.0025: with the same "
        "teacher, distillation and steps, the structure the gates chose and Fisher's tie at both budgets, and no "
        "recipe tried has won at both. Run 8 (`fair_stsb_fisher_b03.yaml` and `_s2.yaml`, `bench/run_fair.sh "
        "stsb-fisher-b03`): run 7's recipe with the gates started in Fisher's order (`gate_init: fisher`, the start "
        "that won both of CoLA's pairs), because where runs 5 to 7 lost they lost mostly to Fisher choosing its own "
        "allocation while beating Fisher handed the student's structure. Its students scored 0.8637 and 0.8571 (seed 1 "
        "0.38 points above its teacher, seed 2 0.15 below; about 2.7x at batch 1), both above run 7's at a similar share (0.275 and 0.278, "
        "again budget - lambda / rho), and well ahead of Fisher choosing its own allocation on both seeds (+0.0102, "
        "+0.0166); against Fisher handed their structure, seed 1 +0.0079 and seed 2 -0.0044: 1 of 2 pairs, mean "
        "+0.0017. Fisher's ordering as the gates' start closed the allocation gap on both seeds; seed 2 lost on "
        "recovery, by less than the noise below. Run 9 (`fair_stsb_fisher_b05.yaml` and `_s2.yaml`, `bench/run_fair.sh "
        "stsb-fisher-b05`, on a new machine, both teachers trained again: see below) ran the same recipe at budget 0.5, "
        "and run 10 (`fair_stsb_fisher_b04.yaml` and `_s2.yaml`, `stsb-fisher-b04`) at 0.4, queued before any of run "
        "9's scores was read so that the recipe is counted on issue #10's own form, six pairs (three budgets, two "
        "seeds); run 10's seed 2 started after seed 1's pair was known, as the session's time allowed. At 0.5 the "
        "students scored 0.8644 and 0.8640 (0.46 and 0.53 points above their teachers, shares 0.488 and 0.490, about "
        "1.8x at batch 1): +0.0044 on both seeds against Fisher choosing its own allocation, +0.0011 and -0.0002 against "
        "Fisher handed their structure. At 0.4 they scored 0.8618 and 0.8593 (0.20 and 0.07 points above their "
        "teachers, share 0.383 and 0.386, about 2.2x): +0.0017 and -0.0004 against Fisher's own allocation, +0.0007 and "
        "-0.0018 against Fisher handed their structure. So the Fisher-start recipe won 3 of its 6 pairs, mean +0.0006: "
        "seed 1 won at all three budgets and seed 2 lost at all three, every gap but one within 0.0045, so on STS-B the "
        "gates' structure and Fisher's, each given the same teacher, distillation and steps, tie, and issue #10's 4 of 6 "
        "is missed by one pair. Then a fairness check of the rivals (a later session, same machine, so the same "
        "teachers, students and timing run): every retrained rival so far started from the least-squares repair of "
        "its kept units solved on the dense model's inputs, all layers at once (`rescale: true`), and at run 10's "
        "seed-1 structure that repair had made the untrained model worse (-0.56 against -0.21 unrepaired). So the "
        "Fisher rivals of runs 9 and 10 were retrained again, same teacher, distillation and steps, from two other "
        "starts: no repair (`fair_stsb_norepair_b04*.yaml`, `_b05*.yaml`, `bench/run_fair.sh stsb-norepair`), and "
        "Kwon et al.'s own order (`rescale: layerwise`, `fair_stsb_layerwise_*.yaml`, `stsb-layerwise`: layer by "
        "layer on the pruned model's own inputs against the dense model's sublayer sums, the last layer on [CLS] "
        "alone, stopping where a scale passes 10; for Fisher's own allocation only, since handed the student's "
        "structure at 0.4 it scored below no repair before retraining, -0.71 and 0.28 against -0.21 and 0.57). "
        "Untrained, the layer-by-layer repair is the best start for Fisher's own allocation at 0.4 (0.47 and 0.70 "
        "against 0.33 and 0.62 for the one-step repair, 0.21 and 0.53 unrepaired), but retrained it is the worst "
        "(0.8595 and 0.8585). At 0.4 the unrepaired start beat the repaired one on both seeds and both "
        "allocations, by 0.0017 to 0.0034, and both students now lose (-0.0022 and -0.0035, to Fisher handed "
        "their structure); at 0.5 no pair changed sign (seed 1 still +0.0011, the unrepaired start tying the "
        "repaired one at 0.8633; seed 2 still -0.0002). So the repair handicapped the rivals where many units go, "
        "and the Fisher-start recipe won 2 of its 6 pairs, mean -0.0002 (3 of 6, +0.0006, before). Run 8's pairs at "
        "0.3 were still against repaired rivals only, its models having gone with an earlier machine; so (a third "
        "session on this machine, `fair_stsb_norepair_b03*.yaml`, `bench/run_fair.sh stsb-norepair-b03`) run 8's "
        "students were trained again, the same trials, to the same scores (0.8637 and 0.8571), and their Fisher "
        "rivals retrained from the unrepaired structure with the same teacher, distillation and steps. Unrepaired, "
        "Fisher's own allocation retrained better on both seeds (0.8598 and 0.8554, against 0.8535 and 0.8405 "
        "repaired), and Fisher handed the student's structure matched the repaired start on seed 1 (0.8558 against "
        "0.8557) and fell short of it on seed 2 (0.8597 against 0.8616). Seed 1's pair shrinks from +0.0079 to "
        "+0.0038 and stays a win; seed 2's "
        "stays -0.0044. So, every pair now against both starts, the Fisher-start recipe wins 2 of its 6 pairs, mean "
        "-0.0009, and every STS-B recipe together 5 of 21. Sweeps should give every rival both starts "
        "(`rescale: [false, true]`). Run 11 (`fair_stsb_hidden_b03.yaml` and `_s2.yaml`, `bench/run_fair.sh "
        "stsb-hidden-b03`, a fourth session on this machine, all its STS-B models timed again in one run, the table's run 3): run "
        "8's recipe with hidden-state distillation added at weight 1 (CoFiPruning's prediction + layer "
        "distillation), its Fisher rivals (unrepaired) learning with the same loss, hidden states included. The "
        "students scored 0.8631 and 0.8569, within 0.0006 of run 8's (0.8637 and 0.8571): a student that starts "
        "from its teacher's weights and distils its predictions gains nothing measurable from its hidden states "
        "too. Seed 1 won (+0.0035, against Fisher's own allocation), seed 2 lost by 0.0007 (to Fisher handed its "
        "structure): 1 of 2, mean +0.0014; every STS-B recipe together 6 of 23. Found later, by an audit of "
        "the rivals: every STS-B rival here measured its importance (and repair) on the first 128 training rows, "
        "all of them captions (one of STS-B's three genres; mean label 3.24 against 2.70 over the split), while a "
        "Fisher-started student measured 256 examples its seed drew from the whole split; the rivals won most "
        "pairs all the same. Rivals now measure on the student's examples (`calibration: seeded`). Run 12 "
        "(`fair_stsb_colarecipe_b0*.yaml`, `bench/run_fair.sh stsb-colarecipe`, queued before any score): "
        "CoLA's recipe (then 5 of 6 against first-rows rivals, 4 of 6 against seeded ones: fair_cola.md) carried to "
        "STS-B (Fisher gate start, unanchored, budget at 25% of training, gates frozen at 70%, unrepaired rivals) "
        "with the price as fast as STS-B's cleared run (price_lr 2; 540 steps to CoLA's 2680), at 0.3, 0.4 and "
        "0.5 on both seeds, its rivals seeded. At 0.3 (finished and timed in the table's run 3, a fifth session on "
        "this machine) the unanchored price cleared the budget, shares 0.252 and 0.259 (the anchored run 8 stalled "
        "at 0.275 and 0.278); the students scored 0.8610 and 0.8537, 0.12 points above and 0.49 below their "
        "teachers, at 2.96x and 2.67x at batch 1, and lost both pairs: seed 1 by 0.0027 to Fisher choosing its "
        "own allocation (0.8637), seed 2 by 0.0047 to Fisher handed its structure (0.8584). The seeded rivals "
        "retrained better at a smaller share than run 8's first-rows rivals did (Fisher's own allocation 0.8637 "
        "and 0.8556 at 0.25, against 0.8598 and 0.8554 at 0.28). Each rival retrained in about 12.5 minutes on "
        "one core. Run 12 can now reach 4 of 6 only by winning all four pairs at 0.4 and 0.5 (`BUDGETS=\"04 05\" "
        "bench/run_fair.sh stsb-colarecipe`, about an hour a budget: a student about 25 minutes, then its two "
        "rivals, each seed on one core). It never ran: it was queued after CoLA's repaired seeded rivals, and "
        "before it started the machine was replaced, its trial folders with it. Its teachers would have to train "
        "again first, and a model trained again on another machine is another model (CoLA's seed-2 student at 0.5 "
        "came back 0.035 MCC away, fair_cola.md), so it would be a new run of about 4 hours of one core (teachers, "
        "four students, eight rivals). The session that found this gave its cores to CoLA, whose count could "
        "still change; STS-B's is missed either way unless run 12 won all four pairs at 0.4 and 0.5 after losing "
        "both at 0.3. Run 12 stays at one budget, outside the issue's form. Left: schedules nearer "
        "CoFiPruning's (100 pruning epochs and 20 of fine-tuning on small tasks; these runs have 3 in all). CoLA: [fair_cola.md](fair_cola.md). The paper's tax at its own scale: "
        "[paper_scale_stsb.md](paper_scale_stsb.md)."
    ),
    "cola": (
        "- Tried so far: 10 epochs per run (the earlier frontier benchmark's 3 epochs lost about 15 MCC points at "
        "half the FLOPs, docs/frontier.md), the budget falling over the first 6 epochs and the gates frozen after "
        "7, so 3 epochs distil on a fixed structure; prediction-layer distillation from the 10-epoch teacher. Run 1: "
        "seed 1 at FLOPs budget 0.5 against activation, Fisher and Shapley rivals. Run 2: seed 1 at FLOPs budget "
        "0.3 (`bench/sweeps/fair_cola_b03.yaml`, `fair_cola_b03_activation.yaml`) against Fisher importance (choosing "
        "its own allocation, and handed the student's) and activation importance (handed the student's); then, in "
        "a later session on the same teacher (its folder was still there), two more students of the same recipe "
        "that start from the teacher's weights instead of the pretrained model, one with open gates and one with "
        "gates ordered by Fisher importance per MAC (`--gate-init fisher`; `fair_cola_b03_start.yaml`, "
        "`fair_cola_b03_fisherstart.yaml`), each against Fisher importance choosing its own allocation at the "
        "FLOPs the student reached (the rival that beat both earlier students); all of run 2 timed again in one "
        "run. Seed 2 (`fair_cola_b03_fisherstart.yaml`): its teacher and the Fisher-started student, timed together; "
        "its retrained rival, in a later session. Run 3 (`fair_cola_clear.yaml`, seed 1, same teacher): the "
        "Fisher-started student with only the schedule moved as on STS-B, the one that gave the STS-B price the "
        "steps to clear its budget ([fair_stsb.md](fair_stsb.md)): the budget reached at 25% of training and the "
        "gates frozen at 70%, so the price has 1206 steps to catch up instead of 268, at the same price_lr 0.5; "
        "against Fisher importance choosing its own allocation and handed the student's. Seed 2 of run 3 (same "
        "teacher as seed 2's Fisher-started student): its student started at the end of that session and, resumed "
        "from its step-780 checkpoint, finished with its rivals in the next. "
        "A session here has about 3 hours of 2 CPU cores and its models rarely outlive it, so each run must fit "
        "one session: a teacher (about 25 minutes), two students side by side (about 60) and their rivals (about "
        "45 each, two side by side). Up to run 3 every CoLA rival started from the one-step least-squares repair "
        "(`rescale: true`); on STS-B at budget 0.4 the same rivals retrained from the unrepaired structure scored "
        "0.0017 to 0.0034 higher, turning seed 1's win into a loss and widening seed 2's loss "
        "([fair_stsb.md](fair_stsb.md)), so those pairs may have favoured the students. Run 4 "
        "(`fair_cola_norepair_clear*.yaml`, `bench/run_fair.sh cola-norepair-clear`, both seeds side by side on one "
        "thread each, over two sessions) trained run 3's teacher and student again (same recipe, seeds and steps; "
        "run 3's models had gone with an earlier machine) with Fisher rivals from the unrepaired structure, both "
        "allocations, each retrained with the same teacher, distillation and steps; its pairs replace run 3's in the "
        "table. The students scored 0.2555 and 0.2876 against teachers of 0.2524 and 0.3114, at 2.84x and 2.62x at "
        "batch 1 in their first timing run (2.86x and 2.76x in the table's, with run 5), and beat their best unrepaired rivals by +0.0085 and +0.0343: the recipe's two wins hold against "
        "the rivals' other start. Seed 2's student lost 2.38 points to its teacher, past the 2-point limit, so the "
        "recipe meets the speed target on seed 1 and on the mean over seeds, not on both seeds. Run 4's wall time: "
        "the teachers about 2.2 hours each (the 25-minute estimate was for a quiet machine; two trials and timing runs "
        "shared the 2 cores), the students 0.6 hours of training each, and the two own-allocation rivals' clocks "
        "include 30 minutes paused (SIGSTOP) while issue #11's token timing ran. Run 5 (`fair_cola_b04.yaml` and "
        "`_s2.yaml`, `bench/run_fair.sh cola-b04`, a later session on the same machine, so run 4's teachers; both "
        "seeds side by side on one thread each; all of runs 4 and 5 timed again in one run, the table's run 3): run "
        "4's recipe at FLOPs budget 0.4, so the recipe is counted at a second point of the frontier, with the same "
        "unrepaired Fisher rivals (both allocations, same teacher, distillation and steps); the budget was fixed "
        "before any of its scores was read. The price overshot: the share trailed the budget in force and reached "
        "0.4 about 330 steps after the budget did (step 1000), by when lambda had risen to 28 and 32; the gates "
        "went on closing while lambda came down, and froze at 0.32 on both seeds (lambda 3.0 and 12.4), so the "
        "pairs sit at 0.32, each rival matched to the student's structure. Seed 1's student scored 0.2796, 2.72 "
        "points above its teacher, at 2.35x at batch 1, and beat its best rival by +0.0388; seed 2's scored 0.2905, "
        "2.09 points below its teacher (just past the 2-point limit), at 2.46x, and lost by 0.0079 to Fisher "
        "choosing its own allocation (0.2984), while beating Fisher handed its structure by 0.0371: the order that "
        "runs 1 and 2 showed, the gates' allocation and not the recovery losing. So the recipe won 3 of its 4 "
        "pairs across the two budgets, mean +0.0184, and every CoLA recipe together 5 of 9. Run 5's cost: the "
        "students about 43 minutes each (side by side, one thread each), the four retrained rivals 25 to 27 each, "
        "two at a time; the timing run 2.5 minutes. Run 6 (`fair_cola_b05.yaml` and `_s2.yaml`, `bench/run_fair.sh "
        "cola-b05`, the next session on the same machine, so the same teachers; queued before any of its scores "
        "was read; all of runs 4 to 6 timed again in one run, which replaces run 5's as the table's run 3): the "
        "recipe at its third budget, FLOPs 0.5, so that one recipe is counted in issue #10's own form, three "
        "budgets on two seeds. The price went past the budget again: lambda was about 16 and 20 at step 990, fell "
        "to 0 by step 1650 and stayed there, and the gates froze at shares 0.432 and 0.424, so the recipe's three "
        "budgets were realised at shares of about 0.26, 0.32 and 0.43, three distinct points of the frontier. "
        "Seed 1's student scored 0.2726, 2.02 points above its teacher, at 1.87x at batch 1, and beat its best "
        "rival by +0.0341; seed 2's scored 0.3191, 0.77 points above its teacher, at 1.95x, and beat Fisher handed "
        "its structure (0.3038) by +0.0153 and Fisher's own allocation by +0.0265. So the recipe won 5 of its 6 "
        "pairs, mean +0.0205: in the issue's form this recipe, the one chosen after runs 1 to 3 "
        "and then run at two more budgets fixed in advance, would meet the CoLA pair target, pending its rivals' "
        "rerun on the students' examples (the audit below); counting every CoLA recipe tried, the early "
        "ones included, 7 of 11 (64%), mean +0.0092. At 0.5 both seeds also meet the speed target, each and on the "
        "mean. Run 6's cost: the students about 42 minutes each (side by side, one thread each), the four retrained "
        "rivals 27 to 32 minutes each, two at a time (two of them resumed from checkpoints after the session that "
        "started them ended); the timing run (32 models, 20 rounds) about 4 minutes. Left: the latency budget "
        "(`bench/sweeps/fair_cola.yaml`), hidden-state distillation (`--distill-hidden-weight`, off here), and an "
        "anchored controller (`--budget-rho`) so the realised shares match the nominal budgets. Found after run 6, "
        "by an audit of the rivals: every CoLA rival up to here measured its Fisher importance (and, when repaired, "
        "its repair) on the first 128 training rows, which come from 2 of CoLA's 17 sources, while a "
        "Fisher-started student measured 256 examples its seed drew from the whole split. With no retraining at "
        "budget 0.5, seed 1's own-allocation rival scored 0.082 with those rows against 0.156 with 256 random "
        "examples (0.160 with 1,024; the head ranking's correlation with the 1,024-example one rose from 0.65 to "
        "0.77), which looked like a handicap (the rerun below found the draw of examples, not the first rows as "
        "such, made that difference). Every rival now measures on the examples the student measured (`calibration: seeded`), and "
        "`bench/run_fair.sh cola-seeded` (`fair_cola_seeded_b0*.yaml`) retrains runs 4 to 6's rivals that way, "
        "unrepaired and least-squares repaired, the best of them all to count; until it has, the recipe's 5 of 6 "
        "is provisional (the Targets say so). It started at the end of the session that found this and resumes "
        "from its checkpoints. Over the next two sessions every unrepaired seeded rival finished, all of them timed in the "
        "table's run 3 with every other CoLA model. Retrained, Fisher's own allocation scored 0.2503 and 0.2865 at 0.3 "
        "(on the first rows: 0.2440 and 0.2533), 0.2384 and 0.2761 at 0.4 (0.2408 and 0.2984) and 0.2663 and 0.2927 "
        "at 0.5 (0.2385 and 0.2926); Fisher handed the student's structure scored 0.2319 and 0.2588 at 0.3 (0.2470 "
        "and 0.2343), 0.2119 and 0.3007 at 0.4 (0.2385 and 0.2533) and 0.2824 and 0.2710 at 0.5 (0.2277 and "
        "0.3038). The student's examples helped 7 of these 12 rivals and hurt 5, by -0.0328 to +0.0547; untrained "
        "they also helped 7 of 12. At 0.5 seed 1's own-allocation rival scored 0.0862 untrained on the student's "
        "examples against 0.0816 on the first rows, so the audit's 0.156 came from another draw of 256 examples. "
        "The first rows were no handicap in one direction: which examples a rival measures moves its score by as "
        "much as the pairs' gaps. Against the best of all their rivals the students stand as before at 0.3 (+0.0051 "
        "and +0.0012), at 0.4 on seed 1 (+0.0388) and at 0.5 on seed 2 (+0.0153, still against Fisher handed its "
        "structure on the first rows); seed 2's loss at 0.4 grows from -0.0079 to -0.0102, and seed 1 at 0.5 turns "
        "from a win (+0.0341) into a loss (-0.0098), both to Fisher handed the student's structure on the student's "
        "examples: there the gates chose the structure and the rival recovered it better. So the recipe wins 4 of "
        "its 6 pairs, mean +0.0067 (5 of 6, +0.0205, against the first-rows rivals alone), still the issue's 4 of 6 "
        "but with no pair to spare, and every CoLA recipe together 6 of 11. Then the least-squares repaired seeded "
        "rivals (`BUDGETS=\"03 05 04\" bench/run_fair.sh cola-seeded`: the narrowest pairs first, since one more "
        "loss would make the count a miss; the order changes what finishes first, not what counts). At 0.3 (timed in "
        "the same run 3 as the rest) they retrained worse than the unrepaired seeded start in 3 of the 4: Fisher's "
        "own allocation 0.2274 and 0.2547 (unrepaired 0.2503 and 0.2865), Fisher handed the "
        "student's structure 0.2385 and 0.2535 (0.2319 and 0.2588; seed 1's repaired start the better by 0.0066), "
        "so both 0.3 pairs stand, every rival planned for them finished (+0.0051 and +0.0012). As on STS-B, where "
        "at 0.3 and 0.4 the repaired start retrained worse than the unrepaired one in 7 of 8 rivals, one of them "
        "by 0.0001 ([fair_stsb.md](fair_stsb.md)). The repaired rivals at 0.5 and "
        "0.4 never all ran. At 0.5 the two own-allocation ones finished (0.2320 on seed 1, 0.2966 on seed 2, both "
        "below their students; read from their metrics, never timed, so not in the table); then, between two "
        "sessions, the machine was replaced and every trial folder of this benchmark went with it, teachers and "
        "students included, before the other ten had finished (0.5's two handed the structure were training; "
        "0.4's eight, four of them untrained, had not started). The next session rebuilt seed 2's teacher and budget-0.5 "
        "student from the same sweep file, one core each as before, to finish that pair's rivals (on an Intel Xeon; "
        "the table's machines were AMD EPYC): the teacher came back the same to the last digit (0.3114), the "
        "student did not: 0.2837 at a FLOPs share of 0.435 after compaction, against 0.3191 at 0.427 the first time, with the same teacher, "
        "seed, data and steps (`bench/results/fair_cola_rebuild.json`). Training on these CPUs is not bitwise "
        "reproducible between machines: seed 1's teacher, rebuilt too, now has four scores from four trainings "
        "(0.2502, after 0.2546, 0.2577 and 0.2524), seed 2's the same score from all three; why one run reproduces and "
        "another does not was not traced. A rival "
        "retrained from that student would pair with another model than the table's, so its rivals were stopped "
        "and none of it is in the table, nor is seed 1's rebuilt teacher (its student was not rebuilt). So 12 "
        "planned rivals in 4 pairs are not in the table, 2 of them run but never timed (the Targets count them). Two of those pairs are losses already; 0.4 seed 1 (+0.0388) would turn only "
        "if a repaired rival retrained above its unrepaired seeded start by 0.041 (own allocation, 0.2384) or "
        "0.068 (handed the structure, 0.2119), and 0.5 seed 2 (+0.0153) only by 0.048 (handed the structure, "
        "0.2710; its own-allocation rival finished at 0.2966), where across the 6 CoLA rivals with both starts "
        "finished the repair moved the retrained score by -0.0343 to +0.0066. The count stands at 4 of 6, mean "
        "+0.0067, with no pair to spare, and the rebuilt student shows what that is worth: the same recipe, seed "
        "and teacher moved by 0.035 MCC between two machines, close to the largest pair margin (0.0388) and more "
        "than the others. The recipe does as well as Fisher pruning retrained with the same teacher, data and "
        "steps, at three budgets on two seeds; it does not beat it by more than CoLA's run-to-run noise. The "
        "rebuild cost about 1.2 hours of one core (teacher 32 minutes, student 37), and seed 1's teacher 34 "
        "minutes of the other."
    ),
}


def load(task: str) -> list[dict]:
    folder = Path(os.environ.get("ECONLM_BENCH_OUT", ROOT / "runs" / "bench_fair")) / task
    path = folder / "results.jsonl"
    if not path.exists():
        raise SystemExit(f"no results in {folder}; run bench/run_fair.sh {task} first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _is_plain(settings: dict) -> bool:
    from econlm.sweep import _is_plain as plain

    return plain(settings)


REPAIR_LABELS = {True: " +LS rescale", "layerwise": " +LS rescale layer by layer"}


def _label(r: dict) -> str:
    s = r["settings"]
    if r["kind"] == "train":
        if _is_plain(s):
            return "lambda=0 fine-tune (teacher)"
        recipe = ", ".join(
            f"{name} {s[key]:g}"
            for key, name in (
                ("price_lr", "price_lr"),
                ("budget_rho", "anchor rho"),
                ("budget_warmup", "budget warm-up"),
                ("gate_freeze", "freeze"),
            )
            if key in s
        )
        return (
            f"incentive {'+'.join(s['cost'])} budget {s['budget']}"
            + _distilled(s)
            + (" +from teacher" if s.get("start_from_teacher") else "")
            + (" +Fisher gate start" if s.get("gate_init") == "fisher" else "")
            + (f" ({recipe})" if recipe else "")
        )
    epochs = s["finetune_epochs"]
    spent = " (own allocation at the same FLOPs)" if s.get("allocation") == "global" else ""
    seeded = " +student's examples" if s.get("calibration") == RIVAL_CALIBRATION else ""
    return f"post-hoc {s['importance']}{spent}{REPAIR_LABELS.get(s.get('rescale'), '')}{seeded}, " + (
        f"{epochs} epochs" + _distilled(s) if epochs else "no retraining"
    )


def _distilled(settings: dict) -> str:
    """How a run was distilled: from the prediction layer, and from the hidden states at their weight."""
    if not settings.get("distill"):
        return ""
    hidden = settings.get("distill_hidden_weight")
    return " +distill" + (f" +hidden states {hidden:g}" if hidden else "")


def time_seed(models: dict[str, str], repeats: int) -> dict[str, dict[int, float]]:
    """Median seconds per forward of each model at each batch size, all interleaved in one run."""
    import torch

    from econlm.latency import measure_interleaved, model_call, random_inputs
    from econlm.models import load_model

    torch.set_num_threads(THREADS)
    loaded = {name: load_model(path).model.eval() for name, path in models.items()}
    out: dict[str, dict[int, float]] = {name: {} for name in models}
    for batch in BATCHES:
        inputs = random_inputs(batch, SEQ_LEN)
        timings = measure_interleaved(
            {name: model_call(m, inputs) for name, m in loaded.items()}, warmup=3, repeats=repeats
        )
        for name, timing in timings.items():
            out[name][batch] = timing.median
    return out


def _market(r: dict) -> dict:
    """Did the controller clear its budget? The share the gates' expected latency (or FLOPs) reached at the
    last step, the price then, and the price path."""
    metrics = json.loads((Path(r["model_dir"]) / "metrics.json").read_text())
    last = metrics.get("cost_terms_last_step") or {}
    history = metrics.get("lambda_history") or []
    return {
        "budget": r["settings"].get("budget"),
        "share_at_end": last.get("cost/compute_share"),
        "lambda_final": metrics.get("lambda_final"),
        "lambda_path": history[:: max(1, len(history) // 8)],
        "gate_freeze": r["settings"].get("gate_freeze", 0.7),
        "price_lr": r["settings"].get("price_lr", 0.5),
        "budget_rho": _rho(r["settings"]),
        "cost": "+".join(r["settings"].get("cost", [])),
        "clearing": metrics.get("budget_clearing") or _clearing_from_events(Path(r["model_dir"]), metrics),
    }


def _rho(settings: dict) -> float:
    """The anchor's weight a run trained with: its own setting, else the library's default."""
    from econlm.incentive import TaxConfig

    return settings.get("budget_rho", TaxConfig.budget_rho)


def _clearing_from_events(model_dir: Path, metrics: dict) -> dict | None:
    """For runs trained before metrics.json kept the share's path: the same reading from TensorBoard's record
    of the share (`cost/compute_share`, every logged step)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from econlm.prices import clearing

    config = json.loads((model_dir / "train_config.json").read_text())
    if config.get("budget") is None:
        return None
    history = [
        # torch's SummaryWriter stores a scalar as a one-value tensor, older writers as simple_value
        [event.step, value.tensor.float_val[0] if value.tensor.float_val else value.simple_value]
        for path in sorted((model_dir / "tb").glob("events*"))
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
        if value.tag == "cost/compute_share"
    ]
    froze = config["gate_freeze"] < 1
    return clearing(
        config["budget"],
        history,
        metrics["train"]["steps"],
        config["budget_warmup"],
        config["gate_freeze"] if froze else None,
    )


def _lag(clearing: dict | None) -> str:
    """How far the share still had to go when the gates froze (econlm.prices.clearing), as a sentence."""
    if not clearing:
        return ""
    falling = clearing.get("falling_per_100_steps")
    still = ", no longer falling"
    if falling is not None and falling > 0.001:
        gap = clearing["share_at_freeze"] - clearing["budget"]
        still = f", still falling {falling:.3f} per 100 steps" + (
            f" (at that pace about {gap / falling * 100:.0f} more steps to the budget)" if gap > 0 else ""
        )
    return (
        f" When the budget reached its value (step {clearing['budget_step']}) the share was "
        f"{clearing['share_when_budget_in_force']:.3f}; the gates froze {clearing['steps_to_catch_up']} steps later, "
        f"the last step before paying for {clearing['share_at_freeze']:.3f}{still}."
    )


def _lagging(markets: list[dict]) -> str | None:
    """The pattern behind the missed budgets: a share still falling at the freeze means the price ran out of
    steps, not that the budget cannot be bought."""
    missed = [r for r in markets if (r["market"].get("clearing") or {}).get("cleared") is False]
    falling = [r for r in missed if (r["market"]["clearing"].get("falling_per_100_steps") or 0.0) > 0.001]
    if not missed or len(falling) < len(missed):
        return None
    cleared = [r for r in markets if (r["market"].get("clearing") or {}).get("cleared")]
    gaps = sorted(r["market"]["clearing"]["steps_to_catch_up"] for r in missed)
    runs = {1: "the one run that missed its budget", 2: "both runs that missed their budget"}.get(
        len(missed), f"all {len(missed)} runs that missed their budget"
    )
    span = f"{gaps[0]}" if gaps[0] == gaps[-1] else f"{gaps[0]} to {gaps[-1]}"
    return (
        f"- Of the runs whose share's path was read, in {runs} the share was still falling when the gates froze: "
        "the dual ascent is an integral controller, "
        "so the share trails the budget in force, and the recipes left it "
        f"{span} steps between the budget's full value and the freeze. The price ran out of steps; "
        "nothing showed the budget could not be bought. CoFiPruning leaves 80 of its 100 pruning epochs after the "
        "sparsity warm-up. `econlm train` now says so at the end of such a run (one warning line with the share's "
        "path)"
        + (
            _given_steps(cleared)
            if cleared
            else ", and a recipe that warms the budget up sooner or freezes later is the next thing to try."
        )
    )


def _anchors(markets: list[dict]) -> str | None:
    """Students of one cost and budget that differ in the anchor's weight rho: where their shares ended. The
    anchor's gradient on the share, rho * (share - budget), is the controller's proportional term next to
    lambda's integral one (econlm.incentive)."""
    groups: dict[tuple, list[dict]] = {}
    for r in markets:
        groups.setdefault((r["market"]["cost"], r["market"]["budget"]), []).append(r)

    def rho(r: dict) -> float:
        return _rho(r["market"])  # a market saved before rho was read ran at the default

    lines = []
    for (cost, budget), runs in sorted(groups.items()):
        if len({rho(r) for r in runs}) < 2 or any(r["market"]["share_at_end"] is None for r in runs):
            continue
        runs = sorted(runs, key=lambda r: (rho(r), r["market"]["price_lr"], -r["market"]["gate_freeze"], r["seed"]))
        lines.append(
            f"{'dense latency' if cost == 'latency' else 'FLOPs'} budget {budget}: "
            + "; ".join(
                f"rho {rho(r):g}, price_lr {r['market']['price_lr']:g}, freeze {r['market']['gate_freeze']:g}, "
                f"seed {r['seed']}: share {r['market']['share_at_end']:.3f}, final lambda "
                f"{r['market']['lambda_final']:.3g}"
                for r in runs
            )
        )
    if not lines:
        return None
    return (
        "- The anchor's weight. The price on the share is lambda (the integral of the share's error) plus the "
        "anchor's rho x (share - budget), a proportional term that turns negative, and reopens gates, once the share "
        "is more than lambda / rho below the budget. The gates start open (log-alpha 5) and take tens of steps to "
        "answer any price, and during that dead time the integral winds up; a weak anchor (rho 20, the default) "
        "cannot pull the share back from a wound-up lambda, a strong one keeps lambda low by tracking the annealed "
        "budget from the start. " + ". ".join(lines) + "."
    )


def _why_below(market: dict) -> str:
    """Why a cleared share ended below its budget. With the anchor, gates stop closing where its pull
    rho x (budget - share) equals the price lambda, so a share near budget - lambda / rho is that balance;
    otherwise the integral term overshot once the gates, which start open, began to answer it."""
    share, budget = market["clearing"]["share_final"], market["clearing"]["budget"]
    lam, rho = market.get("lambda_final"), _rho(market)  # a market saved before rho was read ran at the default
    if lam is not None and abs(budget - lam / rho - share) <= 0.01:
        return (
            f"below it by about lambda / rho = {lam:.3g} / {rho:.4g} = {lam / rho:.3f}, where the anchor's pull "
            "balances the price"
        )
    return "below it: the integral term overshoots once the gates respond"


def _given_steps(cleared: list[dict]) -> str:
    """The runs whose recipe left the price enough steps, and what they reached: the test of the lag reading."""

    def reached(r: dict) -> str:
        c = r["market"]["clearing"]
        below = c["share_final"] < c["budget"] - 0.01  # past the tolerance clearing allows above the budget
        return (
            f"seed {r['seed']}'s {r['method']} ({c['steps_to_catch_up']} steps to catch up) ended at a share of "
            f"{c['share_final']:.3f} against {c['budget']}" + (f" ({_why_below(r['market'])})" if below else "")
        )

    return "; given more steps, the price cleared it: " + "; ".join(reached(r) for r in cleared) + "."


def _refresh(task: str, rows: list[dict]) -> None:
    """Read again, from the trials still on this machine (no timing), what their files hold: each incentive
    row's market (the price's path and the share's), and the latency table's prediction of each compacted row
    that lacks one (it needs only the model's structure; rows of machines gone stay without one)."""
    try:
        trials = {r["id"]: r for r in load(task)}
    except SystemExit:  # no benchmark folder here: the saved readings stand
        return
    for row in rows:
        trial = trials.get(row["id"])
        if trial is None:
            continue
        if row.get("market") and (Path(trial["model_dir"]) / "metrics.json").exists():
            row["market"] = _market(trial)
        unpredicted = not row.get("predicted_speedup_b1") and not row["method"].startswith("lambda=0")
        if unpredicted and (Path(trial["final_model"]) / "config.json").exists():
            row["predicted_speedup_b1"] = predicted_speedup(trial["final_model"])


def predicted_speedup(final_model: str) -> float | None:
    from econlm.flops import Structure
    from econlm.latency_table import load_table
    from econlm.models import load_model

    if not TABLE.exists():
        return None
    structure = Structure.of_model(load_model(final_model).model)
    return load_table(TABLE).predicted_speedup(list(structure.heads), list(structure.ffn))


def summarize(task: str, repeats: int) -> tuple[dict, str]:
    everything = load(task)
    results = [
        r
        for r in everything
        if r.get("status") == "ok"
        and r["kind"] in ("train", "posthoc")
        and "tokens" not in r["settings"].get("cost", ())
    ]  # a run that also drops tokens is issue #11's (docs/tokens_<task>.md): its rivals and timing differ
    wall = sum(r.get("seconds", 0.0) for r in everything)
    seeds = sorted({r["settings"]["seed"] for r in results})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    previous_path = RESULTS / f"fair_{task}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else None
    saved_rows = runs_of(previous)[0] if previous else []
    rebuilt = rebuilt_students(saved_rows, results)
    if rebuilt:
        raise SystemExit(
            f"{', '.join(rebuilt)} trained again since its rivals were saved: a student trained again is another "
            "model (CoLA's seed-2 student at 0.5 went from 0.3191 to 0.2837), so its saved rivals would pair with "
            "the wrong one; move the new trial folder out of the benchmark folder before timing"
        )
    missing = missing_rivals(task, {r["id"]: r for r in everything if r.get("status") == "ok"}, saved=saved_rows)
    rows, loads = [], []
    for seed in seeds:
        mine = [r for r in results if r["settings"]["seed"] == seed]
        teacher = next((r for r in mine if r["kind"] == "train" and _is_plain(r["settings"])), None)
        if teacher is None:
            continue
        students = [r for r in mine if r is not teacher]
        models = {"teacher": teacher["final_model"], **{r["id"]: r["final_model"] for r in students}}
        load_before = os.getloadavg()[0]
        times = time_seed(models, repeats)
        loads.append((load_before, os.getloadavg()[0]))
        for r in [teacher, *students]:
            key = "teacher" if r is teacher else r["id"]
            row = {
                "seed": seed,
                "id": r["id"],
                "method": _label(r),
                "matches": r["settings"].get("matches"),
                "allocation": r["settings"].get("allocation", "matched"),
                "retrained": bool(r["settings"].get("finetune_epochs")),
                "calibration": r["settings"].get("calibration", FIRST_ROWS) if r["kind"] == "posthoc" else None,
                "score": r["score"],
                "lost": teacher["score"] - r["score"],
                "flops_share": r["dense_flops"] / teacher["dense_flops"],
                "training_steps": r["training"]["steps"],
                "training_seconds": r["training"]["seconds"],
                "trial_seconds": r.get("seconds"),  # with the id, tells this training run from a rerun of it
                "timed": now,
                **{f"speedup_b{b}": times["teacher"][b] / times[key][b] for b in BATCHES},
            }
            if r is not teacher:  # every compacted model, rivals too: the target is the table's, not a method's
                row["predicted_speedup_b1"] = predicted_speedup(r["final_model"])
                if r["kind"] == "train":
                    row["market"] = _market(r)
                    row["rivals_missing"] = missing.get(r["id"], 0)
            rows.append(row)
    from econlm.runinfo import git_hash, versions

    run = {
        "time_utc": now,
        "git": git_hash(),
        "versions": versions(),
        "repeats": repeats,
        "trial_wall_seconds": wall,
        "load_average": loads,  # 1-minute load before and after each seed's timing: other work on the cores
    }
    rows, runs = merge_runs(previous, rows, run)
    pairs = pairs_of(rows)
    payload = {"task": task, "rows": rows, "pairs": pairs, "runs": runs}
    return payload, render(task, rows, pairs, runs)


def rebuilt_students(saved_rows: list[dict], trials: list[dict]) -> list[str]:
    """The incentive trials here whose id a saved row has, from another training (other trial seconds), while
    saved rivals were made from that earlier training: timing them would replace the student and keep its
    rivals, pairing models that were never paired."""
    rivals_of = {r["matches"] for r in saved_rows if r.get("matches")}
    # a row saved before trial seconds were kept (None) matches no training: its student counts as trained again
    saved = {(r["id"], r.get("trial_seconds")) for r in saved_rows if r["method"].startswith("incentive")}
    paired = {row_id for row_id, _ in saved} & rivals_of
    return sorted(
        t["id"] for t in trials if t["kind"] == "train" and t["id"] in paired and (t["id"], t.get("seconds")) not in saved
    )


def runs_of(payload: dict) -> tuple[list[dict], list[dict]]:
    """The rows and timing runs a saved payload holds; one saved before runs were kept is one run, told by its
    meta, and every row is of it."""
    if "runs" in payload:
        return payload["rows"], payload["runs"]
    runs = [
        {
            "time_utc": payload["meta"]["time_utc"],
            "git": payload["meta"]["git"],
            "versions": payload["meta"].get("versions", {}),
            "repeats": payload.get("repeats"),
            "trial_wall_seconds": payload.get("trial_wall_seconds", 0.0),
            "load_average": payload.get("load_average") or [],
        }
    ]
    return [{**row, "timed": runs[0]["time_utc"]} for row in payload["rows"]], runs


def merge_runs(previous: dict | None, rows: list[dict], run: dict) -> tuple[list[dict], list[dict]]:
    """This session's rows and timing run next to the ones earlier sessions saved.

    A session's models are gone when its machine is (2-core sessions of a few hours here), so each session
    times what it trained against its own teacher, and earlier sessions' rows stay as they were measured: every
    speedup is still a ratio from one interleaved run. An earlier run that timed any of the same training runs
    (same trial id and trial seconds: this session summarized twice) is replaced; of the others, a row whose trial
    this session trained again gives way to the new one, except a teacher, which its own run's rows were measured
    against. Returns (rows, runs) ordered by seed, then run."""
    if previous is None:
        return rows, [run]
    earlier_rows, earlier = runs_of(previous)
    fresh = {(r["id"], r.get("trial_seconds")) for r in rows}
    replaced = {
        r["timed"]
        for r in earlier_rows
        if r.get("trial_seconds") is not None and (r["id"], r["trial_seconds"]) in fresh
    }
    retrained = {r["id"] for r in rows}
    kept = [
        r
        for r in earlier_rows
        if r["timed"] not in replaced and (r["id"] not in retrained or r["method"].startswith("lambda=0"))
    ]
    runs = [r for r in earlier if r["time_utc"] not in replaced] + [run]
    order = {r["time_utc"]: i for i, r in enumerate(runs)}
    merged = sorted(kept + rows, key=lambda r: (r["seed"], order[r["timed"]]))  # stable: each run's own order
    return merged, runs


def display_order(rows: list[dict]) -> list[dict]:
    """Each run's rows as a reader compares them: the teacher, then every incentive model followed by the rivals
    paired with it (retrained before untrained), then anything else; runs and seeds keep their order."""
    ordered = []
    for key in dict.fromkeys((r["seed"], r.get("timed")) for r in rows):
        mine = [r for r in rows if (r["seed"], r.get("timed")) == key]
        teachers = [r for r in mine if r["method"].startswith("lambda=0")]
        students = [r for r in mine if r["method"].startswith("incentive")]
        placed = teachers[:]
        for student in students:
            rivals = [r for r in mine if r.get("matches") == student["id"] and r not in placed]
            placed += [student] + sorted(rivals, key=lambda r: (not r.get("retrained"), _allocation(r) != "global"))
        ordered += placed + [r for r in mine if r not in placed]
    return ordered


def _rival_spread(rows: list[dict]) -> str | None:
    """The largest gap between two retrained rivals of one recipe and run at nearly the same FLOPs (within 0.05):
    how far a score moves when nothing but a few percent of compute changes, a floor for reading the pairs."""
    widest = None
    for a in rows:
        for b in rows:
            same = (a["method"], a["seed"], a.get("timed")) == (b["method"], b["seed"], b.get("timed"))
            if (
                a["method"].startswith("post-hoc")
                and a.get("retrained")
                and same
                and a["id"] < b["id"]
                and abs(a["flops_share"] - b["flops_share"]) <= 0.05
                and (widest is None or abs(a["score"] - b["score"]) > abs(widest[0]["score"] - widest[1]["score"]))
            ):
                widest = (a, b)
    if widest is None:
        return None
    a, b = sorted(widest, key=lambda r: r["flops_share"])
    return (
        f"- The same rival recipe ({a['method']}, seed {a['seed']}) at FLOPs shares {a['flops_share']:.3f} and "
        f"{b['flops_share']:.3f} scored {a['score']:.4f} and {b['score']:.4f}, {abs(a['score'] - b['score']):.4f} "
        "apart: when a few percent of compute and the units it removes are all that differ, the score moves by "
        "this much, so a pair's difference smaller than it says nothing about the methods."
    )


def _allocation(row: dict) -> str:
    """``global`` for a rival that chose its own per-layer allocation (older results say so in the label)."""
    return row.get("allocation") or ("global" if "own allocation" in row["method"] else "matched")


# A rival from before `calibration: seeded` (econlm.sweep.RIVAL_CALIBRATION): its Fisher importance (and repair)
# was measured on the first 128 training rows, which for CoLA are 2 of its 17 sources, while a Fisher-started
# student measured 256 examples its seed drew.
FIRST_ROWS = "first 128 rows"


def _calibration(row: dict) -> str:
    return row.get("calibration") or FIRST_ROWS  # rows saved before the field were all first-rows rivals


def missing_rivals(
    task: str, finished: dict[str, dict], sweeps: Path = ROOT / "bench" / "sweeps", saved: list[dict] | tuple = ()
) -> dict[str, int]:
    """For each incentive model whose rivals measure on its student's examples (`calibration: seeded`), how many
    of the seeded rivals its sweep files plan have not finished: until they have, its pair is provisional (the
    best of all its rivals counts, and some have not run). The plan is what each sweep would run now, from its own
    finished training trials (``econlm.sweep.baseline_specs``). Incentive models with no seeded rival finished
    are left out: their pairs are provisional already, and their old sweep files were never rerun seeded.
    `saved` holds the rows earlier sessions saved: a rival that finished on a machine since gone is not missing,
    though its trial is no longer here, and its student has started its seeded rivals."""
    from econlm.sweep import baseline_specs, expand, load_sweep

    planned: dict[str, set[str]] = {}
    for path in sorted(sweeps.glob(f"fair_{task}*.yaml")):
        config = load_sweep(path)
        if not config.baselines.get("posthoc"):
            continue
        trained = {spec["id"]: finished[spec["id"]] for spec in expand(config) if spec["id"] in finished}
        for spec in baseline_specs(config, trained):
            if spec["kind"] == "posthoc" and spec["settings"].get("calibration") == RIVAL_CALIBRATION:
                planned.setdefault(spec["settings"]["matches"], set()).add(spec["id"])
    started = {
        r["settings"]["matches"]
        for r in finished.values()
        if r["kind"] == "posthoc" and r["settings"].get("calibration") == RIVAL_CALIBRATION
    } | {r["matches"] for r in saved if r.get("matches") and r.get("calibration") == RIVAL_CALIBRATION}
    measured = {r["id"] for r in saved}
    return {
        incentive: len(ids - finished.keys() - measured) for incentive, ids in planned.items() if incentive in started
    }


def pairs_of(rows: list[dict]) -> list[dict]:
    """Each incentive model against the best retrained rival with the same teacher and steps, and separately
    against the best one handed its per-layer structure and the best one that chose its own (global)."""
    pairs = []
    for incentive in (r for r in rows if r["method"].startswith("incentive")):
        rivals = [r for r in rows if r["matches"] == incentive["id"] and r["retrained"]]
        if not rivals:
            continue
        best = max(rivals, key=lambda r: r["score"])
        pair = {
            "seed": incentive["seed"],
            "incentive": incentive["method"],
            "incentive_score": incentive["score"],
            "best_rival": best["method"],
            "rival_score": best["score"],
            "difference": incentive["score"] - best["score"],
            "same_steps": incentive["training_steps"] == best["training_steps"],
            # Did a rival measure its importance on the student's examples? Rows saved before the field: no.
            "seeded_rivals": any(_calibration(r) == RIVAL_CALIBRATION for r in rivals),
            # Planned seeded rivals not finished when it was timed (rows saved before the field: none planned).
            "rivals_missing": incentive.get("rivals_missing", 0),
            "id": incentive["id"],
        }
        for allocation in ("matched", "global"):
            mine = [r for r in rivals if _allocation(r) == allocation]
            if mine:
                top = max(mine, key=lambda r: r["score"])
                pair[f"{allocation}_rival"] = top["method"]
                pair[f"{allocation}_difference"] = incentive["score"] - top["score"]
        pairs.append(pair)
    return pairs


BUDGET = re.compile(r" budget ([0-9.]+)")  # in an incentive method's name (`_label`)


def _without_budget(method: str) -> str:
    """An incentive method's name with its budget left out: the same recipe at another point of the frontier."""
    return BUDGET.sub("", method)


def _by_schedule(pairs: list[dict]) -> dict[str, list[dict]]:
    """The pairs of each recipe with its budget left out; a method named without a budget has none."""
    schedules: dict[str, list[dict]] = {}
    for p in pairs:
        if BUDGET.search(p.get("incentive", "")):
            schedules.setdefault(_without_budget(p["incentive"]), []).append(p)
    return schedules


def _count(mine: list[dict], where: str) -> str:
    return (
        f"{sum(p['difference'] >= 0 for p in mine)} of {len(mine)} ({where}), "
        f"{statistics.mean(p['difference'] for p in mine):+.4f}"
    )


def _pairs_by_recipe(pairs: list[dict]) -> list[str]:
    """The pair count of each recipe across seeds: the target counts every recipe tried, early ones included,
    so a recipe that wins on every seed shows here and not in the total. A recipe run at more than one budget
    is also counted across its budgets, the count the target asks of one method."""
    recipes: dict[str, list[dict]] = {}
    for p in pairs:
        recipes.setdefault(p["incentive"], []).append(p)
    if len(recipes) < 2:
        return []
    lines = ["  - by recipe (pairs won of pairs, seeds, mean difference):"] + [
        f"    - {recipe}: "
        + _count(mine, f"seed{'s' if len(mine) > 1 else ''} {', '.join(str(p['seed']) for p in mine)}")
        for recipe, mine in recipes.items()
    ]
    schedules = _by_schedule(pairs)
    across = {name: mine for name, mine in schedules.items() if len({p["incentive"] for p in mine}) > 1}
    if across:
        lines.append("  - by recipe across its budgets (pairs won of pairs, budget/seed, mean difference):")
        for name, mine in across.items():
            where = ", ".join(
                f"{BUDGET.search(p['incentive']).group(1)}/{p['seed']}"
                for p in sorted(mine, key=lambda p: (p["incentive"], p["seed"]))
            )
            lines.append(f"    - {name}: {_count(mine, where)}")
    return lines


def issue_form(pairs: list[dict]) -> list[dict]:
    """The recipes counted in issue #10's own form: one recipe (the method with its budget left out) at three
    or more budgets, each on two or more seeds. Every recipe tried still counts in the total; this is the count
    of one method the target describes, which a late recipe can reach only by running all of it."""
    found = []
    for name, mine in _by_schedule(pairs).items():
        seeds_by_budget: dict[str, set] = {}
        for p in mine:
            seeds_by_budget.setdefault(BUDGET.search(p["incentive"]).group(1), set()).add(p["seed"])
        if sum(len(seeds) >= 2 for seeds in seeds_by_budget.values()) >= 3:
            wins = sum(p["difference"] >= 0 for p in mine)
            found.append(
                {
                    "recipe": name,
                    "wins": wins,
                    "pairs": len(mine),
                    "mean": statistics.mean(p["difference"] for p in mine),
                    "met": wins / len(mine) >= 4 / 6,
                    "unseeded": sum(not p.get("seeded_rivals") for p in mine),
                    "incomplete": [p.get("id") for p in mine if p.get("rivals_missing")],  # their students
                    "rivals_missing": sum(p.get("rivals_missing", 0) for p in mine),
                }
            )
    return found


def _issue_form_text(form: dict, after_recipe: str = ": ", left_out: dict[str, str] | None = None) -> str:
    """One recipe's count in the issue's form and its verdict. `left_out` maps students to why their planned
    rivals still missing will never be in the table (``RIVALS_LEFT_OUT``): when it covers every pair missing
    rivals, the count is final against the rivals in the table, and says how many are not."""
    verdict = "met" if form["met"] else "**missed**"
    # More rivals can only take pairs away, so a miss stands; a met target waits for every rival it was given.
    reasons = []
    if form["met"] and form.get("unseeded"):
        reasons.append(
            f"in {form['unseeded']} of its {form['pairs']} pairs the rivals measured Fisher importance on the first "
            "128 training rows only, not also on the examples the student measured (their rerun: `calibration: "
            "seeded`)"
        )
    unrun = ""
    if form["met"] and form.get("incomplete"):
        missing, incomplete = form.get("rivals_missing", 0), form["incomplete"]
        reasons_gone = list(dict.fromkeys((left_out or {}).get(i) for i in incomplete))
        if None not in reasons_gone:
            unrun = (
                f"in {len(incomplete)} of its {form['pairs']} pairs {missing} planned "
                f"rival{'s are' if missing != 1 else ' is'} not in the table and never will be "
                f"({'; '.join(reasons_gone)})"
            )
        else:
            reasons.append(
                f"in {len(incomplete)} of its {form['pairs']} pairs some planned rivals had not finished "
                f"({missing} rival{'s' if missing != 1 else ''} in all)"
            )
    if reasons:
        verdict = "met only provisionally: " + "; ".join([*reasons, unrun] if unrun else reasons)
    elif unrun:
        verdict = "met against every rival in the table; " + unrun
    return f"{form['recipe']}{after_recipe}{form['wins']} of {form['pairs']}, mean {form['mean']:+.4f}, {verdict}"


# The standard error of a correlation r on n examples, sqrt((1 - r^2) / (n - 2)): MCC and Pearson are
# correlations (Spearman nearly so), so it says how far one dev split's score moves by sampling alone.
DEV_EXAMPLES = {"stsb": 1500, "cola": 1043}


def correlation_se(r: float, n: int) -> float:
    """sqrt((1 - r^2) / (n - 2)): the sampling error of a correlation r measured on n examples."""
    return ((1 - min(r**2, 1.0)) / max(n - 2, 1)) ** 0.5


def _noise(task: str, rows: list[dict], pairs: list[dict]) -> str | None:
    n = DEV_EXAMPLES.get(task)
    teacher = next((r for r in rows if r["method"].startswith("lambda=0")), None)
    if n is None or teacher is None:
        return None
    se = correlation_se(teacher["score"], n)
    gaps = [abs(p[k]) for p in pairs for k in ("difference", "matched_difference", "global_difference") if k in p]
    largest = f" (here at most {max(gaps):.4f})" if gaps else ""
    return (
        f"- How much is noise: a correlation of {teacher['score']:.3f} measured on {n} dev examples has a standard "
        f"error of about {se:.3f} (sqrt((1 - r^2) / (n - 2))). The models are scored on the same examples, so "
        f"their differences vary less than that, but one seed's differences of this size{largest} are not "
        "evidence of a better method; what can tell is the same sign on every seed (and budget) of one recipe."
    )


def _allocation_pattern(pairs: list[dict]) -> str | None:
    """Two or more pairs where the incentive run beat every rival handed its structure but lost to one that chose
    its own allocation: the structure the gates found, not the recovery on it, is what lost. Pairs ahead of both
    kinds of rival are named as the exceptions, and what they did differently is the lead."""
    both = [p for p in pairs if "matched_difference" in p and "global_difference" in p]
    same = [p for p in both if p["matched_difference"] >= 0 > p["global_difference"]]
    if len(same) < 2:
        return None
    ahead = [p for p in both if p["matched_difference"] >= 0 and p["global_difference"] >= 0]
    line = (
        f"- The same order in {len(same)} of {len(both)} pairs: the incentive run ahead of every rival handed its "
        "per-layer structure ("
        + ", ".join(f"{p['matched_difference']:+.4f}" for p in same)
        + ") and behind the Fisher rival that spent the same FLOPs across layers its own way ("
        + ", ".join(f"{p['global_difference']:+.4f}" for p in same)
        + "). Where the gates put the compute across layers, not how well the model recovered on it, is what "
        "lost; each gap is within one seed's noise, but the order repeats."
    )
    if not ahead:
        return line + (
            " The next thing to try is an allocation the gates do not find alone: start them from Fisher's ranking "
            "per MAC, or price each layer's units by their Fisher importance."
        )
    return line + (
        " Ahead of both: "
        + "; ".join(
            f"seed {p['seed']}'s {p['incentive']} ({p['matched_difference']:+.4f} and {p['global_difference']:+.4f})"
            for p in ahead
        )
        + (". Its recipe (the method name) is" if len(ahead) == 1 else ". Their recipes (the method names) are")
        + " what differed from the runs in that order"
        + _repeated(ahead)
    )


def _repeated(ahead: list[dict]) -> str:
    """Whether a recipe ahead of both kinds of rival did so on more than one seed: a repeat is what turns the lead
    into evidence, though each gap alone stays within one seed's noise."""
    seeds: dict[str, set] = {}
    for p in ahead:
        seeds.setdefault(p["incentive"], set()).add(p["seed"])
    repeated = sorted(recipe for recipe, mine in seeds.items() if len(mine) > 1)
    if not repeated:
        return ": the lead to repeat on another seed, not yet a finding."
    return (
        ": "
        + "; ".join(
            f"{recipe} did so on seeds {', '.join(str(s) for s in sorted(seeds[recipe]))}" for recipe in repeated
        )
        + ", each seed against both rivals with its own teacher, so the lead held on a second seed; two seeds are "
        "still few, and each gap alone is within one seed's noise."
    )


STARTS = (" +from teacher", " +Fisher gate start")


def _recipe(method: str) -> str:
    """An incentive method's name without how its student started."""
    for start in STARTS:
        method = method.replace(start, "")
    return method


def _starts(rows: list[dict], pairs: list[dict], number: dict) -> list[str]:
    """Students of one teacher and recipe that differ only in how they started (the pretrained weights or the
    teacher's; gates open or ordered by Fisher): each one's score, FLOPs share and standing against its best
    retrained rival, so the start is the only thing that changed."""
    standing = {(p["seed"], p["incentive"], p["incentive_score"]): p["difference"] for p in pairs}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"].startswith("incentive"):
            groups.setdefault((r["seed"], number.get(r.get("timed"), 1), _recipe(r["method"])), []).append(r)
    lines = []
    for (seed, run, recipe), students in groups.items():
        if len(students) < 2:
            continue
        parts = []
        for r in students:
            started = [name.strip(" +") for name in STARTS if name in r["method"]] or ["the pretrained model"]
            gap = standing.get((r["seed"], r["method"], r["score"]))
            parts.append(
                f"{', '.join(started)}: {r['score']:.4f} ({r['lost']:+.4f} against the teacher) at a FLOPs share of "
                f"{r['flops_share']:.3f}, {r['speedup_b1']:.2f}x at batch 1"
                + (f", {gap:+.4f} against its best retrained rival" if gap is not None else ", no rival run")
            )
        lines.append(
            f"- How the student starts (seed {seed}, run {run}, {recipe}, the same teacher and steps): "
            + "; ".join(parts)
            + "."
        )
    return lines


def _teachers_again(rows: list[dict], number: dict) -> str | None:
    """A seed's teacher trained again in a later session (same recipe and seed): how far its score moved."""
    parts = []
    for seed in sorted({r["seed"] for r in rows}):
        teachers = [r for r in rows if r["seed"] == seed and r["method"].startswith("lambda=0")]
        if len(teachers) > 1:
            scores = ", ".join(f"{r['score']:.4f} (run {number.get(r.get('timed'), 1)})" for r in teachers)
            spread = max(r["score"] for r in teachers) - min(r["score"] for r in teachers)
            apart = "the same to four decimals" if spread < 5e-5 else f"{spread:.4f} apart"
            parts.append(f"seed {seed}'s teacher scored {scores}, {apart}")
    if not parts:
        return None
    return (
        "- The same teacher trained twice: "
        + "; ".join(parts)
        + ". Same recipe, seed and data, in another session on another machine of the same kind (each run's "
        "library versions are in its `runs` entry of the raw numbers); training on CPU threads is not bitwise reproducible, so a "
        "gap of this size between two runs of one recipe is noise, and each run's models are compared with their "
        "own run's teacher only."
    )


def _within(row: dict) -> bool:
    return abs(row["predicted_speedup_b1"] / row["speedup_b1"] - 1) <= PREDICTION_TOLERANCE


PREDICTION_TOLERANCE = 0.10  # issue #10: the table's predicted speedup within +-10% of the measured one


def _prediction_lines(rows: list[dict], incentive: list[dict]) -> list[str]:
    """The latency target over every compacted model with a prediction: the incentive models listed, the
    rivals counted, with any rival outside the band named."""
    predicted = [r for r in rows if r.get("predicted_speedup_b1")]
    mine = [r for r in predicted if r in incentive]
    rivals = [r for r in predicted if r not in incentive]
    within = [r for r in predicted if _within(r)]
    line = (
        f"- latency table's batch-1 prediction within 10% of the measured speedup: {len(within)} of {len(predicted)} "
        f"compacted models; incentive models {sum(map(_within, mine))} of {len(mine)} ("
        + ", ".join(f"{r['predicted_speedup_b1']:.2f}x vs {r['speedup_b1']:.2f}x" for r in mine)
        + ")"
    )
    if rivals:
        outside = [r for r in rivals if not _within(r)]
        line += f"; post-hoc rivals {len(rivals) - len(outside)} of {len(rivals)}" + (
            " (outside: "
            + ", ".join(
                f"seed {r['seed']} {r['method']} {r['predicted_speedup_b1']:.2f}x vs {r['speedup_b1']:.2f}x"
                for r in outside
            )
            + ")"
            if outside
            else ""
        )
    unpredicted = sum(1 for r in rows if not r.get("predicted_speedup_b1") and not r["method"].startswith("lambda=0"))
    if unpredicted:
        line += f". {unpredicted} rows have no prediction: " + (
            "earlier runs predicted the incentive models only, and those rivals went with their machines (the "
            "prediction needs the model's structure)"
            if TABLE.exists()
            else f"no latency table at {TABLE.relative_to(ROOT)} (make it with bench/run_fair.sh)"
        )
    return [line]


def _latest(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Each method's row per seed from its latest timing run (a model timed in two runs counts once)."""
    latest: dict[tuple[str, int], dict] = {}
    for r in sorted(rows, key=lambda r: r.get("timed") or ""):
        latest[(r["method"], r["seed"])] = r
    return latest


def _mean_std(values: list[float], fmt: str) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(mean, fmt)} +- {format(spread, fmt.lstrip('+'))}"


def _across_seeds(rows: list[dict], pairs: list[dict], speed_target: float, loss_target: float) -> list[str]:
    """The targets as the issue states them, over seeds: each incentive recipe run on more than one seed, its
    mean +- standard deviation of points lost, batch-1 and batch-32 speedup and difference to its best rival."""
    latest = _latest([r for r in rows if r["method"].startswith("incentive")])
    by_method: dict[str, list[dict]] = {}
    for (method, _), r in latest.items():
        by_method.setdefault(method, []).append(r)
    recipes = {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in by_method.items() if len(rs) > 1}
    if not recipes:
        return []
    lines = [f"- over seeds (mean +- standard deviation; the speed target met on the mean at <= {loss_target} lost):"]
    for method, mine in recipes.items():
        last = {p["seed"]: p["difference"] for p in pairs if p["incentive"] == method}  # a rerun's pair last
        diffs = [last[r["seed"]] for r in mine if r["seed"] in last]
        lost = [r["lost"] for r in mine]
        b1 = [r["speedup_b1"] for r in mine]
        met = statistics.mean(b1) >= speed_target and statistics.mean(lost) <= loss_target
        lines.append(
            f"  - {method} (seeds {', '.join(str(r['seed']) for r in mine)}): lost {_mean_std(lost, '+.4f')}, "
            f"batch 1 {_mean_std(b1, '.2f')}x, batch 32 {_mean_std([r['speedup_b32'] for r in mine], '.2f')}x"
            + (f", against its best rival {_mean_std(diffs, '+.4f')}" if diffs else "")
            + f": speed target {'met' if met else 'missed'}"
        )
    return lines


def render(task: str, rows: list[dict], pairs: list[dict], runs: list[dict]) -> str:
    speed_target, loss_target = TARGETS.get(task, (2.0, 0.005))
    number = {run["time_utc"]: i + 1 for i, run in enumerate(runs)}
    wall = sum(run["trial_wall_seconds"] for run in runs)
    lines = [
        f"# Issue #10 on {task}: incentive training against fair post-hoc rivals",
        "",
        "Every student learns from the same teacher (the lambda = 0 fine-tune of its seed) and every rival gets "
        "the same training steps as the incentive run it is paired with (`matched`), or none. Steps and seconds "
        "count everything behind a model (the teacher's fine-tune included). Speedups: the teacher's median "
        f"forward time over the model's, batch 1 and 32, {SEQ_LEN} tokens, {THREADS} threads, CPU, all models of a "
        "seed that one session trained interleaved round by round in one run (the `run` column) after 3 warm-up "
        "rounds. A session's models do not outlive it, so a later session trains its seed's teacher again and "
        "times its models against that one. Scores: the dev split, of exactly the model timed (compacted).",
        "",
        markdown_table(
            [
                "run",
                "timed (UTC)",
                "models",
                "rounds",
                "load average before -> after",
                "trials' wall hours",
                "git",
                "torch / transformers",
            ],
            [
                [
                    number[run["time_utc"]],
                    run["time_utc"],
                    sum(r["timed"] == run["time_utc"] for r in rows),
                    run.get("repeats") or "-",
                    ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in run.get("load_average") or []) or "-",
                    f"{run['trial_wall_seconds'] / 3600:.2f}",
                    (run.get("git") or "-")[:12],
                    " / ".join((run.get("versions") or {}).get(k, "?") for k in ("torch", "transformers")),
                ]
                for run in runs
            ],
        ),
        "",
        "The load average is the 1-minute one on 2 cores; above 2, other work shared the cores and the speedups are "
        "noisier than the medians suggest (the interleaving keeps them fair, not quiet).",
        "",
        f"Cost of this benchmark: {len(rows)} trials, at least {wall / 3600:.2f} hours of wall time on 2 CPU cores "
        "(the trials' own clocks: training, compaction and scoring; a trial stopped and resumed counts its last "
        "part only; a teacher trained again in a later session counts again; part of the time the cores were "
        "shared with other work).",
        "",
        markdown_table(
            [
                "seed",
                "run",
                "method",
                "score",
                "lost",
                "FLOPs share",
                "speedup b1",
                "predicted b1",
                "speedup b32",
                "steps",
                "train s",
            ],
            [
                [
                    r["seed"],
                    number.get(r.get("timed"), 1),
                    r["method"],
                    f"{r['score']:.4f}",
                    f"{r['lost']:+.4f}",
                    f"{r['flops_share']:.3f}",
                    f"{r['speedup_b1']:.2f}x",
                    f"{r['predicted_speedup_b1']:.2f}x" if r.get("predicted_speedup_b1") else "-",
                    f"{r['speedup_b32']:.2f}x",
                    r["training_steps"],
                    f"{r['training_seconds']:.0f}",
                ]
                for r in display_order(rows)
            ],
        ),
        "",
        "## Incentive against the best rival with the same training",
        "",
        markdown_table(
            ["seed", "incentive", "score", "best matched rival", "score", "difference", "same steps"],
            [
                [
                    p["seed"],
                    p["incentive"],
                    f"{p['incentive_score']:.4f}",
                    p["best_rival"],
                    f"{p['rival_score']:.4f}",
                    f"{p['difference']:+.4f}",
                    "yes" if p["same_steps"] else "no",
                ]
                for p in pairs
            ],
        ),
        "",
        "## Targets",
        "",
    ]
    counts = _target_counts(task, rows, pairs)
    incentive, hits, wins, mean = counts["incentive"], counts["hits"], counts["wins"], counts["mean"]
    lines.append(
        f"- >= {speed_target}x batch-1 speedup at <= {loss_target} lost: "
        + (
            "met by "
            + ", ".join(f"seed {r['seed']} {r['method']} ({r['speedup_b1']:.2f}x, {r['lost']:+.4f})" for r in hits)
            if hits
            else "**missed**: "
            + ", ".join(f"seed {r['seed']} {r['method']} {r['speedup_b1']:.2f}x at {r['lost']:+.4f}" for r in incentive)
        )
    )
    lines.append(
        f"- incentive as good or better than the best matched rival (the best of the retrained rivals, chosen on "
        f"the same dev split it is scored on, which favours the rivals): {wins} of {len(pairs)} pairs "
        f"({wins / len(pairs) if pairs else 0:.0%}; issue #10's target: at least 4 of 6 per task, 67%), mean difference "
        f"{mean:+.4f}"
    )
    lines += _pairs_by_recipe(pairs)
    for form in issue_form(pairs):
        lines.append(
            "- in the issue's own form (one recipe at three budgets on two seeds; the total above counts every "
            f"recipe tried): {_issue_form_text(form, left_out=RIVALS_LEFT_OUT)}"
        )
    lines += _prediction_lines(rows, incentive)
    lines += _across_seeds(rows, pairs, speed_target, loss_target)
    markets = [r for r in incentive if r.get("market")]
    if markets:
        lines += ["", "## Did the price clear the budget?", ""]
        lines.append(
            markdown_table(
                ["seed", "method", "share of", "budget", "share at the end", "final lambda", "lambda by step"],
                [
                    [
                        r["seed"],
                        r["method"],
                        "dense latency" if r["market"]["cost"] == "latency" else "dense FLOPs",
                        r["market"]["budget"],
                        f"{r['market']['share_at_end']:.3f}" if r["market"]["share_at_end"] is not None else "-",
                        f"{r['market']['lambda_final']:.3g}",
                        ", ".join(f"{step}: {lam:.3g}" for step, lam in r["market"]["lambda_path"]),
                    ]
                    for r in markets
                ],
            )
        )
        lines.append(
            "\nThe share is the gates' expected share of dense latency (as the latency table prices it) or of dense "
            "FLOPs at the last step; gates freeze after the share of training the method names (0.7 by default), "
            "and the price stops moving with them."
        )
        lines += ["", "## Reading", ""]
        for r in markets:
            m = r["market"]
            share, budget = m["share_at_end"], m["budget"]
            if share is not None and budget is not None and share > budget + 0.02:
                why = (
                    " Near the dense model the latency table's curves are flat (removing a few units buys little), so "
                    "the gates feel little of the price until it is large."
                    if m["cost"] == "latency"
                    else ""
                )
                lines.append(
                    f"- Seed {r['seed']}, {r['method']}: the price did not clear the budget. The gates froze at a "
                    f"share of {share:.3f} against {budget}, with lambda at {m['lambda_final']:.3g} and rising until "
                    f"the freeze: the dual ascent moves lambda by price_lr ({m['price_lr']:g}) x (share - budget) a "
                    f"step.{why}{_lag(m.get('clearing'))} The structure it reached is what its rivals were matched to."
                )
            elif share is not None and budget is not None:
                under = share < budget - UNDERSHOOT
                lines.append(
                    f"- Seed {r['seed']}, {r['method']}: the price cleared the budget (share {share:.3f} against "
                    f"{budget} at the freeze, lambda {m['lambda_final']:.3g})"
                    + (
                        f", and undershot it by {budget - share:.3f}: the model gave up compute the budget allowed."
                        if under
                        else "."
                    )
                )
        for p in pairs:
            if "matched_difference" in p and "global_difference" in p:
                lines.append(
                    f"- Seed {p['seed']}, {p['incentive']}: against the best rival handed its per-layer structure "
                    f"({p['matched_rival']}) it scored {p['matched_difference']:+.4f}; against the best that "
                    f"chose its own allocation across layers at the same FLOPs ({p['global_rival']}), "
                    f"{p['global_difference']:+.4f}."
                    + (
                        " On its own structure the incentive run recovered at least as well as distillation did; "
                        "the one rival ahead of it differs in structure (units ranked across layers by Fisher "
                        "importance per MAC), by less than one seed's noise (below): a lead to test, not a finding."
                        if p["matched_difference"] >= 0 > p["global_difference"]
                        else ""
                    )
                )
        anchors = _anchors(markets)
        if anchors:
            lines.append(anchors)
        lagging = _lagging(markets)
        if lagging:
            lines.append(lagging)
        pattern = _allocation_pattern(pairs)
        if pattern:
            lines.append(pattern)
        lost = [p for p in pairs if p.get("matched_difference", p["difference"]) < 0]
        if lost:
            lines.append(
                "- Where a rival given the incentive run's per-layer structure (which the incentive run had to find) "
                "and all of its training steps as distillation on that fixed structure scored higher, the incentive "
                "run had spent its steps with gates moving and recovered at a fixed structure only after the freeze, "
                "at the end of the learning-rate schedule."
            )
        won = [p for p in pairs if p["difference"] >= 0]
        if won:
            lines.append(
                "- The incentive run scored as well or better than every retrained rival in "
                + ", ".join(f"seed {p['seed']}'s {p['incentive']} ({p['difference']:+.4f})" for p in won)
                + ": no rival retrained with the same teacher and steps did better"
                + (
                    ", including the one handed the per-layer structure the gates had found."
                    if all("matched_difference" in p for p in won)
                    else " (where only Fisher's own allocation was run as a rival, that is the one it beat)."
                )
            )
        lines += _starts(rows, pairs, number)
        retrained = _teachers_again(rows, number)
        if retrained:
            lines.append(retrained)
        noise = _noise(task, rows, pairs)
        if noise:
            lines.append(noise)
        spread = _rival_spread(rows)
        if spread:
            lines.append(spread)
        lines.append(TRIED[task])
    return "\n".join(lines)


INDEX_DOCS = ("frontier.md", "compaction.md")


def _target_counts(task: str, rows: list[dict], pairs: list[dict]) -> dict:
    """What the Targets section and the index both read: the incentive models, those within the speed target,
    the pairs won and their mean difference."""
    speed_target, loss_target = TARGETS.get(task, (2.0, 0.005))
    incentive = [r for r in rows if r["method"].startswith("incentive")]
    return {
        "incentive": incentive,
        "hits": [r for r in incentive if r["speedup_b1"] >= speed_target and r["lost"] <= loss_target],
        "wins": sum(p["difference"] >= 0 for p in pairs),
        "mean": statistics.mean(p["difference"] for p in pairs) if pairs else float("nan"),
    }


def _verdicts(task: str, payload: dict) -> list[str]:
    """One task's targets in a line each, from its saved rows and pairs (the doc's Targets section, short)."""
    rows, pairs = payload["rows"], payload["pairs"]
    speed_target, loss_target = TARGETS[task]
    counts = _target_counts(task, rows, pairs)
    incentive, hits, wins, mean = counts["incentive"], counts["hits"], counts["wins"], counts["mean"]
    best = max(hits, key=lambda r: r["speedup_b1"], default=None)
    speed = (
        f"met by {len(hits)} of {len(incentive)} incentive models (fastest: {best['speedup_b1']:.2f}x at "
        f"{best['lost']:+.4f}, seed {best['seed']})"
        if best
        else f"**missed** by all {len(incentive)} incentive models"
    )
    predicted = [r for r in rows if r.get("predicted_speedup_b1")]
    return [
        f"- **{task}** ([fair_{task}.md](fair_{task}.md)): >= {speed_target}x at batch 1 within {loss_target} lost: "
        f"{speed}.",
        f"  Incentive as good or better than its best retrained rival (same teacher, same steps) in {wins} of "
        f"{len(pairs)} pairs, mean {mean:+.4f}: the 4-of-6 target, counted over every recipe tried, is "
        + ("met" if pairs and wins / len(pairs) >= 4 / 6 else "**missed**")
        + "".join(
            f"; counted in the issue's own form, one recipe at three budgets on two seeds, "
            f"{_issue_form_text(f, after_recipe=', ', left_out=RIVALS_LEFT_OUT)}"
            for f in issue_form(pairs)
        )
        + f". Latency table's batch-1 prediction within 10%: {sum(map(_within, predicted))} of {len(predicted)} "
        "compacted models.",
    ]


def write_index() -> None:
    """The top of docs/frontier.md and docs/compaction.md: issue #10's verdicts per task and what the whole
    benchmark cost, from bench/results (the issue names these two docs as where its results go)."""
    from econlm.runinfo import atomic_write_text

    lines, hours = [INDEX_BEGIN, "> **Issue #10's fair comparison**, regenerated from `bench/results/`:", ">"], []
    for task in TARGETS:
        path = RESULTS / f"fair_{task}.json"
        if path.exists():
            payload = json.loads(path.read_text())
            lines += [f"> {line}" for line in _verdicts(task, payload)]
            _, runs = runs_of(payload)  # payloads saved before runs were kept have one, in their meta
            hours.append((f"fair_{task}", sum(run["trial_wall_seconds"] for run in runs) / 3600))
    paper = RESULTS / "paper_scale_stsb.json"
    if paper.exists():
        hours.append(("paper_scale_stsb", json.loads(paper.read_text())["trial_wall_seconds"] / 3600))
    total = sum(h for _, h in hours)
    lines += [
        ">",
        "> Each doc says how it was measured: same teacher and steps for every rival, every model of a seed timed "
        "interleaved against the teacher, the latency table's prediction next to each measured speedup; the "
        "paper's tax at its own scale is [paper_scale_stsb.md](paper_scale_stsb.md).",
        f"> Cost of issue #10's benchmark: {total:.1f} hours of trial time ("
        + ", ".join(f"{name} {h:.1f}" for name, h in hours)
        + f"), each trial's own clock, on one or two threads of a 2-core machine: between {total:.1f} and "
        f"{2 * total:.1f} core-hours; the timing runs are not counted.",
        ">",
        "> **Token budgets** (issue #11: post-hoc, learned and retrained, alone and on compacted models, scored and "
        "timed on real dev batches) are in [tokens_stsb.md](tokens_stsb.md) and [tokens_cola.md](tokens_cola.md), "
        "generated by `bench/tokens.py`. The tables below are the earlier benchmark (`bench/summarize.py`), kept "
        "as they were measured.",
        INDEX_END,
    ]
    block = "\n".join(lines)
    for name in INDEX_DOCS:
        doc = ROOT / "docs" / name
        if doc.exists():  # written by bench/summarize.py; the block goes in when it is
            atomic_write_text(doc, with_index(doc.read_text(), block))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("stsb", "cola"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--render", action="store_true", help="write the doc again from bench/results (no training run read, no timing)"
    )
    args = parser.parse_args()
    name = f"fair_{args.task}"
    if args.render:
        from _common import rerender

        payload = json.loads((RESULTS / f"{name}.json").read_text())
        rows, runs = runs_of(payload)
        _refresh(args.task, rows)
        payload.update(rows=rows, pairs=pairs_of(rows), runs=runs)
        markdown = render(args.task, rows, payload["pairs"], runs)
        rerender(name, markdown, payload["meta"])
        from econlm.runinfo import write_json

        write_json(RESULTS / f"{name}.json", payload)  # the markets read again, the rest as saved
    else:
        payload, markdown = summarize(args.task, args.repeats)
        save(name, payload, markdown)
    write_index()
    print(markdown)


if __name__ == "__main__":
    main()
