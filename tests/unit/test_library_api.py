"""The in-memory API a Python user reaches for: probe a model they hold, tax their own loop, compact it."""

import math

import pytest
import torch

import econlm
from econlm.data import load_examples
from tests.conftest import padded_batch, save_tiny_checkpoint, tiny_model, write_tiny_glue


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return {"ckpt": save_tiny_checkpoint(root / "m", head="seq-cls"), "data": write_tiny_glue(root / "data")}


def test_probe_a_model_in_memory_matches_the_command(tiny):
    from econlm.models import load_model
    from econlm.probing import ProbeConfig, run_probe

    loaded = load_model(str(tiny["ckpt"]))
    examples = load_examples("sst2", "dev", str(tiny["data"]))
    result = econlm.probe(loaded.model, loaded.tokenizer, examples, ["full", 2], task="sst2", max_length=32)
    config = ProbeConfig(model=str(tiny["ckpt"]), task="sst2", budgets=("full", "2"), data_dir=str(tiny["data"]),
                         max_length=32)
    command = run_probe(config, model=loaded, progress=False)
    for budget in ("full", "2"):
        mine, theirs = result.row(budget), command.rows[["full", "2"].index(budget)]
        assert mine["score"] == theirs["score"] and mine["gini"] == pytest.approx(theirs["gini"])
    assert result.to_json()["rows"][0]["metric"] == "accuracy"
    with pytest.raises(KeyError, match="probed: full, 2"):
        result.row(8)


def test_probe_plain_texts_gives_statistics_without_a_score():
    from transformers import AutoTokenizer

    from econlm.models import resolve

    model = tiny_model("bert", vocab_size=30522)
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm").location)
    texts = ["The market clears.", ("Heads compete for keys.", "Neurons idle.")]
    result = econlm.probe(model, tokenizer, texts, ["full", 1])
    full, one = result.row("full"), result.row(1)
    assert math.isnan(full["score"]) and full["examples"] == 2
    assert one["gini"] > full["gini"] and one["entropy"] == pytest.approx(0.0, abs=1e-6)  # one key: no entropy
    assert one["effective_macs_per_token"] < full["effective_macs_per_token"]


def test_the_tax_in_your_own_training_loop_then_compaction():
    model = tiny_model("bert").train()
    batch = padded_batch("bert")
    tax = econlm.attach_tax(model, cost=("flops",), budget=0.5, gate_freeze=0.5, total_steps=20)
    optimizer = torch.optim.AdamW(tax.parameter_groups(lr=1e-3, gate_lr=0.5))
    shares = []
    with tax:
        for step in range(20):
            tax.begin(batch["attention_mask"], step)
            out = model(**batch).last_hidden_state
            loss = tax.loss(out.pow(2).mean())  # any task loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tax.step()
            shares.append(tax.metrics()["cost/compute_share"])
    assert not tax.attached and tax.price.step == 20
    assert tax.metrics()["price/lambda"] > 0 and shares[-1] < shares[0]
    folded = tax.finalize()
    assert folded["gates"]["heads"]["total"] == 8 and not hasattr(model, "econlm_gates")
    small, report = econlm.compact_model(model.eval(), [batch])
    # Every gate the tax closed is a dead unit compaction removes (calibration may find more).
    assert report.removed_heads >= folded["gates"]["heads"]["closed"]
    assert report.removed_neurons >= folded["gates"]["neurons"]["closed"]
    with torch.no_grad():
        torch.testing.assert_close(small(**batch).last_hidden_state, model(**batch).last_hidden_state, rtol=1e-4,
                                   atol=1e-5)


def test_attach_tax_refuses_bad_settings_in_one_line():
    with pytest.raises(econlm.UserError, match="--budget needs a cost that measures compute"):
        econlm.attach_tax(tiny_model("bert"), cost=("ffn_l1",), budget=0.5)
    with pytest.raises(econlm.UserError, match="--cost latency needs --latency-table"):
        econlm.TaxConfig(cost=("latency",))


def test_the_tax_attaches_once_and_freezes_gates_for_any_optimizer_loop():
    model = tiny_model("bert").train()
    batch = padded_batch("bert")
    tax = econlm.attach_tax(model, cost=("flops",), lam=0.1, gate_freeze=0.5, total_steps=4)
    with tax:
        with pytest.raises(RuntimeError, match="already attached"):
            tax.__enter__()
        for step in range(4):
            tax.begin(batch["attention_mask"], step)
            tax.loss(model(**batch).last_hidden_state.pow(2).mean()).backward()
            gate_grads = [p.grad for p in tax.gate_parameters()]
            # steps 2 and 3 are past the freeze: the gates' gradients are dropped as backward makes them
            assert all(g is None for g in gate_grads) == (step >= 2), step
            model.zero_grad(set_to_none=True)
            tax.step()
    assert not tax.attached


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cost": ("flops",), "budget": 0.5, "price_lr": -1.0}, "--price-lr must be a number >= 0"),
        ({"cost": ("flops",), "budget": 0.5, "price_lr": 0.0}, "--price-lr must be positive with --budget"),
        ({"cost": ("ffn_l1",), "ffn_weight": -0.5}, "--ffn-weight must be a number >= 0"),
        ({"cost": ("flops",), "budget_rho": float("nan")}, "--budget-rho must be a number >= 0"),
    ],
)
def test_tax_settings_that_would_reward_compute_are_refused(settings, message):
    with pytest.raises(econlm.UserError, match=message):
        econlm.TaxConfig(**settings)


def test_a_latency_budget_below_what_removal_can_reach_is_refused(tmp_path):
    import json

    from tests.conftest import latency_table_for

    model = tiny_model("bert")
    path = tmp_path / "t.json"
    path.write_text(json.dumps(latency_table_for(model.config).to_json()))
    # The made-up table spends half the time in FFNs, linear in the neurons kept: with only FFN gates and one
    # neuron left per layer, 1 - 0.5 * 63/64 = 0.508 of the dense latency remains.
    with pytest.raises(econlm.UserError, match=r"below what this latency table says .*0\.508 of dense latency"):
        econlm.attach_tax(model, cost=("latency",), target="ffn", budget=0.5, latency_table=str(path))
    econlm.attach_tax(tiny_model("bert"), cost=("latency",), target="ffn", budget=0.7, latency_table=str(path))


def test_a_flops_budget_that_would_empty_a_layer_is_refused_with_what_is_reachable():
    """Each layer keeps one unit of each gated kind. FFN gates only, 64 neurons a layer: at least 1/64 =
    0.0156 of the gated FLOPs stays. Attention gates only on a GQA model with 2 K/V groups a layer (each group
    costs the same): at least half stays."""
    with pytest.raises(econlm.UserError, match=r"every head or every FFN neuron .*0\.016 of the gated FLOPs.*at least 0\.016$"):
        econlm.attach_tax(tiny_model("bert"), cost=("flops",), target="ffn", budget=0.01)
    econlm.attach_tax(tiny_model("bert"), cost=("flops",), target="ffn", budget=0.02)
    with pytest.raises(econlm.UserError, match=r"every K/V group .*0\.500 of the gated FLOPs with --target attention"):
        econlm.attach_tax(tiny_model("llama"), cost=("flops",), target="attention", budget=0.4)
    econlm.attach_tax(tiny_model("llama"), cost=("flops",), target="attention", budget=0.5)
