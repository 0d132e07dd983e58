"""Learned token budgets (LTP style): the soft mask, its cost term, training, saving, loading and bad input."""

import json
import math

import pytest
import torch

from econlm import arch
from econlm.cli import main
from econlm.cost import CostMeter
from econlm.errors import UserError
from econlm.flops import Structure, layer_macs
from econlm.incentive import TaxConfig, attach_tax
from econlm.learned_tokens import (
    THRESHOLDS_FILE,
    LearnedTokens,
    TokenThresholds,
    block_macs,
    key_mask,
    save_thresholds,
    token_share,
)
from econlm.tokens import attached_thresholds, relative_values, threshold_budget
from tests.conftest import padded_batch, save_tiny_checkpoint, tiny_model, write_tiny_glue

ENCODERS = ["bert", "roberta", "distilbert", "electra"]


def _no_dropout(family: str, layers: int = 3, head: str = "seq-cls"):
    if family == "distilbert":
        return tiny_model(family, head=head, n_layers=layers, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0)
    return tiny_model(
        family, head=head, num_hidden_layers=layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def _batch_and_specials(family):
    batch = padded_batch(family, lengths=(11, 7, 3))
    ids = batch["input_ids"]
    return batch, [int(ids[0, 4]), int(ids[1, 2])]  # two ids of the batch play [CLS] and [SEP]


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _one_line(error) -> bool:
    return "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# The pure core


def test_values_average_one_over_real_tokens_and_uniform_attention_gives_one():
    probs = torch.softmax(torch.randn(2, 3, 4, 4), dim=-1)  # (B, H, Q, K)
    probs[1, :, :, 3] = 0  # the second example has 3 real tokens: no query attends to its padding
    probs[1] = probs[1] / probs[1].sum(-1, keepdim=True)
    real = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    values = relative_values(probs, real)
    assert values[0].mean() == pytest.approx(1.0) and values[1, :3].mean() == pytest.approx(1.0)
    uniform = torch.full((1, 2, 5, 5), 0.2)
    assert relative_values(uniform, torch.ones(1, 5, dtype=torch.bool))[0].tolist() == pytest.approx([1.0] * 5)


def test_values_among_droppable_tokens_ignore_what_the_attention_sinks_absorb():
    # One head, 4 tokens: [CLS] and [SEP] (0 and 3) take 0.8 of every row; tokens 1 and 2 share the rest 3:1.
    row = torch.tensor([0.5, 0.15, 0.05, 0.3])
    probs = row.expand(1, 1, 4, 4).clone()
    real = torch.ones(1, 4, dtype=torch.bool)
    droppable = torch.tensor([[False, True, True, False]])
    plain = relative_values(probs, real)
    assert plain[0].tolist() == pytest.approx([2.0, 0.6, 0.2, 1.2])  # 4 queries x each probability
    # Among the droppable tokens: 0.15 and 0.05 of 0.2, times 2 tokens: 1.5 and 0.5, averaging 1.
    values = relative_values(probs, real, droppable)
    assert values[0, 1:3].tolist() == pytest.approx([1.5, 0.5])
    # A threshold of 0.8 keeps token 1 here, where the plain values would have dropped both.
    uniform = torch.full((1, 2, 5, 5), 0.2)
    everything = torch.ones(1, 5, dtype=torch.bool)
    assert relative_values(uniform, everything, everything)[0].tolist() == pytest.approx([1.0] * 5)


def test_key_mask_adds_log_keep_and_removes_dropped_keys():
    keep = torch.tensor([[1.0, 0.5, 0.0]])
    lowest = torch.finfo(torch.float32).min
    given = torch.zeros(1, 1, 3, 3).masked_fill(torch.tensor([False, False, True]), lowest)
    mask = key_mask(given, keep, torch.float32)
    assert mask[0, 0, 0].tolist() == pytest.approx([0.0, math.log(0.5), lowest])
    assert torch.equal(key_mask(given, torch.ones(1, 3), torch.float32), given)  # keep 1: the model's own mask
    boolean = key_mask(torch.tensor([True, True, False]).view(1, 1, 1, 3), keep, torch.float32)
    assert boolean[0, 0, 0].tolist() == pytest.approx([0.0, math.log(0.5), lowest])
    assert key_mask(None, keep, torch.float16).dtype == torch.float16
    assert torch.isfinite(key_mask(given, torch.zeros(1, 3), torch.float32)).all()  # no -inf, no NaN gradients


def test_block_macs_split_the_layer_macs_into_attention_and_ffn():
    structure = Structure.of_model(tiny_model("bert"))
    for tokens in (1, 7, 20):
        attention, ffn = block_macs(structure, 0, tokens)
        assert attention + ffn == sum(layer_macs(structure, 0, tokens).values())
        assert ffn == layer_macs(structure, 0, tokens)["ffn_up"] + layer_macs(structure, 0, tokens)["ffn_down"]


def test_token_share_matches_a_hand_count():
    structure = Structure.of_model(tiny_model("bert"))  # D = 32, 4 heads of 8, FFN 64, 2 layers

    def attention(t, h=4, g=4):  # Q, O per query head and K, V per K/V head: 2 t D d; scores, attn x V: 2 t^2 d
        return 2 * t * 32 * 8 * (h + g) + 2 * 8 * h * t * t

    def ffn(t, f=64):
        return 2 * t * 32 * f

    counts = [torch.tensor([4.0, 10.0]), torch.tensor([2.0, 2.5])]  # two examples of 4 and 10 real tokens
    dense = sum(attention(n) + ffn(n) for n in (4, 10)) * 2
    kept = attention(4) + ffn(4) + attention(10) + ffn(10) + attention(2) + ffn(2) + attention(2.5) + ffn(2.5)
    share, weighted = token_share(structure, counts)
    assert float(share) == pytest.approx(kept / dense) and float(weighted) == pytest.approx(kept / dense)
    one, _ = token_share(structure, [torch.tensor([4.0]), torch.tensor([2.0])])
    assert float(one) == pytest.approx(50432 / 67584)  # (33792 + 16640) / (2 * 33792)
    ffn_only, weighted = token_share(structure, counts, ("ffn",), {"ffn": 0.5})
    ffn_kept = ffn(4) + ffn(10) + ffn(2) + ffn(2.5)
    assert float(ffn_only) == pytest.approx(ffn_kept / (2 * (ffn(4) + ffn(10))))
    assert float(weighted) == pytest.approx(0.5 * float(ffn_only))
    # Jointly with gates: 2 of 4 heads, 3 of 4 K/V heads and 16 of 64 neurons open in layer 1.
    units = [(None, None, None), (2.0, 3.0, 16.0)]
    joint, _ = token_share(structure, counts, units=units)
    kept = attention(4) + ffn(4) + attention(10) + ffn(10)
    kept += attention(2, 2, 3) + ffn(2, 16) + attention(2.5, 2, 3) + ffn(2.5, 16)
    assert float(joint) == pytest.approx(kept / dense)


# ---------------------------------------------------------------------------------------------------------
# The soft mask and hard dropping


@pytest.mark.parametrize("family", ENCODERS)
def test_thresholds_at_minus_inf_reproduce_the_unmodified_model_exactly(family):
    model = _no_dropout(family)
    batch, specials = _batch_and_specials(family)
    learned = LearnedTokens(model, special_ids=specials)
    with torch.no_grad():
        learned.module.threshold.fill_(-math.inf)
        for mode in ("train", "eval"):
            getattr(model, mode)()
            reference = model(**batch).logits
            with learned.active():
                out = model(**batch).logits
            torch.testing.assert_close(out, reference, rtol=0, atol=0)
            assert [c.tolist() for c in learned.counts] == [[11.0, 7.0, 3.0]] * 3
    assert _no_hooks(model)


def test_soft_mask_gradient_reaches_every_threshold():
    model = _no_dropout("bert")
    model.train()
    batch, specials = _batch_and_specials("bert")
    learned = LearnedTokens(model, special_ids=specials)
    with torch.no_grad():
        learned.module.threshold.copy_(torch.tensor([0.9, 1.0]))  # near the values (they average 1)
    with learned.active():
        model(**batch).logits.sum().backward()
    grad = learned.module.threshold.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()
    assert learned.counts[1].sum() < learned.counts[0].sum()  # soft-kept tokens: fewer than real ones


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_a_hard_mask_in_training_computes_what_dropping_computes_at_inference(family):
    model = _no_dropout(family, head="base")
    batch, specials = _batch_and_specials(family)
    learned = LearnedTokens(model, special_ids=specials)
    with torch.no_grad():
        learned.module.threshold.copy_(torch.tensor([0.95, 1.05]))
        model.eval()
        with learned.active():
            dropped = model(**batch).last_hidden_state
        hard = [c.tolist() for c in learned.counts]
        with threshold_budget(model, [0.95, 1.05], special_ids=specials) as stats:
            torch.testing.assert_close(model(**batch).last_hidden_state, dropped, rtol=0, atol=0)
        model.train()
        learned.module.eval()  # frozen thresholds: the mask is 0 or 1 (the tax's gate freeze does this)
        with learned.active():
            masked = model(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(masked[real], dropped[real], rtol=1e-5, atol=1e-5)
    assert [c.tolist() for c in learned.counts] == hard
    assert hard[2] != hard[0] and stats.tokens_per_layer()[2] < stats.tokens_per_layer()[0]  # tokens did leave


# ---------------------------------------------------------------------------------------------------------
# The cost term


def test_tokens_cost_equals_a_hand_computation():
    model = _no_dropout("bert", layers=2, head="base")  # D = 32, 4 heads of 8, FFN 64
    model.train()
    batch, specials = _batch_and_specials("bert")
    meter = CostMeter(model, ("tokens",), special_ids=tuple(specials))
    learned = meter.terms[0].learned
    with torch.no_grad():
        learned.module.threshold.fill_(1.0)
    captured = {}
    attention = arch.get_submodule(arch.blocks(model)[0], arch.family(model.config).attention)
    handle = attention.register_forward_hook(lambda m, a, out: captured.__setitem__("p", out[1].detach()))
    with meter.attached():
        meter.begin(batch["attention_mask"])
        model(**batch)
        reading = meter.read()
    handle.remove()
    # By hand: values of layer 0, the soft mask, the expected tokens layer 1 runs on.
    real = batch["attention_mask"].bool()
    probs = captured["p"]  # (B, H, T, T)
    values = (probs * real[:, None, :, None]).sum(dim=(1, 2)) / probs.shape[1]  # (B, T)
    ids = batch["input_ids"]
    special = torch.isin(ids, torch.tensor(specials)) & real
    special[:, 0] = True
    droppable = (real & ~special).float()  # values relative to what the droppable tokens receive
    values = values * droppable.sum(1, keepdim=True) / (values * droppable).sum(1, keepdim=True)
    keep = torch.sigmoid((values - 1.0) / 0.1)
    keep = torch.where(special, 1.0, keep) * real
    lengths, kept = real.sum(1).tolist(), keep.sum(1).tolist()

    def macs(t):  # Q, K, V, O: t*D*D each; scores and attn x V: h*t*t*d each; FFN up and down: t*D*F each
        return 4 * t * 32 * 32 + 2 * 4 * t * t * 8 + 2 * t * 32 * 64

    share = sum(macs(n) + macs(k) for n, k in zip(lengths, kept)) / sum(2 * macs(n) for n in lengths)
    assert reading.share == pytest.approx(share, rel=1e-5) and reading.terms["tokens"] == pytest.approx(share, rel=1e-5)
    assert float(reading.share_tensor.detach()) == pytest.approx(share, rel=1e-5) and 0 < share < 1
    assert reading.total.requires_grad


def test_with_flops_one_share_prices_units_and_tokens_together():
    model = _no_dropout("bert", layers=2, head="base")
    model.train()
    batch, specials = _batch_and_specials("bert")
    meter = CostMeter(model, ("flops", "tokens"), special_ids=tuple(specials))
    flops, tokens = meter.terms
    with torch.no_grad():
        tokens.learned.module.threshold.fill_(1.0)
        flops.gates.heads[1].log_alpha.fill_(0.0)  # layer 1's heads open with probability ~0.6
    with meter.attached():
        meter.begin(batch["attention_mask"])
        model(**batch)
        reading = meter.read()
    units = [  # BERT: each head is its own K/V group, so expected open query heads = open K/V heads
        (
            flops.gates.heads[i].prob_open().sum().detach(),
            flops.gates.heads[i].prob_open().sum().detach(),
            flops.gates.neurons[i].prob_open().sum().detach(),
        )
        for i in range(2)
    ]
    expected, _ = token_share(Structure.of_model(model), tokens.learned.counts, units=units)
    assert reading.share == pytest.approx(float(expected.detach()), rel=1e-5)
    tokens_alone, _ = token_share(Structure.of_model(model), tokens.learned.counts)
    assert reading.share < float(tokens_alone.detach()) and reading.share < reading.terms["flops"]
    # The joint term is the one priced: flops is reported, not added a second time.
    assert float(reading.total.detach()) == pytest.approx(reading.terms["tokens"])


def _taxed_steps(model, batch, tax, steps: int, observe) -> list:
    """``steps`` optimizer steps of ``model`` on ``batch`` under ``tax`` (AdamW, thresholds at lr 0.1);
    ``observe()`` after each."""
    optimizer = torch.optim.AdamW(tax.parameter_groups(lr=1e-3, token_lr=0.1))
    seen = []
    with tax:
        for _ in range(steps):
            model.train()
            tax.begin(batch["attention_mask"])
            tax.loss(model(**batch).loss).backward()
            optimizer.step()
            optimizer.zero_grad()
            tax.step()
            seen.append(observe())
    return seen


def test_a_few_steps_with_the_tax_lower_the_expected_kept_share():
    model = tiny_model("bert", head="seq-cls", num_hidden_layers=3)
    batch, specials = _batch_and_specials("bert")
    batch["labels"] = torch.tensor([0, 1, 0])
    tax = attach_tax(model, TaxConfig(cost=("tokens",), lam=1.0), total_steps=100)
    learned = tax.meter.terms[0].learned
    learned.configure(0.1, specials)
    with torch.no_grad():
        learned.module.threshold.fill_(0.7)  # where the mask is soft: most values lie around 1
    shares = _taxed_steps(model, batch, tax, 12, lambda: tax.reading.share)
    assert shares[-1] < shares[0] - 0.2 and all(0 < s <= 1 for s in shares)
    metrics = tax.metrics()
    assert metrics["cost/compute_share"] == shares[-1] and metrics["tokens/threshold_0"] > 0.7
    spec = tax.finalize()["tokens"]
    assert len(spec["thresholds"]) == 2 and spec["format"] == 3 and not tax.token_parameters()
    assert _no_hooks(model)


def test_thresholds_stop_learning_after_the_freeze_point():
    model = tiny_model("bert", head="seq-cls")
    batch, _ = _batch_and_specials("bert")
    batch["labels"] = torch.tensor([0, 1, 0])
    tax = attach_tax(model, TaxConfig(cost=("tokens",), lam=1.0, gate_freeze=0.5), total_steps=4)
    seen = _taxed_steps(model, batch, tax, 4, lambda: tax.token_parameters()[0].detach().clone())
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])
    assert not tax.meter.terms[0].learned.module.training  # frozen: the mask is hard


# ---------------------------------------------------------------------------------------------------------
# Saving and loading


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    return {
        "ckpt": save_tiny_checkpoint(root / "m", head="seq-cls", num_hidden_layers=3),
        "data": write_tiny_glue(root / "data"),
    }


def _with_thresholds(tmp_path, tiny, thresholds, spec=None):
    import shutil

    folder = tmp_path / "learned"
    shutil.copytree(tiny["ckpt"], folder)
    if spec is None:
        spec = TokenThresholds(3, init=thresholds, special_ids=[101, 102]).spec()
    (folder / THRESHOLDS_FILE).write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return folder


def test_saved_thresholds_come_back_with_the_model_which_drops_tokens_at_inference(tmp_path, tiny):
    from econlm.models import load, load_model

    folder = tmp_path / "saved"
    plain = load_model(str(tiny["ckpt"]))
    assert attached_thresholds(plain.model) is None
    plain.model.save_pretrained(folder)
    plain.tokenizer.save_pretrained(folder)
    save_thresholds(folder, TokenThresholds(3, init=[0.95, 1.05], special_ids=[101, 102]).spec())
    loaded = load_model(str(folder))
    attached = attached_thresholds(loaded.model)
    assert attached.thresholds == pytest.approx((0.95, 1.05)) and {101, 102} <= set(attached.special_ids)
    batch = loaded.tokenizer(
        ["a fairly long sentence about a film and its plot", "short one"], padding=True, return_tensors="pt"
    )
    with torch.no_grad(), attached.recording() as stats:
        out = loaded.model(**batch).logits
    assert stats.tokens_per_layer()[2] < stats.tokens_per_layer()[0]  # later layers ran on fewer tokens
    with torch.no_grad(), threshold_budget(plain.model, [0.95, 1.05], tokenizer=plain.tokenizer):
        torch.testing.assert_close(out, plain.model(**batch).logits)
    attached.detach()
    assert attached_thresholds(loaded.model) is None and _no_hooks(loaded.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch).logits, plain.model(**batch).logits)
    again = load(str(folder))  # econlm.load attaches them too
    assert attached_thresholds(again) is not None
    learned = LearnedTokens(again)  # training it further starts from them, with the soft mask instead
    assert learned.module.threshold.tolist() == pytest.approx([0.95, 1.05]) and attached_thresholds(again) is None


def test_train_saves_thresholds_that_load_and_probe_honour(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--model", str(tiny["ckpt"]), "--task", "sst2", "--data-dir", str(tiny["data"]), "--out", str(out)]
    flags += ["--cost", "flops,tokens", "--budget", "0.6", "--epochs", "2", "--lr", "1e-3", "--batch-size", "8"]
    flags += ["--max-length", "32", "--token-lr", "0.2", "--save-every", "100", "--seed", "7"]
    assert main(["train", *flags]) == 0
    printed = capsys.readouterr().out
    assert "learned token budget: tokens per layer" in printed
    saved = json.loads((out / THRESHOLDS_FILE).read_text())
    assert saved["format"] == 3 and len(saved["thresholds"]) == 2 and saved["special_ids"]
    metrics = json.loads((out / "metrics.json").read_text())
    tokens = metrics["token_budget"]
    assert tokens["thresholds"] == saved["thresholds"] and 0 < tokens["macs_ratio"] <= 1
    assert len(tokens["tokens_per_layer"]) == 3 and "tokens/threshold_1" in metrics["cost_terms_last_step"]
    from econlm.models import load_model

    loaded = load_model(str(out))
    assert list(attached_thresholds(loaded.model).thresholds) == pytest.approx(saved["thresholds"])
    assert "econlm_token_thresholds.threshold" not in loaded.model.state_dict()  # not a weight of the model
    probe = ["probe", "--model", str(out), "--task", "sst2", "--data-dir", str(tiny["data"]), "--budgets", "full"]
    assert main([*probe, "--out", str(tmp_path / "p")]) == 0
    row = json.loads((tmp_path / "p" / "probe.json").read_text())["rows"][0]
    assert row["token_budget"] == "learned" and row["token_macs_ratio"] == pytest.approx(tokens["macs_ratio"])
    assert row["score"] == pytest.approx(metrics["score"])  # the probe scores what training evaluated
    assert row["per_layer"][0]["token_threshold"] == pytest.approx(saved["thresholds"][0])
    # Timed against the same model with its thresholds off for the call, then back on
    assert main([*probe, "--latency-repeats", "2", "--latency-examples", "8", "--out", str(tmp_path / "t")]) == 0
    timed = json.loads((tmp_path / "t" / "probe.json").read_text())["token_budget_latency"]
    assert timed["schedule"] == "learned" and timed["examples"] == 8 and timed["speedup"] > 0
    from econlm.data import load_examples
    from econlm.probing import ProbeConfig, token_budget_latency

    examples = load_examples("sst2", "dev", str(tiny["data"]))
    token_budget_latency(loaded, examples, ProbeConfig(model=str(out), task="sst2", latency_repeats=1))
    assert list(attached_thresholds(loaded.model).thresholds) == pytest.approx(saved["thresholds"])  # back on
    capsys.readouterr()
    assert main([*probe, "--token-budget", "0.5", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert "learned thresholds" in err and "\n" not in err


def test_units_and_tokens_priced_together_are_realised_by_compaction(tiny, tmp_path, capsys):
    # One market for units and tokens, as training leaves it: gates shut a head and some neurons, thresholds
    # drop tokens. In eval mode with the gates on, values count the heads whose gate is open; folded, the shut
    # head's weights are zero and values skip it; compacted, it is gone. All three drop the same tokens and
    # compute the same logits.
    from econlm.models import load_model

    loaded = load_model(str(tiny["ckpt"]))
    model = loaded.model.eval()
    fam = arch.family(model.config)
    with torch.no_grad():  # peaked attention: values spread far from the thresholds, beyond any rounding
        for block in arch.blocks(model):
            block.get_submodule(fam.q).weight.mul_(30)
            block.get_submodule(fam.k).weight.mul_(30)
    tax = attach_tax(model, TaxConfig(cost=("flops", "tokens"), budget=0.5), total_steps=10, tokenizer=loaded.tokenizer)
    from econlm.gates import get_gates
    from econlm.learned_tokens import get_thresholds

    gates = get_gates(model)
    with torch.no_grad():
        gates.heads[0].log_alpha[1] = -20.0  # eval value exactly 0: shut
        gates.heads[1].log_alpha[2] = -20.0
        gates.neurons[0].log_alpha[:10] = -20.0
        get_thresholds(model).threshold.copy_(torch.tensor([0.95, 1.0]))
    batch = loaded.tokenizer(
        ["a fairly long sentence about a film and its plot and its cast", "short one", "a third, of middling length"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad(), tax:
        tax.begin(batch["attention_mask"])
        gated = model(**batch).logits
        counts = [float(c.sum()) for c in tax.tokens_term().learned.counts]
    assert counts[-1] < counts[0]  # tokens left, by values over the open heads
    finished = tax.finalize()
    out = tmp_path / "joint"
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    save_thresholds(out, finished["tokens"])
    capsys.readouterr()
    assert main(["compact", str(out), "--task", "sst2", "--data-dir", str(tiny["data"]), "--out", str(tmp_path / "c")]) == 0
    assert "the same tokens dropped as before on the calibration batches: yes" in capsys.readouterr().out
    report = json.loads((tmp_path / "c" / "compact.json").read_text())
    assert report["removed"]["heads"] == 2 and report["removed"]["neurons"] == 10
    assert report["verification"]["token_thresholds"]["same_tokens_dropped"]
    assert report["after"]["score"]["value"] == pytest.approx(report["before"]["score"]["value"])
    assert report["after"]["token_budget"]["tokens_per_layer"] == report["before"]["token_budget"]["tokens_per_layer"]
    for folder in (out, tmp_path / "c"):
        net = load_model(str(folder)).model
        with torch.no_grad(), attached_thresholds(net).recording() as stats:
            torch.testing.assert_close(net(**batch).logits, gated, rtol=1e-3, atol=1e-4)  # gates scale, folds multiply
        assert [n * 3 for n in stats.tokens_per_layer()] == pytest.approx(counts)


# ---------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "damaged or truncated"),
        ({"thresholds": [0.5, 0.5]}, "older econlm"),
        ({"format": 4, "thresholds": [0.5, 0.5]}, "newer than this econlm"),
        ({"format": 1, "thresholds": [0.5, 0.5]}, "format 1: its thresholds were learned on token values that"),
        ({"format": 2, "thresholds": [0.5]}, "1 token thresholds for a model of 3 layers"),
        ({"format": 2, "thresholds": ["high", 0.5]}, "must be a list of numbers"),
        ({"format": 2, "thresholds": [0.5, 0.5], "special_ids": "cls"}, "'special_ids' must be a list"),
    ],
)
def test_a_bad_thresholds_file_is_one_line(tmp_path, tiny, content, says):
    from econlm.models import load_model

    folder = _with_thresholds(tmp_path, tiny, None, content)
    with pytest.raises(UserError, match=says) as info:
        load_model(str(folder))
    assert _one_line(info)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"cost": ("tokens", "latency"), "latency_table": "t.json"}, "latency table t.json does not exist"),
        ({"cost": ("tokens",), "token_temperature": 0.0}, "--token-temperature must be a positive number"),
        ({"cost": ("tokens",), "token_temperature": float("nan")}, "--token-temperature must be a positive number"),
    ],
)
def test_bad_tax_settings_are_one_line(settings, says):
    with pytest.raises(UserError, match=says) as info:
        TaxConfig(**settings)
    assert _one_line(info)


def test_bad_train_settings_are_one_line(tiny, tmp_path):
    from econlm.training import TrainConfig

    base = dict(model=str(tiny["ckpt"]), task="sst2", out=str(tmp_path / "r"), data_dir=str(tiny["data"]))
    with pytest.raises(UserError, match="does not work with --cost tokens") as info:
        TrainConfig(**base, cost=("tokens",), gradient_checkpointing=True)
    assert _one_line(info)
    with pytest.raises(UserError, match="--token-lr must be positive"):
        TrainConfig(**base, cost=("tokens",), token_lr=0.0)


def test_decoders_and_one_layer_models_are_refused_with_the_reason():
    with pytest.raises(UserError, match="breaks causal generation") as info:
        attach_tax(tiny_model("llama"), cost=("tokens",))
    assert _one_line(info)
    with pytest.raises(UserError, match="at least 2 layers") as info:
        attach_tax(tiny_model("bert", num_hidden_layers=1), cost=("tokens",))
    assert _one_line(info)


@pytest.mark.parametrize("rule", [["--cost", "tokens"], ["--token-budget", "0.5"]], ids=["learned", "fixed"])
def test_train_cli_refuses_a_decoder_in_one_line(tmp_path, capsys, monkeypatch, rule):
    from econlm import training

    ckpt = save_tiny_checkpoint(tmp_path / "gpt2", family="gpt2", head="causal-lm")
    data = write_tiny_glue(tmp_path / "data")
    capsys.readouterr()

    def tokenized(*args, **kwargs):  # a long text's tokenizer warning would come before the refusal
        raise AssertionError("the decoder was refused only after its training text was tokenized")

    monkeypatch.setattr(training, "_features", tokenized)
    code = main(
        ["train", "--model", str(ckpt), "--task", "wikitext2", "--data-dir", str(data), *rule]
        + ["--max-length", "32", "--limit", "64", "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "breaks causal generation" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_decoder_folder_with_thresholds_is_refused_on_load_and_by_probe_in_one_line(tmp_path, capsys):
    from econlm.models import load_model

    ckpt = save_tiny_checkpoint(tmp_path / "llama", family="llama", head="causal-lm")
    save_thresholds(ckpt, TokenThresholds(2, init=[1.0], special_ids=[1]).spec())  # copied in by hand
    with pytest.raises(UserError, match="breaks causal generation") as info:
        load_model(str(ckpt))
    assert _one_line(info) and str(info.value).startswith(str(ckpt / THRESHOLDS_FILE))
    data = write_tiny_glue(tmp_path / "data")
    capsys.readouterr()
    code = main(["probe", "--model", str(ckpt), "--task", "wikitext2", "--data-dir", str(data), "--limit", "64",
                 "--max-length", "32", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "breaks causal generation" in err and "\n" not in err
    assert not (tmp_path / "p").exists()


def _shut_head(folder, layer: int = 0, head: int = 1) -> None:
    """Zero every weight reading ``head``'s slice of ``layer``'s output projection, as a closed gate folds."""
    from econlm.models import load_model

    loaded = load_model(str(folder))
    model = loaded.model
    head_dim = arch.shape(model.config).head_dim
    o_proj = arch.blocks(model)[layer].get_submodule(arch.family(model.config).o)
    with torch.no_grad():
        arch.in_columns(o_proj)[head * head_dim : (head + 1) * head_dim] = 0
    from econlm.tokens import attached_thresholds as attached

    attached(model).detach()
    model.save_pretrained(folder)


def test_values_count_only_the_heads_asked_for():
    # Head 0 looks only at token 1, head 1 only at token 2: over both, tokens 1 and 2 share the droppable
    # tokens' attention (1.5 each of an even 1); over head 0 alone token 1 has all of it (3 of 3 tokens).
    probs = torch.zeros(1, 2, 3, 3)
    probs[0, 0, :, 1] = 1
    probs[0, 1, :, 2] = 1
    real = torch.ones(1, 3, dtype=torch.bool)
    assert relative_values(probs, real, real).tolist() == [[0.0, 1.5, 1.5]]
    assert relative_values(probs, real, real, torch.tensor([True, False])).tolist() == [[0.0, 3.0, 0.0]]


def test_open_heads_are_those_whose_output_reaches_the_model(tmp_path):
    from econlm.gates import add_gates, gates_active
    from econlm.tokens import open_heads

    model = _no_dropout("bert").eval()
    assert open_heads(model, 0) is None  # every head open: nothing to select
    o_proj = arch.blocks(model)[0].get_submodule(arch.family(model.config).o)
    head_dim = arch.shape(model.config).head_dim
    with torch.no_grad():
        arch.in_columns(o_proj)[head_dim : 2 * head_dim] = 0  # head 1 folded shut
    assert open_heads(model, 0).tolist() == [True, False, True, True]
    gates = add_gates(model, ("attention",))
    with torch.no_grad():
        gates.heads[0].log_alpha[3] = -20.0  # gate of head 3 closed: its eval value is exactly 0
    batch, _ = _batch_and_specials("bert")
    with torch.no_grad(), gates_active(model):
        model(**batch)  # the pass draws (here: evaluates) each gate, which open_heads reads
    assert open_heads(model, 0).tolist() == [True, False, True, False]
    assert open_heads(model, 1) is None


def test_compact_keeps_learned_thresholds_and_drops_the_same_tokens(tmp_path, tiny, capsys):
    from econlm.models import load_model

    folder = _with_thresholds(tmp_path, tiny, [0.9, 1.0])
    _shut_head(folder)
    capsys.readouterr()
    out = tmp_path / "c"
    code = main(["compact", str(folder), "--task", "sst2", "--data-dir", str(tiny["data"]), "--out", str(out),
                 "--latency-repeats", "2"])
    assert code == 0, capsys.readouterr().err
    assert "levers (tokens: its learned thresholds;" in capsys.readouterr().out
    report = json.loads((out / "compact.json").read_text())
    assert report["removed"]["heads"] == 1
    # Both models dropped tokens by the thresholds on the calibration batches and agreed to float32 rounding.
    assert "learned thresholds" in report["verification"]["token_thresholds"]["checked"]
    saved = json.loads((out / THRESHOLDS_FILE).read_text())
    assert saved["format"] == 3 and saved["thresholds"] == pytest.approx([0.9, 1.0])
    original, compacted = load_model(str(folder)), load_model(str(out))
    assert Structure.of_model(compacted.model).heads[0] == Structure.of_model(original.model).heads[0] - 1
    batch = original.tokenizer(
        ["a fairly long sentence about a film and its plot and its cast", "short one"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        with attached_thresholds(original.model).recording() as before:
            expected = original.model(**batch).logits
        with attached_thresholds(compacted.model).recording() as after:
            got = compacted.model(**batch).logits
    assert before.last_kept() == after.last_kept()  # the same tokens left after each layer
    assert before.tokens_per_layer()[-1] < before.tokens_per_layer()[0]  # and some did leave
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # Each lever alone and both: the thresholds switched off for the levers without tokens.
    levers = report["levers"]
    variants = levers["variants"]
    assert levers["tokens"] == "its learned thresholds" and set(variants) == {"dense", "units", "tokens", "units+tokens"}
    assert variants["dense"]["macs_share"] == 1.0 and variants["units"]["macs_share"] < 1.0
    assert variants["units+tokens"]["macs_share"] < min(variants["units"]["macs_share"], variants["tokens"]["macs_share"])
    assert variants["tokens"]["macs_share"] == pytest.approx(report["before"]["token_budget"]["ratio"])
    assert variants["dense"]["speedup_dev_b1"] == 1.0 and variants["units+tokens"]["speedup_batch32"] > 0


def test_compact_scores_each_lever_of_a_learned_threshold_checkpoint_as_it_runs(tmp_path, capsys):
    import shutil

    import econlm
    from econlm.data import load_examples
    from econlm.models import load_model
    from econlm.tokens import every_token

    # A regression head on STS-B: its Spearman moves when tokens go, so a variant scored with the wrong
    # rule in force would show (SST-2 accuracy of a random model is 0.5 either way).
    ckpt = save_tiny_checkpoint(tmp_path / "m", head="seq-cls", num_hidden_layers=3, num_labels=1)
    data = write_tiny_glue(tmp_path / "data")
    folder = tmp_path / "learned"
    shutil.copytree(ckpt, folder)
    save_thresholds(folder, TokenThresholds(3, init=[0.9, 1.0], special_ids=[101, 102]).spec())
    _shut_head(folder)
    examples = load_examples("stsb", "dev", str(data))
    original = load_model(str(folder))
    with_tokens = econlm.probe(original.model, original.tokenizer, examples, ["full"], task="stsb").rows[0]["score"]
    with every_token(original.model):
        every = econlm.probe(original.model, original.tokenizer, examples, ["full"], task="stsb").rows[0]["score"]
    assert abs(with_tokens - every) > 1e-3  # the thresholds change the score: the check below can tell them apart
    capsys.readouterr()
    code = main(["compact", str(folder), "--task", "stsb", "--data-dir", str(data), "--out", str(tmp_path / "c"),
                 "--latency-repeats", "1"])
    assert code == 0, capsys.readouterr().err
    variants = json.loads((tmp_path / "c" / "compact.json").read_text())["levers"]["variants"]
    assert variants["dense"]["score"] == pytest.approx(every) and variants["tokens"]["score"] == pytest.approx(with_tokens)
    # Only a shut head went: the compacted model scores as the original did, with and without its tokens.
    assert variants["units"]["score"] == pytest.approx(every, abs=1e-4)
    assert variants["units+tokens"]["score"] == pytest.approx(with_tokens, abs=1e-4)


def test_format_2_thresholds_on_a_model_with_a_shut_head_are_refused_in_one_line(tmp_path, tiny):
    from econlm.models import load_model

    spec = {**TokenThresholds(3, init=[0.9, 1.0], special_ids=[101, 102]).spec(), "format": 2}
    folder = _with_thresholds(tmp_path, tiny, None, spec)
    load_model(str(folder))  # every head open: format 2 reads the same as format 3
    _shut_head(folder)
    with pytest.raises(UserError, match="format 2, whose token values counted every head") as info:
        load_model(str(folder))
    assert _one_line(info)


def test_compact_with_a_second_token_budget_on_learned_thresholds_is_one_line(tmp_path, tiny, capsys):
    folder = _with_thresholds(tmp_path, tiny, [0.9, 1.0])
    _shut_head(folder)
    capsys.readouterr()
    code = main(
        ["compact", str(folder), "--task", "sst2", "--data-dir", str(tiny["data"]), "--token-budget", "0.5"]
        + ["--out", str(tmp_path / "c")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "would drop them twice" in err and "\n" not in err
    assert not (tmp_path / "c").exists()


def test_a_second_token_budget_on_learned_thresholds_is_refused(tmp_path, tiny):
    from econlm.models import load_model
    from econlm.tokens import token_budget

    loaded = load_model(str(_with_thresholds(tmp_path, tiny, [0.9, 1.0])))
    with pytest.raises(UserError, match="drop twice") as info:
        with token_budget(loaded.model, 0.5):
            pass
    assert _one_line(info)
