"""Cost terms, gates and prices on tiny models, against hand computations."""

import math

import pytest
import torch

from econlm.cost import COSTS, CostMeter
from econlm.errors import UserError
from econlm.flops import Structure, unit_macs_per_token
from econlm.gates import add_gates, fold_gates, gates_active, get_gates
from econlm.prices import Price
from tests.conftest import DECODERS, FAMILIES, latency_table_for, padded_batch, tiny_model


def _forward_cost(model, names, target="both", family="bert"):
    meter = CostMeter(model, names, target)
    batch = padded_batch(family)
    with meter.attached():
        meter.begin(batch["attention_mask"])
        out = model(**batch).last_hidden_state
        reading = meter.read()
    return meter, out, reading


@pytest.mark.parametrize("name", sorted(COSTS))
@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_every_cost_is_finite_and_has_finite_gradients(name, family):
    model = tiny_model(family)
    model.train()
    table = latency_table_for(model.config) if name == "latency" else None
    if name == "tokens" and family in DECODERS:  # learned token budgets are for encoders
        with pytest.raises(UserError, match="breaks causal generation"):
            CostMeter(model, (name,), "both")
        return
    meter = CostMeter(model, (name,), "both", latency_table=table)
    batch = padded_batch(family)
    with meter.attached():
        meter.begin(batch["attention_mask"])
        out = model(**batch).last_hidden_state
        reading = meter.read()
    assert reading.total.requires_grad and math.isfinite(float(reading.total.detach()))
    (reading.total + 0 * out.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_ffn_l1_is_mean_abs_activation_over_real_tokens():
    model = tiny_model("bert")
    batch = padded_batch("bert")
    captured = []
    handle = model.encoder.layer[0].output.dense.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    _, _, reading = _forward_cost(model, ("ffn_l1",))
    handle.remove()
    a = captured[0][batch["attention_mask"].bool()]  # (real tokens, F)
    first_layer = a.abs().mean()
    meter = CostMeter(model, ("ffn_l1",))
    assert reading.terms["ffn_l1"] == pytest.approx(float(reading.total.detach()))
    with meter.attached():
        meter.begin(batch["attention_mask"])
        model(**batch)
    assert float(meter.terms[0]._per_layer[0].detach()) == pytest.approx(float(first_layer.detach()), rel=1e-5)


def test_attention_costs_on_known_rows():
    # One layer of attention, hand-made: a uniform row over 4 keys and a one-hot row.
    from econlm.attention import AttentionView
    from econlm.cost import AttnEntropy, AttnSqrt

    probs = torch.tensor([[[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]]])  # (1, 1, 2, 4)
    view = AttentionView(
        "l0",
        torch.zeros_like(probs),
        probs,
        torch.ones(1, 1, 2, 4, dtype=torch.bool),
        torch.ones(1, 1, 2, dtype=torch.bool),
    )
    model = tiny_model("bert")
    entropy_term, sqrt_term = AttnEntropy(model, ("attention",), None), AttnSqrt(model, ("attention",), None)
    entropy_term.attention_tap(view)
    sqrt_term.attention_tap(view)
    weights = {"attention": 1.0, "ffn": 1.0}
    assert float(entropy_term.value(weights)) == pytest.approx(math.log(4) / 2, abs=1e-6)
    assert float(sqrt_term.value(weights)) == pytest.approx((4 * 0.5 + 1) / 2, abs=1e-5)


def test_flops_term_equals_hand_computed_expected_share():
    model = tiny_model("llama")  # 2 layers, 4 query heads, 2 KV heads, head 8, hidden 32, FFN 64 (gated)
    meter = CostMeter(model, ("flops",), "both")
    gates = get_gates(model)
    # One gate per K/V group (its K/V head and the 2 query heads reading it): only whole groups can be removed.
    assert [g.log_alpha.numel() for g in gates.heads] == [2, 2]
    with torch.no_grad():
        gates.heads[0].log_alpha.copy_(torch.tensor([5.0, -1.0]))  # layer 0: the second group nearly shut
    batch = padded_batch("llama")
    with meter.attached():
        meter.begin(batch["attention_mask"])
        model(**batch)
        reading = meter.read()
    structure = Structure.of_model(model)
    unit = unit_macs_per_token(structure, 0, 11)

    def p_open(log_alpha):  # P(z != 0) of a hard-concrete gate: sigmoid(log_alpha - beta * log(-gamma / zeta))
        return 1 / (1 + math.exp(-(log_alpha + 2 / 3 * math.log(11))))

    group = 2 * unit["query_head"] + unit["kv_head"]
    per_layer_dense = 2 * group + 64 * unit["ffn_neuron"]
    expected = (
        group * (p_open(5.0) + p_open(-1.0)) + 64 * unit["ffn_neuron"] * p_open(5.0)  # layer 0
        + 2 * group * p_open(5.0) + 64 * unit["ffn_neuron"] * p_open(5.0)  # layer 1
    )
    assert reading.share == pytest.approx(expected / (2 * per_layer_dense), rel=1e-5)
    assert unit == {
        "query_head": 2 * 32 * 8 + 2 * 11 * 8,
        "kv_head": 2 * 32 * 8,
        "kv_group": 2 * (2 * 32 * 8 + 2 * 11 * 8) + 2 * 32 * 8,  # 2 query heads and their K/V head: 1888
        "ffn_neuron": 3 * 32,
    }


def test_flops_target_attention_gates_heads_only():
    model = tiny_model("bert")
    meter = CostMeter(model, ("flops", "ffn_l1"), target="attention")
    assert meter.names == ["flops"]
    gates = get_gates(model)
    assert gates.heads is not None and gates.neurons is None


def test_target_without_matching_cost_is_an_error():
    with pytest.raises(UserError, match="leaves none"):
        CostMeter(tiny_model("bert"), ("ffn_l1",), target="attention")
    with pytest.raises(UserError, match="unknown cost 'ffn_l2'"):
        CostMeter(tiny_model("bert"), ("ffn_l2",))


@pytest.mark.parametrize("family", FAMILIES)
def test_folding_gates_reproduces_the_gated_model(family):
    model = tiny_model(family)
    add_gates(model, ("attention", "ffn"))
    gates = get_gates(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for group in (gates.heads, gates.neurons):
            for g in group:
                g.log_alpha.copy_(torch.randn_like(g.log_alpha) * 3)  # some gates closed, some partial
    gates.eval()
    batch = padded_batch(family)
    with torch.no_grad(), gates_active(model):
        gated = model(**batch).last_hidden_state
    values = fold_gates(model)
    assert get_gates(model) is None
    assert any(v == 0.0 for layer in values["neurons"] for v in layer)
    with torch.no_grad():
        folded = model(**batch).last_hidden_state
    torch.testing.assert_close(folded, gated, rtol=1e-5, atol=1e-5)


def test_price_schedules():
    constant = Price("constant", 0.1)
    assert [constant.update(None) for _ in range(3)] == [0.1, 0.1, 0.1]
    warm = Price("warmup", 1.0, warmup_steps=4)
    assert warm.current == 0.0
    assert [warm.update(None) for _ in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    controller = Price("controller", 0.0, budget=0.5, eta=2.0)
    # lambda <- max(0, lambda + 2 * (share - 0.5))
    assert controller.update(0.9) == pytest.approx(0.8)
    assert controller.update(0.7) == pytest.approx(1.2)
    assert controller.update(0.1) == pytest.approx(0.4)
    assert controller.update(0.0) == 0.0  # never negative
    annealed = Price("controller", 0.0, budget=0.5, eta=1.0, target_warmup_steps=4)
    assert annealed.target() == 1.0
    assert annealed.update(0.9) == 0.0  # share below the budget in force (1.0): no price
    assert annealed.target() == pytest.approx(0.875)
    assert annealed.update(0.9) == pytest.approx(0.025)
    for _ in range(5):
        annealed.update(0.5)
    assert annealed.target() == 0.5
    state = controller.state_dict()
    again = Price("controller", 0.0, budget=0.5, eta=2.0)
    again.load_state_dict(state)
    assert again.update(0.6) == controller.update(0.6)


def test_the_anchor_adds_a_proportional_price_that_reopens_gates_below_the_budget():
    # The controller's price is the integral term lambda (econlm.prices) plus the anchor 0.5 * rho * (share - b)^2,
    # whose gradient on the share is rho * (share - b): d(total - task)/d(gate) = (lambda + rho * (s - b)) * ds/d(gate).
    # Below the budget by more than lambda / rho the sum is negative, so the tax itself pushes gates open.
    from econlm.incentive import TaxConfig, attach_tax

    batch = padded_batch("bert")
    for lam, rho in ((3.0, 100.0), (40.0, 100.0)):
        model = tiny_model("bert")
        tax = attach_tax(
            model, TaxConfig(cost=("flops",), budget=0.9, budget_rho=rho, budget_warmup=0.0), total_steps=10
        )
        gates = tax.gate_parameters()
        with torch.no_grad():
            for p in gates:
                p.fill_(-0.5)  # every unit partly shut: the expected share (0.75) sits well below the budget
        tax.price.current = lam
        with tax:
            tax.begin(batch["attention_mask"], step=0)
            model(**batch)
            total = tax.loss(torch.zeros(()))
            share = tax.reading.share_tensor
            taxed = torch.autograd.grad(total, gates, retain_graph=True)
            of_share = torch.autograd.grad(share, gates)
        s = float(share.detach())
        price = lam + rho * (s - 0.9)
        for got, ds in zip(taxed, of_share):
            torch.testing.assert_close(got, price * ds)
        assert (price < 0) == (lam == 3.0), (s, price)  # below 0.9 - 3 / 100, not below 0.9 - 40 / 100
        tax.finalize()


def test_clearing_reads_the_share_the_gates_froze_at_and_how_fast_it_was_still_falling():
    from econlm.prices import clearing, clearing_advice

    history = [[0, 1.0], [50, 0.8], [100, 0.6], [150, 0.5], [200, 0.45], [250, 0.44]]
    report = clearing(0.3, history, 400, budget_warmup=0.25, gate_freeze=0.5)  # budget at step 100, freeze at 200
    assert report["share_at_freeze"] == 0.45 and report["freeze_step"] == 200
    assert report["share_final"] == 0.44  # the structure the frozen gates hold
    assert report["share_when_budget_in_force"] == 0.6 and report["steps_to_catch_up"] == 100
    assert report["falling_per_100_steps"] == pytest.approx((0.5 - 0.45) / 50 * 100)  # 0.1
    assert report["cleared"] is False
    advice = clearing_advice(report)
    assert "is 0.440 against 0.3" in advice and "step 200 at 0.450" in advice and "0.100 per 100 steps" in advice
    never_froze = clearing(0.3, history, 400, budget_warmup=0.25, gate_freeze=None)  # the last record counts
    assert never_froze["share_at_freeze"] == 0.44
    assert never_froze["falling_per_100_steps"] == pytest.approx((0.45 - 0.44) / 50 * 100)
    met = clearing(0.435, history, 400, budget_warmup=0.25, gate_freeze=0.5)  # 0.44 is within the 0.01 tolerance
    assert met["cleared"] is True and clearing_advice(met) is None
    assert met["undershot"] is False  # 0.44 is 0.005 above 0.435
    loose = clearing(0.5, history, 400, budget_warmup=0.25, gate_freeze=0.5)  # 0.44 is 0.06 below 0.5
    assert loose["cleared"] is True and loose["undershot"] is True
    assert "undershot the budget: 0.440 against 0.5" in clearing_advice(loose)
    near = clearing(0.48, history, 400, budget_warmup=0.25, gate_freeze=0.5)  # 0.04 below: within 0.05
    assert near["undershot"] is False and clearing_advice(near) is None
    assert clearing(0.3, [], 400, budget_warmup=0.25, gate_freeze=None) is None


@pytest.mark.parametrize("name", ["ffn_l1", "attn_entropy", "attn_sqrt", "attn_logits_l1"])
def test_sum_reduction_is_the_papers_sum_over_tokens_units_and_layers(name):
    """With equal counts per layer, sum = mean x layers x count (real tokens x FFN units, or real rows)."""
    model = tiny_model("bert")
    batch = padded_batch("bert")  # real lengths 11, 7, 3: 21 real tokens
    values = {}
    for reduction in ("mean", "sum"):
        meter = CostMeter(model, (name,), "both", reduction=reduction)
        with meter.attached(), torch.no_grad():
            meter.begin(batch["attention_mask"])
            model(**batch)
            values[reduction] = meter.read().terms[name]
    layers, heads, tokens = 2, 4, 21
    if name == "ffn_l1":
        count = tokens * 64  # every real token's 64 FFN activations
    elif name == "attn_logits_l1":
        count = heads * (11 * 11 + 7 * 7 + 3 * 3)  # every real query's allowed keys (bidirectional)
    else:
        count = heads * tokens  # one entropy (or sqrt sum) per real query row and head
    assert values["sum"] == pytest.approx(values["mean"] * layers * count, rel=1e-5)


def test_unknown_reduction_is_a_user_error():
    with pytest.raises(UserError, match="cost reduction"):
        CostMeter(tiny_model("bert"), ("ffn_l1",), "both", reduction="median")


def test_a_fisher_start_ranks_every_gated_unit_by_value_per_mac_across_kinds():
    from econlm.gates import ModelGates, start_by_value

    gates = ModelGates(heads=[2], neurons=[3])
    # Ranks over all five units: 0.05 -> 0, 0.1 -> 1, 0.2 -> 2, 0.3 -> 3, 0.5 -> 4; start = 5 - 4 * (1 - rank / 4).
    start_by_value(gates, [{"heads": torch.tensor([0.5, 0.1]), "neurons": torch.tensor([0.2, 0.3, 0.05])}])
    assert gates.heads[0].log_alpha.tolist() == pytest.approx([5.0, 2.0])
    assert gates.neurons[0].log_alpha.tolist() == pytest.approx([3.0, 4.0, 1.0])
    # Only the gated kinds take part: heads alone rank among themselves.
    heads_only = ModelGates(heads=[2], neurons=None)
    start_by_value(heads_only, [{"heads": torch.tensor([0.5, 0.1]), "neurons": torch.tensor([9.0, 9.0, 9.0])}])
    assert heads_only.heads[0].log_alpha.tolist() == pytest.approx([5.0, 1.0])
