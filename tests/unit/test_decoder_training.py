"""Training a decoder on a language-modelling task (issue #12): gradient checkpointing, the --max-length rule
against the model's context, and --limit counted in training tokens."""

import copy
import json

import pytest
import torch

from econlm.cli import main
from econlm.errors import UserError
from econlm.training import TrainConfig, _lm_features, enable_checkpointing, train
from tests.conftest import save_tiny_checkpoint, tiny_config, tiny_model, write_tiny_glue

CONTEXT = 96  # the tiny configs' max_position_embeddings (GPT-2: n_positions)
CONTEXT_ERROR = f"--max-length 128 is above the model's context of {CONTEXT} tokens; use --max-length {CONTEXT} or less"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llama": save_tiny_checkpoint(root / "llama", family="llama", head="causal-lm"),
        "data": write_tiny_glue(root / "data"),
    }


def _lm_config(tiny, out, **overrides) -> TrainConfig:
    settings = dict(
        model=str(tiny["llama"]),
        task="wikitext2",
        out=str(out),
        cost=("attn_sqrt",),
        epochs=1,
        lr=1e-3,
        batch_size=4,
        max_length=32,
        limit=8 * 32,
        eval_limit=128,
        data_dir=str(tiny["data"]),
        seed=3,
    )
    return TrainConfig(**{**settings, **overrides})


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("econlm: error: ") and "\n" not in err, err
    return err.removeprefix("econlm: error: ")


# ---------------------------------------------------------------------------------------------------------
# Gradient checkpointing


def _step(model, batch, tax_settings=None):
    """Loss and gradients of one training step (the gates' noise drawn from a fixed seed)."""
    import econlm

    torch.manual_seed(0)
    model.train()
    if tax_settings is None:
        loss = model(**batch).loss
    else:
        tax = econlm.attach_tax(model, total_steps=10, **tax_settings)
        with tax:
            tax.begin(batch["attention_mask"], 0)
            loss = tax.loss(model(**batch).loss)
            loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tax", [None, {"cost": ("flops", "attn_entropy", "ffn_l1"), "lam": 0.5}])
def test_checkpointing_gives_the_same_loss_and_gradients(tax):
    model = tiny_model("llama", head="causal-lm")  # attention dropout 0: the two steps differ only in memory
    checkpointed = copy.deepcopy(model)
    enable_checkpointing(checkpointed)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())
    ids = torch.randint(3, 120, (4, 24), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    loss, grads = _step(model, batch, tax)
    loss_ckpt, grads_ckpt = _step(checkpointed, batch, tax)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_train_with_checkpointing_matches_training_without_and_saves_the_setting(tiny, tmp_path):
    seen = []
    with_ckpt = train(
        _lm_config(tiny, tmp_path / "ckpt", gradient_checkpointing=True),
        progress=False,
        on_step=lambda step, model: seen.append(
            any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        ),
    )
    without = train(_lm_config(tiny, tmp_path / "plain"), progress=False)
    assert seen and all(seen)
    assert with_ckpt["train"]["steps"] == without["train"]["steps"] == 2
    assert with_ckpt["cost_terms_last_step"]["loss/task"] == pytest.approx(without["cost_terms_last_step"]["loss/task"])
    assert with_ckpt["score"] == pytest.approx(without["score"], rel=1e-5)
    assert json.loads((tmp_path / "ckpt" / "train_config.json").read_text())["gradient_checkpointing"] is True
    assert json.loads((tmp_path / "plain" / "train_config.json").read_text())["gradient_checkpointing"] is False


def test_checkpointing_flag_on_the_command_line(tiny, tmp_path, capsys):
    base = [
        "train",
        "--model",
        str(tiny["llama"]),
        "--task",
        "wikitext2",
        "--data-dir",
        str(tiny["data"]),
        "--max-length",
        "32",
        "--limit",
        "64",
        "--eval-limit",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "2",
    ]
    assert main([*base, "--gradient-checkpointing", "--out", str(tmp_path / "on")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "on" / "train_config.json").read_text())["gradient_checkpointing"] is True
    yaml = tmp_path / "c.yaml"
    yaml.write_text("gradient_checkpointing: maybe\n")
    assert main([*base, "--config", str(yaml), "--out", str(tmp_path / "bad")]) == 2
    assert "'gradient_checkpointing' must be true or false" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------------------
# --max-length against the model's context: one rule, one message (train, probe, compact)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_context_is_max_position_embeddings_or_gpt2s_n_positions(family):
    from econlm.config import check_context, model_context

    config = tiny_config(family)
    assert model_context(config) == CONTEXT
    check_context(CONTEXT, config)  # the full context is allowed
    with pytest.raises(UserError) as error:
        check_context(128, config)
    assert str(error.value) == CONTEXT_ERROR


def test_train_refuses_max_length_above_the_context_before_loading(tiny, tmp_path, capsys, monkeypatch):
    import econlm.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the --max-length check")

    monkeypatch.setattr(econlm.models, "load_model", no_load)
    argv = [
        "train",
        "--model",
        str(tiny["llama"]),
        "--task",
        "wikitext2",
        "--data-dir",
        str(tiny["data"]),
        "--max-length",
        "128",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    assert _one_line_error(capsys) == CONTEXT_ERROR
    assert not (tmp_path / "run").exists()


def test_probe_and_compact_refuse_it_with_the_same_message(tiny, tmp_path, capsys, monkeypatch):
    import econlm.models

    def no_load(*args, **kwargs):
        raise AssertionError("the probe loaded the model before checking --max-length against its context")

    monkeypatch.setattr(econlm.models, "load_model", no_load)  # refused before the load and its progress bar
    argv = [
        "probe",
        "--model",
        str(tiny["llama"]),
        "--task",
        "wikitext2",
        "--data-dir",
        str(tiny["data"]),
        "--budgets",
        "full",
        "--max-length",
        "128",
        "--out",
        str(tmp_path / "p"),
    ]
    assert main(argv) == 2
    assert _one_line_error(capsys) == CONTEXT_ERROR
    monkeypatch.undo()
    argv = [
        "compact",
        str(tiny["llama"]),
        "--task",
        "wikitext2",
        "--data-dir",
        str(tiny["data"]),
        "--max-length",
        "128",
        "--out",
        str(tmp_path / "c"),
        "--no-onnx",
    ]
    assert main(argv) == 2
    assert _one_line_error(capsys) == CONTEXT_ERROR
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------------------
# --limit counts training tokens for language modelling


def test_limit_counts_tokens_in_whole_blocks():
    ids = list(range(1000))
    blocks = _lm_features(ids, 64, 256)
    assert len(blocks) == 4 and [b["input_ids"][0] for b in blocks] == [0, 64, 128, 192]
    assert blocks[-1]["input_ids"][-1] == 255  # never a token past the limit
    assert len(_lm_features(ids, 64, 300)) == 4  # the partial fifth block is not trained on
    assert len(_lm_features(ids, 64, None)) == 1000 // 64
    assert len(_lm_features(ids, 64, 10**6)) == 1000 // 64
    with pytest.raises(UserError, match="--limit 50 is fewer training tokens than one block of --max-length 64"):
        _lm_features(ids, 64, 50)


def test_train_limit_256_tokens_at_length_64_trains_on_4_blocks(tiny, tmp_path):
    metrics = train(
        _lm_config(tiny, tmp_path / "run", max_length=64, limit=256, batch_size=1, eval_limit=128),
        progress=False,
    )
    assert metrics["train"]["steps"] == 4  # 4 blocks, batch 1, one epoch
    assert "4 blocks, 256 tokens (--limit 256)" in metrics["trained_on"]


# ---------------------------------------------------------------------------------------------------------
# Validation perplexity during training (--eval-every)


def _with_train_split(tiny, root):
    """The tiny WikiText-2 folder plus a train file (without one, training reads the validation text)."""
    import shutil

    shutil.copytree(tiny["data"], root)
    text = (root / "wikitext-2" / "valid.txt").read_text()
    (root / "wikitext-2" / "train.txt").write_text(" ".join(reversed(text.split())))
    return root


def test_eval_every_scores_validation_perplexity_as_the_model_stands(tiny, tmp_path):
    from econlm import data, evaluate
    from econlm.models import load_model

    data_dir = _with_train_split(tiny, tmp_path / "data")
    config = _lm_config(tiny, tmp_path / "run", cost=("ffn_l1",), lam=0.0, eval_every=1, data_dir=str(data_dir))
    # 8 blocks of 32 at batch 4: 2 steps
    metrics = train(config, progress=False)
    history = metrics["validation_history"]
    assert history["split"] == "validation" and history["every"] == 1
    assert [step for step, _ in history["scores"]] == [1, 2]
    # The last one scored the final model: the same perplexity as scoring the saved model afresh on the first
    # --eval-limit tokens of the validation split, with the same windows.
    saved = load_model(config.out)
    task = data.get_task("wikitext2")
    ids = evaluate.lm_token_ids(saved.tokenizer, data.load_text(task, "dev", data_dir), config.eval_limit)
    fresh = evaluate.score_lm(saved.model.eval(), ids, max_length=config.max_length, batch_size=config.batch_size)
    assert history["scores"][-1][1] == pytest.approx(fresh.value, rel=1e-5)
    assert history["scores"][0][1] != pytest.approx(fresh.value, rel=1e-5)  # one step earlier: other weights
    assert metrics["score"] != pytest.approx(fresh.value, rel=1e-3)  # the final score is on the test split


def test_eval_every_off_by_default_and_checked(tiny, tmp_path, capsys):
    metrics = train(_lm_config(tiny, tmp_path / "run"), progress=False)
    assert metrics["validation_history"]["scores"] == []
    code = main(
        [
            "train",
            "--model",
            str(tiny["llama"]),
            "--task",
            "wikitext2",
            "--eval-every",
            "-1",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    assert code == 2
    assert _one_line_error(capsys) == "--eval-every must be a whole number of steps >= 0 (0: no validation), not -1"
    assert not (tmp_path / "bad").exists()
    # The tiny folder has no WikiText-2 train file, so training reads the validation text: no validation left.
    with pytest.raises(UserError, match="--eval-every needs a validation split apart from the training text"):
        train(_lm_config(tiny, tmp_path / "on-validation", eval_every=1), progress=False)
    assert not (tmp_path / "on-validation").exists()  # refused before anything was written


def test_shadow_price_dev_loss_of_a_language_model_is_the_log_of_its_validation_perplexity(tiny):
    import math

    from econlm import data, evaluate
    from econlm.models import load_model
    from econlm.shadow import dev_loss

    settings = {"task": "wikitext2", "max_length": 32, "eval_limit": 96, "data_dir": str(tiny["data"])}
    got = dev_loss(str(tiny["llama"]), settings)
    loaded = load_model(str(tiny["llama"]))
    ids = evaluate.lm_token_ids(loaded.tokenizer, data.load_text(data.get_task("wikitext2"), "dev", tiny["data"]), 96)
    perplexity = evaluate.score_lm(loaded.model.eval(), ids, max_length=32).value
    assert got["loss"] == pytest.approx(math.log(perplexity), rel=1e-6)
    assert got["unit"] == "tokens" and got["examples"] == 95  # 96 tokens: 95 next-token predictions
