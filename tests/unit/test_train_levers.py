"""Distillation from a teacher and the latency price in ``econlm train``; their bad input is one line."""

import json

import pytest

from econlm.cli import main
from econlm.latency_table import Curve, LatencyTable, model_shape
from econlm.training import train
from tests.conftest import save_tiny_checkpoint, tiny_model, write_tiny_glue
from tests.unit.test_train import _config


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("levers")
    setup = {"bert": save_tiny_checkpoint(root / "bert"), "data": write_tiny_glue(root / "data")}
    # The teacher: a plain fine-tune of SST-2 (lambda = 0), as a sweep would make it.
    setup["teacher"] = root / "teacher"
    train(_config(setup, setup["teacher"], lam=0.0, cost=("ffn_l1",), epochs=1), progress=False)
    return setup


def _table_file(tmp_path, config, **overrides) -> str:
    table = LatencyTable(
        model={"name": "tiny", **model_shape(config)},
        setup={"batch": 1, "seq_len": 32, "threads": __import__("torch").get_num_threads()},
        machine={},
        dense_seconds=0.010,
        attention=Curve((1, 2, 3, 4), (0.0015, 0.001, 0.0005, 0.0), (0.0015, 0.001, 0.0005, 0.0)),
        ffn=Curve((16, 32, 48, 64), (0.003, 0.002, 0.001, 0.0), (0.003, 0.002, 0.001, 0.0)),
    )
    raw = {**table.to_json(), **overrides}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_distillation_terms_are_trained_on_logged_and_recorded(tiny_setup, tmp_path):
    out = tmp_path / "student"
    config = _config(
        tiny_setup, out, teacher=str(tiny_setup["teacher"]), distill_weight=1.0, distill_hidden_weight=0.5, epochs=1
    )
    metrics = train(config, progress=False)
    assert metrics["distillation"] == {
        "teacher": str(tiny_setup["teacher"]),
        "prediction_weight": 1.0,
        "hidden_weight": 0.5,
        "temperature": 2.0,
    }
    last = metrics["cost_terms_last_step"]
    assert last["distill/prediction"] >= 0 and last["distill/hidden"] > 0
    # The total is the task loss, the priced cost and both distillation terms.
    expected = last["loss/task"] + last["price/lambda"] * (last["cost/ffn_l1"] + last["cost/attn_entropy"])
    assert last["loss/total"] == pytest.approx(expected + last["distill/prediction"] + last["distill/hidden"], rel=1e-5)
    # Each term's path: recorded at every log step, the first step included, in metrics.json as returned.
    history = metrics["loss_history"]
    logged = [step for step, _ in metrics["lambda_history"][:-1]]  # the last entry is the price at the end
    assert [step for step, _ in history] == logged and history[0][0] == 1 and len(history) > 1
    assert all({"loss/task", "loss/total", "distill/prediction", "distill/hidden"} <= set(terms) for _, terms in history)
    saved = json.loads((out / "metrics.json").read_text())["loss_history"]
    assert saved == history


def test_latency_price_with_a_budget_controls_the_latency_share(tiny_setup, tmp_path):
    from econlm.models import load_config

    table = _table_file(tmp_path, load_config(str(tiny_setup["bert"]))[0])
    config = _config(tiny_setup, tmp_path / "run", cost=("latency",), lam=0.0, budget=0.5, latency_table=table)
    metrics = train(config, progress=False)
    lambdas = [lam for _, lam in metrics["lambda_history"]]
    assert lambdas[0] == 0.0 and lambdas[-1] > 0.0  # gates start open: the latency share is above 0.5
    last = metrics["cost_terms_last_step"]
    assert 0 < last["cost/compute_share"] < 1  # the priced gates closed some latency
    assert metrics["gates"]["heads"]["total"] == 8


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("econlm: error: "), err
    return err


def test_units_and_tokens_in_one_market_priced_in_seconds(tiny_setup, tmp_path):
    from econlm.cost import CostMeter
    from econlm.latency_table import Curve, latency_token_share, load_table
    from econlm.models import load_config, load_model

    model_config = load_config(str(tiny_setup["bert"]))[0]
    path = _table_file(
        tmp_path, model_config, tokens=Curve((8, 16, 32), (0.002, 0.001, 0.0), (0.002, 0.001, 0.0)).to_json()
    )
    table = load_table(path)
    loaded = load_model(str(tiny_setup["bert"]))
    meter = CostMeter(loaded.model, ("latency", "tokens"), latency_table=table)
    batch = loaded.tokenizer(["a fairly long sentence about a film", "short"], padding=True, return_tensors="pt")
    loaded.model.train()
    with meter.attached():
        meter.begin(batch["attention_mask"])
        loaded.model(**batch)
        reading = meter.read()
    tokens = next(t for t in meter.terms if t.name == "tokens")
    latency = next(t for t in meter.terms if t.name == "latency")
    expected = latency_token_share(table, tokens.learned.counts, *latency.expected_kept())
    assert reading.share == pytest.approx(float(expected.detach())) and 0 < reading.share <= 1
    # one market: the tokens term carries the gates' seconds too, so latency is reported, not added again
    assert float(reading.total.detach()) == pytest.approx(reading.terms["tokens"])
    config = _config(tiny_setup, tmp_path / "run", cost=("latency", "tokens"), lam=0.0, budget=0.5, latency_table=path)
    metrics = train(config, progress=False)
    assert 0 < metrics["cost_terms_last_step"]["cost/compute_share"] <= 1 and metrics["lambda_final"] > 0
    assert (tmp_path / "run" / "token_thresholds.json").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing teacher", "nowhere does not exist; pass the --out of a finished lambda = 0 fine-tune"),
        ("teacher folder without a model", "is not a checkpoint folder (no config.json)"),
        ("teacher of another task", "trained on sst2, not stsb"),
        ("teacher of another label count", "predicts 3 labels and sst2 has 2"),
        ("teacher of another vocabulary", "has a vocabulary of 1000 tokens and the student 30522"),
        ("latency without a table", "--cost latency needs --latency-table"),
        ("table of another shape", "made for another model or layer shape"),
        ("malformed table", "is not valid JSON"),
    ],
)
def test_bad_teachers_and_tables_are_one_line_and_write_nothing(tiny_setup, tmp_path, capsys, case, message):
    from econlm.models import load_config

    model_config = load_config(str(tiny_setup["bert"]))[0]
    out = tmp_path / "run"
    flags = ["train", "--model", str(tiny_setup["bert"]), "--data-dir", str(tiny_setup["data"]), "--out", str(out)]
    flags += ["--max-length", "32", "--epochs", "1", "--batch-size", "8"]
    if case == "missing teacher":
        flags += ["--task", "sst2", "--teacher", str(tmp_path / "nowhere")]
    elif case == "teacher folder without a model":
        (tmp_path / "empty").mkdir()
        flags += ["--task", "sst2", "--teacher", str(tmp_path / "empty")]
    elif case == "teacher of another task":
        flags += ["--task", "stsb", "--teacher", str(tiny_setup["teacher"])]
    elif case == "teacher of another label count":
        teacher = save_tiny_checkpoint(tmp_path / "three", head="seq-cls", num_labels=3)
        flags += ["--task", "sst2", "--teacher", str(teacher)]
    elif case == "teacher of another vocabulary":
        teacher = tmp_path / "small-vocab"
        tiny_model("bert", head="seq-cls", vocab_size=1000, num_labels=2).save_pretrained(teacher)
        flags += ["--task", "sst2", "--teacher", str(teacher)]
    elif case == "latency without a table":
        flags += ["--task", "sst2", "--cost", "latency"]
    elif case == "table of another shape":
        model_config.intermediate_size = 128
        flags += ["--task", "sst2", "--cost", "latency", "--latency-table", _table_file(tmp_path, model_config)]
    else:
        (tmp_path / "bad.json").write_text("{broken")
        flags += ["--task", "sst2", "--cost", "latency", "--latency-table", str(tmp_path / "bad.json")]
    capsys.readouterr()  # what making the teacher printed
    assert main(flags) == 2
    assert message in _one_line(capsys)
    assert not out.exists()


def test_a_table_from_another_thread_count_is_used_with_a_warning(tiny_setup, tmp_path, capsys):
    from econlm.models import load_config

    model_config = load_config(str(tiny_setup["bert"]))[0]
    path = _table_file(tmp_path, model_config, setup={"batch": 1, "seq_len": 32, "threads": 97})
    config = _config(tiny_setup, tmp_path / "run", cost=("latency",), lam=0.1, latency_table=path, epochs=1)
    train(config, progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "97 threads" in warnings[0]
