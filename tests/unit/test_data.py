"""GLUE/WikiText loading: file quirks, clear errors, and the real files when present."""

import pytest

from econlm.data import TASKS, get_task, load_examples, load_text
from econlm.errors import UserError


def _write(path, text, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def test_unknown_task_lists_valid_names_and_suggests():
    with pytest.raises(UserError) as info:
        get_task("sts-b")
    message = str(info.value)
    assert "stsb" in message and "Did you mean 'stsb'" in message and "wikitext103" in message


def test_mrpc_with_bom_and_quotes(tmp_path):
    _write(
        tmp_path / "glue/MRPC/dev.tsv",
        'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "yes.\tShe said no"\n0\t3\t4\ta\tb\n',
        bom=True,
    )
    examples = load_examples("mrpc", "dev", tmp_path)
    assert [e.label for e in examples] == [1, 0]
    assert examples[0].text_a == 'He said "yes.' and examples[0].text_b == 'She said no"'


def test_cola_without_header(tmp_path):
    _write(tmp_path / "CoLA/dev.tsv", "gj04\t1\t\tGood sentence.\ngj04\t0\t*\tBad sentence the.\n")
    examples = load_examples("cola", "dev", tmp_path)
    assert [(e.text_a, e.label) for e in examples] == [("Good sentence.", 1), ("Bad sentence the.", 0)]


def test_rte_in_either_column_layout(tmp_path):
    _write(tmp_path / "a/RTE/dev.tsv", "sentence1\tsentence2\tlabel\tidx\nx\ty\t1\t0\n")
    _write(tmp_path / "b/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tx\ty\tnot_entailment\n")
    assert load_examples("rte", "dev", tmp_path / "a")[0].label == 1
    assert load_examples("rte", "dev", tmp_path / "b")[0].label == 1


def test_stsb_scores_are_floats_and_limit_applies(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = "".join(f"{i}\tg\tf\ty\t0\tn\tn\ta{i}\tb{i}\t{i / 2}\n" for i in range(5))
    _write(tmp_path / "STS-B/dev.tsv", header + rows)
    examples = load_examples("stsb", "dev", tmp_path, limit=3)
    assert [e.label for e in examples] == [0.0, 0.5, 1.0]


def test_malformed_row_names_file_and_line(tmp_path):
    path = _write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\ngood\t1\nbad row without label\n")
    with pytest.raises(UserError, match=rf"{path}:3: malformed row: expected 2 tab-separated fields, found 1"):
        load_examples("sst2", "dev", tmp_path)


def test_malformed_label_names_file_and_line(tmp_path):
    path = _write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\ngood\t1\nbad\tmaybe\n")
    with pytest.raises(UserError, match=rf"{path}:3: malformed label 'maybe'"):
        load_examples("sst2", "dev", tmp_path)


def test_missing_file_names_paths_tried_and_how_to_get_data(tmp_path):
    with pytest.raises(UserError) as info:
        load_examples("qnli", "train", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "glue/QNLI/train.tsv") in message and str(tmp_path / "QNLI/train.tsv") in message
    assert "ECONLM_DATA" in message and "\n" not in message


def test_missing_data_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_examples("sst2", "dev", tmp_path / "nope")


def test_unknown_split(tmp_path):
    with pytest.raises(UserError, match="Did you mean 'dev'"):
        load_examples("sst2", "deev", tmp_path)


def test_every_task_has_metrics_and_a_hub_source():
    for task in TASKS.values():
        assert task.metrics and task.hub_dataset[0]
        assert set(task.local_files) >= {"train", "dev", "test"}


EXPECTED_COUNTS = {
    ("sst2", "dev"): 872,
    ("stsb", "dev"): 1500,
    ("cola", "dev"): 1043,
    ("mrpc", "dev"): 408,
    ("rte", "dev"): 277,
    ("qnli", "dev"): 5463,
    ("cola", "train"): 8551,
    ("stsb", "train"): 5749,
}


@pytest.mark.parametrize("task, split", sorted(EXPECTED_COUNTS))
def test_real_files_load_completely(real_data, task, split):
    examples = load_examples(task, split, real_data)
    assert len(examples) == EXPECTED_COUNTS[(task, split)]
    labels = {e.label for e in examples}
    if task == "stsb":
        assert min(labels) >= 0 and max(labels) <= 5
    else:
        assert labels == set(range(get_task(task).num_labels))


def test_real_wikitext(real_data):
    text = load_text("wikitext103", "dev", real_data)
    assert text.lstrip().startswith("= Homarus gammarus =")
    assert 200_000 < len(text.split()) < 230_000  # the README's 217,646 tokens
    assert "<unk>" in load_text("wikitext2", "test", real_data)


class _FakeRows:
    """The parts of a ``datasets.Dataset`` the loader uses: len, row indexing and column access."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        return [r[key] for r in self.rows] if isinstance(key, str) else self.rows[key]


def test_hub_fallback_asks_the_right_dataset_split_and_columns(monkeypatch):
    import datasets

    calls = []
    tables = {
        ("nyu-mll/glue", "mnli", "validation_matched"): [
            {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": 0},
            {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2},
        ],
        ("nyu-mll/glue", "stsb", "train"): [{"sentence1": "a", "sentence2": "b", "label": 3.8}],
        ("Salesforce/wikitext", "wikitext-2-v1", "test"): [{"text": " = T = \n"}, {"text": " body .\n"}],
    }

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return _FakeRows(tables[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("ECONLM_DATA", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    mnli = load_examples("mnli", "dev", limit=1)
    assert [(e.text_a, e.text_b, e.label) for e in mnli] == [("A man sleeps.", "A person rests.", 0)]
    stsb = load_examples("stsb", "train")
    assert stsb[0].label == pytest.approx(3.8) and isinstance(stsb[0].label, float)
    assert load_text("wikitext2", "test") == " = T = \n body .\n"
    assert calls == list(tables)


def test_hub_failure_is_one_line_naming_what_was_tried(monkeypatch, tmp_path):
    import datasets

    def broken(*args, **kwargs):
        raise ConnectionError("no network\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError) as caught:
        load_examples("rte", "dev", data_dir=tmp_path)
    message = str(caught.value)
    assert (
        "\n" not in message and str(tmp_path) in message and "nyu-mll/glue/rte" in message and "no network" in message
    )
