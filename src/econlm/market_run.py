"""``econlm market``: value every head and FFN block of a fine-tuned model on a task, price it by its compute,
and clear the market at compute budgets, against activation and Fisher post-hoc pruning at the same
structure.

The dev split is shuffled once (by ``seed``) and cut in two: the first ``examples`` measure the values (the
game), the rest (*held out*) score every pruned model, so no ranking is scored on the examples it was
chosen on. Activation and Fisher importance are computed on the same examples as the values.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from econlm.errors import UserError
from econlm.userdata import DataFields

KINDS = ("head", "ffn")
VALUES = ("metric", "loss")
MIN_HELD_OUT = 100  # dev examples left to score pruned models on


def needed_examples(tol: float) -> int:
    """Dev examples an interval of half-width ``tol`` needs: one example moves an accuracy-type metric by
    1/n, which must be at most half of ``tol`` for values at that precision to mean anything."""
    return math.ceil(2 / tol)


def _budgets(value) -> tuple[float, ...]:
    """--budgets as numbers: "0.8,0.6" or a sequence of numbers; anything else is one line."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(float(b) for b in items)
    except (TypeError, ValueError):
        shown = value if isinstance(value, str) else ",".join(map(str, items))
        raise UserError(f"--budgets takes comma-separated numbers in (0, 1], such as 0.8,0.6,0.5, not {shown!r}") from None


@dataclass(frozen=True, kw_only=True)
class MarketConfig(DataFields):
    model: str
    task: str
    out: str = "runs/market"
    units: tuple[str, ...] = KINDS
    block: int = 128  # FFN neurons per block (MiniLM: 1536 / 128 = 12 blocks a layer, as many as its heads)
    examples: int = 512  # dev examples the values are measured on
    value: str = "metric"  # the task metric, or "loss": minus the mean task loss
    pairs: int = 200  # antithetic permutation pairs at most
    tol: float = 0.01  # a unit stops being sampled when its 95% half-width is this small
    interval: str = "normal"  # the half-width early stopping reads: normal approximation, or empirical Bernstein
    truncate: str = "half"
    max_minutes: float | None = 60.0
    interaction_top: int = 6  # pairs among this many most valuable heads
    interaction_samples: int = 24
    budgets: tuple[float, ...] = (0.8, 0.6, 0.5)  # shares of the blocks' dense MACs the market may spend
    # Score the market's allocations and the half-heads rankings against activation and Fisher on held-out
    # examples; a sweep that only needs the values (its own rivals are trained and scored) turns it off.
    compare: bool = True
    # Price units by this latency table's marginal seconds (econlm latency-table) instead of MACs: budgets are then
    # shares of the dense model's predicted latency.
    latency_table: str | None = None
    batch_size: int = 64
    max_length: int = 128
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        from econlm.market import walk_length

        units = tuple(self.units.split(",")) if isinstance(self.units, str) else tuple(self.units)
        budgets = _budgets(self.budgets)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "budgets", budgets)
        if not units or any(u not in KINDS for u in units):
            raise UserError(f"--units takes head, ffn or both (comma-separated), not {','.join(units) or 'nothing'}")
        for b in budgets:
            if not 0 < b <= 1:
                raise UserError(f"a budget must be in (0, 1] (a share of the dense compute), not {b}")
        if self.pairs < 1:
            raise UserError("--pairs must be at least 1: zero permutations estimate nothing")
        if self.block < 1:
            raise UserError(f"--block must be a positive number of FFN neurons, not {self.block}")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise UserError(f"--tol must be a positive half-width in the metric's units, not {self.tol}")
        if self.examples < needed_examples(self.tol):
            raise UserError(
                f"--examples {self.examples} is too few for --tol {self.tol}: one example moves an accuracy-type "
                f"metric by 1/{self.examples}, more than half the interval; use at least {needed_examples(self.tol)}"
            )
        if self.value not in VALUES:
            raise UserError(f"--value must be one of {', '.join(VALUES)}, not {self.value!r}")
        walk_length(2, self.truncate)  # checks the name
        from econlm.market import INTERVALS

        if self.interval not in INTERVALS:
            raise UserError(f"--interval must be one of {', '.join(INTERVALS)}, not {self.interval!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise UserError(f"--max-minutes must be positive (the time the estimate may take), not {self.max_minutes}")
        if self.interaction_top == 1 or self.interaction_top < 0:
            raise UserError("--interaction-top must be 0 (no interactions) or at least 2 heads")


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass
class _Split:
    batches: list[dict]  # model inputs, length-sorted
    order: list[int]  # example index of each row of the concatenated batches
    labels: list
    examples: list
    mean_tokens: float


def _split(loaded, task, examples, max_length: int, batch_size: int, labelled: bool = False) -> _Split:
    import torch

    from econlm import evaluate

    tokenizer = loaded.tokenizer
    texts_b = [e.text_b for e in examples] if examples[0].text_b is not None else None
    ids, types, _ = evaluate.encode(tokenizer, [e.text_a for e in examples], texts_b, max_length)
    batches, order = [], []
    for indices, batch in evaluate._padded_batches(tokenizer, ids, types, batch_size):
        batch = dict(batch)
        if labelled:
            dtype = torch.float32 if task.kind == "regression" else torch.long
            batch["labels"] = torch.tensor([examples[i].label for i in indices], dtype=dtype)
        batches.append(batch)
        order += indices
    return _Split(batches, order, [e.label for e in examples], examples, sum(len(x) for x in ids) / len(ids))


def _scorer(task, split: _Split, value: str):
    """The game's value of the model's logits on ``split``: the task metric, or minus the mean task loss."""
    import torch

    from econlm.evaluate import task_metrics

    labels = [split.labels[i] for i in split.order]
    regression = task.kind == "regression"

    def score(logits: list) -> float:
        out = torch.cat(logits).float()
        if value == "loss":
            target = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
            if regression:
                loss = torch.nn.functional.mse_loss(out.squeeze(-1), target)
            else:
                loss = torch.nn.functional.cross_entropy(out, target)
            return -float(loss)
        predictions = out.squeeze(-1).tolist() if regression else out.argmax(-1).tolist()
        return task_metrics(task, predictions, labels)[task.metric]

    return score


def _held_out_score(model, split: _Split, task) -> float:
    import torch

    with torch.no_grad():
        logits = [model(**b).logits for b in split.batches]
    return _scorer(task, split, "metric")(logits)


# ---------------------------------------------------------------------------------------------------------
# The run


def run_market(config: MarketConfig, loaded=None, progress: bool = True) -> dict:
    """Values, returns, interactions and market-clearing allocations; returns what market.json holds."""
    import torch

    from econlm import data, evaluate, market
    from econlm.models import check_spec, load_model
    from econlm.runinfo import run_metadata
    from econlm.userdata import spec_of

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    task = data.get_task(config.task, spec_of(config))
    if task.is_lm:
        raise UserError(f"econlm market scores GLUE-style tasks with a task head; {task.name} is language modelling")
    examples = data.load_examples(task, "dev", config.data_dir)
    random.Random(config.seed).shuffle(examples)
    held_out_needed = MIN_HELD_OUT if config.compare else 0  # only the comparisons score held-out examples
    if len(examples) < config.examples + held_out_needed:
        room = len(examples) - held_out_needed
        if room < needed_examples(config.tol):  # fewer examples would break --tol's own floor: say what does fit
            raise UserError(
                f"{task.name} has {len(examples)} dev examples: too few for --tol {config.tol} (needs "
                f"{needed_examples(config.tol)} for the game) plus {held_out_needed} held out to score pruned models "
                f"on; use --tol {2 / max(room, 1):.3g} or larger"
            )
        raise UserError(
            f"{task.name} has {len(examples)} dev examples; --examples {config.examples} leaves fewer than "
            f"{held_out_needed} to score pruned models on: use --examples {room} or fewer"
        )
    if loaded is None:
        check_spec(config.model)
        loaded = load_model(config.model)
    method = evaluate.scoring_method(task, loaded.head)
    if not method.endswith("-head"):
        raise UserError(
            f"econlm market needs a model fine-tuned on {task.name} (a task head); "
            f"train one with `econlm train --model {config.model} --task {task.name}` and pass its folder"
        )
    model = loaded.model.eval()
    # A missing, malformed or foreign table stops here, before the sampling.
    table = _table(config, model) if config.compare else None
    game_split = _split(loaded, task, examples[: config.examples], config.max_length, config.batch_size, labelled=True)
    held_out = _split(loaded, task, examples[config.examples :], config.max_length, config.batch_size) if config.compare else None
    units = market.units_of(model, config.units, config.block)
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in game_split.batches]
    game = market.Game(model, inputs, units, _scorer(task, game_split, config.value), config.block)
    max_seconds = None if config.max_minutes is None else 60 * config.max_minutes
    Path(config.out).mkdir(parents=True, exist_ok=True)  # the estimator's saved samples live there
    result = market.shapley(
        game,
        pairs=config.pairs,
        tol=config.tol,
        truncate=config.truncate,
        seed=config.seed,
        max_seconds=max_seconds,
        interval=config.interval,
        state=Path(config.out) / "shapley_state.json",
        key=_game_key(config),
        resolution=1 / config.examples if task.kind == "classification" and config.value == "metric" else 0.0,
        progress=progress,
    )
    if result["pairs"] == 0:
        raise UserError(f"no permutation pair finished within --max-minutes {config.max_minutes}; allow more time")
    values = [e.mean for e in result["values"]]
    macs = market.unit_macs(model, units, config.block, game_split.mean_tokens)
    out = {
        "task": task.name,
        "metric": task.metric,
        "value": config.value,
        "value_definition": (
            f"{task.metric} on {config.examples} dev examples"
            if config.value == "metric"
            else f"minus the mean task loss on {config.examples} dev examples"
        ),
        "full_value": result["full"],
        "units": [_unit_row(u, e, m) for u, e, m in zip(units, result["values"], macs)],
        "estimator": {k: v for k, v in result.items() if k not in ("values", "full")},
        "compute": {
            "unit": "MACs per token (FLOPs = 2 x MACs)",
            "seq_len": game_split.mean_tokens,
            "counted": "a head group: its query heads' Q, O, score and value products and its K/V head's K and V "
            f"at the dev subset's mean length; an FFN block: {config.block} neurons' up (and gate) rows and down columns",
        },
        "inequality": _inequality(units, values, macs),
        "costly_low_return": _costly_low_return(units, values, macs),
    }
    out["interactions"] = _interactions(game, units, values, config)
    out["allocations"], out["head_ranking_at_half"] = [], {}
    out["priced_by"] = "latency" if table is not None else "MACs"  # no comparison: nothing is priced by the table
    if config.compare:
        importance = _importance(model, game_split)
        out["allocations"] = _allocations(loaded, task, held_out, units, values, macs, config, importance, table, progress)
        out["head_ranking_at_half"] = _half_heads(loaded, task, held_out, units, values, importance, config.block)
    out["meta"] = run_metadata(seed=config.seed, config=asdict(config))
    out["meta"].update(
        {
            "model": config.model,
            "held_out_examples": len(held_out.examples) if held_out else 0,
            "seconds": time.perf_counter() - started,
            "threads": torch.get_num_threads(),
        }
    )
    return out


def _game_key(config: MarketConfig) -> dict:
    """What defines the game, so saved samples are reused only for the same one: the model (path and weights'
    modification time), the data and the value."""
    model = Path(config.model)
    stamps = {p.name: p.stat().st_mtime_ns for p in sorted(model.glob("*.safetensors"))} if model.is_dir() else {}
    fields = ("model", "task", "value", "examples", "max_length", "seed", "data_dir", "block", "units", "batch_size")
    from econlm.userdata import DATA_FIELDS

    return {**{k: getattr(config, k) for k in fields + DATA_FIELDS}, "weights": stamps}


def _unit_row(unit, estimate, macs: float) -> dict:
    return {
        "name": unit.name,
        "kind": unit.kind,
        "layer": unit.layer,
        "index": unit.index,
        **estimate.to_json(),
        "macs_per_token": macs,
        "value_per_mmac": estimate.mean / macs * 1e6,
    }


def _inequality(units, values, macs) -> dict:
    from econlm import market

    out = {}
    for kind in ("all", *KINDS):
        chosen = [i for i, u in enumerate(units) if kind == "all" or u.kind == kind]
        if not chosen:
            continue
        v = [values[i] for i in chosen]
        c = [macs[i] for i in chosen]
        out[kind] = {
            "units": len(chosen),
            "negative_value": sum(x < 0 for x in v),
            "gini_value": market.gini(v),
            "gini_compute": market.gini(c),
            "lorenz_value": market.lorenz(v),
            "lorenz_compute": market.lorenz(c),
            "note": "Gini and Lorenz of values count negative values as zero (they hold no share of the value)",
        }
    return out


def _costly_low_return(units, values, macs, n: int = 10) -> list[dict]:
    """The units that cost the most per unit of value returned: lowest value per MAC first."""
    order = sorted(range(len(units)), key=lambda i: values[i] / macs[i])[:n]
    return [{"name": units[i].name, "value": values[i], "macs_per_token": macs[i]} for i in order]


def _interactions(game, units, values, config: MarketConfig) -> dict:
    from econlm import market

    heads = [i for i, u in enumerate(units) if u.kind == "head"]
    top = sorted(heads, key=lambda i: values[i], reverse=True)[: config.interaction_top]
    if len(top) < 2:
        return {"heads": [], "pairs": []}
    pairs = [(a, b) for k, a in enumerate(top) for b in top[k + 1 :]]
    started = time.perf_counter()
    estimates = market.interactions(
        game, pairs, samples=config.interaction_samples, truncate=config.truncate, seed=config.seed + 1
    )
    return {
        "heads": [units[i].name for i in top],
        "pairs": [{"a": units[a].name, "b": units[b].name, **e.to_json()} for (a, b), e in zip(pairs, estimates)],
        "definition": "Shapley interaction index: mean of v(S+a+b) - v(S+a) - v(S+b) + v(S) over coalitions S of "
        "the other units"
        + (" holding at least half of all units (truncated like the values)" if config.truncate == "half" else "")
        + " (> 0: complements, < 0: substitutes)",
        "seconds": time.perf_counter() - started,
    }


def _dense_share(model, config: MarketConfig, dense_macs_total: float) -> float:
    from econlm.flops import Structure, dense_macs

    return dense_macs(Structure.of_model(model), config.max_length, include_head=True)["macs"] / dense_macs_total


def _importance(model, game_split) -> dict:
    """Activation and Fisher importance on the examples the values were measured on."""
    from econlm.prune import IMPORTANCE

    return {
        "activation": IMPORTANCE["activation"](model, [_inputs(b) for b in game_split.batches]),
        "fisher": IMPORTANCE["fisher"](model, game_split.batches),
    }


def _allocations(loaded, task, held_out, units, values, macs, config, importance, table, progress) -> list[dict]:
    """At each budget: the market's choice (priced by MACs, or by ``table``'s latency when given), and
    activation / Fisher choosing the same number of units per layer; each compacted, scored on the held-out
    examples with no retraining."""
    import copy

    from econlm import market
    from econlm.flops import Structure, dense_macs
    from econlm.progress import bar
    from econlm.prune import plan_by_importance
    from econlm.surgery import apply_plan

    model = loaded.model
    structure = Structure.of_model(model)
    dense_total = dense_macs(structure, config.max_length, include_head=True)["macs"]
    rows = [{"budget": 1.0, "method": "dense", "score": _held_out_score(model, held_out, task), "dense_share": 1.0}]
    with bar(total=len(config.budgets) * 3, desc="market allocations", unit="model", enabled=progress) as pbar:
        for budget in config.budgets:
            if table is None:
                kept = market.clear_market(values, macs, units, budget)
            else:
                kept = market.clear_market_latency(values, units, structure, table, budget, config.block)
            plans = market.plans_for(model, units, kept, config.block)
            remove_heads = [structure.heads[i] - len(p.keep_heads) for i, p in enumerate(plans)]
            remove_neurons = [structure.ffn[i] - len(p.keep_neurons) for i, p in enumerate(plans)]
            candidates = {"market": plans}
            for name, scores in importance.items():
                candidates[name] = plan_by_importance(model, scores, remove_heads, remove_neurons)
            for name, chosen in candidates.items():
                pruned = copy.deepcopy(model)
                apply_plan(pruned, chosen)
                rows.append(
                    {
                        "budget": budget,
                        "method": name,
                        "score": _held_out_score(pruned, held_out, task),
                        "dense_share": _dense_share(pruned, config, dense_total),
                        "heads_removed": sum(remove_heads),
                        "neurons_removed": sum(remove_neurons),
                    }
                )
                if table is not None:  # what the table predicts for this structure, as the budget counts it
                    kept_structure = Structure.of_model(pruned)
                    rows[-1]["predicted_latency_share"] = 1 / table.predicted_speedup(
                        kept_structure.heads, kept_structure.ffn
                    )
                pbar.update(1)
    return rows


def _table(config: MarketConfig, model):
    """The latency table that prices units, checked against the model (None: MACs price them)."""
    if config.latency_table is None:
        return None
    from econlm.latency_table import check_table, load_table

    table = load_table(config.latency_table)
    check_table(table, model.config, config.latency_table)
    return table


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _half_heads(loaded, task, held_out, units, values, importance, block: int) -> dict:
    """Half the heads removed, no retraining: the Shapley ranking against activation and Fisher importance,
    all removing the same number of heads in each layer (the Shapley ranking's global choice), and all
    removing half of each layer's heads."""
    import copy

    from econlm.flops import Structure
    from econlm.market import layer_scores
    from econlm.prune import plan_by_importance
    from econlm.surgery import apply_plan

    model = loaded.model
    structure = Structure.of_model(model)
    head_units = [i for i, u in enumerate(units) if u.kind == "head"]
    if not head_units:
        return {}
    group = [h // g for h, g in zip(structure.heads, structure.kv_heads)]
    # No neuron is removed here, so FFN values (NaN when the game had no FFN blocks) are never ranked.
    scores = {"shapley": layer_scores(units, values, structure, block), **importance}
    groups = [structure.kv_heads[i] for i in range(structure.layers)]
    half = sum(groups) // 2
    order = sorted(head_units, key=lambda i: values[i])
    per_layer = [0] * structure.layers
    for i in order:  # the globally least valuable half, keeping one group per layer
        if sum(per_layer) == half:
            break
        if per_layer[units[i].layer] < groups[units[i].layer] - 1:
            per_layer[units[i].layer] += 1
    layouts = {
        "shapley's global choice": [n * g for n, g in zip(per_layer, group)],
        "half of each layer": [(k // 2) * g for k, g in zip(groups, group)],
    }
    out = {
        "heads_removed": {layout: sum(counts) for layout, counts in layouts.items()},
        "of": sum(structure.heads),
        "note": "in both layouts every ranking removes the same number of heads in each layer; the first layout's "
        "counts come from the Shapley values, so there activation and Fisher compete only on which heads within a layer",
        "rows": [],
    }
    for layout, remove_heads in layouts.items():
        for name, s in scores.items():
            pruned = copy.deepcopy(model)
            apply_plan(pruned, plan_by_importance(pruned, s, remove_heads, [0] * structure.layers))
            out["rows"].append({"layout": layout, "ranking": name, "score": _held_out_score(pruned, held_out, task)})
    return out


def save_market(result: dict, out: str | Path) -> dict[str, Path]:
    """market.json and its figures in ``out``."""
    from econlm import plots
    from econlm.runinfo import write_json

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "market.json"}
    write_json(paths["json"], result)
    for name, fig in plots.market_figures(result).items():
        paths[name] = folder / f"{name}.png"
        plots.save_figure(fig, paths[name])
    return paths


def market_summary(result: dict) -> str:
    """A few lines for the terminal."""
    est = result["estimator"]
    top = sorted(result["units"], key=lambda u: u["value"], reverse=True)[:5]
    lines = [
        f"{len(result['units'])} units valued on {result['value_definition']} (full model {result['full_value']:.4f}); "
        f"{est['pairs']} permutation pairs, {est['evaluations']} evaluations, {est['seconds'] / 60:.1f} min "
        f"({est['stopped_by']}; {est['converged']} units within ±{est['tol']})",
        "most valuable: " + ", ".join(f"{u['name']} {u['value']:+.4f}±{u['ci95']:.4f}" for u in top),
    ]
    for row in result["allocations"]:
        if row["method"] != "dense":
            lines.append(
                f"budget {row['budget']:.2f} {row['method']:<10} held-out {result['metric']} {row['score']:.4f} "
                f"at {row['dense_share']:.1%} of dense MACs"
            )
    return "\n".join(lines)


__all__ = ["MarketConfig", "run_market", "save_market", "market_summary", "needed_examples"]
