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
