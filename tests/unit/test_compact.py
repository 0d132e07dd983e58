"""Compaction: removing dead units keeps outputs, shrinks parameters and MACs by the computed amount."""

import json
import re

import pytest
import torch

from econlm import arch
from econlm.cli import main
from econlm.compact import apply_plan, plan_removal
from econlm.flops import Structure, dense_macs, unit_macs_per_token
from tests.conftest import FAMILIES, padded_batch, save_tiny_checkpoint, tiny_model, write_tiny_glue


def _kill_units(model, heads: dict[int, list[int]], neurons: dict[int, list[int]]):
    """Zero the output-projection slice of some heads and the down-projection column of some neurons."""
    fam = arch.family(model.config)
    d = arch.shape(model.config).head_dim
    with torch.no_grad():
        for i, block in enumerate(arch.blocks(model)):
            o, down = block.get_submodule(fam.o), block.get_submodule(fam.ffn_down)
            linear = isinstance(o, torch.nn.Linear)
            for h in heads.get(i, []):
                (o.weight[:, h * d : (h + 1) * d] if linear else o.weight[h * d : (h + 1) * d]).zero_()
            for n in neurons.get(i, []):
                (down.weight[:, n] if linear else down.weight[n]).zero_()


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_dead_units_keeps_outputs_and_cuts_macs_by_the_computed_amount(family):
    model = tiny_model(family)
    gqa = family in ("llama", "qwen2", "mistral")  # 4 query heads over 2 K/V heads: groups of 2
    heads = {0: [0, 1], 1: [3]} if gqa else {0: [0, 2], 1: [1]}
    _kill_units(model, heads, {0: [1, 5, 9], 1: list(range(10))})
    batch = padded_batch(family)
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    before = Structure.of_model(model)
    params_before = sum(p.numel() for p in model.parameters())
    plans = plan_removal(model, None, eps=1e-3)
    apply_plan(model, plans)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)

    after = Structure.of_model(model)
    if gqa:  # only layer 0's first group (query heads 0, 1 and K/V head 0) is complete; head 3 alone stays
        assert after.heads == (2, 4) and after.kv_heads == (1, 2)
    else:
        assert after.heads == (2, 3) and after.kv_heads == (2, 3)
    assert after.ffn == (61, 54)
    seq = 16
    expected_saving = 0
    for layer in range(2):
        unit = unit_macs_per_token(before, layer, seq)
        expected_saving += seq * (
            unit["query_head"] * (before.heads[layer] - after.heads[layer])
            + unit["kv_head"] * (before.kv_heads[layer] - after.kv_heads[layer])
            + unit["ffn_neuron"] * (before.ffn[layer] - after.ffn[layer])
        )
    assert dense_macs(before, seq)["macs"] - dense_macs(after, seq)["macs"] == expected_saving
    # Parameters: each removed head/neuron takes its weight slices (and biases) with it.
    d, hidden = before.head_dim, before.hidden
    ffn_bias = not gqa  # the encoders and GPT-2 have FFN biases; Llama-likes do not
    qkv_bias = family != "llama" and family != "mistral"  # Qwen2 has Q/K/V biases
    per_neuron = (3 if before.gated_ffn else 2) * hidden + (1 if ffn_bias else 0)
    per_query_head = 2 * hidden * d + (d if qkv_bias else 0)
    per_kv_head = 2 * hidden * d + (2 * d if qkv_bias else 0)
    removed = sum(
        (before.heads[i] - after.heads[i]) * per_query_head
        + (before.kv_heads[i] - after.kv_heads[i]) * per_kv_head
        + (before.ffn[i] - after.ffn[i]) * per_neuron
        for i in range(2)
    )
    assert params_before - sum(p.numel() for p in model.parameters()) == removed


def test_a_compacted_checkpoint_with_a_stale_or_missing_structure_file_is_one_line(dead_checkpoint, tmp_path, capsys):
    """The structure file says the shapes the weights were saved in: one from another compaction (valid, but
    other widths) or none at all is a user's mistake to fix, not a size-mismatch traceback."""
    out = tmp_path / "small"
    args = ["--task", "sst2", "--data-dir", str(dead_checkpoint["data"]), "--calib-examples", "8", "--eps", "1e-9"]
    assert main(["compact", str(dead_checkpoint["path"]), "--out", str(out), "--latency-repeats", "1", *args]) == 0
    capsys.readouterr()
    structure_file = out / "econlm_structure.json"
    structure = json.loads(structure_file.read_text())
    structure["layers"][0]["ffn"] += 3  # well formed, but not the widths these weights have
    structure_file.write_text(json.dumps(structure))
    expected = {
        "stale": r"the weights in .* do not match its econlm_structure.json \(size mismatch for .*\); restore",
        "missing": r"do not have the shapes its config.json gives; .* needs the econlm_structure.json saved with it",
    }
    for case, message in expected.items():
        if case == "missing":
            structure_file.unlink()
        again = tmp_path / f"again-{case}"
        assert main(["compact", str(out), "--out", str(again), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), err
        assert not again.exists()


def test_unused_units_below_eps_are_found_by_calibration():
    from econlm.compact import calibrate

    model = tiny_model("bert")
    with torch.no_grad():  # neuron 3 of layer 1 can never fire: zero its up-projection row, bias very negative
        model.encoder.layer[1].intermediate.dense.weight[3].zero_()
        model.encoder.layer[1].intermediate.dense.bias[3] = -30.0
    batch = padded_batch("bert")
    calibration = calibrate(model, [batch])
    assert float(calibration["neuron_max"][1][3]) < 1e-6
    plans = plan_removal(model, calibration, eps=1e-3)
    assert 3 not in plans[1].keep_neurons and plans[1].neurons_unused == 1 and plans[1].neurons_zero == 0


@pytest.fixture(scope="module")
def dead_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("compact")
    path = save_tiny_checkpoint(root / "model", head="seq-cls")
    from econlm.models import load_model

    loaded = load_model(str(path))
    _kill_units(loaded.model, {0: [1], 1: [0, 2]}, {0: list(range(32)), 1: [0]})
    loaded.model.save_pretrained(path)
    return {"path": path, "data": write_tiny_glue(root / "data"), "root": root}


def test_compact_cli_saves_verifies_and_reloads(dead_checkpoint, tmp_path, capsys):
    out = tmp_path / "small"
    code = main(
        [
            "compact",
            str(dead_checkpoint["path"]),
            "--out",
            str(out),
            "--task",
            "sst2",
            "--data-dir",
            str(dead_checkpoint["data"]),
            "--calib-examples",
            "16",
            "--eps",
            "1e-9",
            "--latency-repeats",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "compact.json").read_text())
    assert report["removed"]["heads"] == 3 and report["removed"]["neurons"] == 33
    assert report["verification"]["only_exactly_dead_units_removed"]
    assert report["verification"]["max_abs_output_difference"] < 1e-5
    assert report["after"]["dense_flops"] < report["before"]["dense_flops"]
    assert report["after"]["score"]["value"] == pytest.approx(report["before"]["score"]["value"])
    assert report["after"]["structure"] == {"heads": [3, 2], "kv_heads": [3, 2], "ffn": [32, 63]}
    # Both models were timed in one interleaved run, in ONNX Runtime too when it is installed (make installs it).
    import importlib.util

    runtimes = ["torch", "onnxruntime"] if importlib.util.find_spec("onnxruntime") else ["torch"]
    assert report["after"]["latency_setup"]["runtimes"] == runtimes
    for key in ("batch1", "batch32"):
        assert report["before"]["latency_seconds"][key]["repeats"] == 3
        if len(runtimes) == 2:
            assert report["ratios"][f"onnxruntime_speedup_{key}"] > 0
            assert report["after"]["onnxruntime_latency_seconds"][key]["repeats"] == 3

    import econlm
    from econlm.models import load_model

    small = econlm.load(str(out))
    original = load_model(str(dead_checkpoint["path"])).model
    batch = padded_batch("bert")
    batch["input_ids"] = batch["input_ids"] + 1000  # real vocabulary ids
    with torch.no_grad():
        torch.testing.assert_close(small(**batch).logits, original(**batch).logits, rtol=1e-4, atol=1e-5)
    code = main(
        [
            "probe",
            "--model",
            str(out),
            "--task",
            "sst2",
            "--budgets",
            "full,2",
            "--data-dir",
            str(dead_checkpoint["data"]),
            "--out",
            str(tmp_path / "probe"),
        ]
    )
    assert code == 0


def test_nothing_removable_says_so_and_writes_nothing(tmp_path, capsys):
    path = save_tiny_checkpoint(tmp_path / "model", head="seq-cls")
    data = write_tiny_glue(tmp_path / "data")
    out = tmp_path / "out"
    code = main(
        [
            "compact",
            str(path),
            "--out",
            str(out),
            "--task",
            "sst2",
            "--data-dir",
            str(data),
            "--calib-examples",
            "8",
            "--eps",
            "1e-9",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "nothing to remove" in err and not out.exists()


@pytest.mark.parametrize("eps", ["0", "-1e-3", "nan"])
def test_eps_must_be_positive(tmp_path, capsys, eps):
    code = main(["compact", str(tmp_path), "--out", str(tmp_path / "o"), f"--eps={eps}"])
    assert code == 2 and "--eps must be a positive number" in capsys.readouterr().err


def test_unsupported_architecture_names_the_supported_ones(tmp_path, capsys):
    from transformers import OPTConfig, OPTModel

    OPTModel(
        OPTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            vocab_size=50,
            word_embed_proj_dim=16,
        )
    ).save_pretrained(tmp_path / "opt")
    code = main(["compact", str(tmp_path / "opt"), "--out", str(tmp_path / "o"), "--task", "sst2"])
    err = capsys.readouterr().err
    assert code == 2 and "'opt' is not supported" in err and "llama" in err and "bert" in err


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_compact_model_in_memory_returns_a_smaller_copy_and_a_typed_report(family):
    from econlm.compact import compact_model

    model = tiny_model(family)
    gqa = family == "llama"
    _kill_units(model, {0: [0, 1]} if gqa else {0: [0, 2], 1: [1]}, {1: list(range(10))})
    batch = padded_batch(family)
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    small, report = compact_model(model, [batch], eps=1e-3, seq_len=16)
    assert Structure.of_model(model).ffn == (64, 64), "the model passed in is not changed"
    assert Structure.of_model(small).ffn == (64, 54)
    assert report.removed_neurons == 10 and report.removed_heads == 2 + (0 if gqa else 1)
    assert report.only_exactly_dead_units_removed and report.max_abs_output_difference < 1e-5
    # The MACs counted on the models themselves, independently of the report.
    before, after = (dense_macs(Structure.of_model(m), 16, include_head=True)["macs"] for m in (model, small))
    assert report.flops_ratio == pytest.approx(after / before) and after < before
    assert report.to_json()["removed"] == {"heads": 2 + (0 if gqa else 1), "neurons": 10, "per_layer": list(report.per_layer)}
    with torch.no_grad():
        torch.testing.assert_close(small(**batch).last_hidden_state, reference, rtol=1e-5, atol=1e-5)


def test_compact_model_with_nothing_dead_says_so_without_raising():
    from econlm.compact import compact_model

    model = tiny_model("bert")
    small, report = compact_model(model, [padded_batch("bert")], eps=0.0)
    assert not report.removed_anything and report.flops_ratio == 1.0


def test_compact_reports_the_latency_tables_prediction(dead_checkpoint, tmp_path, capsys):
    from econlm.models import load_config
    from tests.conftest import latency_table_for

    table = latency_table_for(load_config(str(dead_checkpoint["path"]))[0], seq_len=96)
    table_path = tmp_path / "table.json"
    table_path.write_text(json.dumps(table.to_json()))
    out = tmp_path / "small"
    argv = ["compact", str(dead_checkpoint["path"]), "--out", str(out), "--task", "sst2", "--data-dir",
            str(dead_checkpoint["data"]), "--calib-examples", "16", "--eps", "1e-9", "--latency-repeats", "2",
            "--no-onnx", "--latency-table", str(table_path)]
    assert main(argv) == 0
    assert "latency table predicts" in capsys.readouterr().out
    predicted = json.loads((out / "compact.json").read_text())["latency_table"]
    # Heads kept (3, 2) of 4 and FFN (32, 63) of 64, on the made-up linear curves of latency_table_for:
    layer = 0.01 / 4
    saved = layer * (1 / 4 + 2 / 4) + layer * (32 / 64 + 1 / 64)
    assert predicted["predicted_speedup"] == pytest.approx(0.01 / (0.01 - saved))
    assert predicted["measured_speedup"] > 0 and predicted["batch"] == 1 and predicted["seq_len"] == 96
    (tmp_path / "bad.json").write_text("[]")
    argv[argv.index(str(table_path))] = str(tmp_path / "bad.json")
    argv[argv.index(str(out))] = str(tmp_path / "other")
    assert main(argv) == 2 and "malformed" in capsys.readouterr().err


def test_compact_with_a_token_budget_reports_each_lever_alone_and_both(dead_checkpoint, tmp_path, capsys, monkeypatch):
    from econlm.data import load_examples
    from econlm.evaluate import encode
    from econlm.flops import Structure, shortened_macs
    from econlm.models import load_model
    from econlm.probing import probe

    out = tmp_path / "small"
    argv = ["compact", str(dead_checkpoint["path"]), "--out", str(out), "--task", "sst2", "--data-dir",
            str(dead_checkpoint["data"]), "--calib-examples", "16", "--eps", "1e-9", "--latency-repeats", "2",
            "--no-onnx", "--token-budget", "0.5"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "levers (tokens: token budget 0.5;" in printed and "units+tokens" in printed
    report = json.loads((out / "compact.json").read_text())
    levers = report["levers"]["variants"]
    assert set(levers) == {"dense", "units", "tokens", "units+tokens"}
    original = load_model(str(dead_checkpoint["path"]))
    examples = load_examples("sst2", "dev", str(dead_checkpoint["data"]))
    # Units alone: the compacted blocks' MACs over the dense blocks' on the same real dev tokens.
    ids, _, _ = encode(original.tokenizer, [e.text_a for e in examples], None, 128)
    lengths = [(len(row),) * 2 for row in ids]
    small = Structure.of_model(load_model(str(out)).model)
    dense = shortened_macs(Structure.of_model(original.model), lengths)["reference_macs"]
    assert levers["dense"]["macs_share"] == 1.0
    assert levers["units"]["macs_share"] == pytest.approx(shortened_macs(small, lengths)["reference_macs"] / dense)
    # Tokens alone: the probe's score and MACs ratio for the same budget on the dense model.
    row = probe(original.model, original.tokenizer, examples, task="sst2", token_budget=0.5).rows[0]
    assert levers["tokens"]["score"] == pytest.approx(row["score"])
    assert levers["tokens"]["macs_share"] == pytest.approx(row["token_macs_ratio"])
    assert levers["dense"]["score"] == report["before"]["score"]["value"]
    assert levers["units+tokens"]["macs_share"] < min(levers["units"]["macs_share"], levers["tokens"]["macs_share"])
    for variant in levers.values():
        assert variant["speedup_batch1"] > 0 and variant["speedup_batch32"] > 0
        assert variant["speedup_dev_b1"] > 0 and variant["speedup_dev_b32"] > 0
    assert levers["dense"]["speedup_batch1"] == 1.0 and levers["dense"]["speedup_dev_b1"] == 1.0
    # Real dev batches: every k-th example, each batch padded to its own longest row (the tiny dev split has
    # fewer than 64 examples, so all of them); the real and padded token counts say what was timed.
    timed_on = report["levers"]["timed_on"]
    real = sum(len(row) for row in ids)
    assert timed_on["dev_b1"].startswith(f"{len(examples)} dev examples (evenly spaced over the split")
    assert f"({real} real of {real} padded tokens)" in timed_on["dev_b1"]
    assert f"({real} real of " in timed_on["dev_b32"] and "random rows" in timed_on["batch1"]
    assert "on dev batches of 1:" in printed
    # Bad input: one line and no progress bar before it, exit 2, nothing written.
    monkeypatch.setenv("ECONLM_NO_PROGRESS", "0")  # the conftest default would hide a bar started before the check
    for budget, message in [("1,0.5,0.5", "gives 3 fractions but the model has 2 layers"), ("0", "must lie in")]:
        argv[argv.index("--token-budget") + 1] = budget
        argv[argv.index("--out") + 1] = str(tmp_path / budget)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "\r" not in err
        assert not (tmp_path / budget).exists()


def test_a_token_budget_on_a_decoder_is_refused_by_compact(tmp_path, capsys, monkeypatch):
    path = save_tiny_checkpoint(tmp_path / "llama", family="llama", head="causal-lm")
    data = write_tiny_glue(tmp_path / "data")
    argv = ["compact", str(path), "--out", str(tmp_path / "small"), "--task", "wikitext2", "--data-dir", str(data),
            "--max-length", "16", "--no-onnx", "--token-budget", "0.5"]
    capsys.readouterr()  # saving the checkpoint wrote a progress bar
    monkeypatch.setenv("ECONLM_NO_PROGRESS", "0")  # refused before compaction's bar starts: nothing but the line
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "decoder" in err and err.count("\n") == 1 and "\r" not in err
    assert not (tmp_path / "small").exists()


def test_a_compacted_gqa_decoder_generates_and_reports_prefill_and_decoding(tmp_path, capsys):
    from econlm.models import load_model

    path = save_tiny_checkpoint(tmp_path / "llama", family="llama", head="causal-lm")
    loaded = load_model(str(path))
    # Layer 0 loses K/V group 0 with both its query heads (0, 1), and 20 FFN neurons.
    _kill_units(loaded.model.model, {0: [0, 1]}, {0: list(range(20))})
    loaded.model.save_pretrained(path)
    data = write_tiny_glue(tmp_path / "data")
    argv = ["compact", str(path), "--out", str(tmp_path / "small"), "--task", "wikitext2", "--data-dir", str(data),
            "--eps", "1e-9", "--calib-examples", "4", "--max-length", "16", "--latency-repeats", "2", "--no-onnx",
            "--prefill-length", "32", "--decode-tokens", "4"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "decoder: prefill" in capsys.readouterr().out
    report = json.loads((tmp_path / "small" / "compact.json").read_text())
    assert report["after"]["structure"] == {"heads": [2, 4], "kv_heads": [1, 2], "ffn": [44, 64]}
    assert report["verification"]["only_exactly_dead_units_removed"]
    decoding = report["after"]["decoding"]
    assert decoding["prefill"]["tokens"] == 32 and decoding["prefill"]["repeats"] == 2
    for batch in (1, 8):
        entry = decoding[f"decode_batch{batch}"]
        assert entry["new_tokens"] == 4 and entry["tokens_per_second"] == pytest.approx(batch * 4 / entry["median"])
        assert report["ratios"][f"decode_batch{batch}_speedup"] > 0
    # The saved compacted decoder reloads and generates the same tokens as the original (dead units only).
    small = load_model(str(tmp_path / "small")).model
    prompt = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        ours = small.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        theirs = loaded.model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_compact_reads_a_language_model_at_the_length_it_trained(tmp_path, capsys):
    """Without --max-length, calibration blocks and scoring windows are as long as the training blocks were
    (recorded in the checkpoint), not a fixed 128."""
    from econlm.models import load_model

    path = save_tiny_checkpoint(tmp_path / "llama", family="llama", head="causal-lm")
    data = write_tiny_glue(tmp_path / "data")
    loaded = load_model(str(path))
    _kill_units(loaded.model.model, {0: [0, 1]}, {})
    loaded.model.config.econlm = {"train": {"task": "wikitext2", "max_length": 24, "data_dir": str(data)}}
    loaded.model.save_pretrained(path)
    argv = ["compact", str(path), "--out", str(tmp_path / "small"), "--eps", "1e-9", "--calib-examples", "4",
            "--latency-repeats", "1", "--no-onnx", "--prefill-length", "8", "--decode-tokens", "2"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "small" / "compact.json").read_text())
    assert report["meta"]["config"]["max_length"] == 24 and report["after"]["latency_setup"]["seq_len"] == 24


# ---------------------------------------------------------------------------------------------------------
# A layer whose every head (or neuron) is dead keeps one K/V group (one neuron): never an empty layer


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_gates_closing_a_whole_layer_compact_to_one_kept_group_and_reload(family, tmp_path):
    """What training leaves when the gates close every head of layer 0 and every FFN neuron of layer 1:
    compaction keeps one K/V group (llama: 2 query heads; bert: one head) and one neuron there, their output
    projections zero, so outputs do not change; the result saves and reloads (no shape error in surgery)."""
    from econlm.compact import compact_model
    from econlm.gates import add_gates, fold_gates
    from econlm.surgery import load_compacted, save_model

    model = tiny_model(family, head="causal-lm" if family == "llama" else "base")
    gates = add_gates(model, ("attention", "ffn"))
    with torch.no_grad():
        gates.heads[0].log_alpha.fill_(-30.0)  # closed in eval mode: folded to exact zeros
        gates.neurons[1].log_alpha.fill_(-30.0)
        gates.heads[1].log_alpha.fill_(30.0)
        gates.neurons[0].log_alpha.fill_(30.0)
    folded = fold_gates(model)
    groups = 2 if family == "llama" else 4  # one head gate per K/V group (2 query heads each in tiny llama)
    assert folded["heads"][0] == [0.0] * groups and folded["neurons"][1] == [0.0] * 64
    batch = padded_batch(family)
    small, report = compact_model(model, [batch], eps=1e-3, seq_len=16)
    after = Structure.of_model(small)
    if family == "llama":  # groups of 2 query heads over 2 K/V heads: one group of the dead layer stays
        assert after.heads == (2, 4) and after.kv_heads == (1, 2)
    else:
        assert after.heads == (1, 4)
    assert after.ffn == (64, 1)
    assert report.per_layer[0]["heads_zero"] == 4 - after.heads[0]  # the removed heads were zero
    assert report.per_layer[1]["neurons_zero"] == 63
    assert report.only_exactly_dead_units_removed and report.max_abs_output_difference < 1e-5
    save_model(small, None, tmp_path / "small")
    reloaded = load_compacted(tmp_path / "small", "causal-lm" if family == "llama" else "base")
    assert Structure.of_model(reloaded) == after
    with torch.no_grad():
        reference = _outputs(model, batch)
        torch.testing.assert_close(_outputs(reloaded.eval(), batch), reference, rtol=1e-5, atol=1e-5)
    # A damaged structure file is one line that says what to do, not a KeyError from deep in surgery.
    import json

    from econlm.errors import UserError

    structure_file = tmp_path / "small" / "econlm_structure.json"
    good = json.loads(structure_file.read_text())
    for damaged in ({"format": 1}, {**good, "layers": good["layers"][:1]}, {**good, "format": 2}, "[1, 2"):
        structure_file.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
        with pytest.raises(UserError, match=r"is not a structure file this econlm reads .* each of the model's 2 layers"):
            load_compacted(tmp_path / "small", "causal-lm" if family == "llama" else "base")


def _outputs(model, batch):
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_plan_removal_of_all_dead_heads_keeps_the_first_group_of_that_layer():
    model = tiny_model("qwen2")
    _kill_units(model, {1: [0, 1, 2, 3]}, {0: list(range(64))})
    plans = plan_removal(model, None, eps=1e-3)
    assert plans[1].keep_kv_heads == [0] and plans[1].keep_heads == [0, 1] and plans[1].heads_zero == 2
    assert plans[0].keep_neurons == [0] and plans[0].neurons_zero == 63
    assert plans[0].keep_heads == [0, 1, 2, 3] and len(plans[1].keep_neurons) == 64


def test_the_flops_price_charges_only_compute_that_compaction_removes():
    """With grouped-query attention one gate covers a K/V group, so the share of compute the flops term
    charges is the share the compacted model computes: its blocks' MACs at the same sequence length."""
    from econlm.compact import compact_model
    from econlm.cost import CostMeter
    from econlm.gates import fold_gates, get_gates

    model = tiny_model("llama", head="causal-lm")  # 2 layers, 4 query heads in 2 K/V groups, FFN 64
    meter = CostMeter(model, ("flops",), "both")
    gates = get_gates(model)
    with torch.no_grad():  # +-30: P(open) is 1 or 0 to 1e-12, and the eval values fold to 1 or exact 0
        for gate in [*gates.heads, *gates.neurons]:
            gate.log_alpha.fill_(30.0)
        gates.heads[0].log_alpha[1] = -30.0  # layer 0 loses one K/V group: 2 query heads and a K/V head
        gates.neurons[1].log_alpha[:40] = -30.0
    batch = padded_batch("llama")
    model.eval()
    with meter.attached():
        meter.begin(batch["attention_mask"])
        model(**batch)
        share = meter.read().share
    seq_len = batch["input_ids"].shape[1]
    before = dense_macs(Structure.of_model(model), seq_len)["macs"]
    fold_gates(model)
    compacted, report = compact_model(model, [batch], eps=0.0)
    after = Structure.of_model(compacted)
    assert after.heads == (2, 4) and after.kv_heads == (1, 2) and after.ffn == (64, 24)
    assert share == pytest.approx(dense_macs(after, seq_len)["macs"] / before, rel=1e-6)


def test_the_exactness_check_allows_float_rounding_and_refuses_a_live_unit():
    """The failure SmolLM2 met: logits of magnitude about 40 moved by 6.2e-4 at 28 of many elements (rounding
    over 30 layers) must pass; a 1% change of every output (what removing a live unit does) must not, nor one
    element moved by 1e-2 of the largest magnitude."""
    from econlm.compact import check_same_outputs

    generator = torch.Generator().manual_seed(0)
    expected = torch.randn(8, 16, 4096, generator=generator) * 10
    expected[0, 0, 0] = 40.0
    rounded = expected.clone()
    rounded.view(-1)[torch.randperm(expected.numel(), generator=generator)[:28]] += 6.2e-4
    check_same_outputs(rounded, expected)
    with pytest.raises(AssertionError, match="relative error 1.00e-02"):
        check_same_outputs(expected * 1.01, expected)
    one = expected.clone()
    one[3, 3, 3] += 0.4
    with pytest.raises(AssertionError, match="largest difference 4.00e-01"):
        check_same_outputs(one, expected)
