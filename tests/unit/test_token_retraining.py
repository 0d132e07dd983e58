"""Fine-tuning under a fixed token budget (PoWER-BERT's retraining step): the attached schedule, its gradients,
``econlm train --token-budget`` end to end (saved, loaded, probed, compacted as it was trained) and bad input."""

import json

import pytest
import torch

from econlm import arch
from econlm.cli import main
from econlm.errors import UserError
from econlm.tokens import SCHEDULE_FILE, AttachedSchedule, attach_schedule, attached_rule, token_budget
from tests.conftest import padded_batch, save_tiny_checkpoint, tiny_model, write_tiny_glue


def _no_hooks(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "_forward_hooks_with_kwargs", None)
        for m in model.modules()
    )


def _one_line(info) -> bool:
    return "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# The attached schedule


def test_an_attached_schedule_runs_what_the_token_budget_runs_and_detaches_to_the_plain_model():
    model = tiny_model("bert", num_hidden_layers=3)
    batch = padded_batch("bert", lengths=(11, 7, 3))
    specials = [int(batch["input_ids"][0, 4])]
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        with token_budget(model, "0.6,0.4,0.4", special_ids=specials) as expected_stats:
            expected = model(**batch).last_hidden_state
        attached = attach_schedule(model, "0.6,0.4,0.4", special_ids=specials)
        assert attached_rule(model) is attached and attached.schedule == (0.6, 0.4, 0.4)
        with attached.recording() as stats:
            got = model(**batch).last_hidden_state
        attached.detach()
        again = model(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # ceil(share x real length) of 11, 7 and 3 tokens: 7, 5, 2 after layer 0 (0.6), then 5, 3, 2 (0.4)
    assert stats.last_kept() == expected_stats.last_kept()
    assert stats.tokens_per_layer() == pytest.approx([21 / 3, 14 / 3, 10 / 3])
    assert not torch.equal(got, plain)  # tokens really left
    torch.testing.assert_close(again, plain, rtol=0, atol=0)
    assert attached_rule(model) is None and _no_hooks(model)


def test_a_second_token_budget_on_an_attached_schedule_is_refused_in_one_line():
    model = tiny_model("bert", num_hidden_layers=3)
    attach_schedule(model, 0.5, special_ids=[101])
    with pytest.raises(UserError, match="token schedule 0.5,0.5,0.5 it was fine-tuned under") as info:
        with token_budget(model, 0.7):
            pass
    assert _one_line(info)


def test_gradients_through_dropped_tokens_match_finite_differences():
    # The selection is discrete but locally constant, so the loss is differentiable in the weights wherever no
    # ranking ties; central differences in float64 must then agree with autograd, through the gather and the
    # scatter that puts dropped tokens' states back at full length. The loss weighs every real token's output,
    # so tokens dropped after layer 0 or 1 (their state as dropped) count as well as the ones that ran on.
    torch.manual_seed(0)
    model = tiny_model("bert", num_hidden_layers=3).double().train(False)
    batch = padded_batch("bert", lengths=(11, 7, 3))
    weights = torch.randn(3, batch["input_ids"].shape[1], model.config.hidden_size, dtype=torch.float64)
    weights = weights * batch["attention_mask"].unsqueeze(-1)
    attach_schedule(model, "0.6,0.4,0.4", special_ids=[101])
    blocks = arch.blocks(model)
    fam = arch.family(model.config)
    picks = [  # (parameter, index) before the first drop, between drops and after the last
        (arch.get_submodule(blocks[0], fam.attention).query.weight, (3, 5)),
        (blocks[1].get_submodule(fam.ffn_up).weight, (2, 7)),
        (blocks[2].get_submodule(fam.ffn_down).weight, (4, 1)),
        (blocks[0].get_submodule(fam.ffn_down).weight, (0, 3)),
    ]

    def loss():
        return (model(**batch).last_hidden_state * weights).sum()

    with attached_rule(model).recording() as kept:
        model.zero_grad()
        loss().backward()
    assert kept.tokens_per_layer()[2] < kept.tokens_per_layer()[1] < kept.tokens_per_layer()[0]  # tokens left
    for weight, index in picks:
        analytic = float(weight.grad[index])
        with torch.no_grad():
            original = float(weight[index])
            weight[index] = original + 1e-4  # a step whose rounding error stays far below its truncation error
            up = float(loss())
            weight[index] = original - 1e-4
            down = float(loss())
            weight[index] = original
        assert analytic == pytest.approx((up - down) / 2e-4, rel=1e-6)
    # The drop changes what the last layer learns from: the same gradient with every token differs.
    dropped_grad = picks[2][0].grad.clone()
    attached_rule(model).detach()
    model.zero_grad()
    loss().backward()
    assert not torch.allclose(picks[2][0].grad, dropped_grad)


@pytest.mark.parametrize("rule", ["schedule", "thresholds"])
def test_a_deep_copy_of_a_model_drops_tokens_by_its_own_copy_of_the_rule(rule):
    # Compaction and pruning deep-copy models: the copy must drop tokens itself, and detaching its rule must
    # leave the original's in place.
    import copy

    from econlm.tokens import attach_thresholds

    model = tiny_model("bert", num_hidden_layers=3)
    batch = padded_batch("bert", lengths=(11, 7, 3))
    if rule == "schedule":
        attach_schedule(model, "0.6,0.4,0.4", special_ids=[101])
    else:
        attach_thresholds(model, [1.0, 1.0], special_ids=[101])
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        twin = copy.deepcopy(model)
        with attached_rule(twin).recording() as kept:
            got = twin(**batch).last_hidden_state
        assert kept.examples == 3 and kept.tokens_per_layer()[-1] < kept.tokens_per_layer()[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        attached_rule(twin).detach()
        assert _no_hooks(twin) and attached_rule(model) is not None
        torch.testing.assert_close(model(**batch).last_hidden_state, expected, rtol=0, atol=0)
        assert not torch.equal(twin(**batch).last_hidden_state, expected)  # the copy runs every token now


# ---------------------------------------------------------------------------------------------------------
# econlm train --token-budget, end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    return {
        "ckpt": save_tiny_checkpoint(root / "m", head="seq-cls", num_hidden_layers=3),
        "data": write_tiny_glue(root / "data"),
    }


def _train(tiny, out, *extra):
    flags = ["--model", str(tiny["ckpt"]), "--task", "sst2", "--data-dir", str(tiny["data"]), "--out", str(out)]
    flags += ["--epochs", "1", "--batch-size", "8", "--max-length", "32", "--save-every", "100", "--seed", "3"]
    return main(["train", *flags, *extra])


@pytest.fixture(scope="module")
def retrained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert _train(tiny, out, "--token-budget", "0.5", "--teacher", str(tiny["ckpt"])) == 0
    return out


def test_train_saves_the_schedule_and_scores_with_it(retrained, capsys):
    saved = json.loads((retrained / SCHEDULE_FILE).read_text())
    assert saved["schedule"] == [0.5, 0.5, 0.5] and {101, 102} <= set(saved["special_ids"])
    metrics = json.loads((retrained / "metrics.json").read_text())
    tokens = metrics["token_budget"]
    assert tokens["schedule"] == [0.5, 0.5, 0.5] and "fine-tuned under" in tokens["rule"]
    assert tokens["tokens_per_layer"][0] > tokens["tokens_per_layer"][1] == tokens["tokens_per_layer"][2]
    assert 0.4 < tokens["macs_ratio"] < 1
    assert json.loads((retrained / "train_config.json").read_text())["token_budget"] == "0.5"


def test_every_training_step_runs_on_the_shortened_batch(tiny, tmp_path):
    from econlm.training import TrainConfig, train

    seen = []  # per pass after the first step: (training mode, tokens entering layer 0, tokens entering the last)

    def watch(step, model):
        if step == 1:
            blocks = arch.blocks(model)
            blocks[0].register_forward_pre_hook(lambda m, args: seen.append([m.training, args[0].shape[1]]))
            blocks[-1].register_forward_pre_hook(lambda m, args: seen[-1].append(args[0].shape[1]))

    config = TrainConfig(
        model=str(tiny["ckpt"]), task="sst2", data_dir=str(tiny["data"]), out=str(tmp_path / "r"), epochs=1,
        batch_size=8, max_length=32, token_budget="0.5", seed=3,
    )
    train(config, progress=False, on_step=watch)
    training = [(first, last) for mode, first, last in seen if mode]
    assert len(training) == 5 and len(seen) > 5  # 6 steps of 8 examples, 5 watched; then the dev score
    # Each batch (padded to its longest row) keeps ceil(0.5 x n) of each row's n real tokens after layer 0
    assert all(last <= -(-first // 2) + 1 for first, last in training)
    assert all(last < first for _, first, last in seen)


def test_training_again_from_a_schedule_checkpoint_runs_its_own_choice(retrained, tiny, tmp_path):
    from econlm.distill import Teacher

    plain = tmp_path / "plain"  # without --token-budget: every token, and no schedule saved
    flags = ["--model", str(retrained), "--task", "sst2", "--data-dir", str(tiny["data"]), "--epochs", "0"]
    assert main(["train", *flags, "--max-length", "32", "--out", str(plain)]) == 0
    assert not (plain / SCHEDULE_FILE).exists() and json.loads((plain / "metrics.json").read_text())["token_budget"] is None
    other = tmp_path / "other"
    assert main(["train", *flags, "--max-length", "32", "--token-budget", "0.7", "--out", str(other)]) == 0
    assert json.loads((other / SCHEDULE_FILE).read_text())["schedule"] == [0.7, 0.7, 0.7]
    from econlm.data import get_task
    from econlm.models import load_model

    teacher = Teacher(retrained, task=get_task("sst2"), student_config=load_model(str(retrained)).model.config)
    assert attached_rule(teacher.model) is None  # a teacher teaches on every token


def test_load_attaches_the_schedule_and_runs_what_the_token_budget_runs(retrained):
    from econlm.models import load_model

    loaded = load_model(str(retrained))
    attached = attached_rule(loaded.model)
    assert isinstance(attached, AttachedSchedule) and attached.schedule == (0.5, 0.5, 0.5)
    batch = loaded.tokenizer(
        ["a fairly long sentence about a film and its plot and its cast", "short one"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        got = loaded.model(**batch).logits
        attached.detach()
        full = loaded.model(**batch).logits
        with token_budget(loaded.model, 0.5, tokenizer=loaded.tokenizer):
            expected = loaded.model(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, full)


def test_the_probe_reports_the_schedule_the_model_was_trained_under(retrained, tiny, tmp_path, capsys):
    metrics = json.loads((retrained / "metrics.json").read_text())
    probe = ["probe", "--model", str(retrained), "--task", "sst2", "--data-dir", str(tiny["data"]), "--budgets", "full"]
    assert main([*probe, "--max-length", "32", "--out", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "probe.json").read_text())
    row = report["rows"][0]
    assert row["token_budget"] == "0.5,0.5,0.5" and row["token_macs_ratio"] == pytest.approx(
        metrics["token_budget"]["macs_ratio"]
    )
    assert row["score"] == pytest.approx(metrics["score"])  # the probe scores what training evaluated
    assert "token_schedule.json" in report["token_budget"]["source"]
    assert main([*probe, "--latency-repeats", "2", "--latency-examples", "8", "--out", str(tmp_path / "t")]) == 0
    timed = json.loads((tmp_path / "t" / "probe.json").read_text())["token_budget_latency"]
    assert timed["schedule"] == "0.5,0.5,0.5" and timed["speedup"] > 0
    capsys.readouterr()
    assert main([*probe, "--token-budget", "0.7", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fine-tuned under" in err and "\n" not in err


def test_compact_keeps_the_schedule_and_drops_the_same_tokens(retrained, tiny, tmp_path, capsys):
    import shutil

    from econlm.models import load_model

    folder = tmp_path / "shut"
    shutil.copytree(retrained, folder)
    loaded = load_model(str(folder))
    attached_rule(loaded.model).detach()
    o_proj = arch.blocks(loaded.model)[0].get_submodule(arch.family(loaded.model.config).o)
    head_dim = arch.shape(loaded.model.config).head_dim
    with torch.no_grad():
        arch.in_columns(o_proj)[head_dim : 2 * head_dim] = 0  # head 1 of layer 0 shut, as a folded gate leaves it
    loaded.model.save_pretrained(folder)
    capsys.readouterr()
    out = tmp_path / "c"
    code = main(["compact", str(folder), "--task", "sst2", "--data-dir", str(tiny["data"]), "--out", str(out),
                 "--latency-repeats", "2"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "token schedule kept" in printed
    assert "levers (tokens: the token schedule 0.5,0.5,0.5 it was fine-tuned under;" in printed
    report = json.loads((out / "compact.json").read_text())
    # Each lever alone and both: as loaded both models run the schedule; alone, it is switched off for the call.
    variants = report["levers"]["variants"]
    assert variants["tokens"]["macs_share"] == pytest.approx(report["before"]["token_budget"]["ratio"])
    assert variants["dense"]["macs_share"] == 1.0 and variants["units"]["macs_share"] < 1.0
    assert variants["units+tokens"]["macs_share"] < min(variants["units"]["macs_share"], variants["tokens"]["macs_share"])
    assert variants["tokens"]["score"] == report["before"]["score"]["value"]
    assert report["removed"]["heads"] == 1
    assert report["verification"]["token_schedule"]["same_tokens_dropped"] is True
    assert json.loads((out / SCHEDULE_FILE).read_text())["schedule"] == [0.5, 0.5, 0.5]
    assert attached_rule(load_model(str(out)).model).schedule == (0.5, 0.5, 0.5)
    # onnxruntime is installed (the onnx extra), so compact would time both models in it: it says why it did not
    assert "one ONNX graph does not express" in report["onnxruntime"]
    assert "onnxruntime_latency_seconds" not in report["after"]


def test_export_refuses_a_model_that_drops_tokens_in_one_line(retrained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    assert main(["export", str(retrained), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "token schedule 0.5,0.5,0.5 it was fine-tuned under" in err and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--token-budget", "0"], "must lie in (0, 1]"),
        (["--token-budget", "1.5"], "must lie in (0, 1]"),
        (["--token-budget", "1,0.5"], "gives 2 fractions but the model has 3 layers"),
        (["--token-budget", "0.5", "--cost", "tokens"], "--cost tokens learns its own token thresholds"),
        (["--token-budget", "0.5", "--distill-hidden-weight", "1"], "dropped tokens have no later layers"),
        (["--token-budget", "1"], "keeps every token, so nothing would be dropped"),
        (["--token-budget", "0.5", "--gradient-checkpointing"], "would recompute layers without the hooks"),
    ],
)
def test_bad_token_budgets_in_train_are_one_line_exit_2(tiny, tmp_path, capsys, extra, says):
    capsys.readouterr()
    extra = [*extra, "--teacher", str(tiny["ckpt"])] if "--distill-hidden-weight" in extra else extra
    assert _train(tiny, tmp_path / "r", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is damaged"),
        (json.dumps({"special_ids": [101]}), "is damaged or unreadable"),
        (json.dumps({"schedule": [0.5, 0.9, 0.5]}), "grows from 0.5 to 0.9"),
        (json.dumps({"schedule": [0.5, 0.5]}), "gives 2 fractions but the model has 3 layers"),
        (json.dumps({"schedule": [0.5], "special_ids": "cls"}), "'special_ids' must be a list"),
        (json.dumps({"schedule": [0.5], "special_ids": [10**20]}), "'special_ids' must be a list"),
        (json.dumps({"schedule": None}), "'schedule' must be a fraction or a list of them"),
        (json.dumps({"schedule": [True]}), "'schedule' must be a fraction or a list of them"),
    ],
)
def test_a_bad_schedule_file_is_one_line(tiny, tmp_path, content, says):
    import shutil

    from econlm.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny["ckpt"], folder)
    (folder / SCHEDULE_FILE).write_text(content)
    with pytest.raises(UserError, match=says) as info:
        load_model(str(folder))
    assert _one_line(info) and SCHEDULE_FILE in str(info.value)


def test_a_checkpoint_with_both_token_rules_is_one_line(tiny, tmp_path):
    import shutil

    from econlm.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny["ckpt"], folder)
    (folder / SCHEDULE_FILE).write_text(json.dumps({"schedule": [0.5]}))
    (folder / "token_thresholds.json").write_text(json.dumps({"format": 3, "thresholds": [1.0, 1.0]}))
    with pytest.raises(UserError, match="holds both token_thresholds.json and token_schedule.json") as info:
        load_model(str(folder))
    assert _one_line(info)


def test_sweeps_name_a_run_under_a_fixed_schedule_a_method_of_its_own():
    from econlm.analysis import ablation_of, method_of

    def train(**settings):
        return {"kind": "train", "settings": {"lam": 0.0, "cost": ["ffn_l1"], **settings}}

    assert method_of(train(token_budget="0.5")) == "retrained-tokens"
    assert ablation_of(train(token_budget="0.5")) == "retrained-tokens"  # not the lambda = 0 baseline
    assert method_of(train(token_budget="0.5", cost=["flops"], budget=0.4)) == "units+retrained-tokens"
    assert method_of(train()) == "incentive"
    # Learned thresholds: alone, or priced in one market with the unit gates (FLOPs or seconds).
    assert method_of(train(cost=["tokens"], budget=0.6)) == "learned-tokens"
    assert method_of(train(cost=["flops", "tokens"], budget=0.3)) == "units+learned-tokens"
    assert method_of(train(cost=["latency", "tokens"], budget=0.3)) == "units+learned-tokens"
