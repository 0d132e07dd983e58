"""Is the controller's price a shadow price of compute?

A controller run minimises ``L_task + lambda * share`` while it drives the compute share to its budget.
If training found the best model for each budget, the lowest task loss reachable at share ``C``, ``L*(C)``,
falls with ``C`` and ``lambda = -dL*/dC`` at the budget: the price is the loss one more unit of compute
share would save. Two controller runs of the same seed and settings at neighbouring budgets measure that
slope by finite differences, ``-(L(C_hi) - L(C_lo)) / (C_hi - C_lo)``, with ``L`` the dev task loss of each
final model and ``C`` the compute share each cleared (the gates' expected share at the last step).

For a convex ``L*`` the slope between two budgets lies between the prices at either end (the tighter
budget's price is the higher). A pair is called *consistent* when the finite difference lies within that
interval widened by a factor of two either way (training noise); its ratio to the mean price is reported
either way. With distillation the trained objective also holds the distillation terms, which this check
leaves out (the task loss is what users pay for). The final lambda is the whole marginal price of the share
once the gates are frozen (the budget's quadratic anchor acts only while they learn); a run whose cost list
holds more than the one budgeted term, or weights other than 1, is flagged. The share is of dense FLOPs for
``flops`` runs and of dense latency (as the latency table predicts it) for ``latency`` runs.
"""

from __future__ import annotations

import json
from pathlib import Path

SLACK = 2.0  # how far outside [lambda_hi, lambda_lo] a finite difference may fall and still be consistent


def _group_key(settings: dict) -> str:
    return json.dumps({k: v for k, v in settings.items() if k != "budget"}, sort_keys=True, default=str)


def dev_loss(model_dir: str, settings: dict, data_dir=None, batch_size: int = 64) -> dict:
    """The mean task loss of a trained model over its task's dev split (a language model: the mean next-token
    loss over the validation split's first ``eval_limit`` tokens, default 8192, in the sliding windows of its
    test score; the log of that perplexity)."""
    import math

    import torch

    from econlm import data, evaluate
    from econlm.market_run import _split
    from econlm.models import load_model
    from econlm.userdata import spec_of

    task = data.get_task(settings["task"], spec_of(settings))
    loaded = load_model(model_dir)
    if task.is_lm:
        text = data.load_text(task, "dev", data_dir or settings.get("data_dir"))
        ids = evaluate.lm_token_ids(loaded.tokenizer, text, settings.get("eval_limit") or 8192)
        with torch.no_grad():
            score = evaluate.score_lm(
                loaded.model.eval(), ids, max_length=settings.get("max_length", 128), batch_size=min(batch_size, 8)
            )
        result = {"loss": math.log(score.value), "examples": score.examples, "unit": "tokens"}
        if data.lm_train_split(task, data_dir or settings.get("data_dir")) == "dev":
            result["caveat"] = "trained on the validation split (no local train split): its loss is a training loss"
        return result
    examples = data.load_examples(task, "dev", data_dir or settings.get("data_dir"))
    split = _split(loaded, task, examples, settings.get("max_length", 128), batch_size, labelled=True)
    total = 0.0
    with torch.no_grad():
        for batch in split.batches:
            total += float(loaded.model.eval()(**batch).loss) * batch["input_ids"].shape[0]
    return {"loss": total / len(examples), "examples": len(examples)}


def shadow_prices(sweep_dir: str | Path, data_dir=None) -> dict:
    """Finite-difference shadow prices against the final prices of a sweep's controller runs."""
    from econlm.progress import bar
    from econlm.report import load_results

    folder = Path(sweep_dir)
    runs = [
        r
        for r in load_results(folder)
        if r.get("kind") == "train" and r.get("status") == "ok" and r["settings"].get("budget") is not None
    ]
    groups: dict[str, list[dict]] = {}
    with bar(total=len(runs), desc="shadow prices: dev loss", unit="run") as pbar:
        for r in runs:
            metrics = json.loads((Path(r["model_dir"]) / "metrics.json").read_text())
            logged = (metrics.get("cost_terms_last_step") or {}).get("cost/compute_share")
            settings = r["settings"]
            cost = list(settings.get("cost") or [])
            row = {
                "id": r["id"],
                "seed": settings.get("seed"),
                "cost": cost,
                "axis": "latency share" if "latency" in cost else "dense FLOPs share",
                "budget": settings["budget"],
                "share": logged if logged is not None else settings["budget"],
                "share_source": "gates' expected share at the last step"
                if logged is not None
                else "the budget (no share logged)",
                "caveats": [
                    c
                    for c, bad in (
                        ("more than one cost term", len(cost) > 1),
                        (
                            "cost weights other than 1",
                            any(settings.get(w, 1.0) != 1.0 for w in ("attention_weight", "ffn_weight")),
                        ),
                        ("distilled: the objective also held distillation terms", bool(settings.get("distill"))),
                    )
                    if bad
                ],
                "lambda_final": r["lambda_final"],
                **dev_loss(r["model_dir"], r["settings"], data_dir),
            }
            if row.get("caveat"):
                row["caveats"].append(row.pop("caveat"))
            groups.setdefault(_group_key(r["settings"]), []).append(row)
            pbar.update(1)
    pairs = []
    for rows in groups.values():
        rows.sort(key=lambda x: x["share"])
        for lo, hi in zip(rows, rows[1:]):
            pairs.append(compare(lo, hi))
    return {
        "runs": [row for rows in groups.values() for row in rows],
        "pairs": pairs,
        "definition": "finite difference -(L_hi - L_lo) / (C_hi - C_lo) of dev task loss against the compute share "
        f"cleared, between neighbouring budgets of the same seed and settings; consistent when it lies within "
        f"[lambda_hi / {SLACK}, lambda_lo * {SLACK}]",
        "sweep": str(folder),
    }


def compare(lo: dict, hi: dict) -> dict:
    """One neighbouring pair: ``lo`` cleared the smaller compute share."""
    width = hi["share"] - lo["share"]
    slope = -(hi["loss"] - lo["loss"]) / width if width > 0 else float("nan")
    low, high = sorted((lo["lambda_final"], hi["lambda_final"]))
    mean = (lo["lambda_final"] + hi["lambda_final"]) / 2
    consistent = width > 0 and low / SLACK <= slope <= high * SLACK
    return {
        "seed": lo["seed"],
        "cost": lo["cost"],
        "axis": lo.get("axis", "compute share"),
        "caveats": sorted(set(lo.get("caveats", [])) | set(hi.get("caveats", []))),
        "budgets": [lo["budget"], hi["budget"]],
        "shares": [lo["share"], hi["share"]],
        "losses": [lo["loss"], hi["loss"]],
        "lambdas": [lo["lambda_final"], hi["lambda_final"]],
        "finite_difference": slope,
        "ratio_to_mean_lambda": slope / mean if mean > 0 else float("nan"),
        "consistent": bool(consistent),
    }


def format_shadow(result: dict) -> str:
    if not result["pairs"]:
        return "shadow prices: no two controller runs share a seed and settings at different budgets"
    lines = ["shadow prices (dev task loss against the compute share cleared):"]
    for p in result["pairs"]:
        lines.append(
            f"  seed {p['seed']} {'+'.join(p['cost'] or [])} budgets {p['budgets'][0]}-{p['budgets'][1]}: "
            f"-dL/dC {p['finite_difference']:.4g} vs lambda {p['lambdas'][1]:.4g}..{p['lambdas'][0]:.4g} "
            f"({'consistent' if p['consistent'] else 'not consistent'})"
        )
    return "\n".join(lines)
