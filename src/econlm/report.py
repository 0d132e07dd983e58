"""``econlm report DIR``: one self-contained HTML page with embedded plots, for a sweep folder.

Contents: the Pareto frontier(s) with the baselines, score against lambda, sparsity, Gini and entropy
against lambda, per-layer heatmaps of FFN sparsity and attention entropy, the ablation table
(attention only, FFN only, both), probe curves when present, and the exact configs and versions.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from econlm.errors import UserError

METHOD_STYLE = {
    "incentive": ("tab:blue", "o"),
    "posthoc-magnitude": ("tab:red", "s"),
    "posthoc-activation": ("tab:orange", "D"),
    "posthoc-fisher": ("tab:purple", "P"),
    "posthoc-fisher-global": ("tab:pink", "P"),  # Fisher spending the FLOPs itself, not matched per layer
    "posthoc-wanda": ("tab:brown", "h"),
    "posthoc-shapley": ("gold", "d"),  # a market's values: matched per layer, or -global (clearing by value per MAC)
    "posthoc-shapley-global": ("goldenrod", "d"),
    "topk": ("tab:green", "^"),
    "tokens": ("tab:cyan", "v"),
    "learned-tokens": ("tab:olive", "<"),
    "units+tokens": ("tab:pink", ">"),
    "units+learned-tokens": ("tab:gray", "8"),
    "retrained-tokens": ("darkcyan", "v"),
    "units+retrained-tokens": ("slategray", ">"),
}


def _style(method: str) -> tuple[str, str]:
    """A method's colour and marker; a post-hoc variant (rescaled, untrained) keeps its criterion's colour."""
    base = max((k for k in METHOD_STYLE if method.startswith(k)), key=len, default=None)
    if base is None:
        return "tab:gray", "x"
    color, marker = METHOD_STYLE[base]
    return color, ("x" if method.endswith("-untrained") else "*" if method.endswith("-rescaled") else marker)


def _png(fig) -> str:
    from econlm.plots import _pyplot

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def load_results(folder: Path) -> list[dict]:
    path = folder / "results.jsonl"
    if not path.exists():
        raise UserError(f"{folder} holds no results.jsonl; run `econlm sweep CONFIG --out {folder}` first")
    results = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except ValueError:
            # econlm sweep rebuilds results.jsonl from the trial folders every time it runs
            raise UserError(
                f"{path}:{number}: damaged line; rebuild the file by rerunning `econlm sweep CONFIG --out {folder}`"
            ) from None
    return results


COLLAPSE = 0.25  # a run scoring under a quarter of the best (perplexity: over 4 times the best) has collapsed


def score_window(problem: dict, lines: tuple[float, ...] = ()) -> tuple[float, float] | None:
    """The score axis of a frontier plot, or None to show everything.

    A collapsed run (a tax so high that the model predicts a constant) stretches the axis from 0 and
    squeezes the points that matter into a sliver. A run counts as collapsed when it scores under a quarter
    of the best score (for perplexity: over 4 times the best); the axis then spans every other run and the
    reference ``lines``, with a margin, and the collapsed runs are drawn on its worse edge.
    """
    higher = problem.get("higher_is_better", True)
    scores = [p["score"] for p in problem["points"] if not math.isnan(p["score"])]
    if len(scores) < 2:
        return None
    best = max(scores) if higher else min(scores)
    if best <= 0:
        return None  # no scale to judge a collapse by (a correlation at or below 0)
    kept = [v for v in scores if (v >= COLLAPSE * best if higher else v <= best / COLLAPSE)]
    if len(kept) == len(scores):
        return None
    shown = kept + [v for v in lines if not math.isnan(v)]
    low, high = min(shown), max(shown)
    margin = max(high - low, abs(best) * 0.01) * 0.08
    return low - margin, high + margin


def references(problem: dict, probes: list[dict] = ()) -> dict[str, float]:
    """Horizontal reference lines: the lambda = 0 fine-tune (mean over seeds) and, when ``probes`` (see
    :func:`read_probes`) hold one of the same model and task, its zero-shot score at the full budget."""
    out = {}
    plain = [p["score"] for p in problem["points"] if p.get("ablation") == "baseline (lambda = 0)"]
    if plain:
        out["lambda = 0 fine-tune"] = sum(plain) / len(plain)
    for data in probes:
        full = next((r for r in data.get("rows", []) if r.get("budget") == "full"), None)
        same = data.get("task") == problem["task"] and data.get("model") == problem["model"]
        if same and full and full.get("metric") == problem.get("metric"):
            out[f"zero-shot ({data.get('examples_scored')} {data.get('unit_of_examples')})"] = full["score"]
    return out


def read_probes(folder: Path | None) -> list[dict]:
    """The probe results saved in a sweep folder (a damaged file is skipped: the report is still made)."""
    found = []
    for path in sorted(folder.rglob("probe.json")) if folder is not None else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def _frontier_figure(problem: dict, probes: list[dict] = (), speedups: dict | None = None):
    """``speedups``: measured batch-1 speedup by trial id; a seed group is labelled with its members' mean."""
    from econlm.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lines = references(problem, probes)
    window = score_window(problem, tuple(lines.values()))
    for method, info in problem["methods"].items():
        color, marker = _style(method)
        mine = [p for p in problem["points"] if p["method"] == method]
        shown = [p for p in mine if window is None or window[0] <= p["score"] <= window[1]]
        below = len(mine) - len(shown)
        ax.errorbar(
            [p["compute"] for p in shown],
            [p["score"] for p in shown],
            xerr=[p["compute_std"] for p in shown],
            yerr=[p["score_std"] for p in shown],
            fmt=marker,
            markersize=7,
            color=color,
            alpha=0.7,
            label=f"{method} (HV {info['hypervolume']:.3g})" + (f"; {below} below the axis" if below else ""),
        )
        if below:  # collapsed runs stay visible, on the lower edge
            edge = window[0] if problem.get("higher_is_better", True) else window[1]  # the worse end
            ax.plot([p["compute"] for p in mine if p not in shown], [edge] * below, "v", color=color, alpha=0.5)
        front = info["front"]
        ax.plot([p["compute"] for p in front], [p["score"] for p in front], "-", color=color, linewidth=2)
        for p in shown:
            found = [speedups[t] for t in p.get("trials", ()) if t in (speedups or {})]
            speedup = sum(found) / len(found) if found else None
            if speedup:
                ax.annotate(
                    f"{speedup:.2f}x",
                    (p["compute"], p["score"]),
                    textcoords="offset points",
                    xytext=(5, 5),
                    fontsize=8,
                    color=color,
                )
    for (label, value), style in zip(lines.items(), ("--", ":", "-.", (0, (1, 4)))):
        ax.axhline(value, linestyle=style, color="black", linewidth=1, label=f"{label}: {value:.4f}")
    if window is not None:
        ax.set_ylim(*window)
    ax.set_xlabel(problem["compute_label"])
    ax.set_ylabel(problem["metric"] or "score")
    title = f"{Path(str(problem['model'])).name} on {Path(str(problem['task'])).name}: Pareto frontier"
    ax.set_title(title + ("\n(labels: measured CPU speedup at batch 1 after compaction)" if speedups else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _speedups(results: list[dict]) -> dict[str, float]:
    """Measured batch-1 speedup of each compacted trial, by trial id."""
    out = {}
    for r in results:
        ratio = ((r.get("compact") or {}).get("ratios") or {}).get("speedup_batch1")
        if ratio:
            out[r["id"]] = ratio
    return out


def _incentive_rows(results: list[dict]) -> list[dict]:
    return [r for r in results if r["kind"] == "train" and r.get("status") == "ok"]


def _lambda_figures(results: list[dict]) -> list[tuple[str, str]]:
    from econlm.analysis import ablation_of
    from econlm.plots import _pyplot

    plt = _pyplot()
    rows = _incentive_rows(results)
    figures = []
    for task in sorted({r["settings"]["task"] for r in rows}):
        task_rows = [r for r in rows if r["settings"]["task"] == task]
        panels = [
            ("score", task_rows[0].get("metric", "score")),
            ("sparsity@1e-03", "FFN sparsity |a|<=1e-3"),
            ("sparsity@1e-02", "FFN sparsity |a|<=1e-2"),
            ("gini", "attention Gini"),
            ("entropy", "attention entropy (nats)"),
        ]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
        groups = sorted({ablation_of(r) for r in task_rows if ablation_of(r) != "baseline (lambda = 0)"})
        baseline = [r for r in task_rows if ablation_of(r) == "baseline (lambda = 0)"]
        for ax, (key, label) in zip(axes, panels):

            def value(r, key=key):
                if key.startswith("sparsity@"):
                    return r["sparsity"].get(key.split("@")[1], float("nan"))
                return r.get(key, float("nan"))

            for group in groups:
                by_lam: dict[float, list[float]] = {}
                for r in task_rows:
                    if ablation_of(r) == group and float(r["settings"]["lam"]) > 0:
                        by_lam.setdefault(float(r["settings"]["lam"]), []).append(value(r))
                if by_lam:  # seeds averaged; the bars span their range
                    lams = sorted(by_lam)
                    means = [sum(by_lam[x]) / len(by_lam[x]) for x in lams]
                    spread = [
                        [m - min(by_lam[x]) for x, m in zip(lams, means)],
                        [max(by_lam[x]) - m for x, m in zip(lams, means)],
                    ]
                    ax.errorbar(lams, means, yerr=spread, marker="o", capsize=2, label=group)
            if baseline:
                ax.axhline(
                    sum(value(r) for r in baseline) / len(baseline),
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label="lambda = 0 (mean)",
                )
            ax.set_xscale("log")
            ax.set_xlabel("lambda")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{task}: effect of the price of compute")
        fig.tight_layout()
        figures.append((_png(fig), f"{task}: score, FFN sparsity, Gini and entropy against lambda"))
    return figures


def _heatmaps(results: list[dict]) -> list[tuple[str, str]]:
    from econlm.plots import per_layer_heatmap

    rows = sorted(
        _incentive_rows(results),
        key=lambda r: (r["settings"]["task"], str(r["settings"].get("cost")), float(r["settings"].get("lam", 0))),
    )
    figures = []
    for task in sorted({r["settings"]["task"] for r in rows}):
        mine = [r for r in rows if r["settings"]["task"] == task and r.get("sparsity_per_layer")]
        if not mine:
            continue
        labels = [
            f"{'+'.join(r['settings'].get('cost', []))} lam={float(r['settings'].get('lam', 0)):g}"
            + (f" b={r['settings']['budget']}" if r["settings"].get("budget") else "")
            for r in mine
        ]
        for key, title, cbar in (
            ("sparsity_per_layer", "FFN sparsity per layer (|a| <= 1e-2)", "share of activations"),
            ("entropy_per_layer", "attention entropy per layer", "nats"),
        ):
            matrix = [r[key]["1e-02"] if key == "sparsity_per_layer" else r[key] for r in mine]
            fig = per_layer_heatmap(matrix, f"{task}: {title}", "layer", "trial", cbar)
            fig.axes[0].set_yticks(range(len(labels)), labels, fontsize=6)
            fig.axes[0].set_xticks(range(len(matrix[0])))
            figures.append((_png(fig), f"{task}: {title}"))
    return figures


def _probe_figures(folder: Path) -> list[tuple[str, str]]:
    from econlm.plots import probe_figure

    figures = []
    for path in sorted(folder.rglob("probe.json")):
        data = json.loads(path.read_text())
        if len(data.get("rows", [])) < 2:
            continue
        title = f"probe: {data.get('model')} on {data.get('task')} ({data.get('examples_scored')} {data.get('unit_of_examples')})"
        figures.append((_png(probe_figure(data["rows"], title)), title))
    return figures


def _ablation_table(results: list[dict]) -> str:
    from econlm.analysis import ablation_of

    rows = [r for r in results if r.get("status") == "ok"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["settings"]["task"], ablation_of(r)), []).append(r)
    lines = [
        "<table><tr><th>task</th><th>variant</th><th>trials</th><th>best score</th><th>its price</th>"
        "<th>its dense FLOPs</th><th>its effective FLOPs/token</th><th>its sparsity (1e-2)</th>"
        "<th>its Gini</th><th>its entropy</th></tr>"
    ]
    for (task, variant), members in sorted(groups.items()):
        higher = members[0].get("metric") != "perplexity"
        best = (max if higher else min)(members, key=lambda r: r.get("score", float("nan")))
        sparsity = (best.get("sparsity") or {}).get("1e-02")
        cells = [
            task,
            variant,
            len(members),
            _fmt(best.get("score")),
            _price(best["settings"]),
            _fmt(best.get("dense_flops")),
            _fmt(best.get("effective_flops_per_token")),
            _fmt(sparsity),
            _fmt(best.get("gini")),
            _fmt(best.get("entropy")),
        ]
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(lines) + "</table>"


def _price(settings: dict) -> str:
    """Lambda, or the budget when a controller set the price."""
    if settings.get("budget") is not None:
        return f"budget {_fmt(settings['budget'])}"
    return f"lambda {_fmt(settings.get('lam'))}"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _failed_table(results: list[dict]) -> str:
    failed = [r for r in results if r.get("status") == "failed"]
    if not failed:
        return "<p>No trial failed.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(r['id'])}</td><td>{html.escape(r.get('error', ''))}</td></tr>" for r in failed
    )
    return f"<table><tr><th>trial</th><th>error</th></tr>{rows}</table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
figure{display:inline-block;margin:1em 0}img{max-width:100%}figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.8em}h2{border-bottom:1px solid #ddd}"""


def render(folder: str | Path) -> str:
    """The report's HTML for a sweep folder (needs results.jsonl; pareto.json is rebuilt from it)."""
    from econlm.analysis import write_pareto

    folder = Path(folder)
    results = load_results(folder)
    sweep = json.loads((folder / "sweep.json").read_text()) if (folder / "sweep.json").exists() else {}
    primary = (sweep.get("config") or {}).get("compute_axis", "dense_flops")
    pareto = write_pareto(results, folder, primary)
    parts = [
        f"<h1>econlm report: {html.escape(folder.name)}</h1>",
        f"<p>{sum(r.get('status') == 'ok' for r in results)} finished trials, "
        f"{sum(r.get('status') == 'failed' for r in results)} failed. Scores are dev-set scores (test set for "
        "language modelling) of exactly the model whose compute is shown.</p>",
    ]
    parts.append("<h2>Pareto frontiers</h2>")
    speedups, probes = _speedups(results), read_probes(folder)
    from econlm.analysis import AXIS_FIELDS

    for axis in (primary, *[a for a in AXIS_FIELDS if a != primary]):
        left_out = pareto.get(axis, {}).get("left_out")
        missing = (
            f" ({left_out} finished trial{'s' if left_out != 1 else ''} without this measure left out: finished "
            "before it was recorded, or a language-modelling trial)"
            if left_out
            else ""
        )
        for problem in pareto.get(axis, {}).get("problems", []):  # latency_dev: not in older sweep folders
            parts.append(
                _img(
                    _png(_frontier_figure(problem, probes, speedups)),
                    f"{problem['model']} / {problem['task']}: score "
                    f"against {problem['compute_label']}; lines join each method's non-dominated points{missing}",
                )
            )
    parts.append("<h2>The price of compute</h2>")
    parts += [_img(data, alt) for data, alt in _lambda_figures(results)]
    parts.append("<h2>Per-layer heatmaps</h2>")
    parts += [_img(data, alt) for data, alt in _heatmaps(results)]
    parts.append("<h2>Ablation: which component to tax</h2>")
    parts.append(_ablation_table(results))
    parts += _market_sections(folder)
    probes = _probe_figures(folder)
    if probes:
        parts.append("<h2>Scarcity probe</h2>")
        parts += [_img(data, alt) for data, alt in probes]
    parts.append("<h2>Failed trials</h2>")
    parts.append(_failed_table(results))
    parts.append("<h2>Configuration and versions</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(sweep, indent=2, sort_keys=True, default=str))}</pre>")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>econlm report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"


def market_files(folder: Path) -> list[Path]:
    """market.json files in a sweep folder or one level down (``econlm market --out SWEEP/market``), and the
    markets a sweep estimated for its ``shapley`` rivals (``trials/<id>/market/market.json``)."""
    return sorted([*folder.glob("market.json"), *folder.glob("*/market.json"), *folder.glob("trials/*/market/market.json")])


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _market_sections(folder: Path) -> list[str]:
    """The market (econlm market): value heatmaps, Lorenz curves, interactions, allocations, shadow prices."""
    from econlm.plots import market_figures

    parts = []
    for path in market_files(folder):
        try:
            result = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is not valid JSON; rerun econlm market to rewrite it") from None
        where = path.parent.parent.name if path.parent.parent.parent.name == "trials" else path.parent.name
        title = f"The market: {result['task']} ({where})" if result.get("task") else f"The market ({where})"
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if "units" in result:
            est = result["estimator"]
            parts.append(
                f"<p>{len(result['units'])} units valued on {html.escape(result['value_definition'])}: "
                f"{est['pairs']} antithetic permutation pairs, truncation {est['truncate']}, {est['evaluations']} "
                f"evaluations in {est['seconds'] / 60:.1f} min ({html.escape(est['stopped_by'])}). Compute: "
                f"{html.escape(result['compute']['unit'])}.</p>"
            )
            captions = {
                "market_head_values": "Shapley value and value per MAC of each head (layer x head)",
                "market_ffn_values": "Shapley value and value per MAC of each FFN block (layer x block)",
                "market_lorenz": "Lorenz curves of value and of compute across units",
                "market_interactions": "Shapley interaction indices among the most valuable heads",
            }
            for name, fig in market_figures(result).items():
                parts.append(_img(_png(fig), captions.get(name, name)))
            parts.append("<h3>Costly units that return the least</h3>")
            parts.append(
                _table(
                    ["unit", "value", "MACs per token"],
                    [[u["name"], u["value"], u["macs_per_token"]] for u in result["costly_low_return"]],
                )
            )
            if result["allocations"]:  # a sweep's market leaves the comparison to its trained rivals
                latency = result.get("priced_by") == "latency"
                parts.append(
                    "<h3>Market-clearing allocations (held-out dev, no retraining"
                    + ("; budgets are shares of the predicted latency" if latency else "")
                    + ")</h3>"
                )
                parts.append(
                    _table(
                        ["budget", "method", result["metric"], "dense compute share"]
                        + (["predicted latency share"] if latency else []),
                        [
                            [r["budget"], r["method"], r["score"], r["dense_share"]]
                            + ([r.get("predicted_latency_share", 1.0)] if latency else [])
                            for r in result["allocations"]
                        ],
                    )
                )
            half = result.get("head_ranking_at_half") or {}
            if half.get("rows"):
                parts.append(f"<h3>About half of {half['of']} heads removed, no retraining</h3>")
                parts.append(f"<p>{html.escape(half['note'])}.</p>")
                parts.append(
                    _table(
                        ["layout", "heads removed", "ranking", result["metric"]],
                        [[r["layout"], half["heads_removed"][r["layout"]], r["ranking"], r["score"]] for r in half["rows"]],
                    )
                )
        shadow = result.get("shadow_prices")
        if shadow:
            parts.append("<h3>Is the price a shadow price of compute?</h3>")
            parts.append(f"<p>{html.escape(shadow['definition'])}.</p>")
            parts.append(
                _table(
                    ["seed", "cost", "budgets", "shares", "dev losses", "final lambdas", "-dL/dC", "consistent"],
                    [
                        [p["seed"], "+".join(p["cost"] or []), p["budgets"], p["shares"], p["losses"], p["lambdas"],
                         p["finite_difference"], "yes" if p["consistent"] else "no"]
                        for p in shadow["pairs"]
                    ],
                )
            )
    return parts


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    from econlm.runinfo import atomic_write_text

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the --out folder of an econlm sweep")
    target = Path(out) if out else folder / "report.html"
    atomic_write_text(target, render(folder))
    return target
