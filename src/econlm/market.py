"""The market of units: what each attention head and FFN neuron block is worth, what it costs, and whether
the price of compute is right.

A *game* (:class:`Game`) has the model's units as players; the value of a coalition (the units kept, all
others masked to zero) is the task metric, or minus the task loss, on a fixed dev subset. Its core is a
cached evaluator: the hidden states after every block are kept for the last coalition evaluated, and a
new coalition recomputes only from the first layer where it differs (blocks below replay their cached
output). A permutation walk changes one unit at a time, so on average about half the blocks run.

Values are Shapley values estimated by permutation sampling (:func:`shapley`):

* **Antithetic pairs.** Each sampled permutation is walked together with its reverse; a walk starts from
  the full model and removes units in order, a unit's marginal being the value lost by removing it.
* **Truncation** (``truncate="half"``, Held & Yang 2023): a walk stops once half the units are removed.
  With antithetic pairs every unit still gets exactly one marginal per pair (for an even count), taken
  where at least half the units are present: the estimate is then the *truncated Shapley value*, the
  Shapley average restricted to coalitions of at least half the units (the regime pruning up to 50%
  lives in). ``truncate="none"`` estimates the Shapley value itself. :func:`exact_values` enumerates
  either exactly, for tests on tiny models.
* **Per-unit early stopping.** A unit stops being sampled once its 95% half-width is at most ``tol``: the
  normal approximation over its per-pair samples (``interval="normal"``), or the more conservative
  empirical-Bernstein bound (``"bernstein"``, Audibert, Munos & Szepesvari 2009, with the observed range, as Held & Yang
  used); a walk skips the evaluations that only stopped units need.

Every value comes with a 95% interval (normal approximation over the per-pair samples, and the more
conservative empirical-Bernstein bound). Shapley interaction indices of unit pairs (:func:`interactions`)
tell complements (> 0) from substitutes (< 0). :func:`returns` prices each unit by its MACs per token;
:func:`clear_market` keeps units by value per MAC until a compute budget is spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from econlm import arch
from econlm.errors import UserError

DELTA = 0.05  # 95% intervals
MIN_PAIRS = 8  # samples before a unit may stop: the variance and range must be seen first
TRUNCATIONS = ("half", "none")
INTERVALS = ("normal", "bernstein")


@dataclass(frozen=True)
class Unit:
    """One player: a key/value head group (with every query head that reads it; one head without GQA) or a
    block of ``block`` consecutive FFN neurons."""

    kind: str  # "head" or "ffn"
    layer: int
    index: int  # group index, or block index

    @property
    def name(self) -> str:
        return f"L{self.layer}.{'H' if self.kind == 'head' else 'F'}{self.index}"


def units_of(model: nn.Module, kinds: Sequence[str], block: int) -> list[Unit]:
    """The players of ``kinds`` ("head", "ffn") of a model; FFN blocks of ``block`` neurons."""
    from econlm.flops import Structure

    structure = Structure.of_model(model)
    units = []
    for layer in range(structure.layers):
        if "head" in kinds:
            units += [Unit("head", layer, g) for g in range(structure.kv_heads[layer])]
        if "ffn" in kinds:
            width = structure.ffn[layer]
            if width % block:
                raise UserError(f"--block {block} does not divide the FFN width {width}; use one of {divisors(width)}")
            units += [Unit("ffn", layer, b) for b in range(width // block)]
    return units


def divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


# ---------------------------------------------------------------------------------------------------------
# The cached game


class _Replay(nn.Module):
    """Stands in for a block whose input did not change: returns the block's recorded output."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


@contextmanager
def _replayed(model: nn.Module, outputs: list, below: int) -> Iterator[None]:
    """Blocks ``< below`` replay ``outputs``; blocks ``>= below`` run and record theirs into ``outputs``."""
    fam = arch.family(model.config)
    layers = arch.get_submodule(model.base_model, fam.layers)
    originals = list(layers)
    handles = []

    def record(i):
        def hook(module, args, output):
            outputs[i] = output

        return hook

    try:
        for i in range(below):
            layers[i] = _Replay(outputs[i])
        for i in range(below, len(originals)):
            handles.append(originals[i].register_forward_hook(record(i)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for i, block in enumerate(originals):
            layers[i] = block


class Game:
    """The value of keeping a subset of ``units`` (all others masked to zero), on fixed ``batches``.

    ``score(logits, batches)`` turns the model's outputs (one tensor per batch) into a number (higher is
    better). Evaluations reuse the block outputs of the previous coalition below the first changed layer.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[dict],
        units: Sequence[Unit],
        score: Callable[[list[torch.Tensor]], float],
        block: int = 1,
    ) -> None:
        from econlm.flops import Structure

        self.model, self.batches, self.units, self.score, self.block = model, list(batches), list(units), score, block
        structure = Structure.of_model(model)
        self.groups = [h // g for h, g in zip(structure.heads, structure.kv_heads)]  # query heads per K/V head
        self.masks = {
            "heads": [torch.ones(h) for h in structure.heads],
            "neurons": [torch.ones(f) for f in structure.ffn],
        }
        self.evaluations = 0
        self.blocks_run = 0
        self._layers = structure.layers
        self._kept: list[bool] | None = None
        self._value = 0.0
        self._outputs = [[None] * structure.layers for _ in self.batches]

    @property
    def n(self) -> int:
        return len(self.units)

    def _set(self, unit: Unit, on: bool) -> None:
        if unit.kind == "head":
            group = self.groups[unit.layer]
            self.masks["heads"][unit.layer][unit.index * group : (unit.index + 1) * group] = float(on)
        else:
            self.masks["neurons"][unit.layer][unit.index * self.block : (unit.index + 1) * self.block] = float(on)

    @torch.no_grad()
    def value(self, kept: Sequence[bool]) -> float:
        """The value of the coalition ``kept`` (one flag per unit)."""
        from econlm.fisher import mask_hooks

        kept = [bool(k) for k in kept]
        if self._kept is None:
            first = 0
        else:
            changed = [u.layer for u, a, b in zip(self.units, kept, self._kept) if a != b]
            if not changed:
                return self._value
            first = min(changed)
        for unit, on in zip(self.units, kept):
            self._set(unit, on)
        was_training = self.model.training
        self.model.eval()
        logits = []
        try:
            with mask_hooks(self.model, self.masks):
                for b, batch in enumerate(self.batches):
                    with _replayed(self.model, self._outputs[b], first):
                        logits.append(self.model(**batch).logits)
            value = float(self.score(logits))
        except BaseException:
            self._kept = None  # the recorded outputs are a mix of coalitions now: the next call runs in full
            raise
        finally:
            self.model.train(was_training)
        self._kept, self._value = kept, value
        self.evaluations += 1
        self.blocks_run += self._layers - first
        return self._value

    def full(self) -> float:
        return self.value([True] * self.n)


# ---------------------------------------------------------------------------------------------------------
# Estimates


@dataclass
class Estimate:
    """A sampled mean with its 95% intervals: normal approximation and empirical Bernstein."""

    mean: float
    ci95: float  # Student-t 97.5% quantile (1.96 from 31 samples on) x standard error of the per-pair samples
    bernstein: float  # empirical-Bernstein half-width at delta = 0.05 (finite-sample; uses the observed range)
    samples: int

    def to_json(self) -> dict:
        return {"value": self.mean, "ci95": self.ci95, "bernstein95": self.bernstein, "samples": self.samples}


# Student-t 97.5% quantiles for 1..30 degrees of freedom (1.96 beyond): few samples, wider intervals.
_T975 = (
    12.71,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def estimate(samples: Sequence[float], delta: float = DELTA, resolution: float = 0.0) -> Estimate:
    """Mean and 95% half-widths of per-pair samples. ``resolution`` is the smallest change the value can make
    (1/n for accuracy on n examples): the variance is floored at resolution**2 / 4 and the range at the
    resolution, so identical samples of a discrete metric do not claim an exact value."""
    t = len(samples)
    if t == 0:
        return Estimate(float("nan"), float("inf"), float("inf"), 0)
    x = torch.tensor(samples, dtype=torch.float64)
    mean = float(x.mean())
    if t < 2:
        return Estimate(mean, float("inf"), float("inf"), t)
    var = max(float(x.var(unbiased=True)), resolution**2 / 4)
    spread = max(float(x.max() - x.min()), resolution)
    log_term = math.log(3 / delta)
    bernstein = math.sqrt(2 * var * log_term / t) + 3 * spread * log_term / t
    quantile = _T975[t - 2] if t - 1 <= len(_T975) else 1.96
    return Estimate(mean, quantile * math.sqrt(var / t), bernstein, t)


def walk_length(n: int, truncate: str) -> int:
    """How many removals a walk evaluates: all of them, or until half the units are gone."""
    if truncate not in TRUNCATIONS:
        raise UserError(f"--truncate must be one of {', '.join(TRUNCATIONS)}, not {truncate!r}")
    return n if truncate == "none" else math.ceil(n / 2)


def _walk(game: Game, order: Sequence[int], length: int, active: Sequence[bool], full: float) -> dict[int, float]:
    """Remove ``order[:length]`` one by one from the full model; the marginal of every active unit."""
    last = max((i for i in range(length) if active[order[i]]), default=-1)
    kept = [True] * game.n
    before, marginals = full, {}
    for i in range(last + 1):
        kept[order[i]] = False
        needed = active[order[i]] or (i < last and active[order[i + 1]])
        if not needed:
            continue
        after = game.value(kept)
        if active[order[i]]:
            marginals[order[i]] = before - after
        before = after
    return marginals


def shapley(
    game: Game,
    *,
    pairs: int = 200,
    tol: float = 0.01,
    truncate: str = "half",
    seed: int = 0,
    max_seconds: float | None = None,
    permutations: Sequence[Sequence[int]] | None = None,
    interval: str = "normal",
    state: str | Path | None = None,
    key: dict | None = None,
    resolution: float = 0.0,
    progress: bool = False,
) -> dict:
    """Shapley values of ``game.units`` by antithetic permutation sampling with truncation and per-unit early
    stopping (see the module docstring). ``permutations`` replaces the sampling (each is walked with its
    reverse), for exact checks. With ``state`` (a JSON file) the samples are saved after every pair and a
    rerun with the same settings and ``key`` (what defines the game: model, data, value) continues where the
    last one stopped, drawing the same permutations. ``resolution``: see :func:`estimate`. Returns ``{"values": [Estimate], "pairs": int, "evaluations": int, ...}``."""
    from econlm.progress import bar

    if interval not in INTERVALS:
        raise UserError(f"--interval must be one of {', '.join(INTERVALS)}, not {interval!r}")
    n = game.n
    length = walk_length(n, truncate)
    generator = torch.Generator().manual_seed(seed)
    settings = {
        "units": [u.name for u in game.units] if hasattr(game, "units") else n,
        "seed": seed,
        "truncate": truncate,
        "interval": interval,
        "tol": tol,
        "resolution": resolution,
        "game": key or {},
    }
    saved = _load_state(state, settings)
    samples: list[list[float]] = saved["samples"] if saved else [[] for _ in range(n)]
    active = saved["active"] if saved else [True] * n
    done = saved["pairs"] if saved else 0
    earlier = saved["seconds"] if saved else 0.0
    evaluations_before = saved.get("evaluations", 0) if saved else 0
    blocks_before = saved.get("blocks_run", 0) if saved else 0
    for _ in range(done):  # the permutations the saved pairs used: the rerun draws the ones after them
        torch.randperm(n, generator=generator)
    full = game.full()
    start = time.perf_counter()
    planned = len(permutations) if permutations is not None else pairs
    stopped_by = "pairs"
    completed = done
    with bar(total=planned, desc="shapley", unit="pair", enabled=progress) as pbar:
        pbar.update(done)
        for p in range(done, planned):
            if not any(active):
                break
            if max_seconds is not None and earlier + time.perf_counter() - start > max_seconds:
                stopped_by = "time limit"
                break
            if permutations is not None:
                order = list(permutations[p])
            else:
                order = torch.randperm(n, generator=generator).tolist()
            sums, counts = [0.0] * n, [0] * n
            for walk in (order, order[::-1]):
                for unit, marginal in _walk(game, walk, length, active, full).items():
                    sums[unit] += marginal
                    counts[unit] += 1
            for unit in range(n):
                if counts[unit]:
                    samples[unit].append(sums[unit] / counts[unit])
            if permutations is None:
                for unit in range(n):
                    if (
                        active[unit]
                        and len(samples[unit]) >= MIN_PAIRS
                        and _half_width(samples[unit], interval, resolution) <= tol
                    ):
                        active[unit] = False
            completed += 1
            if state is not None:
                _save_state(
                    state,
                    {
                        "settings": settings,
                        "samples": samples,
                        "active": active,
                        "pairs": completed,
                        "seconds": earlier + time.perf_counter() - start,
                        "evaluations": evaluations_before + game.evaluations,
                        "blocks_run": blocks_before + game.blocks_run,
                    },
                )
            pbar.update(1)
            pbar.set_postfix(open=sum(active), evals=game.evaluations)
    if not any(active):
        stopped_by = "every unit within tol"
    return {
        "values": [estimate(s, resolution=resolution) for s in samples],
        "full": full,
        "pairs": completed,
        "stopped_by": stopped_by,
        "converged": n - sum(active),
        "evaluations": evaluations_before + game.evaluations,
        "blocks_run_share": (blocks_before + game.blocks_run)
        / max((evaluations_before + game.evaluations) * game._layers, 1),
        "seconds": earlier + time.perf_counter() - start,
        "resumed_from_pair": done,
        "truncate": truncate,
        "tol": tol,
        "interval": interval,
    }


def _load_state(path, settings: dict) -> dict | None:
    """The saved samples of an earlier run with the same settings (else None: a fresh start)."""
    import json

    if path is None or not Path(path).exists():
        return None
    try:
        saved = json.loads(Path(path).read_text())
    except ValueError:
        return None  # a damaged state is redone, not trusted
    same = saved.get("settings") == json.loads(json.dumps(settings, default=str))  # as saved: tuples are lists
    return saved if same else None


def _save_state(path, payload: dict) -> None:
    from econlm.runinfo import write_json

    write_json(path, payload)


def _half_width(samples: Sequence[float], interval: str, resolution: float = 0.0) -> float:
    e = estimate(samples, resolution=resolution)
    return e.ci95 if interval == "normal" else e.bernstein


def position_weights(n: int, truncate: str) -> list[float]:
    """The weight the pair estimator puts on each removal position (0 = removed first from the full model):
    a unit sits at a uniform position i of a permutation and at n-1-i of its reverse, and its pair sample
    averages the marginals at those of the two positions a walk reaches."""
    length = walk_length(n, truncate)
    weights = [0.0] * n
    for i in range(n):
        reached = sorted({p for p in (i, n - 1 - i) if p < length})
        for p in reached:
            weights[p] += 1 / (n * len(reached))
    return weights


def exact_values(game: Game, truncate: str = "none") -> list[float]:
    """The values :func:`shapley` estimates, by enumerating every coalition (2**n evaluations; tiny games)."""
    from itertools import combinations

    n = game.n
    if n > 14:
        raise ValueError(f"exact enumeration of {n} units needs 2**{n} evaluations; use shapley()")
    weights = position_weights(n, truncate)
    cache: dict[frozenset, float] = {}

    def v(kept: frozenset) -> float:
        if kept not in cache:
            cache[kept] = game.value([i in kept for i in range(n)])
        return cache[kept]

    values = []
    for u in range(n):
        others = [i for i in range(n) if i != u]
        total = 0.0
        for position, weight in enumerate(weights):
            if weight == 0:
                continue
            subsets = list(combinations(others, n - 1 - position))  # the others still present
            mean = sum(v(frozenset(s) | {u}) - v(frozenset(s)) for s in subsets) / len(subsets)
            total += weight * mean
        values.append(total)
    return values


def _pair_positions(n: int, truncate: str) -> int:
    """How many coalition sizes an interaction sample draws from (the pair removed within the walk's reach)."""
    return n - 1 if truncate == "none" else max(walk_length(n, truncate) - 1, 1)


def interactions(
    game: Game, pairs: Sequence[tuple[int, int]], *, samples: int = 16, truncate: str = "half", seed: int = 0
) -> list[Estimate]:
    """Shapley interaction index of each unit pair (i, j): the mean over coalitions S of the others of
    v(S+i+j) - v(S+i) - v(S+j) + v(S). S has n-2-p units, p uniform over the removal positions the walks
    reach (all of them for ``truncate="none"``: Grabisch's index), then a uniform subset of that size.
    Positive: complements (each is worth more with the other); negative: substitutes."""
    n = game.n
    generator = torch.Generator().manual_seed(seed)
    positions = _pair_positions(n, truncate)
    out = []
    for i, j in pairs:
        others = [u for u in range(n) if u not in (i, j)]
        draws = []
        for _ in range(samples):
            p = int(torch.randint(positions, (1,), generator=generator))
            chosen = torch.randperm(len(others), generator=generator)[: len(others) - p].tolist()
            kept = [False] * n
            for c in chosen:
                kept[others[c]] = True
            both = [k or u in (i, j) for u, k in enumerate(kept)]
            only_i = [k or u == i for u, k in enumerate(kept)]
            only_j = [k or u == j for u, k in enumerate(kept)]
            # In this order each evaluation changes one unit from the last: the cache reruns the fewest blocks.
            v_both, v_i, v_none, v_j = (game.value(c) for c in (both, only_i, kept, only_j))
            draws.append(v_both - v_i - v_j + v_none)
        out.append(estimate(draws))
    return out


def exact_interaction(game: Game, i: int, j: int, truncate: str = "none") -> float:
    """The interaction index :func:`interactions` estimates, by enumeration (tiny games)."""
    from itertools import combinations

    n = game.n
    others = [u for u in range(n) if u not in (i, j)]
    positions = _pair_positions(n, truncate)
    total = 0.0
    for p in range(positions):
        subsets = list(combinations(others, len(others) - p))
        acc = 0.0
        for s in subsets:
            base = [u in s for u in range(n)]
            both = [k or u in (i, j) for u, k in enumerate(base)]
            only_i = [k or u == i for u, k in enumerate(base)]
            only_j = [k or u == j for u, k in enumerate(base)]
            acc += game.value(both) - game.value(only_i) - game.value(only_j) + game.value(base)
        total += acc / len(subsets)
    return total / positions


# ---------------------------------------------------------------------------------------------------------
# Compute, returns, allocation


def unit_macs(model: nn.Module, units: Sequence[Unit], block: int, seq_len: float) -> list[float]:
    """MACs per token of each unit at ``seq_len`` keys per query: a head group pays its query heads' Q, O,
    score and value products and its key/value head's K and V; an FFN block its neurons' rows and columns.
    Summed over every unit this is the blocks' dense MACs per token."""
    from econlm.flops import Structure, unit_macs_per_token

    structure = Structure.of_model(model)
    out = []
    for unit in units:
        per = unit_macs_per_token(structure, unit.layer, seq_len)
        out.append(per["kv_group"] if unit.kind == "head" else block * per["ffn_neuron"])
    return out


def lorenz(values: Sequence[float]) -> list[float]:
    """Cumulative share of the total held by the poorest units (negative values count as zero)."""
    x = sorted(max(v, 0.0) for v in values)
    total = sum(x)
    acc, out = 0.0, [0.0]
    for v in x:
        acc += v
        out.append(acc / total if total > 0 else 0.0)
    return out


def gini(values: Sequence[float]) -> float:
    from econlm.metrics import gini as _gini

    return float(_gini(torch.tensor([max(v, 0.0) for v in values], dtype=torch.float64)))


def _most_valuable_per_layer(values: Sequence[float], units: Sequence[Unit]) -> list[int]:
    """The most valuable unit of each (layer, kind): what a market keeps first, since a layer cannot be emptied."""
    best: dict[tuple[int, str], int] = {}
    for u, unit in enumerate(units):
        key = (unit.layer, unit.kind)
        if key not in best or values[u] > values[best[key]]:
            best[key] = u
    return list(best.values())


def clear_market(values: Sequence[float], macs: Sequence[float], units: Sequence[Unit], budget: float) -> list[bool]:
    """Keep units by value per MAC, best first, while their MACs fit ``budget`` (a share of all units' MACs).

    Every layer keeps its most valuable head and FFN block first (a layer cannot lose all of either); a
    unit worth nothing or less is never bought. Returns one keep flag per unit."""
    if not 0 < budget <= 1:
        raise UserError(f"a market budget must be in (0, 1], not {budget}")
    total = sum(macs)
    kept = [False] * len(units)
    spent = 0.0
    for u in _most_valuable_per_layer(values, units):
        kept[u] = True
        spent += macs[u]
    for u in sorted(range(len(units)), key=lambda u: values[u] / macs[u], reverse=True):
        if kept[u] or values[u] <= 0:
            continue
        if spent + macs[u] <= budget * total + 1e-9:
            kept[u] = True
            spent += macs[u]
    return kept


def clear_market_latency(
    values: Sequence[float], units: Sequence[Unit], structure, table, budget: float, block: int
) -> list[bool]:
    """Keep units by value per second of predicted latency while the structure's latency fits ``budget`` (a
    share of the dense model's, as the latency table predicts it; :mod:`econlm.latency_table`).

    A unit's price is its marginal latency: what the layer's curve says one more kept K/V group (or FFN
    block) costs at the layer's current count. The curves are flat near the dense model and steep below a
    threshold, so prices change as units are bought; each purchase is the best value per marginal second
    at that moment (a unit costing nothing is bought first, by value). As :func:`clear_market`, every layer
    keeps its most valuable head and FFN block, and a unit worth nothing or less is never bought."""
    if not 0 < budget <= 1:
        raise UserError(f"a market budget must be in (0, 1], not {budget}")
    layers = structure.layers
    group = [structure.heads[i] // structure.kv_heads[i] for i in range(layers)]
    groups = [0] * layers  # kept K/V groups per layer
    neurons = [0] * layers  # kept FFN neurons per layer
    kinds = {u.kind for u in units}
    # A kind the market does not value stays whole.
    if "head" not in kinds:
        groups = list(structure.kv_heads)
    if "ffn" not in kinds:
        neurons = list(structure.ffn)

    def latency() -> float:
        return table.predict([g * k for g, k in zip(group, groups)], neurons)

    def marginal(u: int) -> float:
        unit = units[u]
        if unit.kind == "head":
            k = groups[unit.layer]
            return table.attention.at(k) - table.attention.at(k + 1)
        f = neurons[unit.layer]
        return table.ffn.at(f) - table.ffn.at(f + block)

    def buy(u: int) -> None:
        kept[u] = True
        if units[u].kind == "head":
            groups[units[u].layer] += 1
        else:
            neurons[units[u].layer] += block

    kept = [False] * len(units)
    for u in _most_valuable_per_layer(values, units):
        buy(u)

    def value_per_second(u: int) -> tuple[float, float]:
        cost = marginal(u)
        return (values[u] / cost if cost > 0 else math.inf, values[u])  # free units first, by value

    limit = budget * table.dense_seconds + 1e-12
    open_units = {u for u in range(len(units)) if not kept[u] and values[u] > 0}
    while open_units:
        u = max(open_units, key=value_per_second)
        open_units.discard(u)
        if latency() + marginal(u) <= limit:
            buy(u)
    return kept


def layer_scores(units: Sequence[Unit], values: Sequence[float], structure, block: int) -> list[dict[str, torch.Tensor]]:
    """Unit values as per-layer importance (:mod:`econlm.prune`'s format): a head group's value is shared
    evenly by its query heads and an FFN block's by its neurons, so sums over a group or a block give the
    unit's value back and a neuron's value per MAC is its block's. A kind the units do not cover is NaN."""
    out = []
    for layer in range(structure.layers):
        group = structure.heads[layer] // structure.kv_heads[layer]
        heads = torch.full((structure.heads[layer],), math.nan)
        neurons = torch.full((structure.ffn[layer],), math.nan)
        for unit, value in zip(units, values):
            if unit.layer != layer:
                continue
            if unit.kind == "head":
                heads[unit.index * group : (unit.index + 1) * group] = value / group
            else:
                neurons[unit.index * block : (unit.index + 1) * block] = value / block
        out.append({"heads": heads, "neurons": neurons})
    return out


def scores_of_market(result: dict, structure) -> list[dict[str, torch.Tensor]]:
    """:func:`layer_scores` from a market.json (``econlm market``'s output) of a model of ``structure``."""
    block = int(result.get("meta", {}).get("config", {}).get("block", 128))
    units = [Unit(row["kind"], row["layer"], row["index"]) for row in result["units"]]
    return layer_scores(units, [row["value"] for row in result["units"]], structure, block)


def plans_for(model: nn.Module, units: Sequence[Unit], kept: Sequence[bool], block: int):
    """The surgery plan that keeps exactly the kept units."""
    from econlm.flops import Structure
    from econlm.surgery import LayerPlan

    structure = Structure.of_model(model)
    plans = []
    for layer in range(structure.layers):
        group = structure.heads[layer] // structure.kv_heads[layer]
        keep_kv = list(range(structure.kv_heads[layer]))
        keep_neurons = list(range(structure.ffn[layer]))
        for unit, on in zip(units, kept):
            if unit.layer != layer or on:
                continue
            if unit.kind == "head":
                keep_kv.remove(unit.index)
            else:
                gone = set(range(unit.index * block, (unit.index + 1) * block))
                keep_neurons = [n for n in keep_neurons if n not in gone]
        plans.append(
            LayerPlan(
                keep_heads=[g * group + j for g in keep_kv for j in range(group)],
                keep_kv_heads=keep_kv,
                keep_neurons=keep_neurons,
            )
        )
    return plans
