"""The post-hoc token budget (PoWER-BERT style): the selection core, the shortened run, its MACs and errors."""

import inspect
import json
import math

import pytest
import torch

from econlm import arch
from econlm.errors import UserError
from econlm.flops import Structure, layer_macs, shortened_macs
from econlm.tokens import TokenSchedule, keep_counts, padding_mask, select_tokens, token_budget, token_values
from tests.conftest import padded_batch, save_tiny_checkpoint, tiny_model, write_tiny_glue

ENCODERS = ["bert", "roberta", "distilbert", "electra"]


def _batch_and_specials(family):
    batch = padded_batch(family, lengths=(11, 7, 3))
    # Two ids that occur in the batch play [CLS] and [SEP]: every occurrence must survive.
    ids = batch["input_ids"]
    return batch, [int(ids[0, 4]), int(ids[1, 2])]


def _no_hooks(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "_forward_hooks_with_kwargs", None)
        for m in model.modules()
    )


# ---------------------------------------------------------------------------------------------------------
# The pure core


def test_selection_keeps_specials_and_the_most_attended_real_tokens():
    pad = float("nan")  # padding values must never matter, whatever they are
    values = torch.tensor(
        [
            [0.1, 5.0, 3.0, 0.2, 4.0, 9.0, 9.0],  # 5 real; [SEP] at 3 has a low value but stays
            [0.0, 1.0, 2.0, 7.0, pad, pad, pad],  # 4 real
            [0.5, 0.1, pad, pad, pad, pad, pad],  # 2 real: keeps both
        ]
    )
    real = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]).bool()
    special = torch.zeros_like(real)
    special[:, 0] = True
    special[0, 3] = True
    special[1, 5] = True  # a special id at a padding position is still padding
    keep = torch.tensor([3, 2, 2])
    index, kept = select_tokens(values.nan_to_num(9.0), real, special, keep)
    assert index.shape == (3, 3)
    assert kept.tolist() == [[True, True, True], [True, True, False], [True, True, False]]
    assert [row[: int(n)] for row, n in zip(index.tolist(), keep)] == [[0, 1, 3], [0, 3], [0, 1]]


def test_selection_breaks_ties_by_position_and_keep_counts_round_up():
    values = torch.ones(1, 5)
    index, kept = select_tokens(
        values, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.bool), torch.tensor([2])
    )
    assert index.tolist() == [[0, 1]] and kept.all()
    lengths = torch.tensor([10, 7, 3, 1])
    # ceil(0.7 * 10) is 7 (not 8, as 7.000000000000001 would give); never below the specials or above what is left
    got = keep_counts(0.7, lengths, torch.tensor([2, 2, 3, 1]), torch.tensor([10, 4, 3, 1]))
    assert got.tolist() == [7, 4, 3, 1]


def test_token_values_are_column_sums_over_heads_and_real_query_rows():
    probs = torch.zeros(1, 2, 3, 3)
    probs[0, 0] = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [1.0, 0.0, 0.0]])
    probs[0, 1] = torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.4, 0.0], [0.0, 1.0, 0.0]])
    real = torch.tensor([[True, True, False]])  # the third query row is padding: not counted
    assert token_values(probs, real)[0].tolist() == pytest.approx([0.5 + 0.2 + 0.0 + 0.6, 0.5 + 0.8 + 1.0 + 0.4, 0.0])


def test_padding_masks_follow_the_format_the_model_gave():
    kept = torch.tensor([[True, True], [True, False]])
    additive = padding_mask(kept, torch.zeros(2, 1, 2, 2), torch.float32)
    assert additive.shape == (2, 1, 2, 2) and additive[1, 0, 0, 1] == torch.finfo(torch.float32).min
    assert additive[0].eq(0).all()
    boolean = padding_mask(kept, torch.ones(2, 1, 2, 2, dtype=torch.bool), torch.float32)
    assert boolean.dtype == torch.bool and boolean[1, 0].tolist() == [[True, False], [True, False]]
    assert padding_mask(kept, None, torch.float16).dtype == torch.float16


# ---------------------------------------------------------------------------------------------------------
# The shortened run


@pytest.mark.parametrize("family", ENCODERS)
def test_full_budget_is_the_unmodified_model(family):
    model = tiny_model(family, head="seq-cls")
    batch, specials = _batch_and_specials(family)
    with torch.no_grad():
        reference = model(**batch).logits
        with token_budget(model, 1.0, special_ids=specials) as stats:
            out = model(**batch).logits
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    assert stats.profiles == {(11, 11): 1, (7, 7): 1, (3, 3): 1}
    assert _no_hooks(model)


def _reference_run(model, batch, fractions, specials):
    """Each example alone, no padding: run a layer, rank tokens by the attention they received, keep the best,
    run the next layer on those only. Returns per example the final states by original position."""
    fam = arch.family(model.config)
    blocks = arch.blocks(model)
    probs = {}
    handle = arch.get_submodule(blocks[0], fam.attention).register_forward_hook(
        lambda m, a, out: probs.__setitem__("p", out[1])
    )
    after_first = {}
    h2 = blocks[0].register_forward_hook(lambda m, a, out: after_first.__setitem__("h", out))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    h2.remove()
    results = []
    for b in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][b].sum())
        ids = batch["input_ids"][b, :n].tolist()
        positions = list(range(n))
        hidden = after_first["h"][b : b + 1, :n]  # (1, n, D)
        p = probs["p"][b : b + 1, :, :n, :n]  # (1, H, n, n), right padding: real rows and keys come first
        states = {i: hidden[0, i] for i in positions}
        for layer in range(1, len(blocks)):
            keep = max(math.ceil(fractions[layer - 1] * n - 1e-9), 0)
            values = p[0].sum(dim=(0, 1)).tolist()
            forced = [j for j, pos in enumerate(positions) if pos == 0 or ids[pos] in specials]
            rest = sorted((j for j in range(len(positions)) if j not in forced), key=lambda j: (-values[j], j))
            chosen = sorted(forced + rest[: max(keep - len(forced), 0)])
            positions = [positions[j] for j in chosen]
            hidden = hidden[:, chosen]
            captured = {}
            handle = arch.get_submodule(blocks[layer], fam.attention).register_forward_hook(
                lambda m, a, out: captured.__setitem__("p", out[1])
            )
            with torch.no_grad():
                out = blocks[layer](hidden, None)
            handle.remove()
            hidden = out[0] if isinstance(out, tuple) else out
            p = captured["p"]
            for j, pos in enumerate(positions):
                states[pos] = hidden[0, j]
        results.append((positions, states))
    return results


@pytest.mark.parametrize("family", ENCODERS)
def test_budget_equals_running_each_example_alone_on_its_kept_tokens(family):
    model = tiny_model(family, num_hidden_layers=3) if family != "distilbert" else tiny_model(family, n_layers=3)
    batch, specials = _batch_and_specials(family)
    fractions = (0.6, 0.3, 0.3)
    with torch.no_grad(), token_budget(model, fractions, special_ids=specials) as stats:
        out = model(**batch).last_hidden_state
    reference = _reference_run(model, batch, fractions, specials)
    kept_last = stats.last_kept()[-1]
    for b, (positions, states) in enumerate(reference):
        assert kept_last[b] == positions  # the same tokens reached the last layer
        n = int(batch["attention_mask"][b].sum())
        for pos in range(n):  # kept tokens: final state; dropped ones: the state they were dropped with
            torch.testing.assert_close(out[b, pos], states[pos], rtol=1e-5, atol=1e-5)
    assert all(0 in kept for kept in kept_last)  # [CLS] always survives
    ids = batch["input_ids"]
    for b, kept in enumerate(kept_last):  # so does every special id
        n = int(batch["attention_mask"][b].sum())
        assert {p for p in range(n) if int(ids[b, p]) in specials} <= set(kept)


@pytest.mark.parametrize("family", ENCODERS)
def test_an_unpadded_batch_takes_the_short_path_to_the_same_tokens_and_states(family):
    # Batch 1 (no padding in or out) ranks with one reduction, gathers without a padding slot and hands later
    # blocks no mask; it must keep the tokens, and compute the states, that running each example alone does.
    model = tiny_model(family, num_hidden_layers=3) if family != "distilbert" else tiny_model(family, n_layers=3)
    batch, specials = _batch_and_specials(family)
    fractions = (0.6, 0.3, 0.3)
    reference = _reference_run(model, batch, fractions, specials)
    masks = []
    block = arch.blocks(model)[2]
    signature = inspect.signature(block.forward)
    handle = block.register_forward_pre_hook(
        lambda m, args, kwargs: masks.append(signature.bind(*args, **kwargs).arguments.get("attention_mask", "?")),
        with_kwargs=True,
    )
    try:
        for b, (positions, states) in enumerate(reference):
            n = int(batch["attention_mask"][b].sum())
            one = {k: v[b : b + 1, :n] for k, v in batch.items()}
            with torch.no_grad(), token_budget(model, fractions, special_ids=specials) as stats:
                out = model(**one).last_hidden_state
            assert stats.last_kept()[-1] == [positions]
            for pos in range(n):
                torch.testing.assert_close(out[0, pos], states[pos], rtol=1e-5, atol=1e-5)
    finally:
        handle.remove()
    assert masks and all(mask is None for mask in masks)  # the third block ran on the short path


def test_later_layers_really_run_on_fewer_tokens():
    model = tiny_model("bert", num_hidden_layers=3)
    batch, specials = _batch_and_specials("bert")
    seen = []
    handles = [
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for block in arch.blocks(model)
    ]
    with torch.no_grad(), token_budget(model, "0.5", special_ids=specials):
        model(**batch)
    for h in handles:
        h.remove()
    assert seen == [11, 6, 6]  # the longest row keeps ceil(0.5 * 11) = 6; the batch is padded to it


def test_sdpa_models_run_eager_inside_and_get_their_attention_back():
    model = tiny_model("bert", num_hidden_layers=3)
    batch, specials = _batch_and_specials("bert")
    with torch.no_grad(), token_budget(model, 0.5, special_ids=specials):
        eager = model(**batch).last_hidden_state
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), token_budget(model, 0.5, special_ids=specials):
        assert model.config._attn_implementation == "eager"
        out = model(**batch).last_hidden_state
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(out, eager)


def test_it_composes_with_budgeted_attention():
    from econlm.attention import budgeted_attention

    model = tiny_model("bert", num_hidden_layers=3)
    batch, specials = _batch_and_specials("bert")
    with torch.no_grad(), token_budget(model, 0.5, special_ids=specials):
        reference = model(**batch).last_hidden_state
    with torch.no_grad(), budgeted_attention(model, "full") as attn, token_budget(model, 0.5, special_ids=specials):
        out = model(**batch).last_hidden_state
    torch.testing.assert_close(out, reference)
    rows = [entry["rows"] for entry in attn.per_layer()]
    assert rows[0] == 11 + 7 + 3 and rows[1] == rows[2] == 6 + 4 + 2  # later layers: fewer real query rows


def test_hooks_and_attention_are_removed_after_an_exception():
    model = tiny_model("bert", num_hidden_layers=3)
    model.set_attn_implementation("sdpa")
    batch, specials = _batch_and_specials("bert")
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    with pytest.raises(RuntimeError, match="boom"), token_budget(model, 0.5, special_ids=specials):
        model(**batch)
        raise RuntimeError("boom")
    assert _no_hooks(model) and model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, reference, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Compute


def test_macs_of_shortened_sequences_match_a_hand_count():
    structure = Structure.of_model(tiny_model("bert"))  # D = 32, 4 heads of 8, FFN 64, 2 layers

    def by_hand(t):  # Q, K, V, O: t*D*D each; scores and attn x V: h*t*t*d each; FFN up and down: t*D*F each
        return 4 * t * 32 * 32 + 2 * 4 * t * t * 8 + 2 * t * 32 * 64

    assert by_hand(10) == sum(layer_macs(structure, 0, 10).values()) == 88320
    got = shortened_macs(structure, [(10, 5), (10, 5), (4, 2)])
    assert got["macs"] == 2 * (by_hand(10) + by_hand(5)) + by_hand(4) + by_hand(2)
    assert got["reference_macs"] == 2 * 2 * by_hand(10) + 2 * by_hand(4)
    assert got["ratio"] == pytest.approx(got["macs"] / got["reference_macs"]) and got["flops"] == 2 * got["macs"]
    assert got["by_layer"][1]["tokens_mean"] == pytest.approx(4.0) and got["examples"] == 3
    assert shortened_macs(structure, {(10, 5): 2, (4, 2): 1})["macs"] == got["macs"]


def test_a_run_records_the_tokens_each_layer_ran_on():
    model = tiny_model("bert", num_hidden_layers=3)
    batch, specials = _batch_and_specials("bert")
    with torch.no_grad(), token_budget(model, "0.6,0.3,0.3", special_ids=specials) as stats:
        model(**batch)
        model(**batch)
    assert stats.examples == 6
    for profile in stats.profiles:
        n = profile[0]
        assert n in (11, 7, 3) and profile[1] >= math.ceil(0.6 * n - 1e-9) and profile[2] <= profile[1]
    macs = stats.macs(Structure.of_model(model))
    assert macs["macs"] == shortened_macs(Structure.of_model(model), stats.profiles)["macs"]
    assert 0 < macs["ratio"] < 1


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_decoders_are_refused_with_the_reason():
    with pytest.raises(UserError, match="breaks causal generation") as info:
        with token_budget(tiny_model("gpt2"), 0.5):
            pass
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["0", "-0.5", "1.5", "0.5,0,0.2", "nan", "abc", ""])
def test_bad_fractions_are_one_line(text):
    with pytest.raises(UserError) as info:
        TokenSchedule.parse(text)
    assert "\n" not in str(info.value)


def test_a_per_layer_schedule_needs_one_fraction_per_layer_and_may_not_grow():
    model = tiny_model("bert")  # 2 layers
    with pytest.raises(UserError, match="gives 3 fractions but the model has 2 layers"):
        with token_budget(model, "1,0.5,0.5"):
            pass
    with pytest.raises(UserError, match="cannot come back"):
        TokenSchedule.parse("0.5,0.8")
    assert _no_hooks(model)
    assert TokenSchedule.parse("50%").label == "0.5" and TokenSchedule.parse([1, 0.5]).per_layer(2) == (1, 0.5)


# ---------------------------------------------------------------------------------------------------------
# The probe and latency


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    return {"ckpt": save_tiny_checkpoint(root / "m", head="seq-cls"), "data": write_tiny_glue(root / "data")}


def test_probe_cli_reports_score_schedule_and_exact_macs(tiny, tmp_path, capsys):
    from econlm.cli import main

    out = tmp_path / "p"
    code = main(
        [
            "probe",
            "--model",
            str(tiny["ckpt"]),
            "--task",
            "sst2",
            "--data-dir",
            str(tiny["data"]),
            "--budgets",
            "full,2",
            "--token-budget",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "token MACs" in printed and "token budget 0.5,0.5" in printed
    written = json.loads((out / "probe.json").read_text())
    assert written["token_budget"]["schedule"] == [0.5, 0.5] and written["config"]["token_budget"] == "0.5"
    for row in written["rows"]:
        assert row["token_budget"] == "0.5,0.5" and 0 < row["token_macs_ratio"] < 1
        assert row["token_macs"] < row["token_reference_macs"] and not math.isnan(row["score"])
        assert row["per_layer"][1]["tokens_mean"] < row["per_layer"][0]["tokens_mean"]
    assert "token_macs_ratio" in (out / "probe.csv").read_text().splitlines()[0]


def test_probe_times_the_token_budget_on_real_dev_batches(tiny, tmp_path, capsys):
    from econlm.cli import main

    out = tmp_path / "p"
    flags = ["probe", "--model", str(tiny["ckpt"]), "--task", "sst2", "--data-dir", str(tiny["data"])]
    flags += ["--budgets", "full", "--token-budget", "0.5", "--latency-repeats", "2", "--latency-examples", "12"]
    flags += ["--batch-size", "8", "--out", str(out)]
    assert main(flags) == 0
    assert "token budget 0.5: x" in capsys.readouterr().out
    timed = json.loads((out / "probe.json").read_text())["token_budget_latency"]
    # 12 of the 24 dev examples (every second one), in batches of 8: 8 + 4, each padded to its own longest row
    assert timed["examples"] == 12 and timed["batches"] == 2 and timed["repeats"] == 2
    from econlm.data import load_examples
    from econlm.models import load_model

    tokenizer = load_model(str(tiny["ckpt"])).tokenizer
    timed_texts = [e.text_a for e in load_examples("sst2", "dev", str(tiny["data"]))[::2]]
    lengths = sorted((len(tokenizer(t)["input_ids"]) for t in timed_texts), reverse=True)  # longest first
    assert timed["tokens_real"] == sum(lengths)  # padding is never counted as a token the budget could drop
    assert timed["tokens_padded"] == 8 * lengths[0] + 4 * lengths[8] and timed["speedup"] > 0
    assert timed["speedup"] == pytest.approx(
        timed["median_seconds"]["every_token"] / timed["median_seconds"]["token_budget"]
    )


def test_probe_with_a_full_token_budget_scores_like_the_plain_probe(tiny):
    import econlm
    from econlm.data import load_examples
    from econlm.models import load_model

    loaded = load_model(str(tiny["ckpt"]))
    examples = load_examples("sst2", "dev", str(tiny["data"]))
    plain = econlm.probe(loaded.model, loaded.tokenizer, examples, ["full"], task="sst2")
    full = econlm.probe(loaded.model, loaded.tokenizer, examples, ["full"], task="sst2", token_budget="1")
    assert full.rows[0]["score"] == plain.rows[0]["score"] and full.rows[0]["token_macs_ratio"] == 1.0
    assert full.meta["token_budget"]["schedule"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--token-budget", "0"], "must lie in (0, 1]"),
        (["--token-budget", "1,0.5,0.5"], "gives 3 fractions but the model has 2 layers"),
        (["--token-budget", "1.5"], "must lie in (0, 1]"),
        (["--latency-repeats", "3"], "give --token-budget F (or probe a checkpoint trained with --cost tokens or --token-budget)"),
        (["--token-budget", "0.5", "--latency-repeats", "-1"], "--latency-repeats must be >= 0"),
    ],
)
def test_probe_cli_bad_token_budget_is_one_line_exit_2(tiny, tmp_path, capsys, flags, says):
    from econlm.cli import main

    code = main(
        [
            "probe",
            "--model",
            str(tiny["ckpt"]),
            "--task",
            "sst2",
            "--data-dir",
            str(tiny["data"]),
            *flags,
            "--out",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()  # nothing written


def test_probe_cli_refuses_a_decoder(tmp_path, capsys):
    from econlm.cli import main

    ckpt = save_tiny_checkpoint(tmp_path / "gpt2", family="gpt2", head="causal-lm")
    data = write_tiny_glue(tmp_path / "data")
    capsys.readouterr()
    code = main(
        [
            "probe",
            "--model",
            str(ckpt),
            "--task",
            "wikitext2",
            "--data-dir",
            str(data),
            "--limit",
            "64",
            "--max-length",
            "32",
            "--token-budget",
            "0.5",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "breaks causal generation" in err and "\n" not in err


def test_latency_helper_times_both_on_real_batches_interleaved(tiny):
    from econlm.latency import measure_token_budget, text_batches
    from econlm.models import load_model

    loaded = load_model(str(tiny["ckpt"]))
    texts = ["a short one", "a somewhat longer sentence with more words in it", "mid length text here"]
    batches = text_batches(loaded.tokenizer, texts, batch_size=2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]  # dynamic padding: each batch its own width
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]
    result = measure_token_budget(loaded.model, batches, 0.5, tokenizer=loaded.tokenizer, warmup=1, repeats=2)
    assert set(result["timings"]) == {"full", "token_budget"} and result["speedup"] > 0
    assert result["timings"]["token_budget"].repeats == 2
    assert _no_hooks(loaded.model)
