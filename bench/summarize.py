"""Turn the benchmark sweeps (runs/bench_sweep/<task>) into tables in docs/ and raw numbers in bench/results/.

    python bench/summarize.py [--latency-repeats 20]

Writes three benchmark documents from the same trials:
  docs/train_sweep.md   incentive training (score, sparsity, Gini, entropy, time per cost term and lambda)
  docs/compaction.md    compaction of the flops-gated checkpoints: FLOPs, measured CPU latency, score
  docs/frontier.md      Pareto frontiers, baselines, seeds, and the paper's claims checked
Every statement in them is computed here from the results; runs that have not finished are listed as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, markdown_table, save  # noqa: E402

SWEEPS = ROOT / "runs" / "bench_sweep"


def load(task: str) -> list[dict]:
    path = SWEEPS / task / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lam_of(r: dict) -> float:
    return float(r["settings"].get("lam", 0))


def baseline_for(results: list[dict], r: dict) -> dict | None:
    """The plain fine-tune (lambda = 0, no gates) with the same seed and epochs."""
    for b in results:
        s = b["settings"]
        if (
            b["kind"] == "train"
            and b.get("status") == "ok"
            and lam_of(b) == 0
            and s.get("budget") is None
            and "flops" not in s["cost"]
            and s.get("seed") == r["settings"].get("seed")
            and s.get("epochs", 1) == r["settings"].get("epochs", 1)
        ):
            return b
    return None


# ---------------------------------------------------------------------------------------------------------
# Issue 3: incentive training


def train_section(task: str, results: list[dict]) -> tuple[str, list[dict]]:
    rows = [r for r in results if r["kind"] == "train" and r.get("status") == "ok" and r["settings"].get("seed") == 1]
    rows.sort(
        key=lambda r: (
            "+".join(r["settings"]["cost"]),
            r["settings"].get("budget") or 0,
            lam_of(r),
            r["settings"].get("epochs", 1),
        )
    )
    table = markdown_table(
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
                r["settings"].get("epochs", 1),
                r["lambda_final"],
                r["score"] if not r.get("compact", {}).get("removed") else r["compact"]["score_after"]["value"],
                r["sparsity"]["1e-03"],
                r["sparsity"]["1e-02"],
                r["gini"],
                r["entropy"],
                round(r["train_seconds"]),
                threads_of(task, r),
            ]
            for r in rows
        ],
    )
    verdicts = []
    base = next(
        (
            r
            for r in rows
            if lam_of(r) == 0 and "flops" not in r["settings"]["cost"] and r["settings"].get("epochs", 1) == 1
        ),
        None,
    )
    if base:
        for cost in ("attn_entropy", "attn_logits_l1", "attn_sqrt"):
            mine = priced_runs(rows, cost)
            if not mine:
                continue
            top = mine[-1]
            gini_up = top["gini"] - base["gini"]
            entropy_down = base["entropy"] - top["entropy"]
            steps = "; ".join(
                f"lambda {lam_of(r):g}: Gini {r['gini']:.3f}, entropy {r['entropy']:.3f}, {r['metric']} {r['score']:.4f}"
                for r in mine
            )
            verdicts.append(
                f"- `{cost}`: {'raises' if gini_up > 0.005 else 'does not raise'} Gini and "
                f"{'lowers' if entropy_down > 0.005 else 'does not lower'} entropy at the largest price "
                f"(Gini {base['gini']:.3f} -> {top['gini']:.3f}, entropy {base['entropy']:.3f} -> {top['entropy']:.3f}; "
                f"lambda = 0: {base['metric']} {base['score']:.4f}). By price: {steps}."
            )
    text = (
        f"## minilm on {task}\n\nSeed 1, full train split, scored on the full dev split. "
        f"For flops runs the score is that of the compacted model. `train s` is wall-clock training time on the "
        f"2-core machine with `threads` torch threads; runs with 1 thread shared the machine with one other "
        f"benchmark run, those with 2 sometimes did: indicative only.\n\n"
        f"{table}\n\n"
        "Which cost definitions make attention more concentrated, against the 1-epoch lambda = 0 fine-tune "
        "(Gini and entropy as the probe measures them, on dev; the paper reports Gini 0.58 -> 0.82 and "
        "entropy 4.31 -> 2.99):\n\n"
        + ("\n".join(verdicts) or "- (no finished runs yet)")
        + "\n\n"
        + ffn_verdict(rows, base)
        + ablation_grid(rows, base)
    )
    return text, rows


def priced_runs(rows: list[dict], cost: str) -> list[dict]:
    """The 1-epoch runs taxed by ``cost`` alone at a positive lambda, cheapest price first."""
    return sorted(
        (r for r in rows if r["settings"]["cost"] == [cost] and lam_of(r) > 0 and r["settings"].get("epochs", 1) == 1),
        key=lam_of,
    )


def ffn_verdict(rows: list[dict], base: dict | None) -> str:
    """Where the FFN tax starts to make activations sparse, and what it costs in score."""
    mine = priced_runs(rows, "ffn_l1")
    if not base or not mine:
        return ""
    moved = [r for r in mine if r["sparsity"]["1e-02"] - base["sparsity"]["1e-02"] > 0.01]
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


def threads_of(task: str, r: dict) -> int | str:
    """Torch threads the run trained with (saved in its metrics.json)."""
    path = SWEEPS / task / "trials" / r["id"] / "model" / "metrics.json"
    try:
        return json.loads(path.read_text())["meta"]["machine"]["torch_threads"]
    except (OSError, KeyError, ValueError):
        return "-"


ABLATION_GROUPS = (("FFN only", ["ffn_l1"]), ("attention only", ["attn_entropy"]), ("both", ["ffn_l1", "attn_entropy"]))


def ablation_grid(rows: list[dict], base: dict | None) -> str:
    """The lambda grid side by side: each cell is score / FFN sparsity at 1e-2 / attention Gini."""
    grid = [r for r in rows if r["settings"].get("epochs", 1) == 1 and r["settings"].get("budget") is None]
    lams = sorted(
        {lam_of(r) for r in grid if lam_of(r) > 0 and r["settings"]["cost"] in [c for _, c in ABLATION_GROUPS]}
    )
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
        "The ablation grid (1 epoch, seed 1). Each cell: dev score / share of FFN activations with |a| <= 1e-2 / "
        f"attention Gini. {reference}These taxes change how activations and attention are distributed; on their "
        "own they remove no computation (see docs/frontier.md for the compute that really goes).\n\n" + table + "\n"
    )


# ---------------------------------------------------------------------------------------------------------
# Issue 4: compaction


def measure_latency(model_dir: str, repeats: int) -> dict:
    import torch

    from econlm.latency import measure
    from econlm.models import load_model

    torch.set_num_threads(2)
    model = load_model(model_dir).model
    out = {}
    for batch in (1, 32):
        ids = torch.randint(1000, 2000, (batch, 128))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def forward():
            with torch.no_grad():
                model(**inputs)

        out[f"batch{batch}"] = measure(forward, warmup=5, repeats=repeats).as_dict()
    return out


def compaction_section(task: str, results: list[dict], repeats: int) -> tuple[str, list[dict]]:
    rows = []
    for r in results:
        removed = (r.get("compact") or {}).get("removed")
        if r["kind"] != "train" or r.get("status") != "ok" or not removed:
            continue
        trial_dir = SWEEPS / task / "trials" / r["id"]
        report = json.loads((trial_dir / "compact" / "compact.json").read_text())
        before = measure_latency(str(trial_dir / "model"), repeats)
        after = measure_latency(str(trial_dir / "compact"), repeats)
        implied = report["before"]["dense_flops"] / report["after"]["dense_flops"]
        base = baseline_for(results, r)
        entry = {
            "trial": r["id"],
            "budget": r["settings"].get("budget"),
            "seed": r["settings"].get("seed"),
            "flops_reduction": 1 - 1 / implied,
            "implied_speedup": implied,
            "heads_removed": removed["heads"],
            "neurons_removed": removed["neurons"],
            "score_before": report["before"]["score"]["value"],
            "score_after": report["after"]["score"]["value"],
            "baseline_score": base["score"] if base else None,
            "max_output_difference": report["verification"]["max_abs_output_difference"],
        }
        for batch in ("batch1", "batch32"):
            speedup = before[batch]["median"] / after[batch]["median"]
            entry[f"speedup_{batch}"] = speedup
            entry[f"realized_over_implied_{batch}"] = speedup / implied
            entry[f"latency_{batch}"] = {"before": before[batch], "after": after[batch]}
        rows.append(entry)
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
                e["speedup_batch1"],
                e["speedup_batch32"],
                e["realized_over_implied_batch1"],
                e["realized_over_implied_batch32"],
            ]
            for e in rows
        ],
    )
    target = [
        e
        for e in rows
        if e["flops_reduction"] >= 0.5
        and e["baseline_score"] is not None
        and (e["baseline_score"] - e["score_after"]) * 100 <= 1.0
    ]
    verdict = (
        f"{len(target)} of {len(rows)} compacted checkpoints reach the target (>= 50% fewer FLOPs at <= 1 point "
        "lost against the lambda = 0 fine-tune of the same seed and epochs)."
    )
    return (
        f"## minilm on {task}\n\nLatency: CPU, 2 threads, sequence length 128, median of {repeats} runs after 5 "
        f"warm-up runs, original and compacted model measured in the same run.\n\n{table}\n\n{verdict}\n"
    ), rows


# ---------------------------------------------------------------------------------------------------------
# Issue 5: frontiers


def frontier_section(task: str, results: list[dict]) -> tuple[str, dict]:
    from econlm.analysis import ablation_of, frontier

    lines = [f"## minilm on {task}\n"]
    data = {}
    for axis in ("dense_flops", "effective_flops"):
        front = frontier(results, axis)
        data[axis] = front
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
            lines.append(
                f"### compute axis: {problem['compute_label']}\n\nReference point {problem['reference_point']}; "
                f"means over seeds (± standard deviation where 2 seeds finished).\n\n{table}\n"
            )
    ok = [r for r in results if r.get("status") == "ok"]
    claims = []
    dense = [r for r in ok if r["kind"] == "train" and r.get("dense_flops_before")]
    for r in dense:
        base = baseline_for(results, r)
        if base and r.get("dense_flops"):
            r["_cut"] = 1 - r["dense_flops"] / base["dense_flops"]
            r["_loss_points"] = (base["score"] - r["score"]) * 100
    hits = [r for r in dense if r.get("_cut", 0) >= 0.4 and r.get("_loss_points", 99) <= 0.6]
    near = min((r for r in dense if r.get("_cut", 0) >= 0.4), key=lambda r: r["_loss_points"], default=None)
    if hits:
        verdict = (
            f"holds here: {len(hits)} trial(s), e.g. {hits[0]['id']} ({hits[0]['_cut']:.1%} fewer dense FLOPs, "
            f"{hits[0]['_loss_points']:.2f} points lost)."
        )
    elif near is not None:
        word = "holds approximately" if near["_loss_points"] <= 0.7 else "does not hold"
        verdict = (
            f"{word} here: the smallest loss at >= 40% fewer dense FLOPs is {near['_loss_points']:.2f} points "
            f"({near['_cut']:.1%} fewer, {near['id']})."
        )
    else:
        verdict = "not reached here: no trial cut 40% of the dense FLOPs."
    claims.append(
        "- *40% fewer FLOPs at 0.6 points lost* (paper: MNLI; here against the lambda = 0 fine-tune of the same "
        "seed and epochs): " + verdict
    )
    by_id = {r["id"]: r for r in ok}
    # Pairs for the flops-gated runs only: a tax run whose compaction happened to find a few dead units (a
    # collapsed attention-tax model, say) is not a compression method, and its pair would say nothing.
    pairs = [
        (r["settings"]["importance"], by_id[r["settings"]["matches"]], r)
        for r in ok
        if r["kind"] == "posthoc"
        and r["settings"].get("matches") in by_id
        and "flops" in by_id[r["settings"]["matches"]]["settings"]["cost"]
    ]
    if pairs:
        claims.append(
            "- matched pairs for the flops-gated runs (the post-hoc model keeps the same number of heads and neurons "
            "per layer, pruned from the lambda = 0 model and fine-tuned 1 more epoch): "
            + "; ".join(
                sorted(
                    f"budget {mine['settings'].get('budget')} seed {mine['settings'].get('seed')}: incentive "
                    f"{mine['score']:.4f} vs post-hoc {importance} {theirs['score']:.4f}"
                    for importance, mine, theirs in pairs
                )
            )
            + "."
        )
    groups: dict[str, list[dict]] = {}
    for r in ok:
        if r["kind"] == "train" and lam_of(r) > 0:
            groups.setdefault(ablation_of(r), []).append(r)
    eff = {g: max(m, key=lambda r: r["score"] - 0.0) for g, m in groups.items()}
    from econlm.pareto import hypervolume

    effective = [r for r in ok if r.get("effective_flops_per_token")]
    if effective:
        ref = (min(r["score"] for r in effective), max(r["effective_flops_per_token"] for r in effective) * 1.0001)
        hv = {
            g: hypervolume(
                [(r["score"], r["effective_flops_per_token"]) for r in m if r.get("effective_flops_per_token")], ref
            )
            for g, m in groups.items()
        }
        if {"attention + FFN", "attention only", "FFN only"} <= set(hv):
            better = hv["attention + FFN"] > max(hv["attention only"], hv["FFN only"])
            claims.append(
                "- *attention + FFN better than either alone*, with the paper's taxes (hypervolume over score and "
                "effective FLOPs per token, lambda > 0 runs of the grid; effective FLOPs skip FFN activations under "
                "1e-3, so only the FFN tax can lower them): "
                f"{'holds' if better else 'does not hold'} here: attention + FFN "
                f"{hv['attention + FFN']:.4g}, attention only {hv['attention only']:.4g}, FFN only "
                f"{hv['FFN only']:.4g}."
            )
    claims.append(gate_ablation_claim(results))
    claims.append(dominance_claim(pairs, data))
    lines.append("### The paper's claims, checked on these runs\n\n" + "\n".join(claims) + "\n")
    lines.append(f"Full report with plots: `bench/results/report_{task}.html`.\n")
    return "\n".join(lines), {
        "frontiers": data,
        "claims": claims,
        "best_per_ablation": {g: r["id"] for g, r in eff.items()},
    }


def dominance_claim(pairs: list[tuple[str, dict, dict]], data: dict) -> str:
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
    front = data["dense_flops"]["problems"][0]["methods"] if data["dense_flops"]["problems"] else {}
    hv = ", ".join(f"{m} {v['hypervolume']:.4g}" for m, v in front.items() if m != "topk")
    return (
        f"- *incentive training dominates post-hoc pruning*: {'holds' if wins_all else 'does not hold'} here: "
        + "; ".join(parts)
        + f". Hypervolume on the dense FLOPs axis (each method's own points, so unmatched points count): {hv}."
    )


def gate_ablation_claim(results: list[dict]) -> str:
    """Attention + FFN against either alone, with flops gates: compute that compaction really removes.

    A single-component run counts as beaten when a gated run on both components (same seed and epochs) has at
    least as good a score at no more dense FLOPs after compaction."""
    gated = [
        r
        for r in results
        if r["kind"] == "train"
        and r.get("status") == "ok"
        and "flops" in r["settings"]["cost"]
        and r.get("dense_flops")
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
        same = [
            b
            for b in both
            if b["settings"]["seed"] == r["settings"]["seed"]
            and b["settings"].get("epochs", 1) == r["settings"].get("epochs", 1)
        ]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--tasks", default="stsb,cola")
    args = parser.parse_args()
    from econlm.report import write_report

    train_parts, compaction_parts, frontier_parts = [], [], []
    raw_train, raw_compaction, raw_frontier = {}, {}, {}
    status = []
    for task in args.tasks.split(","):
        results = load(task)
        finished = sum(r.get("status") == "ok" for r in results)
        failed = [r["id"] for r in results if r.get("status") == "failed"]
        status.append(f"- {task}: {finished} trials finished" + (f", failed: {', '.join(failed)}" if failed else ""))
        if not results:
            continue
        text, rows = train_section(task, results)
        train_parts.append(text)
        raw_train[task] = rows
        text, rows = compaction_section(task, results, args.latency_repeats)
        compaction_parts.append(text)
        raw_compaction[task] = rows
        text, data = frontier_section(task, results)
        frontier_parts.append(text)
        raw_frontier[task] = data
        write_report(SWEEPS / task, ROOT / "bench" / "results" / f"report_{task}.html")
    header = (
        "Trials come from `bench/run_sweeps.sh` (sweep files in `bench/sweeps/`), outputs in `runs/bench_sweep/`."
        "\n\nStatus when this was written:\n" + "\n".join(status) + "\n\n"
    )
    save(
        "train_sweep",
        {"rows": raw_train},
        "# Incentive training: compute taxes on minilm\n\n" + header + "\n".join(train_parts),
    )
    save(
        "compaction",
        {"rows": raw_compaction},
        "# Compaction: removing what the gates closed\n\n" + header + "\n".join(compaction_parts),
    )
    _keep_onnx_runtime_block()
    save(
        "frontier",
        {"tasks": raw_frontier},
        "# Pareto frontiers: incentive training against post-hoc pruning and top-k budgets\n\n"
        + header
        + "\n".join(frontier_parts),
    )


def _keep_onnx_runtime_block() -> None:
    """docs/compaction.md was just rewritten: put back the ONNX Runtime table bench/onnx_runtime.py measured."""
    measured = ROOT / "bench" / "results" / "onnx_runtime.json"
    if measured.exists():
        from onnx_runtime import markdown, update_compaction_doc

        saved = json.loads(measured.read_text())
        update_compaction_doc(markdown(saved["rows"], saved["settings"]["repeats"]))


if __name__ == "__main__":
    main()
