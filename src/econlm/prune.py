"""Post-hoc structured pruning, the baseline incentive training has to beat.

Remove a given number of attention heads and FFN neurons per layer from a trained model, keeping the
most important ones, then (optionally) fine-tune briefly. Importance of a unit:

``magnitude``   the L2 norm of all weights that belong to it (its Q/K/V rows and output-projection
                columns for a head; its up/gate rows times its down column norm for a neuron);
``activation``  its mean |output| on calibration data (the o-projection input slice for a head, the
                down-projection input for a neuron).
``wanda``       Wanda-sp / FLAP's structured score: the sum, over the weights that read the unit's output, of
                |weight| times the L2 norm of that input feature over calibration tokens.
``fisher``      the empirical Fisher information of its mask variable on labelled calibration data (Kwon
                et al. 2022; see :mod:`econlm.fisher`), optionally followed by the least-squares rescaling
                of the units kept (``rescale=True``), their retraining-free repair.
``shapley``     its Shapley value in a market of the model's units (:mod:`econlm.market`), given as
                ``scores``: estimated elsewhere, on the task metric.

With grouped-query attention whole groups go (a key/value head and its query heads), ranked by their
summed importance.

How many units each layer loses is either given (a rival matched to an incentive model's per-layer
structure) or chosen by :func:`global_removal`: Kwon et al.'s setting, where the pruner spends a FLOPs
budget itself, removing across all layers the units that give up the least importance per MAC saved. That
needs importance on one scale in every layer and for heads and neurons alike, which ``fisher`` (a loss
sensitivity) and ``shapley`` (a value in the metric's units; the global allocation is then the market's
clearing by value per MAC) have; the others are per-layer rankings.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from econlm import arch
from econlm.fisher import fisher_importance, output_grams, repair_layer_by_layer, rescale_kept_units
from econlm.registry import Registry
from econlm.surgery import LayerPlan, apply_plan


@torch.no_grad()
def magnitude_importance(model: nn.Module, batches: list[dict] | None = None) -> list[dict[str, torch.Tensor]]:
    """L2 norm of each head's and neuron's weights (``batches`` is not needed: the criterion reads no data)."""
    fam = arch.family(model.config)
    shape = arch.shape(model.config)
    d = shape.head_dim
    out = []
    for block in arch.blocks(model):
        o_cols = arch.in_columns(block.get_submodule(fam.o)).float()  # (H*d, D)
        heads = o_cols.shape[0] // d
        head_sq = o_cols.view(heads, d, -1).pow(2).sum(dim=(1, 2))
        q = arch.out_rows(block.get_submodule(fam.q)).float()
        # GPT-2's fused c_attn: the head's Q, K and V rows; otherwise its Q rows (K/V heads may be shared).
        for rows in arch.split_fused_qkv(q, shape.hidden) if fam.qkv_fused else (q,):
            head_sq = head_sq + rows.view(heads, d, -1).pow(2).sum(dim=(1, 2))
        down = arch.in_columns(block.get_submodule(fam.ffn_down)).float()  # (F, D)
        up = arch.out_rows(block.get_submodule(fam.ffn_up)).float()  # (F, D)
        neuron = up.norm(dim=1) * down.norm(dim=1)
        if fam.ffn_gate:
            neuron = neuron * arch.out_rows(block.get_submodule(fam.ffn_gate)).float().norm(dim=1)
        out.append({"heads": head_sq.sqrt(), "neurons": neuron})
    return out


def activation_importance(model: nn.Module, batches: list[dict] | None) -> list[dict[str, torch.Tensor]]:
    """Mean |output| of each head and neuron on calibration batches."""
    from econlm.activations import unit_statistics

    if not batches:
        raise ValueError("activation importance needs calibration batches")
    return [
        {"heads": layer["heads_mean"], "neurons": layer["neurons_mean"]} for layer in unit_statistics(model, batches)
    ]


@torch.no_grad()
def wanda_importance(model: nn.Module, batches: list[dict] | None) -> list[dict[str, torch.Tensor]]:
    """Per unit: sum over the output projection's weights that read it of |W| x ||input feature||_2, the norm
    taken over the real tokens of the calibration batches (Wanda's score, summed over a structure)."""
    from econlm.activations import TokenMask

    if not batches:
        raise ValueError("Wanda importance needs calibration batches")
    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    tokens = TokenMask()
    squares: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def record(key):
        def hook(module, args):
            x = tokens.select(args[0]).double()
            squares[key] = squares.get(key, 0) + x.pow(2).sum(dim=0)

        return hook

    try:
        for i, block in enumerate(arch.blocks(model)):
            handles.append(block.get_submodule(fam.ffn_down).register_forward_pre_hook(record(("neurons", i))))
            handles.append(block.get_submodule(fam.o).register_forward_pre_hook(record(("heads", i))))
        for batch in batches:
            tokens.set(batch.get("attention_mask"))
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for i, block in enumerate(arch.blocks(model)):
        scores = {}
        for kind, module, group in (("neurons", fam.ffn_down, 1), ("heads", fam.o, head_dim)):
            weights = arch.in_columns(block.get_submodule(module)).double().abs()  # (in features, out)
            per_feature = weights.sum(dim=1) * squares[(kind, i)].sqrt()  # sum_j |W_jf| * ||x_f||
            scores[kind] = per_feature.view(-1, group).sum(dim=1).float()
        out.append(scores)
    return out


# Importance criteria: (model, calibration batches or None) -> per layer {"heads": (H,), "neurons": (F,)}.
IMPORTANCE = Registry(
    "importance",
    {
        "magnitude": magnitude_importance,
        "activation": activation_importance,
        "wanda": wanda_importance,
        "fisher": fisher_importance,
    },
)


def plan_by_importance(
    model: nn.Module, importance: list[dict[str, torch.Tensor]], remove_heads: list[int], remove_neurons: list[int]
) -> list[LayerPlan]:
    """Per layer, drop the given numbers of least important heads (whole GQA groups) and neurons.

    A head count that is not a whole number of groups rounds down to whole groups, and a request for every
    group (or every neuron) of a layer is cut to all but one: the most important group and neuron stay, since
    a layer cannot be emptied (:func:`econlm.compact.plan_removal` keeps one the same way). Ties (the neurons
    of one valued FFN block) go in index order."""
    shape = arch.shape(model.config)
    plans = []
    for i, scores in enumerate(importance):
        heads = scores["heads"].numel()
        kv_heads = heads * shape.kv_heads // shape.heads
        group = heads // kv_heads
        groups_to_drop = min(remove_heads[i] // group, kv_heads - 1)
        group_score = scores["heads"].view(kv_heads, group).sum(dim=1)
        drop_groups = set(torch.argsort(group_score, stable=True)[:groups_to_drop].tolist())
        keep_kv = [g for g in range(kv_heads) if g not in drop_groups]
        neurons = scores["neurons"].numel()
        drop_neurons = set(torch.argsort(scores["neurons"], stable=True)[: min(remove_neurons[i], neurons - 1)].tolist())
        plans.append(
            LayerPlan(
                keep_heads=[g * group + j for g in keep_kv for j in range(group)],
                keep_kv_heads=keep_kv,
                keep_neurons=[n for n in range(neurons) if n not in drop_neurons],
            )
        )
    return plans


# Importance on one scale across layers and unit kinds: a loss sensitivity (fisher) or a value in the metric's
# units (shapley: values a market estimated, given to prune as ``scores``).
GLOBAL_IMPORTANCE = ("fisher", "shapley")
GIVEN_IMPORTANCE = ("shapley",)  # not computed here: passed to prune as ``scores``


def value_per_mac(structure, scores: list[dict[str, torch.Tensor]], seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Per layer ``{"heads": (K/V groups,), "neurons": (F,)}``: each removable unit's importance over the MACs per
    token it costs at ``seq_len`` (a K/V group sums its query heads' importance)."""
    from econlm.flops import unit_macs_per_token

    out = []
    for layer, layer_scores in enumerate(scores):
        unit = unit_macs_per_token(structure, layer, seq_len)
        groups = layer_scores["heads"].view(structure.kv_heads[layer], -1).sum(dim=1)
        out.append({"heads": groups / unit["kv_group"], "neurons": layer_scores["neurons"] / unit["ffn_neuron"]})
    return out


def global_removal(
    structure, scores: list[dict[str, torch.Tensor]], target_block_macs: float, seq_len: int
) -> tuple[list[int], list[int]]:
    """Query heads and neurons to remove per layer so that the blocks' MACs fall to ``target_block_macs``.

    Every K/V group (with its query heads) and every neuron is a candidate priced by the MACs per token it
    costs at ``seq_len`` (:func:`econlm.flops.unit_macs_per_token`); candidates go cheapest in importance per
    MAC first, across all layers, until the target is met. A layer keeps at least one group and one neuron
    (it cannot be emptied). Within a layer this removes its least important units, the ones
    :func:`plan_by_importance` picks for the same counts. Greedy by ratio, a knapsack heuristic; Kwon et
    al. search the head/neuron split per FLOPs level, to a similar end.
    """
    from econlm.flops import dense_macs, unit_macs_per_token

    per_token = dense_macs(structure, seq_len)["macs"] / seq_len
    target = target_block_macs / seq_len
    candidates = []  # (importance per MAC, layer, "group"/"neuron", MACs per token, query heads)
    for layer, layer_scores in enumerate(scores):
        unit = unit_macs_per_token(structure, layer, seq_len)
        groups = structure.kv_heads[layer]
        size, group_cost = structure.heads[layer] // groups, unit["kv_group"]
        group_value = layer_scores["heads"].view(groups, size).sum(dim=1).tolist()
        candidates += [(v / group_cost, layer, "group", group_cost, size) for v in sorted(group_value)[: groups - 1]]
        neuron_value = sorted(layer_scores["neurons"].tolist())[: structure.ffn[layer] - 1]
        candidates += [(v / unit["ffn_neuron"], layer, "neuron", unit["ffn_neuron"], 0) for v in neuron_value]
    remove_heads, remove_neurons = [0] * len(scores), [0] * len(scores)
    for _, layer, kind, cost, size in sorted(candidates, key=lambda c: c[0]):
        if per_token <= target:
            break
        if kind == "group":
            remove_heads[layer] += size
        else:
            remove_neurons[layer] += 1
        per_token -= cost
    return remove_heads, remove_neurons


def _check_covered(scores, remove_heads: list[int] | None, remove_neurons: list[int] | None) -> None:
    """Given importance that leaves units unvalued (NaN: a market without FFN blocks) cannot choose among them:
    refused where units of that kind go (everywhere, for a global allocation)."""
    for layer, layer_scores in enumerate(scores):
        for kind, counts in (("heads", remove_heads), ("neurons", remove_neurons)):
            if (counts is None or counts[layer]) and torch.isnan(layer_scores[kind]).any():
                what = "attention heads" if kind == "heads" else "FFN neurons"
                raise ValueError(f"the importance given values no {what} of layer {layer}, and some must be ranked")


def prune(
    model: nn.Module,
    remove_heads: list[int] | None,
    remove_neurons: list[int] | None,
    importance: str = "magnitude",
    batches: list[dict] | None = None,
    rescale: bool | str = False,
    target_block_macs: float | None = None,
    seq_len: int = 128,
    scores: list[dict[str, torch.Tensor]] | None = None,
) -> list[LayerPlan]:
    """Remove units in place; returns the plans applied. With ``rescale`` the kept units are rescaled by least
    squares to reproduce each layer's output on ``batches`` (Kwon et al.'s repair, no training): ``True`` or
    ``"gram"`` solves every layer on the dense model's inputs, ``"layerwise"`` solves them in order on the pruned
    model's own inputs, against the dense model's sublayer sums, as Kwon et al. do.

    Either give the counts per layer, or leave them None and give ``target_block_macs`` (the blocks' MACs of
    one ``seq_len``-token sequence to fall to): :func:`global_removal` then spends the budget.

    ``scores`` gives the importance instead of computing it (``importance`` then names where it came from,
    such as ``shapley`` for a market's values, :func:`econlm.market.scores_of_market`)."""
    if scores is None:
        if importance in GIVEN_IMPORTANCE:
            raise ValueError(f"{importance} importance is not computed here: pass its values as scores")
        scores = IMPORTANCE[importance](model, batches)
    if remove_heads is None:
        from econlm.flops import Structure

        if importance not in GLOBAL_IMPORTANCE or target_block_macs is None:
            raise ValueError(
                f"a global allocation needs importance on one scale ({', '.join(GLOBAL_IMPORTANCE)}) and a target_block_macs"
            )
        _check_covered(scores, None, None)
        remove_heads, remove_neurons = global_removal(Structure.of_model(model), scores, target_block_macs, seq_len)
    _check_covered(scores, remove_heads, remove_neurons)
    plans = plan_by_importance(model, scores, remove_heads, remove_neurons)
    repair = _repair_of(rescale)
    if repair and not batches:
        raise ValueError("least-squares rescaling needs calibration batches")
    grams = output_grams(model, batches) if repair == "gram" else None  # the dense model's: what to reproduce
    teacher = copy.deepcopy(model) if repair == "layerwise" else None
    apply_plan(model, plans)
    if grams is not None:
        rescale_kept_units(model, plans, grams)
    if teacher is not None:
        # An encoder's sequence classification head reads the last layer's first token and nothing else.
        pooled = not arch.is_decoder(model.config) and type(model).__name__.endswith("ForSequenceClassification")
        repair_layer_by_layer(model, teacher, batches, last_layer_first_token=pooled)
    return plans


REPAIRS = ("gram", "layerwise")  # rescale=True is "gram", the repair every earlier result used


def _repair_of(rescale: bool | str) -> str | None:
    """``None``, ``"gram"`` (each layer on the dense model's inputs, :func:`rescale_kept_units`) or
    ``"layerwise"`` (in order, on the pruned model's own inputs, :func:`repair_layer_by_layer`)."""
    if rescale is False or rescale is None:
        return None
    if rescale is True:
        return "gram"
    if rescale not in REPAIRS:
        raise ValueError(f"unknown rescaling {rescale!r}; valid: true, false, {', '.join(REPAIRS)}")
    return rescale
