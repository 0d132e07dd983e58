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
