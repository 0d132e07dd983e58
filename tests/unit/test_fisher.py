"""Fisher importance of unit masks and least-squares rescaling, against hand computations."""

import pytest
import torch

from econlm import arch
from econlm.fisher import fisher_importance, mask_hooks, solve_scales
from econlm.prune import prune
from tests.conftest import padded_batch, tiny_model


def _labelled(family="bert", seed=1):
    batch = padded_batch(family, seed=seed)
    batch["labels"] = torch.tensor([0, 1, 1])
    return batch


def test_fisher_is_the_sum_of_squared_per_example_mask_gradients():
    model = tiny_model("bert", head="seq-cls")
    batch = _labelled()
    fisher = fisher_importance(model, [batch])
    # The same from three one-example batches: per-example gradients, padding dropped.
    singles = []
    for i, length in enumerate((11, 7, 3)):
        one = {k: (v[i : i + 1, :length] if v.dim() == 2 else v[i : i + 1]) for k, v in batch.items()}
        singles.append(fisher_importance(model, [one]))
    for layer in range(2):
        for kind in ("heads", "neurons"):
            summed = sum(s[layer][kind] for s in singles)
            torch.testing.assert_close(fisher[layer][kind], summed, rtol=1e-4, atol=1e-10)


def test_one_gradient_agrees_with_a_finite_difference():
    model = tiny_model("bert", head="seq-cls").eval()
    one = {k: (v[:1, :11] if v.dim() == 2 else v[:1]) for k, v in _labelled().items()}
    fisher = fisher_importance(model, [one])
    shape = arch.shape(model.config)

    def loss_with(layer: int, unit: int, value: float) -> float:
        masks = {"heads": [torch.ones(shape.heads) for _ in range(2)], "neurons": [torch.ones(64) for _ in range(2)]}
        masks["neurons"][layer][unit] = value
        with mask_hooks(model, masks), torch.no_grad():
            return float(model(**one).loss.double())

    h = 1e-3
    slope = (loss_with(1, 5, 1 + h) - loss_with(1, 5, 1 - h)) / (2 * h)
    assert float(fisher[1]["neurons"][5]) == pytest.approx(slope**2, rel=2e-2)


def test_a_dead_neuron_has_zero_fisher_information():
    model = tiny_model("bert", head="seq-cls")
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[:, 7] = 0.0  # neuron 7 of layer 0 writes nothing
    assert float(fisher_importance(model, [_labelled()])[0]["neurons"][7]) == 0.0


def test_solve_scales_recovers_a_duplicate_units_share():
    # Two identical units: keeping one, it must carry both, so its scale is 2.
    system = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    scales = solve_scales(system, [0, 2], ridge=1e-9)
    assert scales.tolist() == pytest.approx([2.0, 1.0], rel=1e-6)


def test_rescaling_makes_up_for_a_removed_duplicate_neuron_and_head(monkeypatch):
    model = tiny_model("bert")
    block = model.encoder.layer[0]
    d = arch.shape(model.config).head_dim
    with torch.no_grad():
        # Neuron 3 duplicates neuron 2 (same input row and bias, same output column); head 1 duplicates head 0.
        block.intermediate.dense.weight[3] = block.intermediate.dense.weight[2]
        block.intermediate.dense.bias[3] = block.intermediate.dense.bias[2]
        block.output.dense.weight[:, 3] = block.output.dense.weight[:, 2]
        for lin in (block.attention.self.query, block.attention.self.key, block.attention.self.value):
            lin.weight[d : 2 * d] = lin.weight[:d]
            lin.bias[d : 2 * d] = lin.bias[:d]
        block.attention.output.dense.weight[:, d : 2 * d] = block.attention.output.dense.weight[:, :d]
    batch = padded_batch("bert")
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    plain, repaired = tiny_model("bert"), model
    plain.load_state_dict(model.state_dict())
    scores = [{"heads": torch.tensor([1.0, 0.0, 1.0, 1.0]), "neurons": torch.ones(64)} for _ in range(2)]
    scores[0]["neurons"][3] = 0.0
    from econlm.prune import IMPORTANCE

    monkeypatch.setitem(IMPORTANCE._items, "fixed", lambda m, b: scores)  # the test chooses which units go
    prune(plain, [1, 0], [1, 0], "fixed", [batch])
    prune(repaired, [1, 0], [1, 0], "fixed", [batch], rescale=True)
    with torch.no_grad():
        off = (plain(**batch).last_hidden_state - reference).abs().max()
        torch.testing.assert_close(repaired(**batch).last_hidden_state, reference, rtol=1e-3, atol=1e-3)
    assert off > 1e-2, "without the repair the output changes"


def test_wanda_scores_are_weight_magnitude_times_input_norm_summed_over_the_unit():
    from econlm.prune import wanda_importance

    model = tiny_model("bert")
    batch = padded_batch("bert")
    seen = {}
    block = model.encoder.layer[1]
    hooks = [
        block.output.dense.register_forward_pre_hook(lambda m, a: seen.__setitem__("down", a[0])),
        block.attention.output.dense.register_forward_pre_hook(lambda m, a: seen.__setitem__("o", a[0])),
    ]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    real = batch["attention_mask"].bool()
    scores = wanda_importance(model, [batch])[1]
    down_in = seen["down"][real].double()  # (21 real tokens, 64)
    expected = block.output.dense.weight.double().abs().sum(dim=0) * down_in.pow(2).sum(dim=0).sqrt()
    torch.testing.assert_close(scores["neurons"], expected.float(), rtol=1e-5, atol=1e-7)
    o_in = seen["o"][real].double()  # (21, 4 heads x 8)
    per_feature = block.attention.output.dense.weight.double().abs().sum(dim=0) * o_in.pow(2).sum(dim=0).sqrt()
    torch.testing.assert_close(scores["heads"], per_feature.view(4, 8).sum(dim=1).float(), rtol=1e-5, atol=1e-7)
