"""Figures. The only module (with report.py) that imports matplotlib; it uses the Agg backend."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    from econlm.runinfo import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    _pyplot().close(fig)


def probe_figure(rows: Sequence[dict], title: str):
    """Score, Gini and entropy against the attention budget (full on the left, tightest on the right)."""
    plt = _pyplot()
    labels = [str(r["budget"]) for r in rows]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("score", f"{rows[0]['metric']}", "tab:blue"),
        ("gini", "mean Gini of attention rows", "tab:red"),
        ("entropy", "mean entropy of attention rows (nats)", "tab:green"),
    ]
    for ax, (key, ylabel, color) in zip(axes, panels):
        ax.plot(x, [r[key] for r in rows], marker="o", color=color)
        ax.set_xticks(x, labels)
        ax.set_xlabel("attention budget (keys per query)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_layer_heatmap(matrix: Sequence[Sequence[float]], title: str, xlabel: str, ylabel: str, cbar: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=cbar)
    fig.tight_layout()
    return fig


def market_figures(result: dict) -> dict:
    """The market's figures: value and value per MAC per layer x unit, Lorenz curves, head interactions."""
    plt = _pyplot()
    figures = {}
    if "units" not in result:  # only the shadow-price check ran
        return figures
    units = result["units"]
    for kind, label in (("head", "head (K/V group)"), ("ffn", "FFN block")):
        rows = [u for u in units if u["kind"] == kind]
        if not rows:
            continue
        layers = 1 + max(u["layer"] for u in rows)
        width = 1 + max(u["index"] for u in rows)
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
        for ax, key, title in (
            (axes[0], "value", f"Shapley value ({result['value']})"),
            (axes[1], "value_per_mmac", "value per million MACs per token"),
        ):
            grid = [[float("nan")] * width for _ in range(layers)]
            for u in rows:
                grid[u["layer"]][u["index"]] = u[key]
            bound = max(abs(x) for row in grid for x in row if x == x) or 1.0
            image = ax.imshow(grid, aspect="auto", cmap="RdBu", vmin=-bound, vmax=bound)
            ax.set_xlabel(label)
            ax.set_ylabel("layer")
            ax.set_title(title)
            fig.colorbar(image, ax=ax)
        fig.tight_layout()
        figures[f"market_{kind}_values"] = fig
    fig, ax = plt.subplots(figsize=(5, 4))
    for kind, stats in result["inequality"].items():
        curve = stats["lorenz_value"]
        x = [i / (len(curve) - 1) for i in range(len(curve))]
        ax.plot(x, curve, label=f"value, {kind} (Gini {stats['gini_value']:.2f})")
    compute = result["inequality"]["all"]["lorenz_compute"]
    ax.plot(
        [i / (len(compute) - 1) for i in range(len(compute))],
        compute,
        linestyle="--",
        label=f"compute, all (Gini {result['inequality']['all']['gini_compute']:.2f})",
    )
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set_xlabel("share of units (poorest first)")
    ax.set_ylabel("cumulative share")
    ax.set_title("Lorenz curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figures["market_lorenz"] = fig
    inter = result.get("interactions", {})
    if inter.get("pairs"):
        names = inter["heads"]
        index = {n: i for i, n in enumerate(names)}
        grid = [[float("nan")] * len(names) for _ in names]
        for p in inter["pairs"]:
            grid[index[p["a"]]][index[p["b"]]] = grid[index[p["b"]]][index[p["a"]]] = p["value"]
        bound = max(abs(x) for row in grid for x in row if x == x) or 1.0
        fig, ax = plt.subplots(figsize=(5, 4.2))
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title("head interactions (red: substitutes, blue: complements)")
        fig.colorbar(image, ax=ax, label="Shapley interaction index")
        fig.tight_layout()
        figures["market_interactions"] = fig
    return figures
