"""Benchmark (issue: incentive training): minilm on STS-B and CoLA under compute taxes.

    python bench/train_sweep.py [--tasks stsb,cola] [--lams 1e-6,1e-5,1e-4,1e-3,1e-2] [--epochs 3]

Per task: the lambda = 0 baseline; each lambda for ffn_l1 (target ffn), for each attention cost
(attn_entropy, attn_logits_l1, attn_sqrt; target attention) and for ffn_l1 + attn_entropy (target both);
and one flops run with the budget controller at 0.5. Full train split, full dev split. Runs go to
runs/bench_train/ (checkpoints are too large for the repository); a rerun skips finished runs and resumes
interrupted ones. The summary goes to bench/results/train_sweep.json and docs/train_sweep.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, markdown_table, save  # noqa: E402

from econlm.train import TrainConfig, train  # noqa: E402

RUNS = ROOT / "runs" / "bench_train"
ATTENTION_COSTS = ("attn_entropy", "attn_logits_l1", "attn_sqrt")


def plan(tasks: list[str], lams: list[float], epochs: float, lr: float) -> list[tuple[str, TrainConfig]]:
    runs = []
    for task in tasks:

        def config(name, **kw):
            settings = dict(
                model="minilm",
                task=task,
                epochs=epochs,
                lr=lr,
                batch_size=32,
                max_length=128,
                seed=42,
                data_dir=DATA,
                save_every=100,
                out=str(RUNS / task / name),
            )
            settings.update(kw)
            return name, TrainConfig(**settings)

        runs.append(config("baseline", lam=0.0, cost=("ffn_l1",), target="ffn"))
        for lam in lams:
            runs.append(config(f"ffn_l1_{lam:g}", lam=lam, cost=("ffn_l1",), target="ffn"))
            for cost in ATTENTION_COSTS:
                runs.append(config(f"{cost}_{lam:g}", lam=lam, cost=(cost,), target="attention"))
            runs.append(config(f"both_{lam:g}", lam=lam, cost=("ffn_l1", "attn_entropy"), target="both"))
        runs.append(config("flops_budget_0.5", lam=0.0, cost=("flops",), target="both", budget=0.5, price_lr=0.5))
    return runs


def summarize(name: str, config: TrainConfig, metrics: dict) -> dict:
    return {
        "task": config.task,
        "run": name,
        "cost": ",".join(config.cost),
        "target": config.target,
        "lam": config.lam,
        "budget": config.budget,
        "lambda_final": metrics["lambda_final"],
        "metric": metrics["metric"],
        "score": metrics["score"],
        "metrics": metrics["metrics"],
        "sparsity_1e-3": metrics["ffn_sparsity"]["overall"]["1e-03"],
        "sparsity_1e-2": metrics["ffn_sparsity"]["overall"]["1e-02"],
        "gini": metrics["attention"]["gini"],
        "entropy": metrics["attention"]["entropy"],
        "cost_terms_dev": metrics["cost_terms_dev"],
        "gates": metrics["gates"],
        "train_seconds": metrics["train"]["seconds"],
        "steps": metrics["train"]["steps"],
        "out": str(Path(config.out).relative_to(ROOT)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="stsb,cola")
    parser.add_argument("--lams", default="1e-6,1e-5,1e-4,1e-3,1e-2")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    lams = [float(x) for x in args.lams.split(",")]
    rows = []
    for name, config in plan(args.tasks.split(","), lams, args.epochs, args.lr):
        out = Path(config.out)
        if (out / "metrics.json").exists():
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            print(f"== {config.task} {name}", flush=True)
            metrics = train(config, resume=(out / "checkpoint" / "state.pt").exists())
        rows.append(summarize(name, config, metrics))
    sections = []
    for task in args.tasks.split(","):
        task_rows = [r for r in rows if r["task"] == task]
        table = markdown_table(
            [
                "run",
                "cost",
                "target",
                "lambda",
                "final lambda",
                task_rows[0]["metric"],
                "sparsity |a|<=1e-3",
                "sparsity |a|<=1e-2",
                "attn Gini",
                "attn entropy",
                "train s",
            ],
            [
                [
                    r["run"],
                    r["cost"],
                    r["target"],
                    r["lam"],
                    r["lambda_final"],
                    r["score"],
                    r["sparsity_1e-3"],
                    r["sparsity_1e-2"],
                    r["gini"],
                    r["entropy"],
                    round(r["train_seconds"]),
                ]
                for r in task_rows
            ],
        )
        sections.append(f"## minilm on {task} (full train split, scored on the full dev split)\n\n{table}\n")
    save(
        "train_sweep",
        {"rows": rows, "settings": vars(args)},
        "# Incentive training: compute taxes on minilm\n\n"
        f"{args.epochs:g} epochs, lr {args.lr:g}, batch 32, max length 128, seed 42, CPU. Sparsity: share of FFN "
        "activations with |a| <= eps on the dev set; Gini/entropy: the probe's attention statistics on the dev "
        "set at the full budget.\n\n" + "\n".join(sections),
    )


if __name__ == "__main__":
    main()
