"""Knowledge distillation from a fine-tuned dense teacher: the recovery signal pruning recipes rely on.

CoFiPruning's ablation shows why: at high sparsity a pruned BERT recovers far more of its score when it
learns from the dense fine-tuned model's predictions (and hidden states) than from the labels alone.

Two terms, each with its own weight:

``prediction``  classification: KL(teacher || student) of the temperature-softened distributions, times
                T^2 so its gradient scale does not shrink with T (Hinton et al.); regression: the MSE of
                the two predictions; language modelling: the token-level KL over the vocabulary at real
                (non-padding) positions.
``hidden``      the mean over layers of the MSE between student and teacher hidden states at real tokens.
                Removing heads or neurons keeps the hidden size, so layers match one to one.

The pure functions take tensors; :class:`Teacher` loads and checks a teacher checkpoint and runs it in
eval mode without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from econlm.errors import UserError


def prediction_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, kind: str, temperature: float = 2.0, mask=None
) -> torch.Tensor:
    """Distillation loss on the outputs. kind: ``classification``, ``regression`` or ``lm``.

    ``student`` and ``teacher`` are logits (classification: (B, C); lm: (B, T, V)) or predictions
    (regression: (B,) or (B, 1)). ``mask`` (B, T) selects the real tokens for ``lm``.
    """
    teacher = teacher.detach()
    if kind == "regression":
        return F.mse_loss(student.reshape(-1).float(), teacher.reshape(-1).float())
    if kind not in ("classification", "lm"):
        raise ValueError(f"kind must be classification, regression or lm, not {kind!r}")
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # KL(teacher || student)
    if kind == "lm" and mask is not None:
        weights = mask.to(per_row.dtype)
        return (per_row * weights).sum() / weights.sum().clamp_min(1.0) * t * t
    return per_row.mean() * t * t


def hidden_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], mask=None) -> torch.Tensor:
    """Mean over layers of the per-element MSE between hidden states, over real tokens when ``mask`` is given.

    ``student`` and ``teacher`` are the ``hidden_states`` tuples of a forward pass with
    ``output_hidden_states=True`` (the embeddings and every layer's output).
    """
    if len(student) != len(teacher):
        raise ValueError(f"the student has {len(student)} hidden states and the teacher {len(teacher)}")
    losses = []
    for s, t in zip(student, teacher):
        diff = (s.float() - t.detach().float()).pow(2).mean(dim=-1)  # (B, T)
        if mask is not None:
            weights = mask.to(diff.dtype)
            losses.append((diff * weights).sum() / weights.sum().clamp_min(1.0))
        else:
            losses.append(diff.mean())
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class DistillSettings:
    """Weights and temperature of the two terms; a weight of 0 turns its term off."""

    prediction_weight: float = 1.0
    hidden_weight: float = 0.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        for name in ("prediction_weight", "hidden_weight"):
            value = getattr(self, name)
            if not (value >= 0 and value == value):
                raise UserError(f"--distill-{name.split('_')[0]}-weight must be >= 0, not {value}")
        if not self.temperature > 0:
            raise UserError(f"--distill-temperature must be positive, not {self.temperature}")


class Teacher:
    """A fine-tuned dense checkpoint of the same task, run in eval mode without gradients."""

    def __init__(self, path: str | Path, *, task, student_config, device="cpu", hidden: bool = False):
        from econlm.models import load_model

        path = Path(path)
        if not (path / "config.json").is_file():
            what = "is not a checkpoint folder (no config.json)" if path.exists() else "does not exist"
            raise UserError(
                f"the teacher {path} {what}; pass the --out of a finished lambda = 0 fine-tune of the same task"
            )
        check_teacher(path, task, student_config, hidden)
        head = "causal-lm" if task.is_lm else "seq-cls"
        self.model = load_model(str(path), head).model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        from econlm.tokens import attached_rule

        rule = attached_rule(self.model)  # a teacher that drops tokens by its own rule teaches on every token
        if rule is not None:
            rule.detach()

    @torch.no_grad()
    def __call__(self, batch: dict, hidden: bool):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs, output_hidden_states=hidden)


def check_teacher(path: Path, task, student_config, hidden: bool = False) -> None:
    """One line for a teacher of another task, label count or vocabulary (read from its config.json)."""
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise UserError(
            f"the teacher's {path / 'config.json'} cannot be read ({error}); re-train or restore it"
        ) from None
    trained_on = ((config.get("econlm") or {}).get("train") or {}).get("task")
    if trained_on is not None and trained_on != task.name:
        raise UserError(
            f"the teacher {path} was trained on {trained_on}, not {task.name}; use a teacher of {task.name}"
        )
    if not task.is_lm:
        labels = len(config.get("id2label") or {}) or config.get("num_labels")
        if labels is not None and labels != task.num_labels:
            raise UserError(
                f"the teacher {path} predicts {labels} labels and {task.name} has {task.num_labels}; "
                f"use a teacher fine-tuned on {task.name}"
            )
    for key, what in (("hidden_size", "hidden size"), ("num_hidden_layers", "number of layers")):
        theirs, mine = config.get(key), getattr(student_config, key, None)
        if hidden and theirs is not None and mine is not None and theirs != mine:
            raise UserError(
                f"the teacher {path} has a {what} of {theirs} and the student {mine}; hidden-state distillation "
                "matches layers one to one: use a teacher of the same architecture, or --distill-hidden-weight 0"
            )
    vocab = config.get("vocab_size")
    if vocab is not None and vocab != getattr(student_config, "vocab_size", vocab):
        raise UserError(
            f"the teacher {path} has a vocabulary of {vocab} tokens and the student {student_config.vocab_size}; "
            "teacher and student must share the tokenizer"
        )
