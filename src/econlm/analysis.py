"""From sweep results to Pareto frontiers: methods, compute axes, seed aggregation, hypervolumes."""

from __future__ import annotations

import math
from pathlib import Path

from econlm.pareto import aggregate, hypervolume, pareto_front

AXIS_FIELDS = {
    "dense_flops": ("dense_flops", "dense FLOPs per sequence (after compaction)"),
    "effective_flops": ("effective_flops_per_token", "effective FLOPs per token (zeros skipped)"),
    "latency": ("latency_ms", "CPU latency, batch 32 (ms, median)"),
    # Real dev text: what a token rule saves on the lengths users send, padding never counted as a saving.
    "latency_dev": ("latency_dev_ms", "CPU latency, real dev batches of 32 (ms per batch, median)"),
}


def method_of(result: dict) -> str:
    """incentive (unit gates or taxes, any lambda, including the lam = 0 baseline: the units lever, compacted),
    posthoc-<importance>, topk,
    tokens (a post-hoc token budget on a lambda = 0 model), units+tokens (on a compacted incentive model),
    learned-tokens (trained token thresholds), units+learned-tokens (thresholds trained with unit gates), or
    retrained-tokens / units+retrained-tokens (fine-tuned under a fixed token schedule, --token-budget)."""
    if result["kind"] == "posthoc":
        settings = result["settings"]
        # Variants are methods of their own: a repaired or untrained rival is not the fine-tuned one.
        rescaled = {True: "-rescaled", "layerwise": "-layerwise-rescaled"}.get(settings.get("rescale"), "")
        untrained = "-untrained" if settings.get("finetune_epochs") == 0 else ""
        spent = "-global" if settings.get("allocation") == "global" else ""  # its own structure, same FLOPs
        return f"posthoc-{settings['importance']}{spent}{rescaled}{untrained}"
    if result["kind"] == "topk":
        return "topk"
    if result["kind"] == "market":
        return "market"  # Shapley values for the shapley rivals: no model of its own
    if result["kind"] == "tokens":
        return "units+tokens" if result["settings"].get("on") == "units" else "tokens"
    costs = set(result["settings"].get("cost", ()))
    if "tokens" in costs:
        return "units+learned-tokens" if costs & {"flops", "latency"} else "learned-tokens"
    if result["settings"].get("token_budget") is not None:  # fine-tuned under a fixed schedule (PoWER-BERT)
        return "units+retrained-tokens" if costs & {"flops", "latency"} else "retrained-tokens"
    return "incentive"


def ablation_of(result: dict) -> str:
    settings = result["settings"]
    if result["kind"] != "train" or settings.get("token_budget") is not None:  # a token rule: its own method
        return method_of(result)
    if float(settings.get("lam", 0)) == 0 and settings.get("budget") is None:
        return "baseline (lambda = 0)"
    costs = settings.get("cost", [])
    if "tokens" in costs:
        return method_of(result)
    target = settings.get("target", "both")
    if "flops" in costs:
        return f"flops gates ({target})"
    has_attention = any(c.startswith("attn") for c in costs) and target in ("attention", "both")
    has_ffn = "ffn_l1" in costs and target in ("ffn", "both")
    return "attention + FFN" if has_attention and has_ffn else ("attention only" if has_attention else "FFN only")


def _group_key(result: dict) -> tuple:
    settings = {k: v for k, v in result["settings"].items() if k not in ("seed", "source_model", "matches")}
    return (method_of(result), repr(sorted((k, repr(v)) for k, v in settings.items())))


def frontier(results: list[dict], compute_axis: str = "dense_flops") -> dict:
    """Per (model, task): points per method (seed means with spread), their fronts and hypervolumes."""
    from econlm.data import get_task

    field, label = AXIS_FIELDS[compute_axis]
    scored = [r for r in results if r.get("status") == "ok" and r.get("score") is not None]
    ok = [r for r in scored if r.get(field) is not None]
    # Finished trials without this axis's measure (a language-modelling trial on latency_dev, or one that
    # finished before the measure existed): left out of this frontier, and counted so the plot can say so.
    left_out = len(scored) - len(ok)
    by_problem: dict[tuple, list[dict]] = {}
    for r in ok:
        by_problem.setdefault((r["settings"].get("model"), r["settings"]["task"]), []).append(r)
    problems = []
    for (model, task), rows in by_problem.items():
        higher = get_task(task).higher_is_better
        groups = aggregate(rows, _group_key, ["score", field])
        points = []
        for g in groups:
            first = g["members"][0]
            points.append(
                {
                    "method": method_of(first),
                    "ablation": ablation_of(first),
                    "lam": first["settings"].get("lam"),
                    "budget": first["settings"].get("budget") or first["settings"].get("budget_k"),
                    "cost": first["settings"].get("cost"),
                    "score": g["score"],
                    "score_std": g["score_std"],
                    "compute": g[field],
                    "compute_std": g[f"{field}_std"],
                    "seeds": g["n"],
                    "trials": [m["id"] for m in g["members"]],
                }
            )
        scores = [p["score"] for p in points if not math.isnan(p["score"])]
        computes = [p["compute"] for p in points if not math.isnan(p["compute"])]
        if not scores:
            continue
        # A common reference point for every method: the worst score and the largest compute seen.
        reference = (min(scores) if higher else max(scores), max(computes) * 1.0001)
        methods = {}
        for method in sorted({p["method"] for p in points}):
            mine = [p for p in points if p["method"] == method]
            coords = [(p["score"], p["compute"]) for p in mine]
            front = pareto_front(coords, higher)
            methods[method] = {
                "front": [mine[i] for i in front],
                "hypervolume": hypervolume(coords, reference, higher),
            }
        problems.append(
            {
                "model": model,
                "task": task,
                "metric": rows[0].get("metric"),
                "higher_is_better": higher,
                "compute_axis": compute_axis,
                "compute_label": label,
                "reference_point": reference,
                "points": points,
                "methods": methods,
            }
        )
    return {"compute_axis": compute_axis, "problems": problems, "left_out": left_out}


def write_pareto(results: list[dict], out: str | Path, compute_axis: str = "dense_flops") -> dict:
    from econlm.runinfo import write_json

    data = {axis: frontier(results, axis) for axis in AXIS_FIELDS}
    data["primary_axis"] = compute_axis
    write_json(Path(out) / "pareto.json", data)
    return data
