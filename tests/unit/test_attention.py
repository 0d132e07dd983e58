"""Budgeted attention on tiny random models of every supported family."""

import math

import pytest
import torch

from econlm.attention import _SESSIONS, ATTENTION_NAME, Budget, budgeted_attention
from econlm.metrics import entropy, gini
from tests.conftest import DECODERS, FAMILIES, padded_batch, tiny_model


def _hidden(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("budget", ["full", "11", "64"])
def test_full_budget_reproduces_eager_exactly(family, budget):
    model = tiny_model(family)
    batch = padded_batch(family)
    reference = _hidden(model, batch)
    with budgeted_attention(model, budget):
        out = _hidden(model, batch)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_full_budget_reproduces_eager_with_left_padding(family):
    model = tiny_model(family)
    batch = padded_batch(family, padding_side="left")
    reference = _hidden(model, batch)
    with budgeted_attention(model, "full"):
        out = _hidden(model, batch)
    mask = batch["attention_mask"].bool()
    assert torch.equal(out[mask], reference[mask])


@pytest.mark.parametrize("family", FAMILIES)
def test_tight_budget_changes_outputs_but_not_padding_semantics(family):
    model = tiny_model(family)
    batch = padded_batch(family)
    reference = _hidden(model, batch)
    with budgeted_attention(model, "2"):
        out = _hidden(model, batch)
    assert not torch.allclose(out, reference)
    # The shortest row has 3 tokens: it must give the same result alone, unpadded (padding never competes).
    short = {k: v[2:3, :3] for k, v in batch.items()}
    with budgeted_attention(model, "2"):
        alone = _hidden(model, short)
    torch.testing.assert_close(out[2, :3], alone[0], rtol=1e-4, atol=1e-5)


def _reference_stats(model, batch, family):
    """Per-layer, per-head mean Gini/entropy from eager attention maps, row by row with the plain metrics."""
    with torch.no_grad():
        attentions = model(**batch, output_attentions=True).attentions
    mask = batch["attention_mask"].bool()
    out = []
    for layer in attentions:  # (B, H, T, T)
        b_, h_, t_, _ = layer.shape
        ginis = torch.zeros(h_)
        entropies = torch.zeros(h_)
        rows = 0
        for b in range(b_):
            for q in range(t_):
                if not mask[b, q]:
                    continue
                keys = mask[b].clone()
                if family in DECODERS:
                    keys[q + 1 :] = False
                rows += 1
                for h in range(h_):
                    row = layer[b, h, q][keys]
                    ginis[h] += gini(row)
                    entropies[h] += entropy(row)
        out.append((ginis / rows, entropies / rows, rows))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_statistics_match_attention_maps(family):
    model = tiny_model(family)
    batch = padded_batch(family)
    expected = _reference_stats(model, batch, family)
    with budgeted_attention(model, "full") as stats:
        _hidden(model, batch)
    per_layer = stats.summary()["per_layer"]
    assert [entry["index"] for entry in per_layer] == [0, 1]
    for entry, (ginis, entropies, rows) in zip(per_layer, expected):
        assert entry["rows"] == rows == 11 + 7 + 3  # real query rows only
        torch.testing.assert_close(
            torch.tensor(entry["gini"], dtype=torch.float64), ginis.double(), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            torch.tensor(entry["entropy"], dtype=torch.float64), entropies.double(), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_budget_of_one_key_gives_one_hot_rows(family):
    model = tiny_model(family)
    length = 9
    batch = {"input_ids": torch.randint(5, 100, (2, length)), "attention_mask": torch.ones(2, length, dtype=torch.long)}
    with budgeted_attention(model, "1") as stats:
        _hidden(model, batch)
    summary = stats.summary()
    assert summary["entropy"] == pytest.approx(0.0, abs=1e-6)
    if family in DECODERS:
        # row q sees q + 1 keys; a one-hot row over n keys has Gini (n - 1) / n
        expected = sum((n - 1) / n for n in range(1, length + 1)) / length
    else:
        expected = (length - 1) / length
    assert summary["gini"] == pytest.approx(expected, abs=1e-6)


def test_entropy_falls_as_budget_tightens():
    model = tiny_model("bert")
    batch = padded_batch("bert", lengths=(20, 16))
    entropies = []
    for budget in ["full", "8", "4", "2", "1"]:
        with budgeted_attention(model, budget) as stats:
            _hidden(model, batch)
        entropies.append(stats.summary()["entropy"])
    assert entropies == sorted(entropies, reverse=True)
    assert entropies[0] < math.log(20)


def test_taps_see_masked_probabilities_and_gradients_flow():
    model = tiny_model("llama")
    model.train()
    batch = padded_batch("llama")
    seen = []

    def tap(view):
        seen.append(view)

    with budgeted_attention(model, "3", record_stats=False, taps=(tap,)) as stats:
        out = model(**batch).last_hidden_state
    assert stats is None
    assert len(seen) == 2
    view = seen[0]
    assert float(view.probs.detach().masked_fill(view.allowed, 0).abs().max()) == 0.0  # nothing leaks to masked keys
    assert int(((view.probs > 0).sum(-1) > 3).sum()) == 0  # at most 3 keys per row
    (out.sum() + view.probs.sum()).backward()
    assert model.base_model.layers[0].self_attn.q_proj.weight.grad is not None


def test_context_manager_restores_model_after_an_exception():
    model = tiny_model("gpt2")
    batch = padded_batch("gpt2")
    reference = _hidden(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with budgeted_attention(model, "1"):
            assert model.config._attn_implementation == ATTENTION_NAME
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "eager"
    assert not any(m in _SESSIONS for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(_hidden(model, batch), reference)


def test_nested_contexts_restore_outer_budget():
    model = tiny_model("bert")
    batch = padded_batch("bert")
    with budgeted_attention(model, "2") as outer:
        first = _hidden(model, batch)
        with budgeted_attention(model, "full"):
            _hidden(model, batch)
        again = _hidden(model, batch)
    assert torch.equal(first, again)
    assert outer.summary()["rows"] == 2 * 2 * 21  # two calls, two layers, 21 real rows
    assert model.config._attn_implementation == "eager"


def test_unsupported_model_is_a_clear_error():
    from econlm.errors import UserError

    with pytest.raises(UserError, match="AttentionInterface"):
        with budgeted_attention(torch.nn.Linear(2, 2), Budget()):
            pass
