"""The verdicts of the benchmark documents: every claim and table of docs/train_sweep.md, docs/compaction.md and
docs/frontier.md, computed from sweep result rows.

Pure functions over result rows (the dicts of a sweep's ``results.jsonl``: ``id``, ``kind``, ``status``,
``settings``, ``score``, ``metric``, ``sparsity``, ``gini``, ``entropy``, ``dense_flops``, ...) and over what
``bench/summarize.py`` reads next to them (a trial's machine, the latency timings, the compaction threshold).
No file access and no measuring here. What the prose states (model, seeds, threads, thresholds, epochs,
repeats) is read from those inputs; where they do not say, the text says "unknown" instead of guessing.

The thresholds that decide a claim are the module constants below, and the sentences quote them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

UNKNOWN = "unknown"

# Incentive training (docs/train_sweep.md)
ATTENTION_COSTS = ("attn_entropy", "attn_logits_l1", "attn_sqrt")
GINI_STEP = 0.005  # a Gini change smaller than this is "does not raise"
ENTROPY_STEP = 0.005  # an entropy change (nats) smaller than this is "does not lower"
SPARSITY_STEP = 0.01  # the FFN tax "makes activations sparser" once the share at |a| <= 1e-2 grows by this
PAPER_ATTENTION = "Gini 0.58 -> 0.82 and entropy 4.31 -> 2.99"  # what the paper reports for its tax
GRID_EPOCHS = 1  # the price grid and the attention comparison are the 1-epoch runs
ABLATION_GROUPS = (("FFN only", ["ffn_l1"]), ("attention only", ["attn_entropy"]), ("both", ["ffn_l1", "attn_entropy"]))

# Compaction (docs/compaction.md): the target
TARGET_CUT = 0.5  # at least this share of the dense FLOPs removed
TARGET_LOSS_POINTS = 1.0  # at most this many points (score x 100) below the lambda = 0 fine-tune

# The paper's claims (docs/frontier.md)
CLAIM_CUT = 0.4  # "40% fewer FLOPs ..."
CLAIM_LOSS_POINTS = 0.6  # "... at 0.6 points lost"
CLAIM_NEAR_POINTS = 0.7  # the smallest loss up to this counts as "holds approximately"


# ---------------------------------------------------------------------------------------------------------
# Reading rows


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats with 4 significant digits."""

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def lam_of(r: dict) -> float:
    return float(r["settings"].get("lam", 0))


def epochs_of(r: dict) -> float:
    return r["settings"].get("epochs", 1)


def is_ok(r: dict) -> bool:
    return r.get("status") == "ok"


def is_plain(r: dict) -> bool:
    """A plain fine-tune: training at lambda = 0 with no budget and no flops gates."""
    s = r["settings"]
    return r["kind"] == "train" and lam_of(r) == 0 and s.get("budget") is None and "flops" not in s.get("cost", [])


def baseline_for(results: list[dict], r: dict) -> dict | None:
    """The finished plain fine-tune (lambda = 0, no gates) with the same seed and epochs as ``r``."""
    for b in results:
        s = b["settings"]
        if (
            is_ok(b)
            and is_plain(b)
            and s.get("seed") == r["settings"].get("seed")
            and s.get("epochs", 1) == r["settings"].get("epochs", 1)
        ):
            return b
    return None


def listed(values: Iterable, unknown: str = UNKNOWN) -> str:
    """The distinct known values in order ("1", "1 or 2"), or ``unknown`` when there is none."""
    seen = []
    for v in values:
        if v is not None and v not in seen:
            seen.append(v)
    if not seen:
        return unknown
    numbers = sorted(v for v in seen if isinstance(v, (int, float)))
    text = [f"{v:g}" if isinstance(v, float) else str(v) for v in numbers]
    text += sorted(str(v) for v in seen if not isinstance(v, (int, float)))
    return ", ".join(text[:-1]) + " or " + text[-1] if len(text) > 1 else text[0]


def number_text(v: float | None) -> str:
    """A threshold as people write it: 1e-3 (not 0.001), 0.5, 2.5e-4; ``unknown`` for None."""
    if v is None:
        return UNKNOWN
    if v == 0 or abs(v) >= 0.01:
        return f"{v:g}"
    mantissa, exponent = f"{v:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def model_names(results: list[dict]) -> str:
    """The model(s) the rows trained or scored, from their settings (``unknown`` when none says)."""
    return listed(r["settings"].get("model") for r in results)


def seeds_of(results: list[dict]) -> list:
    return sorted({r["settings"]["seed"] for r in results if r["settings"].get("seed") is not None})


def status_line(task: str, results: list[dict]) -> str:
    finished = sum(is_ok(r) for r in results)
    failed = [r["id"] for r in results if r.get("status") == "failed"]
    return f"- {task}: {finished} trials finished" + (f", failed: {', '.join(failed)}" if failed else "")


def threads_of(machine: Mapping | None) -> int | str:
    """Torch threads a run used, from its metadata's ``machine`` (``unknown`` when not recorded)."""
    threads = (machine or {}).get("torch_threads")
    return threads if threads is not None else UNKNOWN


def _split(rows: list[dict], key: str, split: str) -> str:
    """'the full train split', 'the first 512 train examples', or both when the rows differ."""
    limits = sorted({r["settings"].get(key) for r in rows}, key=lambda v: (v is not None, v or 0))
    if not limits:
        return f"an {UNKNOWN} part of the {split} split"
    parts = [f"the full {split} split" if n is None else f"the first {n} {split} examples" for n in limits]
    return " or ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# docs/train_sweep.md: incentive training


def train_rows(results: list[dict], seed=None) -> tuple[object, list[dict]]:
    """The finished training runs of one seed (the lowest seed present unless given), sorted for the table."""
    trained = [r for r in results if r["kind"] == "train" and is_ok(r)]
    if seed is None:
        seed = (seeds_of(trained) or [None])[0]
    rows = [r for r in trained if r["settings"].get("seed") == seed]
    rows.sort(
        key=lambda r: ("+".join(r["settings"]["cost"]), r["settings"].get("budget") or 0, lam_of(r), epochs_of(r))
    )
    return seed, rows


def score_of(r: dict) -> float:
    """The score of the model the run ends with: the compacted one where compaction removed something."""
    compact = r.get("compact") or {}
    return compact["score_after"]["value"] if compact.get("removed") and compact.get("score_after") else r["score"]


def attention_base(rows: list[dict]) -> dict | None:
    """The reference for the tax verdicts: the first plain fine-tune of ``GRID_EPOCHS`` epochs."""
    return next((r for r in rows if is_plain(r) and epochs_of(r) == GRID_EPOCHS), None)


def priced_runs(rows: list[dict], cost: str) -> list[dict]:
    """The ``GRID_EPOCHS``-epoch runs taxed by ``cost`` alone at a positive lambda, cheapest price first."""
    return sorted(
        (r for r in rows if r["settings"]["cost"] == [cost] and lam_of(r) > 0 and epochs_of(r) == GRID_EPOCHS),
        key=lam_of,
    )


def attention_verdict(cost: str, base: dict, runs: list[dict]) -> str:
    """Does ``cost`` concentrate attention? Judged at its largest price against ``base``."""
    top = runs[-1]
    gini_up = top["gini"] - base["gini"]
    entropy_down = base["entropy"] - top["entropy"]
    steps = "; ".join(
        f"lambda {lam_of(r):g}: Gini {r['gini']:.3f}, entropy {r['entropy']:.3f}, {r['metric']} {r['score']:.4f}"
        for r in runs
    )
    return (
        f"- `{cost}`: {'raises' if gini_up > GINI_STEP else 'does not raise'} Gini and "
        f"{'lowers' if entropy_down > ENTROPY_STEP else 'does not lower'} entropy at the largest price "
        f"(Gini {base['gini']:.3f} -> {top['gini']:.3f}, entropy {base['entropy']:.3f} -> {top['entropy']:.3f}; "
        f"lambda = 0: {base['metric']} {base['score']:.4f}). By price: {steps}."
    )


def attention_verdicts(rows: list[dict], base: dict | None) -> list[str]:
    if base is None:
        return []
    return [attention_verdict(cost, base, runs) for cost in ATTENTION_COSTS if (runs := priced_runs(rows, cost))]


def ffn_verdict(rows: list[dict], base: dict | None) -> str:
    """Where the FFN tax starts to make activations sparse, and what it costs in score."""
    mine = priced_runs(rows, "ffn_l1")
    if not base or not mine:
        return ""
    moved = [r for r in mine if r["sparsity"]["1e-02"] - base["sparsity"]["1e-02"] > SPARSITY_STEP]
    steps = "; ".join(
        f"lambda {lam_of(r):g}: {r['sparsity']['1e-03']:.3f} / {r['sparsity']['1e-02']:.3f}, "
        f"{r['metric']} {r['score']:.4f}"
        for r in mine
    )
    start = f"from lambda {lam_of(moved[0]):g}" if moved else "at none of the prices run"
    return (
        f"`ffn_l1` (mean |a| per FFN unit and token) makes activations sparser (share with |a| <= 1e-3 / 1e-2) "
        f"{start}; lambda = 0: {base['sparsity']['1e-03']:.3f} / {base['sparsity']['1e-02']:.3f}, "
        f"{base['metric']} {base['score']:.4f}. By price: {steps}.\n\n"
    )


def ablation_grid(rows: list[dict], base: dict | None, seed=None) -> str:
    """The lambda grid side by side: each cell is score / FFN sparsity at 1e-2 / attention Gini."""
    grid = [r for r in rows if epochs_of(r) == GRID_EPOCHS and r["settings"].get("budget") is None]
    costs = [c for _, c in ABLATION_GROUPS]
    lams = sorted({lam_of(r) for r in grid if lam_of(r) > 0 and r["settings"]["cost"] in costs})
    if not lams:
        return ""

    def cell(cost: list[str], lam: float) -> str:
        hit = next((r for r in grid if r["settings"]["cost"] == cost and lam_of(r) == lam), None)
        return f"{hit['score']:.4f} / {hit['sparsity']['1e-02']:.3f} / {hit['gini']:.3f}" if hit else "not run"

    table = markdown_table(
        ["lambda"] + [f"{name} (`{'+'.join(cost)}`)" for name, cost in ABLATION_GROUPS],
        [[lam] + [cell(cost, lam) for _, cost in ABLATION_GROUPS] for lam in lams],
    )
    reference = (
        f"lambda = 0: {base['score']:.4f} / {base['sparsity']['1e-02']:.3f} / {base['gini']:.3f}. " if base else ""
    )
    return (
        f"The ablation grid ({GRID_EPOCHS:g} epoch{'s' if GRID_EPOCHS != 1 else ''}, seed "
        f"{seed if seed is not None else UNKNOWN}). Each cell: dev score / share of FFN activations with "
        f"|a| <= 1e-2 / attention Gini. {reference}These taxes change how activations and attention are "
        "distributed; on their own they remove no computation (see docs/frontier.md for the compute that really "
        "goes).\n\n" + table + "\n"
    )


def train_table(rows: list[dict], machines: Mapping[str, Mapping] | None = None) -> str:
    """One line per run; ``machines`` maps a trial id to the ``machine`` of its training metadata."""
    machines = machines or {}
    return markdown_table(
        [
            "cost",
            "target",
            "lambda",
            "budget",
            "epochs",
            "final lambda",
            rows[0]["metric"] if rows else "score",
            "sparsity 1e-3",
            "sparsity 1e-2",
            "attn Gini",
            "attn entropy",
            "train s",
            "threads",
        ],
        [
            [
                "+".join(r["settings"]["cost"]),
                r["settings"].get("target", "both"),
                lam_of(r),
                r["settings"].get("budget") or "-",
                epochs_of(r),
                r["lambda_final"],
                score_of(r),
                r["sparsity"]["1e-03"],
                r["sparsity"]["1e-02"],
                r["gini"],
                r["entropy"],
                round(r["train_seconds"]),
                threads_of(machines.get(r["id"])),
            ]
            for r in rows
        ],
    )


def timing_note(rows: list[dict], machines: Mapping[str, Mapping] | None = None) -> str:
    """What the `train s` column was measured on, from the runs' machine metadata."""
    machines = machines or {}
    known = [machines[r["id"]] for r in rows if machines.get(r["id"])]
    counts = sorted({m["cpu_count"] for m in known if m.get("cpu_count") is not None})
    threads = sorted({m["torch_threads"] for m in known if m.get("torch_threads") is not None})
    cores = f"{listed(counts)} cores" if counts else f"an {UNKNOWN} number of cores"
    text = f"`train s` is wall-clock training time on a machine with {cores}, with `threads` torch threads"
    fewer = [t for t in threads if len(counts) == 1 and t < counts[0]]
    if fewer:
        text += (
            f"; runs with {listed(fewer)} thread{'' if fewer == [1] else 's'} shared the machine with another "
            "benchmark run" + (", the others sometimes did" if len(fewer) < len(threads) else "")
        )
    return text + ": indicative only."


def train_section(
    task: str, results: list[dict], machines: Mapping[str, Mapping] | None = None
) -> tuple[str, list[dict]]:
    """The section of docs/train_sweep.md for one task, and the rows it shows."""
    seed, rows = train_rows(results)
    others = [s for s in seeds_of([r for r in results if r["kind"] == "train" and is_ok(r)]) if s != seed]
    also = f" (the sweep also has seed {listed(others)} runs, used in docs/frontier.md)" if others else ""
    base = attention_base(rows)
    compacted = [r for r in rows if (r.get("compact") or {}).get("removed")]
    gated = sum("flops" in r["settings"]["cost"] for r in compacted)
    score_note = (
        f"Where compaction removed something ({gated} flops-gated run{'s' if gated != 1 else ''}, "
        f"{len(compacted) - gated} other{'s' if len(compacted) - gated != 1 else ''}), the score is that of the "
        "compacted model."
        if compacted
        else "No run here was compacted."
    )
    text = (
        f"## {model_names(rows)} on {task}\n\nSeed {seed if seed is not None else UNKNOWN}{also}, trained on "
        f"{_split(rows, 'limit', 'train')}, scored on {_split(rows, 'eval_limit', 'dev')}. {score_note} "
        f"{timing_note(rows, machines)}\n\n"
        f"{train_table(rows, machines)}\n\n"
        f"Which cost definitions make attention more concentrated, against the {GRID_EPOCHS:g}-epoch lambda = 0 "
        "fine-tune (Gini and entropy as the probe measures them, on dev; the paper reports "
        f"{PAPER_ATTENTION}):\n\n"
        + ("\n".join(attention_verdicts(rows, base)) or "- (no finished runs yet)")
        + "\n\n"
        + ffn_verdict(rows, base)
        + ablation_grid(rows, base, seed)
    )
    return text, rows


# ---------------------------------------------------------------------------------------------------------
# docs/compaction.md


def compaction_entry(
    r: dict, report: dict, latency: Mapping[str, Mapping], base: dict | None, sequence_length: int | None = None
) -> dict:
    """One compacted checkpoint: the cut its compaction report records, the speedups measured and the score
    against the plain fine-tune ``base``. ``latency`` maps "before"/"after" to {"batch1": timing dict, ...}."""
    implied = report["before"]["dense_flops"] / report["after"]["dense_flops"]
    removed = r["compact"]["removed"]
    entry = {
        "trial": r["id"],
        "budget": r["settings"].get("budget"),
        "seed": r["settings"].get("seed"),
        "model": r["settings"].get("model"),
        "eps": report.get("eps"),
        "flops_reduction": 1 - 1 / implied,
        "implied_speedup": implied,
        "heads_removed": removed["heads"],
        "neurons_removed": removed["neurons"],
        "score_before": report["before"]["score"]["value"],
        "score_after": report["after"]["score"]["value"],
        "baseline_score": base["score"] if base else None,
        "max_output_difference": report["verification"]["max_abs_output_difference"],
        "sequence_length": sequence_length,
    }
    for batch in latency["before"]:
        speedup = latency["before"][batch]["median"] / latency["after"][batch]["median"]
        entry[f"speedup_{batch}"] = speedup
        entry[f"realized_over_implied_{batch}"] = speedup / implied
        entry[f"latency_{batch}"] = {"before": latency["before"][batch], "after": latency["after"][batch]}
    return entry


def _timings(entries: list[dict]) -> list[dict]:
    return [t for e in entries for k, v in e.items() if k.startswith("latency_batch") for t in v.values()]


def latency_setup(entries: list[dict]) -> str:
    """How the latencies were measured, from the timing dicts themselves (``unknown`` where not recorded)."""
    timings = _timings(entries)
    device = listed((t.get("device") or "").upper() or None for t in timings)
    threads = listed(t.get("threads") for t in timings)
    repeats = listed(t.get("repeats") for t in timings)
    warmup = listed(t.get("warmup") for t in timings)
    length = listed(e.get("sequence_length") for e in entries)
    return (
        f"Latency: {device}, {threads} thread{'s' if threads != '1' else ''}, sequence length {length}, median of "
        f"{repeats} runs after {warmup} warm-up run{'s' if warmup != '1' else ''}, original and compacted model "
        "timed round by round in the same run."
    )


def reaches_target(entry: dict) -> bool:
    """At least ``TARGET_CUT`` of the dense FLOPs gone at no more than ``TARGET_LOSS_POINTS`` lost."""
    return (
        entry["flops_reduction"] >= TARGET_CUT
        and entry["baseline_score"] is not None
        and (entry["baseline_score"] - entry["score_after"]) * 100 <= TARGET_LOSS_POINTS
    )


def compaction_verdict(entries: list[dict]) -> str:
    hits = sum(reaches_target(e) for e in entries)
    return (
        f"{hits} of {len(entries)} compacted checkpoints reach the target (>= {TARGET_CUT:.0%} fewer FLOPs at "
        f"<= {TARGET_LOSS_POINTS:g} point{'s' if TARGET_LOSS_POINTS != 1 else ''} lost against the lambda = 0 "
        "fine-tune of the same seed and epochs)."
    )


def compaction_section(task: str, entries: list[dict], model: str | None = None) -> str:
    """The section of docs/compaction.md for one task, from :func:`compaction_entry` rows."""
    table = markdown_table(
        [
            "trial",
            "budget",
            "seed",
            "FLOPs cut",
            "heads / neurons removed",
            "score before -> after compaction",
            "lambda=0 score",
            "speedup b1",
            "speedup b32",
            "realized/implied b1",
            "realized/implied b32",
        ],
        [
            [
                e["trial"][:40],
                e["budget"],
                e["seed"],
                f"{e['flops_reduction']:.1%}",
                f"{e['heads_removed']} / {e['neurons_removed']}",
                f"{e['score_before']:.4f} -> {e['score_after']:.4f}",
                e["baseline_score"] if e["baseline_score"] is not None else "-",
                e.get("speedup_batch1", "-"),
                e.get("speedup_batch32", "-"),
                e.get("realized_over_implied_batch1", "-"),
                e.get("realized_over_implied_batch32", "-"),
            ]
            for e in entries
        ],
    )
    model = model or listed(e.get("model") for e in entries)
    return f"## {model} on {task}\n\n{latency_setup(entries)}\n\n{table}\n\n{compaction_verdict(entries)}\n"


# ---------------------------------------------------------------------------------------------------------
# docs/frontier.md: Pareto frontiers and the paper's claims


def frontier_tables(fronts: Mapping[str, dict]) -> list[str]:
    """One table per compute axis and problem of :func:`econlm.analysis.frontier` results."""
    parts = []
    for front in fronts.values():
        for problem in front["problems"]:
            table = markdown_table(
                ["method", "hypervolume", "front points (score @ compute)"],
                [
                    [
                        m,
                        info["hypervolume"],
                        "; ".join(f"{p['score']:.4f}±{p['score_std']:.3f} @ {p['compute']:.3g}" for p in info["front"]),
                    ]
                    for m, info in problem["methods"].items()
                ],
            )
            seeds = sorted({p.get("seeds") for p in problem["points"] if (p.get("seeds") or 0) > 1})
            spread = (
                f"± standard deviation where {listed(seeds)} seeds finished"
                if seeds
                else "every point has one seed, so ± is 0"
            )
            parts.append(
                f"### compute axis: {problem['compute_label']}\n\nReference point {problem['reference_point']}; "
                f"means over seeds ({spread}).\n\n{table}\n"
            )
    return parts


def cuts_and_losses(results: list[dict]) -> list[tuple[dict, float, float]]:
    """(run, share of dense FLOPs cut, points lost) for each finished training run against its plain fine-tune."""
    out = []
    for r in results:
        if not (r["kind"] == "train" and is_ok(r) and r.get("dense_flops_before") and r.get("dense_flops")):
            continue
        base = baseline_for(results, r)
        if base:
            out.append((r, 1 - r["dense_flops"] / base["dense_flops"], (base["score"] - r["score"]) * 100))
    return out


def flops_claim(results: list[dict]) -> str:
    """The paper's "40% fewer FLOPs at 0.6 points lost", against the plain fine-tune of the same seed and epochs."""
    deep = [c for c in cuts_and_losses(results) if c[1] >= CLAIM_CUT]
    hits = [c for c in deep if c[2] <= CLAIM_LOSS_POINTS]
    near = min(deep, key=lambda c: c[2], default=None)
    if hits:
        r, cut, loss = hits[0]
        verdict = (
            f"holds here: {len(hits)} trial(s), e.g. {r['id']} ({cut:.1%} fewer dense FLOPs, {loss:.2f} points lost)."
        )
    elif near is not None:
        r, cut, loss = near
        word = "holds approximately" if loss <= CLAIM_NEAR_POINTS else "does not hold"
        verdict = (
            f"{word} here: the smallest loss at >= {CLAIM_CUT:.0%} fewer dense FLOPs is {loss:.2f} points "
            f"({cut:.1%} fewer, {r['id']})."
        )
    else:
        verdict = f"not reached here: no trial cut {CLAIM_CUT:.0%} of the dense FLOPs."
    return (
        f"- *{CLAIM_CUT:.0%} fewer FLOPs at {CLAIM_LOSS_POINTS:g} points lost* (paper: MNLI; here against the "
        "lambda = 0 fine-tune of the same seed and epochs): " + verdict
    )


def matched_pairs(results: list[dict]) -> list[tuple[str, dict, dict]]:
    """(importance, incentive run, post-hoc run) for each finished post-hoc baseline of a flops-gated run.

    A tax run whose compaction happened to find a few dead units (a collapsed attention-tax model, say) is not
    a compression method, and its pair would say nothing, so only flops-gated runs are paired."""
    ok = [r for r in results if is_ok(r)]
    by_id = {r["id"]: r for r in ok}
    return [
        (r["settings"]["importance"], by_id[r["settings"]["matches"]], r)
        for r in ok
        if r["kind"] == "posthoc"
        and r["settings"].get("matches") in by_id
        and "flops" in by_id[r["settings"]["matches"]]["settings"]["cost"]
    ]


def _more_epochs(pairs: list[tuple[str, dict, dict]]) -> str:
    epochs = listed(theirs["settings"].get("finetune_epochs") for _, _, theirs in pairs)
    if epochs == UNKNOWN:
        return f"an {UNKNOWN} number of epochs more"
    return f"{epochs} more epoch{'' if epochs in ('1', '1.0') else 's'}"


def pairs_claim(pairs: list[tuple[str, dict, dict]]) -> str | None:
    """Every matched pair, incentive score against post-hoc score (None without pairs)."""
    if not pairs:
        return None
    return (
        "- matched pairs for the flops-gated runs (the post-hoc model keeps the same number of heads and neurons "
        f"per layer, pruned from the lambda = 0 model and fine-tuned {_more_epochs(pairs)}): "
        + "; ".join(
            sorted(
                f"budget {mine['settings'].get('budget')} seed {mine['settings'].get('seed')}: incentive "
                f"{mine['score']:.4f} vs post-hoc {importance} {theirs['score']:.4f}"
                for importance, mine, theirs in pairs
            )
        )
        + "."
    )


def _taxed_groups(results: list[dict]) -> dict[str, list[dict]]:
    from econlm.analysis import ablation_of

    groups: dict[str, list[dict]] = {}
    for r in results:
        if is_ok(r) and r["kind"] == "train" and lam_of(r) > 0:
            groups.setdefault(ablation_of(r), []).append(r)
    return groups


def best_per_ablation(results: list[dict]) -> dict[str, str]:
    """The id of the best-scoring lambda > 0 run of each ablation group."""
    return {g: max(m, key=lambda r: r["score"])["id"] for g, m in _taxed_groups(results).items()}


def tax_ablation_claim(results: list[dict], eps=None) -> str | None:
    """Attention + FFN against either alone with the paper's taxes: hypervolume over score and effective FLOPs
    per token. ``eps`` is the FFN threshold the effective FLOPs were counted with (the sweep's compaction eps)."""
    from econlm.pareto import hypervolume

    effective = [r for r in results if is_ok(r) and r.get("effective_flops_per_token")]
    groups = _taxed_groups(results)
    if not effective or not {"attention + FFN", "attention only", "FFN only"} <= set(groups):
        return None
    ref = (min(r["score"] for r in effective), max(r["effective_flops_per_token"] for r in effective) * 1.0001)
    hv = {
        g: hypervolume(
            [(r["score"], r["effective_flops_per_token"]) for r in m if r.get("effective_flops_per_token")], ref
        )
        for g, m in groups.items()
    }
    better = hv["attention + FFN"] > max(hv["attention only"], hv["FFN only"])
    eps_values = sorted({e for e in (eps if isinstance(eps, (list, tuple, set)) else [eps]) if e is not None})
    eps_text = " or ".join(number_text(e) for e in eps_values) or UNKNOWN
    return (
        "- *attention + FFN better than either alone*, with the paper's taxes (hypervolume over score and "
        "effective FLOPs per token, lambda > 0 runs of the grid; effective FLOPs skip FFN activations under "
        f"{eps_text}, so only the FFN tax can lower them): "
        f"{'holds' if better else 'does not hold'} here: attention + FFN "
        f"{hv['attention + FFN']:.4g}, attention only {hv['attention only']:.4g}, FFN only "
        f"{hv['FFN only']:.4g}."
    )


def gate_ablation_claim(results: list[dict]) -> str:
    """Attention + FFN against either alone, with flops gates: compute that compaction really removes.

    A single-component run counts as beaten when a gated run on both components (same seed and epochs) has at
    least as good a score at no more dense FLOPs after compaction."""
    gated = [
        r
        for r in results
        if r["kind"] == "train" and is_ok(r) and "flops" in r["settings"]["cost"] and r.get("dense_flops")
    ]
    both = [r for r in gated if r["settings"].get("target", "both") == "both"]
    single = [r for r in gated if r["settings"].get("target", "both") != "both"]
    if not single or not both:
        return "- *attention + FFN better than either alone*, with flops gates: not measured yet (runs missing)."

    def describe(r: dict) -> str:
        base = baseline_for(results, r)
        cut = f", {1 - r['dense_flops'] / base['dense_flops']:.1%} fewer dense FLOPs" if base else ""
        return (
            f"{r['settings'].get('target', 'both')} at budget {r['settings']['budget']} "
            f"(seed {r['settings']['seed']}): {r['metric']} {r['score']:.4f}{cut}"
        )

    verdicts, beaten = [], 0
    for r in sorted(single, key=lambda r: (r["settings"]["target"], r["settings"]["budget"], r["settings"]["seed"])):
        same = [b for b in both if b["settings"]["seed"] == r["settings"]["seed"] and epochs_of(b) == epochs_of(r)]
        rivals = [b for b in same if b["dense_flops"] <= r["dense_flops"] and b["score"] >= r["score"]]
        beaten += bool(rivals)
        if rivals:
            verdicts.append(f"{describe(r)}; beaten by {describe(rivals[0])}")
        else:
            cheaper = [b for b in same if b["dense_flops"] <= r["dense_flops"]]
            best = max(cheaper, key=lambda b: b["score"], default=None)
            verdicts.append(
                f"{describe(r)}; not beaten"
                + (
                    f" (best run on both with no more FLOPs: {describe(best)})"
                    if best
                    else " (no run on both as cheap)"
                )
            )
    word = "holds" if beaten == len(single) else ("holds partly" if beaten else "does not hold")
    return (
        "- *attention + FFN better than either alone*, with flops gates (score against dense FLOPs after "
        f"compaction; a run on one component is beaten when a run on both is at least as good with no more "
        f"FLOPs): {word} here ({beaten} of {len(single)} beaten): " + "; ".join(verdicts) + "."
    )


def dominance_claim(pairs: list[tuple[str, dict, dict]], fronts: Mapping[str, dict]) -> str:
    """Incentive training against post-hoc pruning: first at identical structures, then by hypervolume.

    Matched pairs are the fair test (same heads and neurons kept, same seed); the hypervolume also rewards a
    method for points the other has no counterpart for, so it is reported but does not decide."""
    if not pairs:
        return "- *incentive training dominates post-hoc pruning*: not measured yet (no finished post-hoc trials)."
    parts, wins_all = [], True
    for importance in sorted({p[0] for p in pairs}):
        mine = [(a["score"], b["score"]) for imp, a, b in pairs if imp == importance]
        wins = sum(a >= b for a, b in mine)
        wins_all &= wins == len(mine)
        mean = sum(a - b for a, b in mine) / len(mine)
        parts.append(
            f"against {importance} pruning incentive is as good or better in {wins} of {len(mine)} matched pairs "
            f"(mean difference {mean * 100:+.2f} points)"
        )
    problems = (fronts.get("dense_flops") or {}).get("problems") or []
    front = problems[0]["methods"] if problems else {}
    hv = ", ".join(f"{m} {v['hypervolume']:.4g}" for m, v in front.items() if m != "topk")
    return (
        f"- *incentive training dominates post-hoc pruning*: {'holds' if wins_all else 'does not hold'} here: "
        + "; ".join(parts)
        + f". Hypervolume on the dense FLOPs axis (each method's own points, so unmatched points count): {hv or UNKNOWN}."
    )


def claims(results: list[dict], fronts: Mapping[str, dict], eps=None) -> list[str]:
    """The paper's claims, each a markdown bullet, in the order docs/frontier.md lists them."""
    pairs = matched_pairs(results)
    found = [
        flops_claim(results),
        pairs_claim(pairs),
        tax_ablation_claim(results, eps),
        gate_ablation_claim(results),
        dominance_claim(pairs, fronts),
    ]
    return [c for c in found if c is not None]


def frontier_section(
    task: str, results: list[dict], fronts: Mapping[str, dict], eps=None, report: str | None = None
) -> tuple[str, dict]:
    """The section of docs/frontier.md for one task. ``fronts`` maps a compute axis to
    :func:`econlm.analysis.frontier` of ``results``; ``eps`` is the sweep's compaction threshold(s)."""
    model = model_names([r for r in results if r["kind"] == "train"])
    found = claims(results, fronts, eps)
    lines = [f"## {model} on {task}\n", *frontier_tables(fronts)]
    lines.append("### The paper's claims, checked on these runs\n\n" + "\n".join(found) + "\n")
    if report:
        lines.append(f"Full report with plots: `{report}`.\n")
    return "\n".join(lines), {
        "frontiers": dict(fronts),
        "claims": found,
        "best_per_ablation": best_per_ablation(results),
    }
