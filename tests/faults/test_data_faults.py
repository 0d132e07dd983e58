"""Damaged inputs (issue #15): corrupt checkpoints and caches, broken data files, silently cut inputs.

Every fault a user can cause must end in one line that names the file (and the line, for data) and says
what to do, or be repaired by econlm itself (the converted SmolLM2 cache); inputs longer than
``--max-length`` are counted, never cut silently.
"""

import json
import re
import shutil

import pytest

from econlm import models
from econlm.cli import main
from econlm.data import Example, get_task, load_examples, load_text
from econlm.errors import UserError
from tests.conftest import save_tiny_checkpoint, tiny_model, write_tiny_glue

STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return {"model": save_tiny_checkpoint(root / "model"), "data": write_tiny_glue(root / "data")}


@pytest.fixture
def checkpoint(tiny, tmp_path):
    """A private copy of the tiny checkpoint, free to damage."""
    return shutil.copytree(tiny["model"], tmp_path / "checkpoint")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _probe(capsys, model, data_dir, out, *extra):
    argv = ["probe", "--model", model, "--task", "stsb", "--budgets", "full", "--data-dir", data_dir, "--out", out]
    return _run(capsys, *argv, *extra)


def _write(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------------------
# Damaged checkpoints


def _damage(path, how):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] if how == "truncated" else b"\x93garbage\x00" * 8)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_weights_are_one_line_for_probe_and_compact(capsys, checkpoint, tiny, tmp_path, how):
    weights = checkpoint / "model.safetensors"
    _damage(weights, how)
    for argv in (
        ("probe", "--model", checkpoint, "--task", "stsb", "--data-dir", tiny["data"], "--out", tmp_path / "p"),
        ("compact", checkpoint, "--task", "stsb", "--data-dir", tiny["data"], "--out", tmp_path / "c"),
    ):
        code, err = _run(capsys, *argv)
        assert code == 2 and "\n" not in err, err
        assert err.startswith(f"econlm: error: {weights} is damaged or truncated") and "train it again" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("content", [b'{"model_type": "be', b"\xff\xfe\x00 not json"])
def test_damaged_config_json_is_one_line(capsys, checkpoint, tiny, tmp_path, content):
    (checkpoint / "config.json").write_bytes(content)
    code, err = _probe(capsys, checkpoint, tiny["data"], tmp_path / "o")
    assert code == 2 and "\n" not in err
    assert f"{checkpoint / 'config.json'} is damaged or truncated (not valid JSON" in err


def test_damaged_tokenizer_json_is_one_line(capsys, checkpoint, tiny, tmp_path):
    _damage(checkpoint / "tokenizer.json", "truncated")
    code, err = _probe(capsys, checkpoint, tiny["data"], tmp_path / "o")
    assert code == 2 and "\n" not in err and f"{checkpoint / 'tokenizer.json'} is damaged" in err


def test_checkpoint_without_weights_is_one_line(capsys, checkpoint, tiny, tmp_path):
    (checkpoint / "model.safetensors").unlink()
    code, err = _probe(capsys, checkpoint, tiny["data"], tmp_path / "o")
    assert code == 2 and "\n" not in err and f"could not load the checkpoint in {checkpoint}" in err


@pytest.fixture
def smollm2_cache(monkeypatch, tmp_path):
    """A private cache folder and a stand-in for the minute-long GGUF conversion that counts its calls."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("ECONLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / models.SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(models, "_package_dir", lambda package, hint: tmp_path / "gguf")
    calls = []

    def fake_convert(gguf_dir, gguf_file, target):
        calls.append(target)
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"model_type": "llama"}')
        save_file({"w": torch.zeros(4)}, str(target / "model.safetensors"))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (target / name).write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    return calls


@pytest.mark.parametrize("damage", ["truncated weights", "missing weights", "garbage config", "missing tokenizer"])
def test_damaged_smollm2_cache_is_rebuilt(smollm2_cache, capsys, damage):
    target = models.resolve("smollm2").location
    assert len(smollm2_cache) == 1
    assert models.resolve("smollm2").location == target and len(smollm2_cache) == 1  # a good cache is kept
    cached = smollm2_cache[0]
    if damage == "truncated weights":
        _damage(cached / "model.safetensors", "truncated")
    elif damage == "missing weights":
        (cached / "model.safetensors").unlink()
    elif damage == "missing tokenizer":
        (cached / "tokenizer.json").unlink()
    else:
        (cached / "config.json").write_bytes(b"\x00\x01")
    capsys.readouterr()
    assert models.resolve("smollm2").location == target and len(smollm2_cache) == 2
    assert "SmolLM2 cache is unusable" in capsys.readouterr().err
    assert models.damaged_file(cached) is None


# ---------------------------------------------------------------------------------------------------------
# Broken data files


def test_invalid_utf8_in_a_tsv_names_file_and_line(capsys, tiny, tmp_path):
    rows = b"0\tg\tf\ty\t0\tn\tn\ta\tb\t1.0\n1\tg\tf\ty\t0\tn\tn\tcaf\xe9 latin-1\tb\t2.0\n"
    path = _write(tmp_path / "STS-B/dev.tsv", STSB_HEADER.encode() + rows)
    with pytest.raises(
        UserError, match="^" + re.escape(f"{path}:3: not valid UTF-8 (bytes e9); re-save the file as UTF-8")
    ):
        load_examples("stsb", "dev", tmp_path)
    code, err = _probe(capsys, tiny["model"], tmp_path, tmp_path / "o")
    assert code == 2 and "\n" not in err and f"{path}:3: not valid UTF-8" in err


def test_bom_still_accepted_and_invalid_utf8_after_it_is_found(tmp_path):
    good = b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n"
    _write(tmp_path / "MRPC/dev.tsv", good)
    assert [e.label for e in load_examples("mrpc", "dev", tmp_path)] == [1]
    path = _write(tmp_path / "MRPC/dev.tsv", good + b"0\t3\t4\t\xc3\tb\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:3: not valid UTF-8")):
        load_examples("mrpc", "dev", tmp_path)


def test_invalid_utf8_in_wikitext_names_file_and_line(tmp_path):
    path = _write(tmp_path / "wikitext-2/valid.txt", b" = T = \n\n body .\n more \xff\xfe text\n")
    with pytest.raises(UserError, match="^" + re.escape(f"{path}:4: not valid UTF-8 (bytes ff fe)")):
        load_text("wikitext2", "dev", tmp_path)


def test_binary_garbage_tsv_is_one_line(capsys, tiny, tmp_path):
    _write(tmp_path / "STS-B/dev.tsv", bytes(range(256)) * 4)
    code, err = _probe(capsys, tiny["model"], tmp_path, tmp_path / "o")
    assert code == 2 and "\n" not in err and str(tmp_path / "STS-B/dev.tsv") in err


def test_file_truncated_mid_row_names_the_last_line(tmp_path):
    rows = "".join(f"{i}\tg\tf\ty\t0\tn\tn\tsentence {i}\tother {i}\t{i % 5}.0\n" for i in range(6))
    content = (STSB_HEADER + rows).encode()
    path = _write(tmp_path / "STS-B/dev.tsv", content[: content.rindex(b"sentence 5") + 4])
    with pytest.raises(
        UserError, match=re.escape(f"{path}:7: malformed row: expected 10 tab-separated fields, found 8")
    ):
        load_examples("stsb", "dev", tmp_path)


def test_file_truncated_inside_a_character_names_the_last_line(tmp_path):
    content = "sentence\tlabel\ngood\t1\nun café\t0\n".encode()
    path = _write(tmp_path / "SST-2/dev.tsv", content[: content.index("é".encode()) + 1])
    with pytest.raises(UserError, match=re.escape(f"{path}:3: not valid UTF-8")):
        load_examples("sst2", "dev", tmp_path)


@pytest.mark.parametrize("score", ["n/a", "", "7.5", "-1", "nan"])
def test_bad_stsb_score_says_what_was_found_where_and_what_is_expected(tmp_path, score):
    path = _write(tmp_path / "STS-B/dev.tsv", f"{STSB_HEADER}0\tg\tf\ty\t0\tn\tn\ta\tb\t{score}\n".encode())
    with pytest.raises(UserError) as caught:
        load_examples("stsb", "dev", tmp_path)
    assert str(caught.value) == f"{path}:2: malformed score '{score}'; expected a number from 0 to 5"


def test_stsb_scores_at_both_ends_are_accepted(tmp_path):
    rows = "0\tg\tf\ty\t0\tn\tn\ta\tb\t0\n1\tg\tf\ty\t0\tn\tn\ta\tb\t5.000\n"
    _write(tmp_path / "STS-B/dev.tsv", (STSB_HEADER + rows).encode())
    assert [e.label for e in load_examples("stsb", "dev", tmp_path)] == [0.0, 5.0]


def test_header_only_file_is_one_line_before_any_progress_bar(capsys, monkeypatch, tiny, tmp_path):
    monkeypatch.setenv("ECONLM_NO_PROGRESS", "0")  # a bar started before the error would show on stderr
    path = _write(tmp_path / "STS-B/dev.tsv", STSB_HEADER.encode() + b"\n")
    code, err = _probe(capsys, tiny["model"], tmp_path, tmp_path / "o")
    assert code == 2 and "\n" not in err
    assert err.startswith(f"econlm: error: {path} has a header but no examples") and "--limit" not in err


@pytest.mark.parametrize(
    "task, name, content, message",
    [
        ("sst2", "SST-2/dev.tsv", b"", "is empty; expected a header line"),
        ("mrpc", "MRPC/dev.tsv", b"\xef\xbb\xbf", "is empty; expected a header line"),
        ("cola", "CoLA/dev.tsv", b"", "has no examples"),
        ("cola", "CoLA/dev.tsv", b"\n\n", "has no examples"),
    ],
)
def test_empty_files_name_the_file(tmp_path, task, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(UserError, match="^" + re.escape(f"{path} {message}")):
        load_examples(task, "dev", tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Inputs longer than --max-length: counted and reported


def _sentence(tokens: int) -> str:
    """A sentence of ``tokens`` word pieces in the MiniLM vocabulary ('good' is one piece)."""
    return " ".join(["good"] * tokens)


# With [CLS] and [SEP], single sentences of 1, 14, 15, 28 and 3 words have 3, 16, 17, 30 and 5 tokens: at
# --max-length 16 exactly two are longer (16 itself is not cut).
WORDS = [1, 14, 15, 28, 3]
MAX_LENGTH = 16


def test_score_glue_counts_truncated_examples_with_a_head_and_zero_shot(tiny):
    from transformers import AutoTokenizer

    from econlm.evaluate import score_glue

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    single = [Example(_sentence(n), None, i % 2) for i, n in enumerate(WORDS)]
    head = tiny_model("bert", head="seq-cls", vocab_size=30522)
    score = score_glue(head, tokenizer, get_task("sst2"), single, "seq-cls", batch_size=2, max_length=MAX_LENGTH)
    assert score.details["truncated_examples"] == 2
    # Pairs: [CLS] a [SEP] b [SEP]; 10 + 3 + 3 = 16 fits, 10 + 4 + 3 = 17 does not.
    pairs = [Example(_sentence(10), _sentence(b), i % 2) for i, b in enumerate([3, 4, 1, 9, 2])]
    score = score_glue(head, tokenizer, get_task("mrpc"), pairs, "seq-cls", batch_size=2, max_length=MAX_LENGTH)
    assert score.details["truncated_examples"] == 2
    # Zero-shot STS-B encodes each sentence alone: a pair counts once when either side is cut.
    words = [(15, 20), (1, 2), (14, 14), (2, 15), (3, 3)]
    stsb = [Example(_sentence(a), _sentence(b), 1.0 * i) for i, (a, b) in enumerate(words)]
    base = tiny_model("bert", vocab_size=30522)
    score = score_glue(base, tokenizer, get_task("stsb"), stsb, "base", batch_size=2, max_length=MAX_LENGTH)
    assert score.details["truncated_examples"] == 2


def _stsb_file(root, word_pairs):
    rows = "".join(
        f"{i}\tg\tf\ty\t0\tn\tn\t{_sentence(a)}\t{_sentence(b)}\t{i % 5}.0\n" for i, (a, b) in enumerate(word_pairs)
    )
    return _write(root / "STS-B/dev.tsv", (STSB_HEADER + rows).encode())


def test_probe_reports_truncated_examples_in_metadata_and_on_stderr(capsys, tiny, tmp_path):
    _stsb_file(tmp_path, [(1, 2), (30, 2), (3, 4), (2, 40), (14, 5)])
    code, err = _probe(capsys, tiny["model"], tmp_path, tmp_path / "o", "--max-length", MAX_LENGTH)
    assert code == 0
    assert "2 of 5 examples were longer than --max-length 16 and were truncated" in err
    meta = json.loads((tmp_path / "o" / "probe.json").read_text())
    assert meta["truncated_examples"] == 2 and meta["scoring"]["truncated_examples"] == 2


def test_probe_says_nothing_when_nothing_was_cut(capsys, tiny, tmp_path):
    _stsb_file(tmp_path, [(1, 2), (3, 4), (14, 14)])
    code, err = _probe(capsys, tiny["model"], tmp_path, tmp_path / "o", "--max-length", MAX_LENGTH)
    assert code == 0 and "truncated" not in err
    assert json.loads((tmp_path / "o" / "probe.json").read_text())["truncated_examples"] == 0


def test_train_metrics_count_truncated_training_examples(tiny, tmp_path):
    from econlm.training import TrainConfig, train

    sst = "sentence\tlabel\n" + "".join(f"{_sentence(n)}\t{i % 2}\n" for i, n in enumerate(WORDS))
    for split in ("train", "dev"):
        _write(tmp_path / "data/SST-2" / f"{split}.tsv", sst.encode())
    config = TrainConfig(
        model=str(tiny["model"]),
        task="sst2",
        out=str(tmp_path / "run"),
        epochs=1,
        batch_size=5,
        max_length=MAX_LENGTH,
        data_dir=str(tmp_path / "data"),
    )
    metrics = train(config, progress=False)
    assert metrics["truncated_train_examples"] == 2 and metrics["scoring"]["truncated_examples"] == 2
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["truncated_train_examples"] == 2
