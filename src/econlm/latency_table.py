"""Latency lookup tables: what removing heads or FFN neurons really saves on this machine.

FLOPs fall linearly with every unit removed; latency does not. Kwon et al. (2022) and HALP measure it
instead: latency against kept heads or kept FFN width is flat up to a threshold, then about linear, so
removing a few units can buy nothing. A table makes that curve a price.

How it is measured (:func:`measure_table`): the model is pruned to ``k`` kept heads (kept K/V groups for
grouped-query attention) in *every* layer with the FFN whole, and separately to ``k`` kept FFN neurons in
every layer with attention whole. Each pruned model is timed round by round together with the dense model
(same batch, sequence length and threads), so the saving ``T_dense - T_k`` is a difference measured under
the same noise. Divided by the number of layers it is one layer's saving at ``k`` kept units. The savings
are made non-increasing in ``k`` (pool-adjacent-violators) and read by linear interpolation between the
measured points: a monotone piecewise-linear curve.

Predicted latency of a structure with ``h_l`` heads and ``f_l`` neurons in layer ``l``::

    T = T_dense - sum_l attention_saved(h_l) - sum_l ffn_saved(f_l)

:func:`expected_savings` is the same in torch, at expected kept counts, so gates can be priced by it.

Tokens (learned token budgets) are priced by a third curve: the dense model timed on ``t`` tokens against
the table's sequence length, the saving per layer at ``t`` tokens. A layer's seconds are taken as separable,
its units' share times its tokens' share (:func:`latency_token_share`): with ``b = T_dense / layers``,
``b_l = b - attention_saved(h_l) - ffn_saved(f_l)`` and layer ``l`` running on ``n_l`` tokens of an example
of ``n_0`` real tokens, the share of dense latency is ``sum_l b_l (b - tokens_saved(n_l)) / sum_l b (b -
tokens_saved(n_0))``, summed over examples. At batch 1 and short sequences the token curve is flat (the
fixed cost of a call dominates), so dropping tokens there buys little, which is what the price then says.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from econlm.errors import UserError

FORMAT = "econlm-latency-table/1"
SHAPE_KEYS = ("model_type", "layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate")


@dataclass(frozen=True)
class Curve:
    """One layer's latency saved (seconds) at each measured number of kept units; saved at the dense count is 0."""

    kept: tuple[int, ...]  # increasing, ends at the dense count
    saved: tuple[float, ...]  # fitted: non-increasing, last is 0
    raw_saved: tuple[float, ...]  # as measured, before the monotone fit

    def at(self, k: float) -> float:
        return float(interpolate(torch.tensor(float(k)), self))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LatencyTable:
    model: dict  # the model's shape (SHAPE_KEYS) and its name
    setup: dict  # batch, seq_len, threads, device, repeats
    machine: dict
    dense_seconds: float
    attention: Curve  # kept heads (kept K/V groups for grouped-query attention) per layer
    ffn: Curve  # kept FFN neurons per layer
    group: int = 1  # query heads per K/V group: attention curves count groups
    tokens: Curve | None = None  # tokens per sequence (up to setup's seq_len), every layer; None in older tables

    def predict(self, heads: Sequence[int], ffn: Sequence[int]) -> float:
        """Predicted seconds per forward pass of a structure (per-layer query heads and FFN widths)."""
        saved = sum(self.attention.at(h / self.group) for h in heads) + sum(self.ffn.at(f) for f in ffn)
        return self.dense_seconds - saved

    def predicted_speedup(self, heads: Sequence[int], ffn: Sequence[int]) -> float:
        return self.dense_seconds / self.predict(heads, ffn)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "setup": self.setup,
            "machine": self.machine,
            "dense_seconds": self.dense_seconds,
            "group": self.group,
            "attention": self.attention.to_json(),
            "ffn": self.ffn.to_json(),
            **({"tokens": self.tokens.to_json()} if self.tokens is not None else {}),
        }


# ---------------------------------------------------------------------------------------------------------
# Fitting and reading curves (pure)


def monotone_fit(values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """The non-increasing sequence closest to ``values`` in weighted least squares (pool adjacent violators)."""
    weights = list(weights) if weights is not None else [1.0] * len(values)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, weights):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:  # an increase violates the order
            mean2, weight2, count2 = blocks.pop()
            mean1, weight1, count1 = blocks.pop()
            total = weight1 + weight2
            blocks.append([(mean1 * weight1 + mean2 * weight2) / total, total, count1 + count2])
    return [mean for mean, _, count in blocks for _ in range(count)]


def fit_curve(kept: Sequence[int], saved: Sequence[float]) -> Curve:
    """Sort by kept units, anchor the dense count at 0 saved, and make the savings non-increasing."""
    pairs = sorted(zip(kept, saved))
    ks = [k for k, _ in pairs]
    raw = [s for _, s in pairs]
    # Keeping every unit saves nothing, whatever the noise said: the dense count is fixed at 0 with an
    # overwhelming weight, so pooling never moves it; savings are never negative either.
    anchored = raw[:-1] + [0.0]
    weights = [1.0] * (len(raw) - 1) + [1e12]
    fitted = [max(0.0, s) for s in monotone_fit(anchored, weights)]
    fitted[-1] = 0.0
    return Curve(kept=tuple(ks), saved=tuple(fitted), raw_saved=tuple(raw))


def interpolate(k: torch.Tensor, curve: Curve) -> torch.Tensor:
    """Saved seconds at (possibly fractional) ``k`` kept units, linear between measured points; below the
    smallest measured count the first segment's slope continues, above the largest nothing is saved
    (differentiable almost everywhere; no host round trip, so it costs nothing extra in a training step)."""
    xs, ys = _points(curve, k.dtype if k.is_floating_point() else torch.float32, k.device)
    if len(xs) == 1:
        return ys[0] + 0 * k
    index = torch.clamp(torch.searchsorted(xs, k.detach().reshape(1), right=True) - 1, 0, len(xs) - 2)[0]
    x0, x1, y0, y1 = xs[index], xs[index + 1], ys[index], ys[index + 1]
    value = (y0 + (y1 - y0) * (k - x0) / (x1 - x0)).clamp_min(0.0)
    return torch.where(k <= xs[-1], value, ys[-1] + 0 * k)


def interpolate_many(k: torch.Tensor, curve: Curve) -> torch.Tensor:
    """:func:`interpolate` at every entry of ``k`` (any shape), with the same extrapolation."""
    xs, ys = _points(curve, k.dtype if k.is_floating_point() else torch.float32, k.device)
    if len(xs) == 1:
        return ys[0] + 0 * k
    index = torch.clamp(torch.searchsorted(xs, k.detach().reshape(-1), right=True) - 1, 0, len(xs) - 2)
    index = index.reshape(k.shape)
    x0, x1, y0, y1 = xs[index], xs[index + 1], ys[index], ys[index + 1]
    value = (y0 + (y1 - y0) * (k - x0) / (x1 - x0)).clamp_min(0.0)
    return torch.where(k <= xs[-1], value, ys[-1] + 0 * k)


def latency_token_share(
    table: LatencyTable,
    counts: Sequence[torch.Tensor],
    kept_groups: Sequence[torch.Tensor] = (),
    kept_neurons: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """The predicted share of dense latency a model spends when layer ``l`` runs on ``counts[l]`` (B,) expected
    tokens per example (``counts[0]``: the real lengths) with ``kept_groups[l]`` open K/V groups and
    ``kept_neurons[l]`` open FFN neurons (empty: that component dense); see the module docstring. Padding is
    never counted: the reference is every example at its own real length. Differentiable in all three."""
    if table.tokens is None:
        raise UserError("this latency table measures no token curve: make it again with econlm latency-table")
    layers = len(counts)
    base = table.dense_seconds / layers  # one layer's seconds, the embeddings and the head spread over them
    reference = base - interpolate_many(counts[0].float(), table.tokens)  # (B,) each layer at full length
    spent = torch.zeros((), device=counts[0].device)
    for layer, tokens in enumerate(counts):
        units = base
        if kept_groups:
            units = units - interpolate(kept_groups[layer], table.attention)
        if kept_neurons:
            units = units - interpolate(kept_neurons[layer], table.ffn)
        spent = spent + (units / base * (base - interpolate_many(tokens.float(), table.tokens))).sum()
    return spent / (layers * reference.sum())


@functools.lru_cache(maxsize=64)
def _points(curve: Curve, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A curve's measured points as tensors, made once per curve, dtype and device."""
    return torch.tensor(curve.kept, dtype=dtype, device=device), torch.tensor(curve.saved, dtype=dtype, device=device)


def expected_savings(
    table: LatencyTable, kept_groups: Sequence[torch.Tensor], kept_neurons: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seconds the attention and the FFNs of a gated model save against the dense model (tensors with gradients).

    ``kept_groups[l]``: expected open K/V groups (= heads without GQA) of layer l; ``kept_neurons[l]``: expected
    open FFN neurons. Empty sequences leave that component dense.
    """
    device = next((k.device for k in (*kept_groups, *kept_neurons)), None)
    zero = torch.zeros((), device=device)
    attention = sum((interpolate(k, table.attention) for k in kept_groups), zero)
    return attention, sum((interpolate(k, table.ffn) for k in kept_neurons), zero)


# ---------------------------------------------------------------------------------------------------------
# Shapes, files and checks


def model_shape(config) -> dict:
    from econlm import arch

    shape = arch.shape(config)
    return {
        "model_type": config.model_type,
        "layers": shape.layers,
        "hidden": shape.hidden,
        "heads": shape.heads,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "intermediate": shape.intermediate,
    }


def load_table(path: str | Path) -> LatencyTable:
    """Read a table file; anything malformed is one line naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"latency table {path} does not exist; make one with: econlm latency-table MODEL --out {path}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(
            f"latency table {path} is not valid JSON ({error}); make it again with econlm latency-table"
        ) from None
    try:
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
        curves = {}
        for part in ("attention", "ffn", "tokens"):
            if part == "tokens" and part not in raw:  # tables made before tokens were priced by latency
                curves[part] = None
                continue
            c = raw[part]
            kept, saved = [int(k) for k in c["kept"]], [float(s) for s in c["saved"]]
            if len(kept) != len(saved) or not kept or kept != sorted(set(kept)):
                raise ValueError(f"{part}: kept counts must be increasing and match the savings")
            curves[part] = Curve(tuple(kept), tuple(saved), tuple(float(s) for s in c.get("raw_saved", saved)))
        table = LatencyTable(
            model=dict(raw["model"]),
            setup=dict(raw["setup"]),
            machine=dict(raw.get("machine", {})),
            dense_seconds=float(raw["dense_seconds"]),
            attention=curves["attention"],
            ffn=curves["ffn"],
            group=int(raw.get("group", 1)),
            tokens=curves["tokens"],
        )
        if not (math.isfinite(table.dense_seconds) and table.dense_seconds > 0):
            raise ValueError("dense_seconds must be positive")
        missing = [k for k in SHAPE_KEYS if k not in table.model]
        if missing:
            raise ValueError(f"the model shape lacks {', '.join(missing)}")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(
            f"latency table {path} is malformed ({error}); make it again with econlm latency-table"
        ) from None
    return table


def check_table(
    table: LatencyTable, config, path: str | Path = "the latency table", threads: int | None = None
) -> None:
    """A table of another model or layer shape is an error; one made on another machine or thread count is
    used, with one line of warning on stderr naming what differs."""
    mine = model_shape(config)
    differs = [f"{k} {table.model.get(k)} (model: {mine[k]})" for k in SHAPE_KEYS if table.model.get(k) != mine[k]]
    if differs:
        raise UserError(
            f"{path} was made for another model or layer shape: {'; '.join(differs)}; make one for this model "
            "with econlm latency-table"
        )
    from econlm.runinfo import machine

    here = machine()
    notes = []
    if table.machine.get("processor") and table.machine.get("processor") != here["processor"]:
        notes.append(f"processor {table.machine['processor']} (here: {here['processor']})")
    if table.machine.get("cpu_model") and here.get("cpu_model") and table.machine["cpu_model"] != here["cpu_model"]:
        notes.append(f"CPU {table.machine['cpu_model']} (here: {here['cpu_model']})")
    if table.machine.get("cpu_count") and table.machine.get("cpu_count") != here["cpu_count"]:
        notes.append(f"{table.machine['cpu_count']} CPUs (here: {here['cpu_count']})")
    threads = threads or torch.get_num_threads()
    if table.setup.get("threads") != threads:
        counted = table.setup.get("threads")
        notes.append(f"{counted} thread{'' if counted == 1 else 's'} (here: {threads})")
    if notes:
        print(
            f"econlm: warning: {path} was measured with {', '.join(notes)}; its prices may not fit this machine",
            file=sys.stderr,
        )


# ---------------------------------------------------------------------------------------------------------
# Measuring


def _grid(dense: int, points: int) -> list[int]:
    """``points`` kept counts from about dense/points up to dense (all counts when there are few)."""
    if dense <= points:
        return list(range(1, dense + 1))
    return sorted({max(1, round(dense * i / points)) for i in range(1, points + 1)})


def measure_table(
    model,
    *,
    name: str,
    batch: int = 1,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    ffn_points: int = 12,
    token_points: int = 8,
    progress: bool = True,
) -> LatencyTable:
    """Measure the attention, FFN and token curves of ``model`` at this batch, sequence length and thread
    count. The token curve times the dense model on ``t`` tokens (every token real) against ``seq_len``."""
    from econlm import arch
    from econlm.latency import measure_interleaved, model_call, random_inputs
    from econlm.progress import bar
    from econlm.prune import prune
    from econlm.runinfo import machine

    shape = arch.shape(model.config)
    group = shape.heads // shape.kv_heads
    model = model.eval()
    inputs = random_inputs(batch, seq_len, 100, min(1000, model.config.vocab_size))

    def forward(m):
        return model_call(m, inputs)

    head_grid = _grid(shape.kv_heads, shape.kv_heads)  # every kept group count: heads are few
    ffn_grid = _grid(shape.intermediate, ffn_points)
    token_grid = _grid(seq_len, token_points)
    jobs = [("attention", k) for k in head_grid] + [("ffn", k) for k in ffn_grid] + [("tokens", t) for t in token_grid]
    savings: dict[str, list[tuple[int, float]]] = {"attention": [], "ffn": [], "tokens": []}
    dense_times = []
    with bar(total=len(jobs), desc=f"latency table {name}", unit="shape", enabled=progress) as pbar:
        for part, k in jobs:
            full = {"attention": shape.kv_heads, "ffn": shape.intermediate, "tokens": seq_len}[part]
            if k == full:
                savings[part].append((k, 0.0))
                pbar.update(1)
                continue
            if part == "tokens":  # the same model on fewer tokens, every one real
                shorter = random_inputs(batch, k, 100, min(1000, model.config.vocab_size))
                timings = measure_interleaved(
                    {"dense": forward(model), "shorter": model_call(model, shorter)}, warmup=warmup, repeats=repeats
                )
                dense_times.append(timings["dense"].median)
                savings[part].append((k, (timings["dense"].median - timings["shorter"].median) / shape.layers))
                pbar.update(1)
                continue
            pruned = copy.deepcopy(model)
            remove_heads = [(shape.kv_heads - k) * group if part == "attention" else 0] * shape.layers
            remove_neurons = [shape.intermediate - k if part == "ffn" else 0] * shape.layers
            prune(pruned, remove_heads, remove_neurons, importance="magnitude")
            timings = measure_interleaved(
                {"dense": forward(model), "pruned": forward(pruned)}, warmup=warmup, repeats=repeats
            )
            dense_times.append(timings["dense"].median)
            savings[part].append((k, (timings["dense"].median - timings["pruned"].median) / shape.layers))
            del pruned
            pbar.update(1)
    if not dense_times:  # a model with one head and a one-neuron FFN: nothing to remove
        dense_times.append(
            measure_interleaved({"dense": forward(model)}, warmup=warmup, repeats=repeats)["dense"].median
        )
    dense_times.sort()
    return LatencyTable(
        model={"name": name, **model_shape(model.config)},
        setup={
            "batch": batch,
            "seq_len": seq_len,
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "repeats": repeats,
            "warmup": warmup,
            "statistic": "median seconds per forward pass (no grad); each pruned model (and the dense model on "
            "fewer tokens) timed round by round with the dense one; savings per layer = (dense - pruned) / layers",
        },
        machine=machine(),
        dense_seconds=dense_times[len(dense_times) // 2],
        attention=fit_curve(*zip(*savings["attention"])),
        ffn=fit_curve(*zip(*savings["ffn"])),
        group=group,
        tokens=fit_curve(*zip(*savings["tokens"])),
    )
