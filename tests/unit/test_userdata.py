"""Your own data: CSV, TSV, JSONL, save_to_disk folders and .txt corpora as tasks, and one line per mistake."""

import json
import random

import pytest

from econlm.cli import main
from econlm.data import get_task, load_examples, load_text
from econlm.data import user_task as build_task
from econlm.errors import UserError
from econlm.userdata import DataSpec
from tests.conftest import save_tiny_checkpoint


def _tickets(n=40, seed=0):
    """Support tickets whose label follows a word in the text: learnable by a tiny model."""
    rng = random.Random(seed)
    words = "printer login screen invoice network password mouse refund".split()
    rows = []
    for i in range(n):
        label = ["billing", "hardware", "account"][i % 3]
        cue = {"billing": "invoice", "hardware": "printer", "account": "password"}[label]
        rows.append((" ".join(rng.choice(words) for _ in range(5)) + f" {cue}", label))
    return rows


def _csv(path, rows, header=("text", "label"), sep=","):
    path.write_text(sep.join(header) + "\n" + "\n".join(f"{t}{sep}{y}" for t, y in rows) + "\n")
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("econlm: error: "), err
    return err


# ---------------------------------------------------------------------------------------------------------
# Reading and inferring


def test_string_labels_become_sorted_ids_and_a_tenth_is_held_out(tmp_path):
    task = build_task(str(_csv(tmp_path / "t.csv", _tickets())), DataSpec())
    assert task.kind == "classification" and task.label_names == ("account", "billing", "hardware")
    assert task.metrics == ("accuracy",) and task.num_labels == 3
    train, dev = load_examples(task, "train", None, None), load_examples(task, "dev", None, None)
    assert len(train) == 36 and len(dev) == 4  # 10% of 40, the same for every run
    from collections import Counter

    # Every row of the file is in exactly one split.
    seen = Counter((e.text_a, task.label_names[e.label]) for e in train + dev)
    assert seen == Counter(_tickets())
    assert all(e.label == task.label_names.index({"invoice": "billing", "printer": "hardware",
                                                  "password": "account"}[e.text_a.split()[-1]]) for e in train + dev)


def test_jsonl_pairs_with_numeric_scores_make_a_regression_task(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"a": f"s{i}", "b": f"t{i}", "score": i / 4}) for i in range(10)]
    path.write_text("\n".join(lines) + "\n")
    task = build_task(str(path), DataSpec(text_columns=("a", "b"), label_column="score"))
    assert task.kind == "regression" and task.metrics == ("spearman", "pearson")
    example = load_examples(task, "train", None, None)[0]
    assert example.text_b is not None and isinstance(example.label, float)


@pytest.mark.parametrize(
    ("header", "pair"),
    [
        ("question,sentence,label", ("q", "s")),  # QNLI: `sentence` alone would drop every question
        ("sentence1,sentence2,label", ("q", "s")),
        ("premise,hypothesis,label", ("q", "s")),
        ("text,label", ("q", None)),
    ],
)
def test_text_columns_found_in_the_header_prefer_a_pair(tmp_path, header, pair):
    path = tmp_path / "t.csv"
    row = "q,s" if pair[1] else "q"
    path.write_text(header + "\n" + "".join(f"{row},{i % 2}\n" for i in range(10)))
    example = load_examples(build_task(str(path), DataSpec()), "train", None, None)[0]
    assert (example.text_a, example.text_b) == pair


def test_separate_dev_file_tsv_and_a_chosen_metric(tmp_path):
    rows = [(f"word{i} good" if i % 2 else f"word{i} bad", i % 2) for i in range(12)]
    train = _csv(tmp_path / "train.tsv", rows, sep="\t")
    dev = _csv(tmp_path / "dev.tsv", rows[:4], sep="\t")
    task = build_task(str(train), DataSpec(dev=str(dev), metric="f1"))
    assert task.metrics == ("f1", "accuracy") and task.label_names == ("0", "1")
    assert len(load_examples(task, "train", None, None)) == 12 and len(load_examples(task, "dev", None, None)) == 4


def test_a_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = _tickets(20)
    folder = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})}).save_to_disk(
        str(folder)
    )
    task = build_task(str(folder), DataSpec())
    assert task.num_labels == 3 and len(load_examples(task, "dev", None, None)) == 2


def test_a_text_corpus_is_language_modelling_with_the_last_tenth_as_dev(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i} of the corpus\n" for i in range(20)))
    task = build_task(str(path), DataSpec())
    assert task.is_lm and task.metrics == ("perplexity",)
    assert load_text(task, "train").count("\n") == 18 and load_text(task, "test").startswith("line 18")


# ---------------------------------------------------------------------------------------------------------
# One line per mistake, naming the file (and the line)


@pytest.mark.parametrize(
    ("content", "spec", "message"),
    [
        ("review,stars\nfine,1\n", DataSpec(), r"no text column given; pass --text-columns \(columns: review, stars\)"),
        ("text,label\nfine,1\n", DataSpec(label_column="stars"), r"no column 'stars'; its columns are text, label"),
        ("", DataSpec(), r"t\.csv is empty"),
        ("text,label\n", DataSpec(), r"t\.csv has a header but no examples"),
        ("text,label\na,pos\nb,3\nc,neg\n", DataSpec(), r"mixed label types: line 2 has 'pos', line 3 has '3'"),
        ("text,label\na,0.5\nb,nan\nc,1\n", DataSpec(task_type="regression"), r"t\.csv:3: regression label 'nan'"),
        ("text,label\na,0.5\nb,high\n", DataSpec(task_type="regression"), r"t\.csv:3: regression label 'high'"),
        (b"text,label\nna\xefve,1\nb,0\n", DataSpec(), r"t\.csv:2: not valid UTF-8 \(bytes ef\)"),
        ("text,label\na,1,2\n", DataSpec(), r"t\.csv:2: expected 2 fields"),
    ],
)
def test_mistakes_in_a_file_are_one_line_naming_it(tmp_path, content, spec, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message) as error:
        build_task(str(path), spec)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_dev_label_never_seen_in_train_names_the_dev_file_and_line(tmp_path):
    train = _csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg")])
    dev = _csv(tmp_path / "dev.csv", [("c", "pos"), ("d", "meh")])
    with pytest.raises(UserError, match=r"dev\.csv:3: label 'meh' never occurs in the training data \(neg, pos\)"):
        build_task(str(train), DataSpec(dev=str(dev)))


def test_cli_mistakes_exit_2_and_write_nothing(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m", head="seq-cls")
    data = tmp_path / "t.csv"
    data.write_text("review,stars\nfine,1\n")
    out = tmp_path / "out"
    for command in (["train", "--model", str(ckpt)], ["probe", "--model", str(ckpt)]):
        capsys.readouterr()
        assert main([*command, "--task", str(data), "--out", str(out)]) == 2
        assert "columns: review, stars" in _one_line(capsys)
        assert not out.exists()
    assert main(["train", "--model", str(ckpt), "--task", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "no such file" in _one_line(capsys)
    assert main(["probe", "--task", "sst2", "--text-columns", "x", "--out", str(out)]) == 2
    assert "built-in task" in _one_line(capsys)


# ---------------------------------------------------------------------------------------------------------
# End to end, as a new user would: train -> probe -> compact -> sweep -> report


def _run(argv) -> None:
    assert main(argv) == 0, argv


def test_a_csv_classification_task_end_to_end(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m")
    data = _csv(tmp_path / "tickets.csv", [(t, y) for t, y in _tickets(60)], header=("body", "team"))
    flags = ["--text-columns", "body", "--label-column", "team"]
    common = ["--max-length", "32", "--batch-size", "16"]
    trained = tmp_path / "trained"
    _run(["train", "--model", str(ckpt), "--task", str(data), *flags, *common, "--epochs", "4", "--lr", "1e-3",
          "--cost", "flops", "--budget", "0.3", "--gate-lr", "2.0", "--price-lr", "50", "--budget-warmup", "0.2",
          "--out", str(trained)])
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["eval_examples"] == 6
    config = json.loads((trained / "config.json").read_text())
    assert config["id2label"] == {"0": "account", "1": "billing", "2": "hardware"}  # the label map travels
    assert config["econlm"]["train"]["task"] == str(data.resolve())
    _run(["probe", "--model", str(trained), "--task", str(data), *flags, "--budgets", "full,2",
          "--max-length", "32", "--out", str(tmp_path / "probe")])
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["rows"][0]["score"] == pytest.approx(metrics["score"])  # the same 6 held-out tickets
    # compact reads the task as it was trained: the file, its columns and its split
    _run(["compact", str(trained), "--out", str(tmp_path / "small"), "--eps", "1e-9", "--calib-examples", "16",
          "--latency-repeats", "1", "--no-onnx"])
    report = json.loads((tmp_path / "small" / "compact.json").read_text())
    assert report["after"]["score"]["examples"] == 6
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"base: {{model: {ckpt}, task: {data}, text_columns: [body], label_column: team, epochs: 1, lr: 0.001, "
        "max_length: 32, batch_size: 16}\ngrid:\n  lam: [0, 0.1]\n"
    )
    _run(["sweep", str(sweep), "--out", str(tmp_path / "sw")])
    rows = [json.loads(line) for line in (tmp_path / "sw" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    _run(["report", str(tmp_path / "sw")])
    assert (tmp_path / "sw" / "report.html").stat().st_size > 1000


def test_a_jsonl_task_and_a_text_corpus_end_to_end(tmp_path):
    bert = save_tiny_checkpoint(tmp_path / "bert")
    llama = save_tiny_checkpoint(tmp_path / "llama", family="llama")
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in _tickets(30)) + "\n")
    _run(["train", "--model", str(bert), "--task", str(data), "--max-length", "32", "--epochs", "1",
          "--out", str(tmp_path / "j")])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the market clears at price {i} when demand meets supply .\n" for i in range(80)))
    _run(["train", "--model", str(llama), "--task", str(corpus), "--max-length", "16", "--epochs", "1",
          "--batch-size", "4", "--cost", "flops", "--budget", "0.5", "--gate-lr", "2.0", "--price-lr", "50",
          "--budget-warmup", "0.2", "--out", str(tmp_path / "lm")])
    lm = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert lm["metric"] == "perplexity" and lm["trained_on"].startswith("train split")
    _run(["probe", "--model", str(tmp_path / "lm"), "--task", str(corpus), "--budgets", "full,4", "--max-length", "16",
          "--out", str(tmp_path / "lmprobe")])
    _run(["compact", str(tmp_path / "lm"), "--out", str(tmp_path / "lmsmall"), "--eps", "1e-9", "--calib-examples",
          "8", "--max-length", "16", "--latency-repeats", "1", "--no-onnx"])
    assert get_task(str(corpus.resolve())).is_lm
    sweep = tmp_path / "lm.yaml"
    sweep.write_text(f"base: {{model: {llama}, task: {corpus}, epochs: 1, max_length: 16, batch_size: 4}}\n"
                     "grid:\n  lam: [0, 0.1]\n")
    _run(["sweep", str(sweep), "--out", str(tmp_path / "lmsweep")])
    _run(["report", str(tmp_path / "lmsweep")])
    rows = [json.loads(line) for line in (tmp_path / "lmsweep" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"] and {r["metric"] for r in rows} == {"perplexity"}
    assert (tmp_path / "lmsweep" / "report.html").read_text().count("data:image/png") >= 1


def test_classes_are_the_labels_seen_sorted_numerically(tmp_path):
    rows = [("a", 404), ("b", 200), ("c", 404), ("d", 200), ("e", -1), ("f", 200), ("g", 404), ("h", -1)] * 2
    task = build_task(str(_csv(tmp_path / "codes.csv", rows)), DataSpec(dev=str(_csv(tmp_path / "d.csv", rows[:3]))))
    assert task.label_names == ("-1", "200", "404") and task.num_labels == 3
    with pytest.raises(UserError, match="every example has the label '1'; classification needs two classes"):
        build_task(str(_csv(tmp_path / "one.csv", [("a", 1), ("b", 1)])), DataSpec(dev=str(_csv(tmp_path / "o.csv",
                                                                                               [("c", 1)]))))


def test_quoted_csv_fields_may_hold_commas_and_newlines_and_tsv_quotes_are_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"printer jams, again\nand again",hw\n"login fails",acct\nplain,acct\nmore,hw\n')
    task = build_task(str(path), DataSpec(dev=str(path)))
    texts = [e.text_a for e in load_examples(task, "train", None, None)]
    assert texts[0] == "printer jams, again\nand again" and len(texts) == 4  # a real newline inside the quotes
    tsv = tmp_path / "t.tsv"
    tsv.write_text('text\tlabel\nhe said "hi\tpos\nok\tneg\n')  # an unbalanced quote is just a character
    assert load_examples(build_task(str(tsv), DataSpec(dev=str(tsv))), "train", None, None)[0].text_a == 'he said "hi'


def test_missing_split_files_are_one_line(tmp_path):
    data = _csv(tmp_path / "t.csv", _tickets(10))
    with pytest.raises(UserError, match=r"--dev .*nope\.csv: no such file"):
        build_task(str(data), DataSpec(dev=str(tmp_path / "nope.csv")))
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n" * 10)
    with pytest.raises(UserError, match=r"--train .*none\.txt: no such file"):
        build_task(str(corpus), DataSpec(train=str(tmp_path / "none.txt")))


def test_a_corpus_with_a_dev_file_is_scored_on_it(tmp_path):
    corpus, dev = tmp_path / "c.txt", tmp_path / "d.txt"
    corpus.write_text("train text\n" * 10)
    dev.write_text("held out\n" * 3)
    task = build_task(str(corpus), DataSpec(dev=str(dev)))
    assert load_text(task, "train") == "train text\n" * 10 and load_text(task, "test") == "held out\n" * 3


def test_an_edited_file_is_read_again(tmp_path):
    import os

    path = _csv(tmp_path / "t.csv", [("a", "x"), ("b", "y")] * 5)
    assert get_task(str(path), DataSpec()).label_names == ("x", "y")
    _csv(path, [("a", "x"), ("b", "z"), ("c", "w")] * 5)
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the clock's resolution
    assert get_task(str(path), DataSpec()).label_names == ("w", "x", "z")
