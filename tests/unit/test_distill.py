"""Distillation terms against hand-computed values; teacher checks give one line."""

import json
import math

import pytest
import torch

from econlm.data import get_task
from econlm.distill import DistillSettings, check_teacher, hidden_loss, prediction_loss
from econlm.errors import UserError


def test_classification_kl_matches_the_hand_computed_value():
    student = torch.tensor([[0.0, 0.0]])  # uniform
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # probabilities 0.75 / 0.25
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert float(prediction_loss(student, teacher, kind="classification", temperature=1.0)) == pytest.approx(expected)
    # At T = 2 the teacher softens to sqrt(3) : 1, and the loss is scaled by T^2 = 4.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    softened = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    got = float(prediction_loss(student, teacher, kind="classification", temperature=2.0))
    assert got == pytest.approx(4 * softened)


def test_identical_predictions_cost_nothing_and_only_the_student_gets_gradients():
    logits = torch.randn(4, 3, requires_grad=True)
    teacher = logits.detach().clone().requires_grad_(True)
    loss = prediction_loss(logits, teacher, kind="classification")
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7)
    (prediction_loss(logits + 1.0 * torch.eye(4, 3), teacher, kind="classification")).backward()
    assert logits.grad is not None and teacher.grad is None


def test_regression_is_the_mse_of_the_predictions():
    student = torch.tensor([[1.0], [2.0]])
    teacher = torch.tensor([3.0, 2.0])
    assert float(prediction_loss(student, teacher, kind="regression")) == pytest.approx(2.0)  # (4 + 0) / 2


def test_lm_kl_counts_only_real_tokens():
    student = torch.zeros(1, 3, 2)
    teacher = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [50.0, -50.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position is padding: its huge KL must not count
    per_token = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = float(prediction_loss(student, teacher, kind="lm", temperature=1.0, mask=mask))
    assert got == pytest.approx((per_token + 0.0) / 2)


def test_hidden_loss_is_the_mean_over_layers_of_masked_mse():
    s = (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    t = (torch.ones(1, 2, 2), torch.tensor([[[2.0, 2.0], [9.0, 9.0]]]))
    mask = torch.tensor([[1, 0]])
    assert float(hidden_loss(s, t, mask)) == pytest.approx((1.0 + 4.0) / 2)
    assert float(hidden_loss(s, t)) == pytest.approx((1.0 + (4.0 + 81.0) / 2) / 2)
    with pytest.raises(ValueError):
        hidden_loss(s, t[:1])


def test_settings_reject_negative_weights_and_zero_temperature():
    with pytest.raises(UserError, match="hidden-weight"):
        DistillSettings(hidden_weight=-1)
    with pytest.raises(UserError, match="temperature"):
        DistillSettings(temperature=0)


def _teacher_dir(tmp_path, **config):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


class _Student:
    vocab_size = 30522


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"econlm": {"train": {"task": "sst2"}}, "vocab_size": 30522}, "trained on sst2, not cola"),
        ({"id2label": {"0": "a", "1": "b", "2": "c"}, "vocab_size": 30522}, "predicts 3 labels"),
        ({"num_labels": 2, "vocab_size": 50257}, "vocabulary of 50257"),
    ],
)
def test_a_teacher_of_another_task_label_count_or_vocabulary_is_refused(tmp_path, config, message):
    with pytest.raises(UserError, match=message):
        check_teacher(_teacher_dir(tmp_path / "t", **config), get_task("cola"), _Student())


def test_a_matching_teacher_passes(tmp_path):
    path = _teacher_dir(tmp_path / "t", econlm={"train": {"task": "cola"}}, num_labels=2, vocab_size=30522)
    check_teacher(path, get_task("cola"), _Student())


def test_hidden_distillation_needs_the_same_layers_and_width(tmp_path):
    path = _teacher_dir(tmp_path / "t", num_labels=2, vocab_size=30522, hidden_size=768, num_hidden_layers=12)

    class Student:
        vocab_size, hidden_size, num_hidden_layers = 30522, 384, 6

    check_teacher(path, get_task("cola"), Student(), hidden=False)  # predictions alone: any width will do
    with pytest.raises(UserError, match="hidden size of 768 and the student 384"):
        check_teacher(path, get_task("cola"), Student(), hidden=True)
