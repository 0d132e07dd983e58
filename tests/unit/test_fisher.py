"""Fisher importance of unit masks and least-squares rescaling, against hand computations."""

import copy

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


def _duplicate_neuron(model, layer: int, copy_of: int, into: int) -> None:
    """Make FFN neuron ``into`` of ``layer`` an exact copy of ``copy_of`` (same inputs, same output column)."""
    fam = arch.family(model.config)
    block = arch.blocks(model)[layer]
    with torch.no_grad():
        for path in (fam.ffn_up, fam.ffn_gate):
            if path is None:
                continue
            module = block.get_submodule(path)
            rows = arch.out_rows(module)
            rows[into] = rows[copy_of]
            if module.bias is not None:
                module.bias[into] = module.bias[copy_of]
        columns = arch.in_columns(block.get_submodule(fam.ffn_down))
        columns[into] = columns[copy_of]


def _scores_removing(monkeypatch, heads: int, neurons: int, gone: dict[tuple[str, int], int]):
    """Register importance ``fixed`` that scores the units in ``gone`` ((kind, layer) -> unit) lowest."""
    from econlm.prune import IMPORTANCE

    scores = [{"heads": torch.ones(heads), "neurons": torch.ones(neurons)} for _ in range(2)]
    for (kind, layer), unit in gone.items():
        scores[layer][kind][unit] = 0.0
    monkeypatch.setitem(IMPORTANCE._items, "fixed", lambda m, b: scores)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_layer_by_layer_repair_makes_up_for_a_removed_duplicate_neuron(family, monkeypatch):
    # Neuron 3 of layer 1 copies neuron 2: keeping neuron 2 at scale 2 reproduces the layer exactly. The second
    # layer's solve sees the first layer's output, so this also checks the residual each family adds to.
    model = tiny_model(family)
    _duplicate_neuron(model, layer=1, copy_of=2, into=3)
    batch = padded_batch(family)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        reference = model(**batch).last_hidden_state[real]
    plain = tiny_model(family)
    plain.load_state_dict(model.state_dict())
    _scores_removing(monkeypatch, 4, 64, {("neurons", 1): 3})
    prune(plain, [0, 0], [0, 1], "fixed", [batch])
    prune(model, [0, 0], [0, 1], "fixed", [batch], rescale="layerwise")
    with torch.no_grad():
        off = (plain(**batch).last_hidden_state[real] - reference).abs().max()
        torch.testing.assert_close(model(**batch).last_hidden_state[real], reference, rtol=1e-3, atol=1e-3)
    assert off > 1e-3, "without the repair the output changes"
    kept = arch.in_columns(arch.blocks(model)[1].get_submodule(arch.family(model.config).ffn_down))
    reference_column = arch.in_columns(arch.blocks(plain)[1].get_submodule(arch.family(plain.config).ffn_down))[2]
    torch.testing.assert_close(kept[2], 2 * reference_column, rtol=1e-3, atol=1e-5)


def test_layer_by_layer_repair_stops_where_a_scale_would_exceed_its_bound():
    from econlm.fisher import RepairStopped, repair_layer_by_layer
    from econlm.prune import plan_by_importance
    from econlm.surgery import apply_plan

    model = tiny_model("bert")
    _duplicate_neuron(model, layer=0, copy_of=2, into=3)  # its repair needs scale 2 on neuron 2
    teacher = tiny_model("bert")
    teacher.load_state_dict(model.state_dict())
    scores = [{"heads": torch.ones(4), "neurons": torch.ones(64)} for _ in range(2)]
    scores[0]["neurons"][3] = 0.0
    apply_plan(model, plan_by_importance(model, scores, [0, 0], [1, 0]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RepairStopped, match="stopped at layer 0 neurons: a scale of 2 passes 1.5"):
        report = repair_layer_by_layer(model, teacher, [padded_batch("bert")], max_scale=1.5)
    assert report["stopped"] == "layer 0 neurons"
    assert report["neurons"] == [[], []] and report["heads"][1] == []
    # Layer 0 lost no head, so its heads need no repair: scale 1 (the damping pulls toward 1, not 0).
    assert report["heads"][0] == pytest.approx([1.0] * 4, abs=1e-6)  # float32 forwards
    after = model.state_dict()
    assert all(torch.allclose(before[k], after[k], rtol=1e-6, atol=0) for k in before), "nothing else was touched"


def _sums_seen_from_outside(model, layer: int, batch: dict) -> dict[str, torch.Tensor]:
    """Each sublayer's output plus its residual, read where the model itself uses it (not through econlm's hooks):
    the input of the LayerNorm that follows it (BERT), or the next norm's input and the block output (pre-norm)."""
    block = arch.blocks(model)[layer]
    if model.config.model_type == "bert":
        points = {"o": (block.attention.output.LayerNorm, "in"), "down": (block.output.LayerNorm, "in")}
    else:
        norm = block.ln_2 if model.config.model_type == "gpt2" else block.post_attention_layernorm
        points = {"o": (norm, "in"), "down": (block, "out")}
    seen, handles = {}, []
    for name, (module, where) in points.items():
        if where == "in":
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0])))
        else:
            handles.append(
                module.register_forward_hook(
                    lambda m, a, out, name=name: seen.__setitem__(name, out[0] if isinstance(out, tuple) else out)
                )
            )
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize(("family", "head"), [("bert", "base"), ("bert", "seq-cls"), ("llama", "base"), ("gpt2", "base")])
def test_each_repaired_scale_is_the_least_squares_optimum_of_its_sublayer(family, head):
    # Float64 throughout, random biases, units of both layers removed, so layer 1 sees inputs that layer 0's
    # pruning changed. For each kept unit, the sublayer's squared error against the dense model is a parabola in its
    # scale; after the repair its vertex must sit at the scale the repair chose (a relative step of 0).
    from econlm.fisher import repair_layer_by_layer
    from econlm.gates import scale_input_columns
    from econlm.prune import plan_by_importance
    from econlm.surgery import apply_plan

    model = tiny_model(family, head=head, seed=4).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "LayerNorm" not in name and "ln_" not in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    teacher = copy.deepcopy(model)
    batch = padded_batch(family)  # right padding: Llama's float64 eager attention gives NaN rows when left-padded
    shape = arch.shape(model.config)
    g = torch.Generator().manual_seed(7)
    scores = [{"heads": torch.rand(shape.heads, generator=g), "neurons": torch.rand(64, generator=g)} for _ in range(2)]
    group = shape.heads // shape.kv_heads
    apply_plan(model, plan_by_importance(model, scores, [group, group], [5, 5]))
    repair_layer_by_layer(model, teacher, [batch], ridge=1e-12, max_scale=1e9, last_layer_first_token=head == "seq-cls")
    fam = arch.family(model.config)
    real = batch["attention_mask"].bool()
    for layer in range(2):
        target = _sums_seen_from_outside(teacher, layer, batch)
        first = head == "seq-cls" and layer == 1
        for name, path, width in (("o", fam.o, shape.head_dim), ("down", fam.ffn_down, 1)):
            module = arch.blocks(model)[layer].get_submodule(path)

            def error() -> float:
                gap = _sums_seen_from_outside(model, layer, batch)[name] - target[name]
                return float((gap[:, 0] if first else gap[real]).pow(2).sum())

            units = arch.in_features(module) // width
            for unit in range(0, units, 7 if width == 1 else 1):
                values = []
                for factor in (1.01, 0.99):
                    scale = torch.ones(units, dtype=torch.float64)
                    scale[unit] = factor
                    scale_input_columns(module, scale.repeat_interleave(width))
                    values.append(error())
                    scale_input_columns(module, (1 / scale).repeat_interleave(width))
                at, up, down = error(), *values
                step = -((up - down) / 0.02) / ((up + down - 2 * at) / 1e-4)
                assert abs(step) < 1e-4, f"layer {layer} {name} unit {unit}: the optimum is {step:+.2e} away"


@pytest.mark.parametrize(("family", "head", "first"), [("bert", "seq-cls", True), ("bert", "base", False), ("llama", "seq-cls", False)])
def test_prune_matches_the_last_layer_on_the_first_token_only_for_an_encoder_classifier(family, head, first, monkeypatch):
    # An encoder's classifier reads [CLS] alone; a decoder's reads its last real token, and a base model all of them.
    import econlm.prune as prune_module

    asked = {}
    monkeypatch.setattr(prune_module, "repair_layer_by_layer", lambda *a, **kw: asked.update(kw))
    _scores_removing(monkeypatch, 4, 64, {("neurons", 1): 3})
    prune(tiny_model(family, head=head), [0, 0], [0, 1], "fixed", [padded_batch(family)], rescale="layerwise")
    assert asked == {"last_layer_first_token": first}
