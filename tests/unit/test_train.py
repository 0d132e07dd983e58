"""Incentive training end to end on tiny models and a tiny GLUE folder: outputs, faults, resume."""

import json
import os
import signal

import pytest
import torch

from econlm.cli import main
from econlm.errors import UserError
from econlm.training import Interrupted, TrainConfig, TrainingFault, train
from tests.conftest import save_tiny_checkpoint, write_tiny_glue


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bert": save_tiny_checkpoint(root / "bert"),
        "llama": save_tiny_checkpoint(root / "llama", family="llama"),
        "data": write_tiny_glue(root / "data"),
    }


def _config(tiny_setup, out, **overrides):
    settings = dict(
        model=str(tiny_setup["bert"]),
        task="sst2",
        out=str(out),
        lam=1e-2,
        cost=("ffn_l1", "attn_entropy"),
        epochs=2,
        lr=1e-3,
        batch_size=8,
        max_length=32,
        data_dir=str(tiny_setup["data"]),
        save_every=2,
        log_every=1,
        seed=7,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_train_writes_a_checkpoint_probe_can_score(tiny_setup, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = train(_config(tiny_setup, out), progress=False)
    for name in ("config.json", "model.safetensors", "metrics.json", "train_config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint").exists()  # removed once the run finished
    assert any((out / "tb").iterdir())
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metric"] == "accuracy" and 0 <= saved["score"] <= 1
    assert set(saved["cost_terms_dev"]) == {"ffn_l1", "attn_entropy"}
    assert set(saved["ffn_sparsity"]["overall"]) == {"1e-03", "1e-02"}
    assert saved["train"]["steps"] == 12 and saved["lambda_final"] == pytest.approx(1e-2)
    assert saved["meta"]["seed"] == 7 and saved["meta"]["versions"]["transformers"]
    assert json.loads((out / "config.json").read_text())["econlm"]["train"]["lam"] == pytest.approx(1e-2)
    # The checkpoint is a standard one with a classification head: the probe scores it with that head.
    code = main(
        [
            "probe",
            "--model",
            str(out),
            "--task",
            "sst2",
            "--budgets",
            "full",
            "--data-dir",
            str(tiny_setup["data"]),
            "--out",
            str(tmp_path / "probe"),
        ]
    )
    assert code == 0
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["head"] == "seq-cls" and probe["rows"][0]["score"] == pytest.approx(metrics["score"])


def test_flops_cost_with_budget_controller_prices_compute(tiny_setup, tmp_path, capsys):
    config = _config(tiny_setup, tmp_path / "run", cost=("flops",), budget=0.5, lam=0.0, price_lr=0.5, task="stsb")
    metrics = train(config, progress=False)
    assert config.schedule == "controller"
    lambdas = [lam for _, lam in metrics["lambda_history"]]
    # The gates start ~99% open, above the 0.5 budget, so the price rises from 0.
    assert lambdas[0] == 0.0 and lambdas[-1] > 0.0
    assert metrics["gates"]["heads"]["total"] == 8 and metrics["gates"]["neurons"]["total"] == 128
    assert metrics["metric"] == "spearman"
    # The share paid for is kept at each logged step; the structure is the one chosen when the gates froze.
    shares = metrics["share_history"]
    assert [s for s, _ in shares] == [s for s, _ in metrics["lambda_history"][:-1]]  # the last is the end's
    clearing = metrics["budget_clearing"]
    freeze = int(config.gate_freeze * metrics["train"]["steps"])
    assert clearing["share_at_freeze"] == [v for s, v in shares if s <= freeze][-1]
    assert clearing["share_final"] == shares[-1][1]
    assert clearing["cleared"] == (clearing["share_final"] <= 0.5 + 0.01)
    assert ("did not clear the budget" in capsys.readouterr().err) == (not clearing["cleared"])


@pytest.mark.parametrize("has_train", [False, True])
def test_language_modelling_trains_on_the_train_split_when_it_is_there_and_reports_test(tiny_setup, tmp_path, has_train):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_setup["data"] / "wikitext-2", data / "wikitext-2")
    if has_train:  # WikiText-2 ships a train split; the local WikiText-103 has none
        valid = (data / "wikitext-2" / "valid.txt").read_text()
        (data / "wikitext-2" / "train.txt").write_text(valid.upper())
    config = _config(
        tiny_setup,
        tmp_path / "lm",
        model=str(tiny_setup["llama"]),
        task="wikitext2",
        epochs=1,
        cost=("attn_sqrt",),
        eval_limit=256,
        limit=6 * 32,  # training tokens: 6 blocks
        data_dir=str(data),
    )
    metrics = train(config, progress=False)
    assert metrics["metric"] == "perplexity" and metrics["score"] > 1
    assert metrics["evaluated_on"] == "test split"
    expected = "train split" if has_train else "dev split"
    assert metrics["trained_on"].startswith(expected) and "blocks of 32 tokens" in metrics["trained_on"]
    assert metrics["eval_examples"] == 255


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lam": -1.0}, "non-negative"),
        ({"cost": ("l1",)}, "unknown cost"),
        ({"budget": 1.5, "cost": ("flops",)}, r"\(0, 1\]"),
        ({"budget": 0.0, "cost": ("flops",)}, r"\(0, 1\]"),
        ({"budget": 0.5}, "--cost flops"),
        ({"task": "sst3"}, "sst2"),
    ],
)
def test_bad_settings_fail_before_training(tiny_setup, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        _config(tiny_setup, tmp_path / "x", **overrides)
    assert not (tmp_path / "x").exists()


def test_language_modelling_on_an_encoder_is_a_clear_error(tiny_setup, tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            str(tiny_setup["bert"]),
            "--task",
            "wikitext2",
            "--data-dir",
            str(tiny_setup["data"]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "is an encoder" in err and "\n" not in err.strip()


def test_finished_run_is_never_overwritten(tiny_setup, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_setup, out, epochs=0.2), progress=False)
    with pytest.raises(UserError, match="finished run"):
        train(_config(tiny_setup, out, epochs=0.2), progress=False)


def test_nan_stops_training_naming_step_and_term_and_keeps_last_checkpoint(tiny_setup, tmp_path):
    out = tmp_path / "run"

    def poison(step, model):
        if step == 3:
            with torch.no_grad():
                model.base_model.embeddings.word_embeddings.weight.fill_(float("nan"))

    with pytest.raises(TrainingFault, match="step 4: the task loss is nan"):
        train(_config(tiny_setup, out), progress=False, on_step=poison)
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert state["state"]["global_step"] == 2
    assert torch.isfinite(state["model"]["bert.embeddings.word_embeddings.weight"]).all()


def test_interrupt_then_resume_matches_an_uninterrupted_run(tiny_setup, tmp_path):
    costs = ("flops", "attn_logits_l1")  # gates add sampling randomness that resume must restore too
    reference = train(_config(tiny_setup, tmp_path / "straight", cost=costs, save_every=100), progress=False)

    def ctrl_c(step, model):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted, match="--resume"):
        train(_config(tiny_setup, out, cost=costs, save_every=100), progress=False, on_step=ctrl_c)
    assert (out / "checkpoint" / "state.pt").exists()
    resumed = train(_config(tiny_setup, out, cost=costs, save_every=100), resume=True, progress=False)
    assert resumed["score"] == reference["score"]
    assert resumed["cost_terms_dev"] == reference["cost_terms_dev"]
    assert resumed["lambda_history"] == reference["lambda_history"]
    assert resumed["train"]["steps"] == reference["train"]["steps"]


def test_cli_resume_refuses_conflicting_flags(tiny_setup, tmp_path, capsys):
    out = tmp_path / "run"

    def ctrl_c(step, model):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(_config(tiny_setup, out), progress=False, on_step=ctrl_c)
    code = main(["train", "--out", str(out), "--resume", "--lam", "0.5"])
    assert code == 2 and "lam" in capsys.readouterr().err
    code = main(["train", "--out", str(out)])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_yaml_config_with_flag_override_and_line_numbered_errors(tiny_setup, tmp_path, capsys):
    from econlm import config as config_module

    path = tmp_path / "run.yaml"
    path.write_text(f"model: {tiny_setup['bert']}\ntask: sst2\nlam: 1e-4\ncost: [ffn_l1, flops]\nepochs: 1\n")
    built = config_module.build(TrainConfig, path, {"lam": 0.5, "out": "x"})
    assert built.lam == 0.5 and built.cost == ("ffn_l1", "flops") and built.epochs == 1.0
    assert config_module.build(TrainConfig, path, {"out": "x"}).lam == pytest.approx(1e-4)
    path.write_text("task: sst2\nlamda: 1e-4\n")
    with pytest.raises(UserError, match=rf"{path}:2: unknown key 'lamda'.*Did you mean 'lam'"):
        config_module.build(TrainConfig, path, {})
    path.write_text("task: sst2\nepochs: many\n")
    with pytest.raises(UserError, match=rf"{path}:2: 'epochs' must be a number"):
        config_module.build(TrainConfig, path, {})


def test_gates_stop_learning_after_the_freeze_point(tiny_setup, tmp_path):
    from econlm.gates import get_gates

    snapshots = {}

    def watch(step, model):
        gates = get_gates(model)
        snapshots[step] = (torch.cat([g.log_alpha.detach().clone() for g in gates.neurons]), gates.training)

    config = _config(tiny_setup, tmp_path / "run", cost=("flops",), budget=0.5, gate_freeze=0.5, epochs=2)
    train(config, progress=False, on_step=watch)
    # 12 steps; from step 6 on (0.5 of training) the gates are deterministic and no longer move.
    assert not torch.equal(snapshots[2][0], snapshots[5][0])
    assert torch.equal(snapshots[7][0], snapshots[12][0])
    assert snapshots[3][1] is True and snapshots[8][1] is False


def test_a_fisher_start_orders_the_gates_by_fisher_importance_per_mac(tiny_setup, tmp_path):
    from econlm.data import get_task
    from econlm.fisher import fisher_importance
    from econlm.flops import Structure, unit_macs_per_token
    from econlm.gates import get_gates
    from econlm.training import _features, _load_data, _load_for_task, fisher_start_batches

    starts = {}

    def watch(step, model):
        if step == 1:
            gates = get_gates(model)
            starts["heads"] = torch.cat([g.log_alpha.detach().clone() for g in gates.heads])
            starts["neurons"] = torch.cat([g.log_alpha.detach().clone() for g in gates.neurons])

    # A gate learning rate of 1e-9 leaves the first step's gates where they started.
    config = _config(tiny_setup, tmp_path / "run", cost=("flops",), budget=0.5, lam=0.0, gate_init="fisher",
                     gate_lr=1e-9, epochs=1)
    train(config, progress=False, on_step=watch)
    # The same Fisher values, measured here on a fresh copy of the starting model (its new head from the seed).
    task = get_task("sst2")
    torch.manual_seed(config.seed)
    loaded = _load_for_task(config, task)
    features, _ = _features(config, task, loaded.tokenizer, _load_data(config, task)[0])
    importance = fisher_importance(loaded.model, fisher_start_batches(config, task, loaded.tokenizer, features))
    structure = Structure.of_model(loaded.model)
    unit = [unit_macs_per_token(structure, i, 32) for i in range(len(importance))]
    heads = torch.cat([s["heads"] / u["kv_group"] for s, u in zip(importance, unit)])
    neurons = torch.cat([s["neurons"] / u["ffn_neuron"] for s, u in zip(importance, unit)])
    values = torch.cat([heads, neurons])
    start = torch.cat([starts["heads"], starts["neurons"]])
    # Every unit starts in [1, 5]; the least valuable per MAC at 1, the most at 5, and higher value never lower.
    assert start.min().item() == pytest.approx(1.0, abs=1e-6) and start.max().item() == pytest.approx(5.0, abs=1e-6)
    assert start[values.argmin()].item() == pytest.approx(1.0, abs=1e-6)
    order = torch.argsort(values, stable=True)
    assert bool((start[order][1:] >= start[order][:-1] - 1e-6).all())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"gate_init": "warm"}, "--gate-init must be one of open, fisher"),
        ({"gate_init": "fisher"}, "only --cost flops or --cost latency trains"),
    ],
)
def test_bad_gate_starts_fail_before_training(tiny_setup, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        _config(tiny_setup, tmp_path / "x", **overrides)
    assert not (tmp_path / "x").exists()


def test_a_rival_calibrates_on_the_examples_a_fisher_started_student_measured(tiny_setup, monkeypatch):
    """The post-hoc rival of a sweep (``calibration: seeded``) draws its Fisher examples as the student's Fisher
    start does: the same seed, the same training split, the same number; the legacy setting reads the first 128."""
    import econlm.training
    from econlm.compact import CompactConfig, _calibration_batches
    from econlm.data import get_task, load_examples
    from econlm.models import load_model
    from econlm.sweep import RIVAL_CALIBRATION, _rival_calibration
    from econlm.training import _features, _load_data, _load_for_task, fisher_start_batches

    monkeypatch.setattr(econlm.training, "FISHER_START_EXAMPLES", 20)  # the tiny split has 48 examples
    config = _config(tiny_setup, "unused", cost=("flops",), budget=0.5, gate_init="fisher")
    task = get_task("sst2")
    loaded = _load_for_task(config, task)
    features, _ = _features(config, task, loaded.tokenizer, _load_data(config, task)[0])
    assert len(features) > econlm.training.FISHER_START_EXAMPLES  # a sample, not the whole split
    student = fisher_start_batches(config, task, loaded.tokenizer, features)

    settings = {"seed": config.seed, "calibration": RIVAL_CALIBRATION}
    rival_config = CompactConfig(
        checkpoint=config.model, out="unused", data_dir=config.data_dir, max_length=config.max_length,
        **_rival_calibration(settings),
    )
    rival = _calibration_batches(load_model(config.model), task, rival_config, labels=True)

    def rows(batches):  # each example as its (unpadded) token ids and label, in the order drawn
        out = []
        for b in batches:
            for ids, mask, label in zip(b["input_ids"], b["attention_mask"], b["labels"]):
                out.append((tuple(ids[mask.bool()].tolist()), int(label)))
        return out

    assert len(rows(student)) == 20 and rows(rival) == rows(student)
    # Before the setting: the first 128 rows of the training file, whatever their order.
    legacy = CompactConfig(checkpoint=config.model, out="unused", data_dir=config.data_dir, max_length=config.max_length,
                           **_rival_calibration({"seed": config.seed}))
    first = load_examples(task, "train", config.data_dir, 128)
    assert [label for _, label in rows(_calibration_batches(load_model(config.model), task, legacy, labels=True))] == [
        e.label for e in first
    ]
