"""Issue #14's benchmark: Shapley values of MiniLM's heads and FFN blocks, value per MAC, interactions, market
allocations against activation and Fisher pruning, and the shadow-price check of the fair sweep's runs.

    python bench/market.py run stsb MODEL_DIR [--units head] [--sweep SWEEP_DIR]   # one task (resumable)
    python bench/market.py shadow NAME SWEEP_DIR     # the shadow-price check of one sweep's controller runs
    python bench/market.py frontier cola SWEEP_DIR   # the sweep's market (heads and FFN blocks) on the frontier
    python bench/market.py docs                                                   # docs/market.md from the results

`run` writes runs/bench_market/<task>/ (econlm market's market.json and figures) and copies market.json to
bench/results/market_<task>.json; `shadow` writes bench/results/shadow_<name>.json; `frontier` reads the
market a sweep estimated for its `shapley` rivals and those rivals' scores and speedups from
bench/results/fair_<task>.json (run bench/summarize_fair.py first) into bench/results/market_frontier_<task>.json;
`docs` renders all of them into docs/market.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, RESULTS, ROOT, markdown_table  # noqa: E402

from econlm.shadow import SLACK  # noqa: E402 - a price within this factor of the finite difference is consistent


def run(
    task: str,
    model: str,
    units: str,
    sweep: str | None,
    minutes: float,
    examples: int,
    latency_table: str | None = None,
) -> None:
    """One task's market. With ``latency_table`` the clearing is priced by it, in a folder of its own that starts
    from the plain run's saved samples (the same game), so only the comparisons are computed again."""
    import torch

    from econlm.market_run import MarketConfig, market_summary, run_market, save_market

    torch.set_num_threads(2)
    name = f"{task}_latency" if latency_table else task
    out = ROOT / "runs" / "bench_market" / name
    target = RESULTS / f"market_{name}.json"
    plain_state = ROOT / "runs" / "bench_market" / task / "shapley_state.json"
    if latency_table and plain_state.exists() and not (out / "shapley_state.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plain_state, out / "shapley_state.json")
        minutes = 0.01  # the samples are there: no more pairs (the estimator stops at its time limit)
    if not (out / "market.json").exists():
        config = MarketConfig(
            latency_table=latency_table,
            model=model,
            task=task,
            out=str(out),
            units=units,
            max_minutes=minutes,
            examples=examples,
            # 10 pairs x 8 samples x 4 evaluations: minutes, not an hour, on 2 cores (the plain run has them)
            interaction_top=0 if latency_table else 5,
            interaction_samples=8,
        )
        result = run_market(config)
        if sweep:
            from econlm.shadow import shadow_prices

            result["shadow_prices"] = shadow_prices(sweep)
        save_market(result, out)
        print(market_summary(result))
    elif sweep:
        from econlm.shadow import shadow_prices

        result = json.loads((out / "market.json").read_text())
        result["shadow_prices"] = shadow_prices(sweep)
        save_market(result, out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "market.json", target)
    if latency_table:
        return  # the same values, samples and figures as the plain run's
    if (out / "shapley_state.json").exists():  # the per-pair samples behind every interval
        shutil.copyfile(out / "shapley_state.json", RESULTS / f"market_{task}_samples.json")
    for png in out.glob("*.png"):
        (DOCS / "market").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, DOCS / "market" / f"{task}_{png.name}")


def _overshoot(pairs: list[dict]) -> str:
    """How far the final prices sit from the measured marginal value of compute share."""
    if not pairs:
        return (
            "No two controller runs of this sweep share a seed and settings at different budgets: nothing to compare."
        )
    ratios = [lam / p["finite_difference"] for p in pairs if p["finite_difference"] > 0 for lam in p["lambdas"]]
    flat = sum(1 for p in pairs if p["finite_difference"] <= 0)
    note = f" {flat} pair(s) measured no positive marginal value of compute share (-dL/dC <= 0)." if flat else ""
    if not ratios:
        return note.strip()
    return (
        f"The final prices are {min(ratios):.1f} to {max(ratios):.1f} times the loss one more unit of compute share "
        "actually saved (-dL/dC)"
        + (": the controller's price overshoots the shadow price of compute." if min(ratios) > SLACK else ".")
        + note
    )


# The sweeps whose shadow prices were checked (bench/results/shadow_<name>.json), in the order docs shows them.
SHADOW_SWEEPS = {
    "decoder": "the decoder benchmark (SmolLM2-135M on WikiText-2, bench/run_decoder.sh, K/V-group gates)",
    "decoder_per_head": "the decoder benchmark's first run (SmolLM2-135M on WikiText-2, with per-query-head gates)",
    "demo": "the demo sweep",
    "frontier_cola": "the frontier benchmark's CoLA controller runs (docs/frontier.md; retrained by "
    "bench/sweeps/shadow_frontier_cola.yaml)",
    "frontier_stsb": "the frontier benchmark's STS-B controller runs (docs/frontier.md; retrained by "
    "bench/sweeps/shadow_frontier_stsb.yaml)",
}


def _command() -> str:
    """This script's command line, relative to the repository."""
    import os

    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def _shown(command: str) -> str:
    """A stored command as a user would type it: results saved before `_command` named the interpreter lack it,
    and the script is not executable on its own."""
    return command if command.startswith("python ") else f"python {command}"


def _reproduced(sweep: str) -> list[dict]:
    """A retrained controller run against the frontier benchmark's own (the same trial id, so the same settings
    and seed): its dev score there (bench/results/compaction.json) and here, so a reader can tell whether the
    retrained models stand in for the ones the benchmark did not keep."""
    from econlm.report import load_results

    path = RESULTS / "compaction.json"
    if not path.exists():
        return []
    before = {
        row["trial"]: row["score_before"] for rows in json.loads(path.read_text())["rows"].values() for row in rows
    }
    return [
        {"id": r["id"], "score": r["score"], "frontier_score": before[r["id"]]}
        for r in load_results(Path(sweep))
        if r.get("status") == "ok" and r["id"] in before
    ]


def shadow(name: str, sweep: str) -> None:
    """The shadow-price check of ``sweep``'s controller runs, saved as bench/results/shadow_<name>.json."""

    import torch

    from econlm.runinfo import run_metadata, write_json
    from econlm.shadow import shadow_prices

    torch.set_num_threads(2)
    result = shadow_prices(sweep)
    result["reproduced"] = _reproduced(sweep)
    if name.startswith("frontier_"):
        result["single_budget"] = _single_budget(name.removeprefix("frontier_"))
    meta = run_metadata()
    result["command"] = _command()
    result["meta"] = meta
    write_json(RESULTS / f"shadow_{name}.json", result)


def _game_summary(game: dict) -> dict:
    """What a market of heads and FFN blocks says about where the value sits, per kind of unit."""
    units = game["units"]
    kinds = {}
    for kind in dict.fromkeys(u["kind"] for u in units):
        mine = [u for u in units if u["kind"] == kind]
        macs = sum(u["macs_per_token"] for u in mine)
        value = sum(u["value"] for u in mine)
        kinds[kind] = {
            "units": len(mine),
            "negative": sum(u["value"] < 0 for u in mine),
            "value_sum": value,
            "macs_per_token": macs,
            "value_per_mmac": value / macs * 1e6,
            "gini_value": game["inequality"][kind]["gini_value"],
            "top": [
                {k: u[k] for k in ("name", "value", "ci95")}
                for u in sorted(mine, key=lambda u: u["value"], reverse=True)[:5]
            ],
        }
    est = game["estimator"]
    return {
        "model": game["meta"]["model"],
        "value_definition": game["value_definition"],
        "full_value": game["full_value"],
        "block": game["meta"]["config"]["block"],
        "units": len(units),
        "pairs": est["pairs"],
        "converged": est["converged"],
        "minutes": est["seconds"] / 60,
        "stopped_by": est["stopped_by"],
        "value_sum": sum(u["value"] for u in units),
        "kinds": kinds,
        "command": game["meta"]["command"],
        "git": game["meta"]["git"],
    }


def frontier(task: str, sweep: str) -> None:
    """The market a sweep estimated for its ``shapley`` post-hoc rivals, and how those rivals fared on the
    frontier against the gates and the activation and Fisher rivals (bench/results/fair_<task>.json)."""
    from econlm.runinfo import run_metadata, write_json

    games = sorted(Path(sweep).glob("trials/market-*/market/market.json"))
    if not games:
        raise SystemExit(f"no market in {sweep}; run its sweep (bench/sweeps/market_{task}.yaml) first")
    fair_path = RESULTS / f"fair_{task}.json"
    if not fair_path.exists():
        raise SystemExit(f"no {fair_path}; run bench/summarize_fair.py {task} first")
    fair = json.loads(fair_path.read_text())
    rows = fair["rows"]
    shapley_matches = {r["matches"] for r in rows if "shapley" in r["method"]}
    if not shapley_matches:
        raise SystemExit(f"{fair_path} holds no shapley rival; rerun bench/summarize_fair.py {task} after the sweep")
    chosen = [r for r in rows if r["id"] in shapley_matches or r["matches"] in shapley_matches]
    teacher = [r for r in rows if r["method"].startswith("lambda=0") and r["seed"] in {c["seed"] for c in chosen}]
    game = json.loads(games[-1].read_text())
    meta = run_metadata()
    meta["command"] = _command()
    payload = {
        "task": task,
        "game": _game_summary(game),
        "rows": teacher + chosen,
        "timing": {"repeats": fair["repeats"], "measured": fair["meta"]["time_utc"], "git": fair["meta"]["git"]},
        "meta": meta,
    }
    write_json(RESULTS / f"market_frontier_{task}.json", payload)
    for png in games[-1].parent.glob("*.png"):
        (DOCS / "market").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, DOCS / "market" / f"{task}_frontier_{png.name}")


def _frontier_section(result: dict) -> list[str]:
    task, game = result["task"], result["game"]
    kinds = game["kinds"]
    rows = result["rows"]
    teacher = next(r for r in rows if r["method"].startswith("lambda=0"))
    players = ", ".join(f"{k['units']} {name}" for name, k in kinds.items())
    lines = [
        f"## {task}: heads and FFN blocks in one game, and the market on the frontier",
        "",
        f"The market that `bench/sweeps/market_{task}.yaml` estimated inside its sweep for its `shapley` rivals: "
        f"{game['units']} players ({players}; an FFN player is a "
        f"block of {game['block']} neurons), value {game['value_definition']} (full model {game['full_value']:.4f}), "
        f"{game['pairs']} antithetic pairs in {game['minutes']:.1f} min on 2 threads (stopped: {game['stopped_by']}; "
        f"{game['converged']} of {game['units']} players reached a 95% half-width of 0.01). Model: "
        f"`{game['model']}`.",
        "",
        markdown_table(
            ["units", "count", "negative", "value summed", "MACs per token", "value per million MACs", "Gini of value"],
            [
                [
                    name,
                    k["units"],
                    k["negative"],
                    f"{k['value_sum']:+.4f}",
                    f"{k['macs_per_token']:.0f}",
                    f"{k['value_per_mmac']:.4f}",
                    f"{k['gini_value']:.3f}",
                ]
                for name, k in kinds.items()
            ],
        ),
        "",
    ]
    if "head" in kinds and "ffn" in kinds:
        head, ffn = kinds["head"], kinds["ffn"]
        share = ffn["value_sum"] / (head["value_sum"] + ffn["value_sum"])
        macs = ffn["macs_per_token"] / (head["macs_per_token"] + ffn["macs_per_token"])
        richer = "FFN blocks" if ffn["value_per_mmac"] > head["value_per_mmac"] else "heads"
        lines.append(
            f"- The FFN blocks hold {share:.0%} of the summed value for {macs:.0%} of the MACs: per MAC the {richer} "
            f"return more ({ffn['value_per_mmac']:.4f} against {head['value_per_mmac']:.4f} per million MACs). "
            f"The values are truncated Shapley values, so they need not add up to the full model's score (here "
            f"{game['value_sum']:.4f} against {game['full_value']:.4f}): a unit is valued only in coalitions "
            "holding at least half of the units, where most of them are still needed."
        )
        lines.append(
            "- Most valuable: "
            + "; ".join(
                f"{name} " + ", ".join(f"{u['name']} {u['value']:+.4f} (+-{u['ci95']:.4f})" for u in k["top"][:3])
                for name, k in kinds.items()
            )
            + "."
        )
        lines.append("")
    lines += [
        f"On the frontier (the rows of [fair_{task}.md](fair_{task}.md), timed there in one interleaved run, "
        f"{result['timing']['repeats']} rounds, batch 1 and 32, 128 tokens, 2 threads): the `shapley` rivals remove "
        "the units of lowest value per MAC, handed the gates' per-layer structure (`matched`) or choosing their own "
        "allocation across layers at the same FLOPs (`own allocation`), with the same teacher and recovery steps as "
        "the activation and Fisher rivals.",
        "",
        markdown_table(
            ["method", "score", "lost", "FLOPs share", "speedup b1", "speedup b32", "steps"],
            [
                [
                    r["method"],
                    f"{r['score']:.4f}",
                    f"{r['lost']:+.4f}",
                    f"{r['flops_share']:.3f}",
                    f"{r['speedup_b1']:.2f}x",
                    f"{r['speedup_b32']:.2f}x",
                    r["training_steps"],
                ]
                for r in rows
            ],
        ),
        "",
        *_frontier_reading(task, rows, teacher),
    ]
    meta = result["meta"]
    lines.append(
        f"Rendered with `{meta['command']}`, git {meta['git']}, {meta['time_utc']}; the market with "
        f"`{game['command']}` (git {game['git']}). Raw numbers: `bench/results/market_frontier_{task}.json`."
    )
    lines.append("")
    for name in ("head_values", "ffn_values", "lorenz"):
        if (DOCS / "market" / f"{task}_frontier_market_{name}.png").exists():
            lines.append(f"![{task} frontier {name}](market/{task}_frontier_market_{name}.png)")
    return lines


def _frontier_reading(task: str, rows: list[dict], teacher: dict) -> list[str]:
    """Shapley against activation and Fisher in each layout, with and without recovery, and the dev split's
    sampling noise those differences sit in."""
    from summarize_fair import DEV_EXAMPLES, _allocation, correlation_se

    lines, last_without = [], []
    for retrained in (False, True):
        for allocation in ("matched", "global"):
            mine = {
                r["method"].split()[1]: r
                for r in rows
                if r["method"].startswith("post-hoc")
                and r["retrained"] == retrained
                and _allocation(r) == allocation
            }
            if "shapley" not in mine or len(mine) < 2:
                continue
            others = {k: r for k, r in mine.items() if k != "shapley"}
            best = max(others.values(), key=lambda r: r["score"])
            gap = mine["shapley"]["score"] - best["score"]
            if not retrained and mine["shapley"]["score"] < min(r["score"] for r in others.values()):
                last_without.append(allocation)
            layout = "handed the gates' structure" if allocation == "matched" else "choosing its own allocation"
            lines.append(
                f"- {'With' if retrained else 'Without'} recovery, {layout}: Shapley {mine['shapley']['score']:.4f} "
                f"against "
                + ", ".join(f"{k} {r['score']:.4f}" for k, r in others.items())
                + f" ({gap:+.4f} against the best)."
            )
    if last_without:
        lines.append(
            f"- Without recovery the market's choice scores lowest in {len(last_without)} of the layouts above: "
            "at half the FLOPs, value measured in coalitions that keep at least half of the units does not rank "
            "the units that survive a cut this deep any better than the cheap criteria do."
        )
    incentive = next((r for r in rows if r["method"].startswith("incentive")), None)
    n = DEV_EXAMPLES.get(task)
    if incentive is not None and n:
        se = correlation_se(teacher["score"], n)
        retrained = [r["score"] for r in rows if r["retrained"] or r is incentive]
        lines.append(
            f"- The incentive run these rivals are matched to scores {incentive['score']:.4f} (teacher "
            f"{teacher['score']:.4f}). The retrained models span {max(retrained) - min(retrained):.4f}, against a "
            f"standard error of about {se:.3f} for one model's score on the {n} dev examples: one seed cannot "
            "rank them."
        )
    return lines + [""]


def _shadow_sections() -> list[str]:
    lines = []
    order = list(SHADOW_SWEEPS)
    names = sorted(
        (p.stem.removeprefix("shadow_") for p in RESULTS.glob("shadow_*.json")),
        key=lambda n: order.index(n) if n in order else len(order),
    )
    for name in names:
        shadow = json.loads((RESULTS / f"shadow_{name}.json").read_text())
        lines += [
            f"## Shadow prices on {SHADOW_SWEEPS.get(name, name)}",
            "",
            f"{shadow['definition']}. Sweep: {shadow['sweep']}; `{shadow['command']}`"
            + (f" ({shadow['provenance']})." if shadow.get("provenance") else "."),
            "",
            _shadow_table(shadow["pairs"]),
            "",
            _overshoot(shadow["pairs"]),
            "",
            *_unpaired(shadow),
            *_reproduction_lines(shadow.get("reproduced") or []),
            *_single_budget_lines(shadow.get("single_budget") or []),
        ]
    return lines


def _single_budget(task: str) -> list[dict]:
    """The frontier benchmark's controller runs that no other budget shares settings and seed with (its
    attention-only and FFN-only ablations): no finite difference exists for them, so they were not retrained."""
    from econlm.shadow import _group_key

    path = RESULTS / "train_sweep.json"
    if not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text())["rows"].get(task, []) if r["settings"].get("budget") is not None]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group_key(r["settings"]), []).append(r)
    return [
        {"id": r["id"], "budget": r["settings"]["budget"], "target": r["settings"].get("target", "both")}
        for members in groups.values()
        if len({m["settings"]["budget"] for m in members}) == 1
        for r in members
    ]


def _reproduction_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    gaps = [abs(r["score"] - r["frontier_score"]) for r in rows]
    return [
        f"The {len(rows)} retrained models against the frontier benchmark's own (the same trial ids, so the same "
        "settings and seed; dev score there -> here): "
        + "; ".join(f"{r['id']} {r['frontier_score']:.4f} -> {r['score']:.4f}" for r in rows)
        + f". Largest gap {max(gaps):.4f}: training on CPU is not bit-for-bit repeatable across versions, so "
        "these are stand-ins of the same recipe, not the same models.",
        "",
    ]


def _single_budget_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return [
        "The benchmark's other controller runs have no neighbouring budget of the same settings and seed, so no "
        "finite difference exists to check their price against (not retrained): "
        + "; ".join(f"{r['id']} (gates on {r['target']}, budget {r['budget']})" for r in rows)
        + ".",
        "",
    ]


def _unpaired(shadow: dict) -> list[str]:
    """Controller runs with no neighbouring budget of the same settings and seed: priced, but not checkable."""
    paired = {(share, loss) for p in shadow["pairs"] for share, loss in zip(p["shares"], p["losses"])}
    alone = [r for r in shadow["runs"] if (r["share"], r["loss"]) not in paired]
    if not alone:
        return []
    return [
        "Controller runs with no neighbouring budget of the same settings and seed, so no finite difference to "
        "check their price against: "
        + "; ".join(
            f"{r['id']} (budget {r['budget']}, share {r['share']:.3f}, dev loss {r['loss']:.4f}, "
            f"final lambda {r['lambda_final']:.4g})"
            for r in alone
        )
        + ".",
        "",
    ]


def _shadow_table(pairs: list[dict]) -> str:
    return markdown_table(
        ["seed", "cost", "budgets", "shares cleared", "dev losses", "final lambdas", "-dL/dC", "consistent"],
        [
            [
                p["seed"],
                "+".join(p["cost"] or []),
                f"{p['budgets'][0]} / {p['budgets'][1]}",
                f"{p['shares'][0]:.3f} / {p['shares'][1]:.3f}",
                f"{p['losses'][0]:.4f} / {p['losses'][1]:.4f}",
                f"{p['lambdas'][0]:.4g} / {p['lambdas'][1]:.4g}",
                f"{p['finite_difference']:.4g}",
                "yes" if p["consistent"] else "no",
            ]
            for p in pairs
        ],
    )


def _removed(half: dict, layout: str) -> int:
    removed = half["heads_removed"]
    return removed[layout] if isinstance(removed, dict) else removed  # older results: one count for both


def _recomputed(result: dict, task: str) -> None:
    """Intervals from the saved per-pair samples with the current estimator (Student-t quantiles), so the
    table does not depend on the version that ran."""
    from econlm.market import estimate

    path = RESULTS / f"market_{task}_samples.json"
    if not path.exists():
        return
    samples = json.loads(path.read_text())["samples"]
    for unit, s in zip(result["units"], samples):
        e = estimate(s)
        unit.update({"ci95": e.ci95, "bernstein95": e.bernstein, "samples": e.samples})


def _task_section(result: dict) -> list[str]:
    task, est = result["task"], result["estimator"]
    _recomputed(result, task)
    units = result["units"]
    heads = sorted((u for u in units if u["kind"] == "head"), key=lambda u: u["value"], reverse=True)
    top = heads[:10]
    lines = [
        f"## {task}",
        "",
        f"Model: `{result['meta']['model']}`. Value: {result['value_definition']} (full model "
        f"{result['full_value']:.4f}); every pruned model below is scored on the other "
        f"{result['meta']['held_out_examples']} dev examples. Estimator: {len(units)} units "
        f"({', '.join(result['meta']['config']['units'])}), antithetic permutation pairs truncated at {est['truncate']}, "
        f"{est['pairs']} pairs, {est['evaluations']} evaluations, the cache ran {est['blocks_run_share']:.0%} of the "
        f"blocks a full forward runs; {est['seconds'] / 60:.1f} min on {result['meta']['threads']} threads "
        f"(stopped: {est['stopped_by']}; {est['converged']} of {len(units)} units reached a 95% "
        f"{'normal-approximation' if est.get('interval', 'normal') == 'normal' else 'empirical-Bernstein'} half-width "
        f"of {est['tol']}).",
        "",
        "### The ten most valuable heads",
        "",
        markdown_table(
            ["head", "value", "95% CI half-width (normal)", "empirical Bernstein", "pairs"],
            [
                [u["name"], f"{u['value']:+.4f}", f"{u['ci95']:.4f}", f"{u['bernstein95']:.4f}", u["samples"]]
                for u in top
            ],
        ),
        "",
        f"Largest normal half-width among them: {max(u['ci95'] for u in top):.4f} (issue #14's target: <= 0.01). "
        f"Heads with negative value: {sum(u['value'] < 0 for u in heads)} of {len(heads)}.",
        "",
        "### Inequality (Gini of value, negative values as zero; of compute in MACs per token)",
        "",
        markdown_table(
            ["units", "count", "negative", "Gini of value", "Gini of compute"],
            [
                [k, s["units"], s["negative_value"], f"{s['gini_value']:.3f}", f"{s['gini_compute']:.3f}"]
                for k, s in result["inequality"].items()
            ],
        ),
        "",
        "### Costly units that return the least (lowest value per MAC)",
        "",
        markdown_table(
            ["unit", "value", "MACs per token"],
            [[u["name"], f"{u['value']:+.4f}", f"{u['macs_per_token']:.0f}"] for u in result["costly_low_return"]],
        ),
        "",
    ]
    inter = result.get("interactions") or {}
    if inter.get("pairs"):
        ranked = sorted(inter["pairs"], key=lambda p: p["value"])
        lines += [
            f"### Interactions among the {len(inter['heads'])} most valuable heads",
            "",
            f"{inter['definition']}; {ranked[0]['samples']} samples per pair, {inter['seconds'] / 60:.1f} min.",
            "",
            markdown_table(
                ["pair", "interaction", "95% CI half-width"],
                [[f"{p['a']} x {p['b']}", f"{p['value']:+.4f}", f"{p['ci95']:.4f}"] for p in ranked],
            ),
            "",
        ]
    half = result.get("head_ranking_at_half") or {}
    if half.get("rows"):
        lines += [
            f"### About half of the {half['of']} heads removed, no retraining (held-out {result['metric']})",
            "",
            half.get("note", "every ranking removes the same number of heads in each layer") + ".",
            "",
            markdown_table(
                ["layout", "heads removed", "ranking", result["metric"]],
                [
                    [r["layout"], half["heads_removed"][r["layout"]], r["ranking"], f"{r['score']:.4f}"]
                    for r in half["rows"]
                ],
            ),
            "",
        ]
    lines += [
        "### Market-clearing allocations against activation and Fisher at the same structure (no retraining)",
        "",
        _budget_meaning(result["meta"]["config"]["units"]),
        "",
        markdown_table(
            [
                "budget",
                "method",
                f"held-out {result['metric']}",
                "dense compute share",
                "heads removed",
                "neurons removed",
            ],
            [
                [
                    r["budget"],
                    r["method"],
                    f"{r['score']:.4f}",
                    f"{r['dense_share']:.3f}",
                    r.get("heads_removed", 0),
                    r.get("neurons_removed", 0),
                ]
                for r in result["allocations"]
            ],
        ),
        "",
    ]
    for name in ("head_values", "ffn_values", "lorenz", "interactions"):
        if (DOCS / "market" / f"{task}_market_{name}.png").exists():
            lines.append(f"![{task} {name}](market/{task}_market_{name}.png)")
    lines.append("")
    shadow = result.get("shadow_prices")
    if shadow:
        lines += [
            "### Is the controller's price a shadow price of compute?",
            "",
            shadow["definition"] + f" (sweep `{Path(shadow['sweep']).name}`).",
            "",
            _shadow_table(shadow["pairs"]),
            "",
        ]
    if est.get("resumed_from_pair"):
        lines.append(
            f"The estimate resumed from its saved samples after pair {est['resumed_from_pair']} (its first process was "
            "stopped to free the cores); the minutes include both parts, the evaluation count and cache share only "
            "the second, and the whole-run time below only the second process."
        )
        lines.append("")
    lines += _targets(result, top)
    meta = result["meta"]
    lines.append(
        f"Measured with `{_shown(meta['command'])}`, git {meta['git']}, torch {meta['versions'].get('torch')}, "
        f"{meta['machine']['processor']} ({meta['machine']['cpu_count']} CPUs), {meta['time_utc']}; "
        f"the whole run took {meta['seconds'] / 60:.1f} min. Raw numbers: `bench/results/market_{task}.json`."
    )
    return lines


def _budget_meaning(kinds: list[str]) -> str:
    if len(kinds) > 1:
        return "A budget is a share of the model's blocks' MACs; each layer keeps at least one unit of each kind."
    return (
        f"A budget is a share of the MACs of the units in the game ({kinds[0]}s; the other kind stays whole), while "
        "the dense compute share is of the whole model's, so budget 0.5 leaves more than half of the model. Each "
        "layer keeps at least one unit."
    )


def _half_noise(result: dict) -> str:
    """How much of the half-heads comparison is noise: the held-out score's sampling error, and how many of the
    heads the Shapley ranking drops first are told apart from zero at all."""
    from summarize_fair import correlation_se

    n = result["meta"]["held_out_examples"]
    dense = next((r["score"] for r in result["allocations"] if r["method"] == "dense"), result["full_value"])
    se = correlation_se(dense, n)
    heads = sorted((u for u in result["units"] if u["kind"] == "head"), key=lambda u: u["value"])
    bottom = heads[: len(heads) // 2]
    unclear = sum(abs(u["value"]) <= u["ci95"] for u in bottom)
    return (
        f"- How much of that is noise: a held-out {result['metric']} near {dense:.3f} on {n} examples has a sampling "
        f"error of about {se:.3f} (sqrt((1 - r^2) / (n - 2))), and {unclear} of the {len(bottom)} heads the Shapley "
        "ranking removes first have a 95% interval that holds zero: the order within the bottom half, which decides "
        "what goes, is mostly the estimate's noise, while Fisher's ranking averages gradients over every example."
    )


def _targets(result: dict, top: list[dict]) -> list[str]:
    """Issue #14's targets, checked against this run; every reading below is conditional on the numbers."""
    est = result["estimator"]
    wide = [u for u in top if u["ci95"] > 0.01]
    widths = ", ".join(f"{u['name']} {u['ci95']:.4f}" for u in wide)
    lines = ["### Issue #14's targets", ""]
    why = ""
    if wide and {u["name"] for u in wide} <= {u["name"] for u in top[: max(3, len(wide))]}:
        why = (
            " The widest intervals belong to the most valuable heads: what removing one costs varies most across "
            "coalitions, so they need the most pairs."
        )
    limit = result["meta"]["config"].get("max_minutes")
    if wide:
        # An interval shrinks as 1 / sqrt(pairs): the widest needs (width / 0.01)^2 times its pairs.
        worst = max(wide, key=lambda u: u["ci95"] ** 2 * u["samples"])
        factor = (worst["ci95"] / 0.01) ** 2 * worst["samples"] / est["pairs"]
        why += (
            f" The run was given {limit:g} min (`--minutes`); intervals shrink as 1/sqrt(pairs), so {worst['name']} "
            f"needs about {factor * est['pairs']:.0f} pairs, about {factor * est['seconds'] / 3600:.1f} hours at this "
            "run's pace" + (": more than 60 minutes would buy." if factor * est["seconds"] > 3600 else ".")
        )
    lines.append(
        "- 95% half-width <= 0.01 on the top 10 heads within 60 minutes: "
        + ("met" if not wide else f"**missed** for {widths}")
        + f", after {est['seconds'] / 60:.1f} min ({est['stopped_by']}).{why}"
    )
    half = result.get("head_ranking_at_half") or {}
    trails_fisher = False
    for layout in dict.fromkeys(r["layout"] for r in half.get("rows", [])):
        scores = {r["ranking"]: r["score"] for r in half["rows"] if r["layout"] == layout}
        beaten = [k for k in ("activation", "fisher") if scores[k] > scores["shapley"]]
        trails_fisher = trails_fisher or "fisher" in beaten
        lines.append(
            f"- Half the heads removed ({layout}): Shapley {scores['shapley']:.4f}, activation "
            f"{scores['activation']:.4f}, Fisher {scores['fisher']:.4f}: "
            + ("Shapley at least as good as both" if not beaten else f"**missed**, below {' and '.join(beaten)}")
        )
    if half.get("rows"):
        lines.append(_half_noise(result))
    negative = result["inequality"]["all"]["negative_value"]
    dense = next((r["score"] for r in result["allocations"] if r["method"] == "dense"), None)
    budgets = sorted({r["budget"] for r in result["allocations"] if r["method"] == "market"}, reverse=True)
    if budgets:
        by = {(r["budget"], r["method"]): r["score"] for r in result["allocations"]}
        wins = [b for b in budgets if by[(b, "market")] >= max(by[(b, "activation")], by[(b, "fisher")])]
        line = (
            f"- The market-clearing allocation against activation and Fisher at its structure (no retraining): best "
            f"at {len(wins)} of {len(budgets)} budgets ({', '.join(str(b) for b in wins) or 'none'})"
        )
        above = [b for b in budgets if by[(b, "market")] > dense]
        if above:
            gain, spread = by[(above[0], "market")] - dense, abs(result["full_value"] - dense)
            line += (
                f"; at budget {above[0]} it scores {by[(above[0], 'market')]:.4f} held out, above the dense model's "
                f"{dense:.4f}: dropping the {negative} heads of negative value helped on this task, as Held & Yang found"
            )
            if gain < spread:
                line += (
                    f", though the gain (+{gain:.4f}) is smaller than the full model's own gap between the game's "
                    f"examples and the held-out ones ({result['full_value']:.4f} against {dense:.4f})"
                )
        lines.append(line + ".")
    first = next((r for r in result["allocations"] if r["method"] == "market"), None)
    if first is not None and trails_fisher:
        reading = (
            f"- Why Shapley trails Fisher here: the values are measured on {result['meta']['config']['examples']} "
            f"dev examples and judged on the other {result['meta']['held_out_examples']}. {negative} heads have "
            f"negative value on the game subset, and the market never buys them; at budget {first['budget']} it "
            f"scores {first['score']:.4f} held out against the dense {dense:.4f}"
        )
        if first["score"] < dense:
            reading += (
                ", so most of those negative values are noise of the subset, not harm (Held & Yang's gain from "
                "dropping negative heads does not carry over to this model)"
            )
        lines.append(
            reading + ". Fisher's ranking, from per-example gradients on the same examples, generalises better."
        )
    if not result.get("shadow_prices"):
        checked = [p.stem.removeprefix("shadow_") for p in RESULTS.glob("shadow_*.json")]
        lines.append(
            "- Shadow prices: not checked on the fair MiniLM sweep, which has one controller run per cost and seed "
            "while the check needs two budgets of one (`econlm market --sweep DIR` runs it once the sweep has them)"
            + (f"; checked on {', '.join(SHADOW_SWEEPS.get(c, c) for c in sorted(checked))} below." if checked else ".")
        )
    lines.append("")
    return lines


def _not_run(results: list[dict], frontiers: list[dict]) -> list[str]:
    """What issue #14's benchmark asks for that bench/results does not hold yet, with its cost here."""
    lines = ["## Not run yet", ""]
    tasks = {r["task"] for r in results}
    for task in ("stsb", "cola"):
        if task not in tasks:
            lines.append(f"- The market on {task} (`python bench/market.py run {task} MODEL`, about an hour).")
    in_frontier = any({"head", "ffn"} <= set(f["game"]["kinds"]) for f in frontiers)
    if not in_frontier and not any(
        (r.get("meta") or {}).get("config", {}).get("units") == ["head", "ffn"] for r in results
    ):
        lines.append(
            "- FFN blocks in the game (`--units head,ffn`): 144 players instead of 72, about twice the pairs' cost."
        )
    if not any(r.get("priced_by") == "latency" for r in results):
        lines.append(
            "- The clearing priced by a latency table (`econlm market --latency-table "
            "bench/latency/minilm_b1_s128_t2.json`): built and tested on tiny models, not run on MiniLM yet; a rerun "
            "into the same folder reuses the saved samples, so it costs the comparisons only (minutes)."
        )
    if not frontiers:
        lines.append(
            "- The market's allocation on the frontier with recovery training matched to the gates' and the post-hoc "
            "rivals' (`bench/run_fair.sh market`, `bench/sweeps/market_cola.yaml`: a `shapley` post-hoc rival that "
            "prunes with a market estimated inside the sweep, matched per layer and as the market clearing across "
            "layers). Built and tested on tiny models. The CoLA gates at budget 0.5 and their activation and Fisher "
            "rivals (the same trials as `fair_cola.yaml`'s) are trained (docs/fair_cola.md); left: a 30-min market "
            "of the teacher's 72 heads and 72 FFN blocks of 128 neurons, and two shapley rivals with matched "
            "recovery (about 45 min each): about 2 hours on 2 cores."
        )
    missing = [t for t in ("cola", "stsb") if not (RESULTS / f"shadow_frontier_{t}.json").exists()]
    if missing:
        lines.append(
            "- The shadow-price check on the frontier benchmark's controller runs (docs/frontier.md: flops gates at "
            "budgets 0.3 / 0.5 / 0.7, two seeds) on " + " and ".join(missing) + ": their models were not kept, and "
            "the check reads each model's dev loss; `bench/sweeps/shadow_frontier_<task>.yaml` retrains them (six "
            "runs per task, about 10 min each on CoLA and 20 on STS-B), then `python bench/market.py shadow "
            "frontier_<task> SWEEP_DIR`."
        )
    return lines + [""] if len(lines) > 2 else []


def _latency_section(result: dict) -> list[str]:
    """The clearing priced by a latency table, from the same values as the task's plain run."""
    meta = result["meta"]
    table = meta["config"]["latency_table"]
    rows = [
        [
            r["budget"],
            r["method"],
            f"{r['score']:.4f}",
            f"{r.get('predicted_latency_share', 1.0):.3f}",
            f"{r['dense_share']:.3f}",
            r.get("heads_removed", 0),
        ]
        for r in result["allocations"]
    ]
    return [
        f"## {result['task']}: the clearing priced by a latency table",
        "",
        f"The values of the {result['task']} section above ({result['estimator']['pairs']} pairs, reused from its saved "
        f"samples); each unit priced by its marginal latency in `{table}` (batch, sequence length and threads as "
        "measured there) and bought by value per predicted second while the predicted latency fits the budget, a "
        "share of the dense model's. Activation and Fisher remove the same units per layer; all scored held out, "
        "no retraining.",
        "",
        markdown_table(
            [
                "budget",
                "method",
                f"held-out {result['metric']}",
                "predicted latency share",
                "dense MACs share",
                "heads removed",
            ],
            rows,
        ),
        "",
        *_latency_reading(result),
        f"Measured with `{_shown(meta['command'])}`, git {meta['git']}, {meta['time_utc']}. Raw numbers: "
        f"`bench/results/market_{result['task']}_latency.json`.",
    ]


def _latency_reading(result: dict) -> list[str]:
    market = [r for r in result["allocations"] if r["method"] == "market"]
    lines = []
    missed = [r for r in market if r["predicted_latency_share"] > r["budget"] + 1e-9]
    if missed:
        floor = min(r["predicted_latency_share"] for r in market)
        kinds = result["meta"]["config"]["units"]
        lines.append(
            f"- Budgets {', '.join(str(r['budget']) for r in missed)} are out of reach: with "
            f"{' and '.join(kinds)} units in the game (the other kind stays whole) and one unit of each kind kept per "
            f"layer, the predicted latency cannot fall below {floor:.3f} of the dense model's, so those rows keep "
            "that minimum."
        )
    by = {(r["budget"], r["method"]): r["score"] for r in result["allocations"]}
    wins = [
        r["budget"]
        for r in market
        if r not in missed and r["score"] >= max(by[(r["budget"], "activation")], by[(r["budget"], "fisher")])
    ]
    reached = [r for r in market if r not in missed]
    if reached:
        lines.append(
            f"- Where the budget is met, the market beats activation and Fisher at the same structure at "
            f"{len(wins)} of {len(reached)} budgets."
        )
    return lines + [""] if lines else []


def docs() -> None:
    from econlm.runinfo import atomic_write_text

    results = [
        json.loads(p.read_text())
        for p in sorted(RESULTS.glob("market_*.json"))
        if not p.stem.endswith("_samples") and not p.stem.startswith("market_frontier_")
    ]
    frontiers = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("market_frontier_*.json"))]
    lines = [
        "# The market: what MiniLM's heads and FFN blocks are worth",
        "",
        "`econlm market` (issue #14). Values are truncated Shapley values: the average value a unit adds to "
        "coalitions holding at least half of the units (the regime pruning up to 50% lives in), estimated by "
        "antithetic permutation walks from the full model, cached below the first changed layer; see "
        "`econlm.market`. Compute is MACs per token (FLOPs = 2 x MACs) at the dev subset's mean length.",
        "",
    ]
    for result in results:
        lines += _latency_section(result) if result.get("priced_by") == "latency" else _task_section(result)
        lines.append("")
    for result in frontiers:
        lines += _frontier_section(result) + [""]
    lines += _shadow_sections()
    lines += _not_run(results, frontiers)
    atomic_write_text(DOCS / "market.md", "\n".join(lines).rstrip() + "\n")
    print(f"wrote {DOCS / 'market.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("task")
    r.add_argument("model")
    r.add_argument("--units", default="head,ffn")
    r.add_argument("--sweep", default=None)
    r.add_argument("--minutes", type=float, default=60.0)
    r.add_argument("--examples", type=int, default=256)
    r.add_argument("--latency-table", default=None, help="price the clearing by this table (after the plain run)")
    sh = sub.add_parser("shadow")
    sh.add_argument("name")
    sh.add_argument("sweep")
    fr = sub.add_parser("frontier")
    fr.add_argument("task")
    fr.add_argument("sweep")
    sub.add_parser("docs")
    args = parser.parse_args()
    if args.command == "run":
        run(args.task, args.model, args.units, args.sweep, args.minutes, args.examples, args.latency_table)
    elif args.command == "shadow":
        shadow(args.name, args.sweep)
    elif args.command == "frontier":
        frontier(args.task, args.sweep)
    docs()


if __name__ == "__main__":
    main()
