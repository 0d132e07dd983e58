"""ONNX export: dynamic axes, agreement with PyTorch in ONNX Runtime, compacted models, the CLI."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from econlm.cli import main  # noqa: E402
from econlm.compact import apply_plan, plan_removal  # noqa: E402
from econlm.export import export_onnx, onnx_forward, onnx_session  # noqa: E402
from tests.conftest import save_tiny_checkpoint, tiny_model  # noqa: E402
from tests.unit.test_compact import _kill_units  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from econlm.models import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm").location)


def _fresh_batch(tokenizer, names):
    """A batch of a shape the exporter never saw (4 x longer), with padding."""
    texts = ["one", "two words", "a sentence of several more words than before", "the market clears at a price"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return {n: encoded[n] for n in names}


@pytest.mark.parametrize(("family", "head"), [("bert", "seq-cls"), ("llama", "causal-lm")])
def test_export_has_dynamic_axes_and_matches_pytorch(family, head, tokenizer, tmp_path):
    model = tiny_model(family, head=head, vocab_size=30522)
    report = export_onnx(model, tokenizer, tmp_path / "m.onnx")
    assert report.matches and report.max_abs_difference < 1e-4
    assert report.output == "logits" and report.inputs[:2] == ("input_ids", "attention_mask")
    # The check ran on batches of 1 and 3 sequences, neither of the traced size 2.
    assert [shape[0] for shape in report.checked_shapes] == [1, 3]
    batch = _fresh_batch(tokenizer, report.inputs)
    got = torch.from_numpy(onnx_forward(onnx_session(report.path), batch))
    with torch.no_grad():
        expected = model(**batch).logits
    real = batch["attention_mask"].bool() if family == "llama" else slice(None)
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)
    assert not list(tmp_path.glob(".m.*")), "no temporary file is left behind"


def test_a_compacted_model_exports_with_its_smaller_shapes(tokenizer, tmp_path):
    model = tiny_model("bert", head="seq-cls", vocab_size=30522)
    _kill_units(model.bert, {0: [0, 2], 1: [1]}, {0: [1, 5, 9], 1: list(range(10))})
    apply_plan(model, plan_removal(model, None, eps=1e-3))
    report = export_onnx(model, tokenizer, tmp_path / "small.onnx")
    assert report.matches
    import onnx

    dims = {d for init in onnx.load(report.path).graph.initializer for d in init.dims}
    assert {61, 54} <= dims and 64 not in dims, "the FFNs keep 61 and 54 of their 64 neurons in the graph"


def test_export_cli_writes_model_and_report_and_refuses_to_overwrite(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    target = tmp_path / "out" / "model.onnx"
    assert main(["export", str(checkpoint), "--onnx", str(target)]) == 0
    assert "ONNX Runtime matches" in capsys.readouterr().out
    report = json.loads(target.with_suffix(".json").read_text())
    assert report["max_abs_difference"] < 1e-4 and report["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "sequence"}
    assert report["meta"]["versions"]["torch"]
    assert main(["export", str(checkpoint), "--onnx", str(target)]) == 2
    assert "exists" in capsys.readouterr().err


def test_export_cli_bad_suffix_is_one_line(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    capsys.readouterr()
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "model.bin")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".onnx" in err


def test_export_leaves_the_callers_model_and_tokenizer_as_they_were(tokenizer, tmp_path):
    model = tiny_model("llama", head="causal-lm", vocab_size=30522).train().to(torch.bfloat16)
    pad = tokenizer.pad_token
    export_onnx(model, tokenizer, tmp_path / "m.onnx", tolerance=1.0)
    assert model.training and next(model.parameters()).dtype == torch.bfloat16 and tokenizer.pad_token == pad
