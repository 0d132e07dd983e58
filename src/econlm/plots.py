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
