"""The analytic MACs model against torch's FLOP counter, and effective compute against hand counts."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from econlm.activations import hard_threshold, record_sparsity
from econlm.attention import budgeted_attention
from econlm.flops import Structure, dense_macs, effective_macs_per_token
from tests.conftest import DECODERS, FAMILIES, padded_batch, tiny_model

HEADS = ["base", "seq-cls"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", HEADS + ["causal-lm"])
@pytest.mark.parametrize("seq_len", [8, 33, 90])
def test_dense_flops_agree_with_torch_flop_counter(family, head, seq_len):
    if head == "causal-lm" and family not in DECODERS:
        pytest.skip("encoders have no causal LM head")
    model = tiny_model(family, head=head)
    ids = torch.randint(5, 100, (2, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    ours = dense_macs(Structure.of_model(model), seq_len, batch=2, include_head=True)
    assert ours["flops"] == 2 * ours["macs"]
    assert abs(counter.get_total_flops() - ours["flops"]) <= 0.01 * ours["flops"]


def test_effective_macs_hand_count():
    structure = Structure(kind="encoder", hidden=4, head_dim=2, gated_ffn=False, heads=(2,), kv_heads=(2,), ffn=(8,))
    stats = [{"allowed_keys_mean": 10.0, "kept_keys_mean": 3.0, "ffn_active_share": 0.25}]
    result = effective_macs_per_token(structure, stats)
    projections = 4 * 4 + 2 * 4 * 4 + 4 * 4  # q, k, v, o per token
    up, down = 4 * 8, 8 * 4
    scores = 2 * 10 * 2
    assert result["reference_macs_per_token"] == projections + up + scores + 2 * 10 * 2 + down
    assert result["effective_macs_per_token"] == projections + up + scores + 2 * 3 * 2 + down * 0.25
    assert result["effective_flops_per_token"] == 2 * result["effective_macs_per_token"]


def test_key_counts_follow_the_budget():
    model = tiny_model("llama")
    length = 10
    batch = {"input_ids": torch.randint(5, 100, (1, length)), "attention_mask": torch.ones(1, length, dtype=torch.long)}
    with budgeted_attention(model, "3") as stats, torch.no_grad():
        model(**batch)
    layer = stats.summary()["per_layer"][0]
    # causal: row q sees q + 1 keys; the budget keeps min(3, q + 1)
    assert layer["allowed_keys_mean"] == pytest.approx(sum(range(1, 11)) / 10)
    assert layer["kept_keys_mean"] == pytest.approx(sum(min(3, n) for n in range(1, 11)) / 10)


def test_hard_threshold_really_zeroes_small_activations():
    model = tiny_model("bert")
    batch = padded_batch("bert")
    with record_sparsity(model, (0.0,)) as plain, torch.no_grad():
        reference = model(**batch).last_hidden_state
    with hard_threshold(model, 0.05), record_sparsity(model, (0.0,)) as thresholded, torch.no_grad():
        out = model(**batch).last_hidden_state
    assert thresholded.summary()["overall"]["0e+00"] > plain.summary()["overall"]["0e+00"] + 0.01
    assert not torch.equal(out, reference)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, reference)  # hooks are gone afterwards


def test_probe_rows_carry_effective_compute_measured_on_the_same_computation(tmp_path):
    from econlm.models import LoadedModel, ResolvedModel
    from econlm.probing import ProbeConfig, run_probe
    from tests.conftest import save_tiny_checkpoint, write_tiny_glue

    path = save_tiny_checkpoint(tmp_path / "m")
    data = write_tiny_glue(tmp_path / "d")
    from econlm.models import load_model

    loaded = load_model(str(path))
    assert isinstance(loaded, LoadedModel) and isinstance(loaded.resolved, ResolvedModel)
    plain = run_probe(
        ProbeConfig(model=str(path), task="stsb", budgets=("full", "2"), data_dir=str(data)), model=loaded
    )
    sparse = run_probe(
        ProbeConfig(model=str(path), task="stsb", budgets=("full", "2"), data_dir=str(data), ffn_eps=0.05), model=loaded
    )
    full, tight = plain.rows
    assert full["effective_ratio"] == pytest.approx(1.0, abs=0.02)  # GELU is almost never exactly 0
    assert tight["effective_ratio"] < full["effective_ratio"]
    assert sparse.rows[0]["ffn_active_share"] < full["ffn_active_share"]
    assert sparse.rows[0]["effective_ratio"] < full["effective_ratio"]
    assert sparse.rows[0]["score"] != full["score"]  # the threshold was really applied while scoring
