"""Post-hoc pruning: removes the requested numbers of the least important units."""

import pytest
import torch

from econlm.flops import Structure
from econlm.prune import magnitude_importance, prune
from tests.conftest import padded_batch, tiny_model


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_prune_removes_requested_counts(family, importance):
    model = tiny_model(family)
    batch = padded_batch(family)
    prune(model, [2, 1], [16, 32], importance, [batch])
    structure = Structure.of_model(model)
    if family == "llama":  # groups of 2 query heads: removing 2 drops one group, removing 1 drops none
        assert structure.heads == (2, 4) and structure.kv_heads == (1, 2)
    else:
        assert structure.heads == (2, 3)
    assert structure.ffn == (48, 32)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()


def test_magnitude_pruning_keeps_the_largest_unit():
    model = tiny_model("bert")
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 7] *= 100  # neuron 7 is now by far the largest
        model.encoder.layer[0].output.dense.weight[:, 3] = 0  # neuron 3 the smallest
    scores = magnitude_importance(model)
    assert int(scores[0]["neurons"].argmax()) == 7 and int(scores[0]["neurons"].argmin()) == 3
    plans = prune(model, [0, 0], [63, 0])
    assert plans[0].keep_neurons == [7]


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_pruning_every_unit_of_a_layer_keeps_the_most_important_group_and_neuron(family):
    """A request to remove all heads (K/V groups) or all neurons of a layer is cut to all but one: the most
    important group and neuron stay, and the model still runs."""
    from econlm.prune import plan_by_importance

    model = tiny_model(family)
    scores = magnitude_importance(model)
    plans = plan_by_importance(model, scores, [4, 0], [64, 0])
    group = 2 if family == "llama" else 1
    best_group = int(scores[0]["heads"].view(-1, group).sum(dim=1).argmax())
    assert plans[0].keep_kv_heads == [best_group]
    assert plans[0].keep_heads == [best_group * group + j for j in range(group)]
    assert plans[0].keep_neurons == [int(scores[0]["neurons"].argmax())]
    assert len(plans[1].keep_heads) == 4 and len(plans[1].keep_neurons) == 64
    prune(model, [4, 0], [64, 0])
    batch = padded_batch(family)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()
    assert Structure.of_model(model).ffn == (1, 64)


def test_a_global_allocation_spends_the_flops_on_the_least_importance_per_mac_across_layers():
    """Hand-computed: hidden 32, head_dim 8, 16 tokens. A head (its own K/V group) costs 2*32*8 + 2*16*8 =
    768 MACs per token for its query side plus 2*32*8 = 512 for key and value: 1280. A neuron costs 2*32 = 64.
    Layer 1's neurons are worth 0.01 each (1.6e-4 per MAC), layer 0's heads 1..4 (7.8e-4 per MAC and up),
    layer 0's neurons 1.0 (0.016 per MAC). So the budget goes first to 63 of layer 1's neurons (one stays: a
    layer cannot be emptied), then to layer 0's heads in order of importance."""
    from econlm.flops import dense_macs
    from econlm.prune import global_removal

    structure = Structure(
        kind="encoder", hidden=32, head_dim=8, gated_ffn=False, heads=(4, 4), kv_heads=(4, 4), ffn=(64, 64)
    )
    scores = [
        {"heads": torch.tensor([3.0, 1.0, 4.0, 2.0]), "neurons": torch.ones(64)},
        {"heads": torch.tensor([10.0, 20.0, 30.0, 40.0]), "neurons": torch.full((64,), 0.01)},
    ]
    dense = dense_macs(structure, 16)["macs"] / 16
    exactly_one_head = (dense - 63 * 64 - 1280) * 16
    assert global_removal(structure, scores, exactly_one_head, 16) == ([1, 0], [0, 63])
    one_mac_more = (dense - 63 * 64 - 1280 - 1) * 16
    assert global_removal(structure, scores, one_mac_more, 16) == ([2, 0], [0, 63])
    assert global_removal(structure, scores, dense * 16, 16) == ([0, 0], [0, 0])
    # An unreachable target stops at one group and one neuron per layer.
    assert global_removal(structure, scores, 0.0, 16) == ([3, 3], [63, 63])


def test_a_global_allocation_removes_whole_groups_of_a_gqa_model():
    """Groups of 2 query heads: a group costs 2 query heads plus one K/V head, and goes whole."""
    from econlm.flops import dense_macs, unit_macs_per_token
    from econlm.prune import global_removal

    structure = Structure(
        kind="decoder", hidden=32, head_dim=8, gated_ffn=True, heads=(4, 4), kv_heads=(2, 2), ffn=(64, 64)
    )
    scores = [
        {"heads": torch.tensor([0.1, 0.1, 5.0, 5.0]), "neurons": torch.ones(64)},
        {"heads": torch.ones(4), "neurons": torch.ones(64)},
    ]
    unit = unit_macs_per_token(structure, 0, 16)
    group = 2 * unit["query_head"] + unit["kv_head"]
    target = (dense_macs(structure, 16)["macs"] / 16 - group) * 16
    assert global_removal(structure, scores, target, 16) == ([2, 0], [0, 0])


def test_market_values_rank_groups_and_blocks_and_spend_a_budget_like_the_market():
    """A market's values as importance (econlm.market.layer_scores): a K/V group's value is shared by its 2
    query heads, an FFN block's by its 16 neurons. Layer 0's block 1 is the only unit worth less than nothing,
    so a global allocation that may spend all but one block's MACs (plus half a neuron's, so rounding cannot
    tip it) removes exactly that block; matched counts remove the least valuable group of a layer."""
    from econlm import market
    from econlm.flops import dense_macs, unit_macs_per_token

    values = {
        ("head", 0): [0.5, 2.0],
        ("ffn", 0): [1.0, -0.2, 3.0, 0.4],
        ("head", 1): [1.5, 1.0],
        ("ffn", 1): [2.0, 2.0, 2.0, 2.0],
    }
    units, flat = [], []
    for (kind, layer), vs in values.items():
        for index, v in enumerate(vs):
            units.append(market.Unit(kind, layer, index))
            flat.append(v)
    model = tiny_model("llama")
    structure = Structure.of_model(model)
    scores = market.layer_scores(units, flat, structure, block=16)
    assert scores[0]["heads"].tolist() == pytest.approx([0.25, 0.25, 1.0, 1.0])
    assert scores[0]["neurons"][16:32].tolist() == pytest.approx([-0.2 / 16] * 16)
    saved = {"units": [{"kind": u.kind, "layer": u.layer, "index": u.index, "value": v} for u, v in zip(units, flat)]}
    saved["meta"] = {"config": {"block": 16}}
    for a, b in zip(market.scores_of_market(saved, structure), scores):
        assert torch.equal(a["heads"], b["heads"]) and torch.equal(a["neurons"], b["neurons"])

    neuron = unit_macs_per_token(structure, 0, 16)["ffn_neuron"]
    target = (dense_macs(structure, 16)["macs"] / 16 - 15.5 * neuron) * 16
    plans = prune(tiny_model("llama"), None, None, "shapley", target_block_macs=target, seq_len=16, scores=scores)
    assert plans[0].keep_neurons == list(range(16)) + list(range(32, 64))
    assert plans[0].keep_kv_heads == [0, 1] and len(plans[1].keep_neurons) == 64

    plans = prune(tiny_model("llama"), [2, 2], [0, 0], "shapley", scores=scores)
    assert [p.keep_kv_heads for p in plans] == [[1], [0]]


def test_given_importance_must_value_the_units_it_removes():
    from econlm import market

    model = tiny_model("bert")
    heads_only = [market.Unit("head", layer, h) for layer in range(2) for h in range(4)]
    scores = market.layer_scores(heads_only, [float(i) for i in range(8)], Structure.of_model(model), block=16)
    assert torch.isnan(scores[0]["neurons"]).all()
    with pytest.raises(ValueError, match="values no FFN neurons of layer 0"):
        prune(model, [1, 0], [16, 0], "shapley", scores=scores)
    with pytest.raises(ValueError, match="pass its values as scores"):
        prune(model, [1, 0], [0, 0], "shapley")
    prune(model, [1, 0], [0, 0], "shapley", scores=scores)  # heads alone: their values suffice
    assert Structure.of_model(model).heads == (3, 4)
