"""Incentive training: fine-tune with ``L_total = L_task + lambda * C_comp`` (an accelerate loop).

The tax itself (cost terms, gates, price) is :class:`econlm.incentive.Incentive`, the object a user's own
loop or a Hugging Face Trainer uses too; this module is the loop ``econlm train`` runs around it, with data,
optional distillation from a teacher, checkpoints, evaluation and saving.

The loop runs in one process on the CPU by default, and unchanged under ``accelerate launch`` on several
GPUs (each process takes its shard of every global batch; the compute share that sets the price is
averaged over processes). It is exactly resumable: batches follow a per-epoch permutation of the seed,
and checkpoints (:mod:`econlm.checkpoint`) hold model, gates, optimizer, LR schedule, price and every RNG
state, written at step boundaries only and read back with ``weights_only=True``. Ctrl-C or SIGTERM
finishes the current step, saves, and tells how to resume; a NaN or infinite loss stops the run, naming
the step and the term, and leaves the last good checkpoint in place. A full disk is a one-line error that
leaves no half-written checkpoint behind.

Outputs in ``--out``: a standard ``save_pretrained`` checkpoint (gates folded into the weights; its
``config.json`` also carries the training config under ``econlm``), ``train_config.json``,
``metrics.json``, TensorBoard logs in ``tb/``, and ``checkpoint/`` while a run is unfinished.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from econlm.checkpoint import CHECKPOINT
from econlm.errors import UserError
from econlm.userdata import DataFields

SPARSITY_EPSILONS = (1e-3, 1e-2)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class TrainConfig(DataFields):
    """One incentive-training run. Validated on construction, before anything heavy happens. The fields of
    :class:`~econlm.userdata.DataFields` describe a user's own data file (``task`` is then its path)."""

    model: str = "minilm"
    task: str = "stsb"
    out: str = ""
    # The tax (see econlm.incentive.TaxConfig, which validates these fields)
    lam: float = 0.0
    cost: tuple[str, ...] = ("ffn_l1",)
    target: str = "both"
    attention_weight: float = 1.0
    ffn_weight: float = 1.0
    schedule: str = "constant"  # constant, warmup, controller (implied by budget)
    warmup_steps: int = 0  # lambda warm-up (schedule "warmup")
    budget: float | None = None  # target share of dense compute (flops) or dense latency (latency)
    price_lr: float = 0.5  # eta of the controller's dual ascent
    budget_rho: float = 20.0  # weight of the quadratic anchor 0.5 * rho * (share - budget)^2 (controller only)
    budget_warmup: float = 0.5  # share of training over which the budget falls from 1 to its value
    gate_freeze: float = 0.7  # gates: after this share of training they stop learning and turn deterministic
    gate_init: str = "open"  # open: every gate starts open; fisher: starts ordered by Fisher importance per MAC
    latency_table: str | None = None  # the table --cost latency prices gates by
    cost_reduction: str = "mean"  # mean per token and unit, or sum (the paper's scale for lambda)
    token_temperature: float = 0.1  # --cost tokens: temperature T of the soft mask sigmoid((value - threshold) / T)
    token_lr: float = 0.02  # --cost tokens: learning rate of the token thresholds
    # A fixed token budget in force through fine-tuning and after (PoWER-BERT's retraining): one fraction of each
    # example's real tokens kept after every layer, or one per layer ("1,0.8,0.6,..."); saved as token_schedule.json
    token_budget: str | None = None
    # Distillation from a fine-tuned dense teacher of the same task
    teacher: str | None = None
    distill_weight: float = 1.0  # prediction-layer term (KL at a temperature; MSE for regression)
    distill_hidden_weight: float = 0.0  # per-layer hidden-state MSE
    distill_temperature: float = 2.0
    # Optimisation and data
    epochs: float = 3.0
    lr: float = 5e-5
    gate_lr: float = 0.1  # learning rate of the gates
    weight_decay: float = 0.01
    lr_warmup_ratio: float = 0.06
    batch_size: int = 32
    max_length: int = 128
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward: less memory, slower
    seed: int = 42
    limit: int | None = None  # training examples (training tokens for LM tasks, in whole blocks of max_length)
    eval_limit: int | None = None  # dev examples (test tokens for LM tasks; default 8192)
    data_dir: str | None = None
    save_every: int = 200  # steps between checkpoints
    eval_every: int = 0  # steps between validation scores (LM: the validation split; else dev); 0: none
    log_every: int = 10
    device: str = "cpu"  # cpu or auto (accelerate's choice: a GPU when there is one)

    def __post_init__(self) -> None:
        from econlm.config import check_max_length
        from econlm.data import normalise_data_fields

        normalise_data_fields(self)  # a user's data file becomes a task (read and checked here)
        tax = self.tax()  # validates the tax fields, normalises cost and schedule
        object.__setattr__(self, "cost", tax.cost)
        object.__setattr__(self, "schedule", tax.schedule)
        self.distill_settings()
        if not self.epochs >= 0:
            raise UserError(f"--epochs must be >= 0 (0 evaluates and saves the model untrained), not {self.epochs}")
        for name in ("lr", "batch_size", "save_every", "log_every", "token_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        check_max_length(self.max_length)
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if isinstance(self.eval_every, bool) or not (isinstance(self.eval_every, int) and self.eval_every >= 0):
            raise UserError(
                f"--eval-every must be a whole number of steps >= 0 (0: no validation), not {self.eval_every}"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise UserError(f"--gradient-checkpointing must be true or false, not {self.gradient_checkpointing!r}")
        if self.gradient_checkpointing and "tokens" in self.cost:
            raise UserError(
                "--gradient-checkpointing does not work with --cost tokens: the token mask is passed between layers "
                "by hooks, which a recomputed layer would not replay; leave one of them out"
            )
        self._check_token_budget()
        if self.device not in ("cpu", "auto"):
            raise UserError(f"--device must be cpu or auto, not {self.device}")
        self._check_gate_init()

    def _check_token_budget(self) -> None:
        if self.token_budget is None:
            return
        from econlm.tokens import TokenSchedule

        parsed = TokenSchedule.parse(self.token_budget)
        if parsed.is_full:
            raise UserError(
                f"--token-budget {parsed.label} keeps every token, so nothing would be dropped: give fractions below 1, "
                "or leave --token-budget out"
            )
        object.__setattr__(self, "token_budget", parsed.label)
        clashes = [
            ("tokens" in self.cost, "--cost tokens learns its own token thresholds"),
            (
                self.distill_hidden_weight > 0,
                "hidden-state distillation compares every token of every layer, and dropped tokens have no later "
                "layers (use --distill-hidden-weight 0)",
            ),
            (self.gradient_checkpointing, "gradient checkpointing would recompute layers without the hooks that drop tokens"),
        ]
        for clashes_here, why in clashes:
            if clashes_here:
                raise UserError(f"--token-budget fixes which tokens each layer runs on, but {why}; leave one of them out")

    def _check_gate_init(self) -> None:
        from econlm.gates import GATE_STARTS

        if self.gate_init not in GATE_STARTS:
            raise UserError(f"--gate-init must be one of {', '.join(GATE_STARTS)}, not {self.gate_init!r}")
        if self.gate_init == "fisher" and not {"flops", "latency"} & set(self.cost):
            raise UserError(
                "--gate-init fisher orders the unit gates, which only --cost flops or --cost latency trains; "
                "add one of them or leave --gate-init out"
            )

    def tax(self):
        from econlm.incentive import TaxConfig

        return TaxConfig.from_settings(self)

    def distill_settings(self):
        from econlm.distill import DistillSettings

        return DistillSettings(self.distill_weight, self.distill_hidden_weight, self.distill_temperature)


class TrainingFault(Exception):
    """A non-finite loss: training stops, the last good checkpoint stays."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved at a step boundary.

    ``signum`` is the signal that stopped the run: the CLI exits with 128 + signum (130, 143), the code
    shells and job schedulers expect from a process that a signal ended.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


@dataclass
class _State:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0
    lambda_history: list = field(default_factory=list)
    share_history: list = field(default_factory=list)  # [step, compute share paid for] under a budget
    last_log: dict = field(default_factory=dict)
    # [step, {"loss/task": ..., "distill/prediction": ...}] at each log step: the losses' path in metrics.json
    loss_history: list = field(default_factory=list)
    validation_history: list = field(default_factory=list)  # [step, score] every --eval-every steps


# ---------------------------------------------------------------------------------------------------------
# Data


def _glue_features(tokenizer, task, examples, max_length):
    """Tokenized training examples cut to ``max_length``, and how many of them were longer than that."""
    from econlm.evaluate import encode

    pairs = examples and examples[0].text_b is not None
    texts_b = [e.text_b for e in examples] if pairs else None
    ids, types, cut = encode(tokenizer, [e.text_a for e in examples], texts_b, max_length)
    features = []
    for i, e in enumerate(examples):
        feature = {"input_ids": ids[i], "labels": e.label}
        if types is not None:
            feature["token_type_ids"] = types[i]
        features.append(feature)
    return features, sum(cut)


def _lm_features(ids: list[int], max_length: int, limit: int | None):
    """Consecutive blocks of ``max_length`` tokens; ``limit`` counts training tokens (as the probe's and
    ``eval_limit``'s do), so it keeps the first ``limit // max_length`` whole blocks."""
    if limit is not None and limit < max_length:
        raise UserError(
            f"--limit {limit} is fewer training tokens than one block of --max-length {max_length}; "
            f"use --limit {max_length} or more (language-modelling limits count tokens)"
        )
    end = len(ids) if limit is None else min(len(ids), limit)
    blocks = [ids[i : i + max_length] for i in range(0, end - max_length + 1, max_length)]
    return [{"input_ids": b, "labels": b} for b in blocks]


def _collate(tokenizer, features, regression: bool):
    import torch

    labels = [f["labels"] for f in features]
    inputs = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt")
    if isinstance(labels[0], list):  # language modelling: every position is a label
        batch_labels = torch.tensor(labels)
    else:
        batch_labels = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    inputs["labels"] = batch_labels
    return inputs


def _epoch_batches(n: int, batch_size: int, world: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches (batch_size per process) of a seeded per-epoch permutation; the last partial one dropped
    only when it cannot give every process an example."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    step = batch_size * world
    return [order[i : i + step] for i in range(0, n, step) if len(order[i : i + step]) >= world]


def _config_dict(config: TrainConfig) -> dict:
    from econlm.config import to_dict

    return to_dict(config)


def saved_config(out: str | Path) -> TrainConfig | None:
    """The config of the unfinished run in ``out``, or None."""
    from econlm.checkpoint import load_checkpoint

    path = Path(out) / CHECKPOINT / "state.pt"
    if not path.exists():
        return None
    saved = load_checkpoint(out)["config"]
    try:
        return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    except TypeError:  # fields this version does not know
        raise UserError(
            f"{path} holds settings this version of econlm does not know; resume it with the version that "
            f"started it, or delete {path.parent} to start over"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Output folder, signals, model


def prepare_out_dir(config: TrainConfig, resume: bool) -> Path:
    """Refuse to overwrite a finished run, or to silently restart an interrupted one."""
    if not config.out:
        raise UserError("--out is required: the folder the trained model and metrics go to")
    out = Path(config.out)
    has_checkpoint = (out / CHECKPOINT / "state.pt").exists()
    finished = (out / "metrics.json").exists()
    if resume:
        if not has_checkpoint:
            raise _nothing_to_resume(out)
    elif has_checkpoint:
        raise UserError(f"{out} holds an unfinished run; continue it with --resume, or choose another --out")
    elif finished:
        raise UserError(f"{out} already holds a finished run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _nothing_to_resume(out: str | Path) -> UserError:
    if (Path(out) / "metrics.json").exists():
        # A new run in a finished folder is refused too: only another --out helps.
        return UserError(
            f"the run in {out} is finished (metrics.json); nothing to resume; choose another --out for a new run"
        )
    return UserError(f"{out} has no checkpoint to resume from; start a new run without --resume")


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM (a scheduler's or container's stop, ``kill``) become a request the training loop
    honours at the next step boundary: it saves a checkpoint and raises :class:`Interrupted`. Yields the
    list of signals received; the previous handlers come back afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _label_map(model, task) -> None:
    """Class names travel with the checkpoint (id2label), so its predictions can be read."""
    if task.label_names:
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {name: i for i, name in enumerate(task.label_names)}


def enable_checkpointing(model) -> None:
    """Gradient (activation) checkpointing of every layer, non-reentrant: each layer's activations are
    recomputed in the backward pass instead of kept, which trades about one more forward pass for the memory
    of the stored activations. Gradients are the same (the recompute replays the same RNG state, so dropout
    and gate samples match); hooks (cost terms, gates) fire again during the recompute, after the step's
    cost was read, so they change nothing."""
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # the newer name; the old one warns it is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as error:  # "X does not support gradient checkpointing"
        raise UserError(f"--gradient-checkpointing: {error}") from None


def _load_for_task(config: TrainConfig, task):
    from econlm import arch
    from econlm.models import load_config, load_model, model_head

    model_config, _ = load_config(config.model)
    if task.is_lm:
        if arch.family(model_config).kind != "decoder":
            raise UserError(
                f"{config.model} is an encoder ({model_config.model_type}) without a language-modelling head; "
                f"{task.name} needs a decoder such as smollm2"
            )
        from econlm.config import check_context

        check_context(config.max_length, model_config)  # blocks longer than the context: refused before loading
        return load_model(config.model, "causal-lm")
    existing = model_head(model_config)
    num_labels = task.num_labels
    same_head = existing == "seq-cls" and getattr(model_config, "num_labels", None) == num_labels
    loaded = load_model(config.model, "seq-cls", num_labels=None if same_head else num_labels)
    if task.kind == "regression":
        loaded.model.config.problem_type = "regression"
    else:
        loaded.model.config.problem_type = "single_label_classification"
        _label_map(loaded.model, task)
    return loaded


# ---------------------------------------------------------------------------------------------------------
# The run


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, object], None] | None = None,
) -> dict:
    """Run (or resume) incentive training; returns the metrics also written to ``out/metrics.json``.

    Args:
        config: the run's settings.
        resume: continue the unfinished run in ``config.out`` from its checkpoint.
        progress: show a progress bar with loss, cost and lambda.
        on_step: called after every optimizer step with (global step, model); for tests and tooling.

    Raises:
        Interrupted: on Ctrl-C or SIGTERM, after saving a checkpoint at the end of the current step.
        TrainingFault: on a non-finite loss; the last good checkpoint stays.
        UserError: on a mistake in ``config`` or its files, or a full disk.
    """
    from econlm.runinfo import created_dir

    # A run that fails before writing anything must not leave an empty --out behind.
    with created_dir(config.out):
        run = _setup(config, resume)
        _loop(run, progress, on_step)
        return _end(run)


@dataclass
class _Run:
    """Everything one training run holds while its loop runs."""

    config: TrainConfig
    task: object
    out: Path
    accelerator: object
    model: object  # as accelerate prepared it (DDP-wrapped under several processes)
    inner: object  # the model itself
    tokenizer: object
    features: list
    eval_data: object
    truncated_train: int
    optimizer: object
    scheduler: object
    incentive: object
    teacher: object
    total_steps: int
    state: _State
    validation_data: object = None  # what --eval-every scores: LM validation text, else the dev examples


def _setup(config: TrainConfig, resume: bool) -> _Run:
    """Data, model, tax, optimizer and schedule; the saved state when resuming."""
    import torch
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    from econlm import data
    from econlm.incentive import Incentive

    task = data.get_task(config.task)
    if config.eval_every and task.is_lm and data.lm_train_split(task, config.data_dir) == "dev":
        raise UserError(  # validation text the model trains on would not be validation
            f"--eval-every needs a validation split apart from the training text, but {task.name} trains on its "
            "validation split here (no local train split); leave --eval-every out"
        )
    out = prepare_out_dir(config, resume)
    # accelerate needs cpu=True to form a multi-process CPU group; "auto" takes a GPU when one exists.
    accelerator = Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available())
    train_data, eval_data = _load_data(config, task)  # data first: a missing file should not cost a model load
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    loaded = _load_for_task(config, task)
    model, tokenizer = loaded.model, loaded.tokenizer
    if config.token_budget is not None or "tokens" in config.cost:
        from econlm.tokens import check_encoder

        check_encoder(model)  # before tokenizing: a decoder's long-text warnings would bury the one-line refusal
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    features, truncated = _features(config, task, tokenizer, train_data)
    teacher = _teacher(config, task, model, accelerator.device)

    steps_per_epoch = len(_epoch_batches(len(features), config.batch_size, accelerator.num_processes, config.seed, 0))
    # --epochs 0 trains nothing: the model is evaluated and saved as it is (a post-hoc model with no recovery).
    total_steps = math.ceil(steps_per_epoch * config.epochs) if config.epochs > 0 else 0
    incentive = Incentive(model, config.tax(), total_steps, tokenizer=tokenizer)
    _drop_loaded_token_rule(model)
    if config.token_budget is not None:  # every pass from here on, training and evaluation, drops tokens
        from econlm.tokens import attach_schedule

        attach_schedule(model, config.token_budget, tokenizer=tokenizer, token_mask=incentive.meter.tokens)
    model.to(accelerator.device)
    if config.gate_init == "fisher" and not resume:  # a resumed run has its gates in the checkpoint
        _start_gates_from_fisher(config, task, model, tokenizer, features)
    optimizer = torch.optim.AdamW(
        incentive.parameter_groups(config.lr, config.gate_lr, config.weight_decay, token_lr=config.token_lr)
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.lr_warmup_ratio * total_steps), total_steps)
    state = _State()
    if resume:
        state = _restore(out, model, optimizer, scheduler, incentive)
    elif accelerator.is_main_process:
        from econlm.runinfo import write_json

        write_json(out / "train_config.json", _config_dict(config))
    prepared, optimizer = accelerator.prepare(model, optimizer)
    run = _Run(
        config,
        task,
        out,
        accelerator,
        prepared,
        accelerator.unwrap_model(prepared),
        tokenizer,
        features,
        eval_data,
        truncated,
        optimizer,
        scheduler,
        incentive,
        teacher,
        total_steps,
        state,
    )
    if config.eval_every:
        run.validation_data = _validation_data(config, task, tokenizer, eval_data)
    return run


def _validation_data(config: TrainConfig, task, tokenizer, eval_data):
    """What --eval-every scores: a language model's validation tokens (tokenized once), else the dev examples.
    (A user's corpus has one held-out split, which is also the final score's text; metrics.json says so.)"""
    from econlm import data, evaluate

    if not task.is_lm:
        return eval_data
    return evaluate.lm_token_ids(tokenizer, data.load_text(task, "dev", config.data_dir), config.eval_limit or 8192)


def _drop_loaded_token_rule(model) -> None:
    """A checkpoint with learned token thresholds, or a fixed token schedule, drops tokens in every pass;
    fine-tuning it trains (and saves) the model on every token unless this run names its own rule
    (``--cost tokens`` starts learning from loaded thresholds; ``--token-budget`` attaches its schedule)."""
    from econlm.tokens import attached_rule

    attached = attached_rule(model)
    if attached is not None:
        attached.detach()


def _load_data(config: TrainConfig, task):
    from econlm import data

    if task.is_lm:
        train_split = data.lm_train_split(task, config.data_dir)
        return data.load_text(task, train_split, config.data_dir), data.load_text(task, "test", config.data_dir)
    return (
        data.load_examples(task, "train", config.data_dir, config.limit),
        data.load_examples(task, "dev", config.data_dir, config.eval_limit),
    )


def _features(config: TrainConfig, task, tokenizer, train_data) -> tuple[list, int]:
    """Training features and how many examples were cut to max_length (LM blocks are never cut)."""
    from econlm import evaluate

    if not task.is_lm:
        return _glue_features(tokenizer, task, train_data, config.max_length)
    features = _lm_features(evaluate.lm_token_ids(tokenizer, train_data, None), config.max_length, config.limit)
    if not features:
        raise UserError(f"the training text is shorter than one block of {config.max_length} tokens")
    return features, 0


FISHER_START_EXAMPLES = 256  # as many as the benchmark sweeps' compaction calibrates on (calib_examples: 256)


def fisher_start_batches(config: TrainConfig, task, tokenizer, features) -> list:
    """The labelled training examples a Fisher start measures on: a sample the seed picks, in batches of 16."""
    from econlm.data import sample_indices

    picked = sample_indices(len(features), FISHER_START_EXAMPLES, config.seed)
    regression = task.kind == "regression"
    return [
        _collate(tokenizer, [features[i] for i in picked[start : start + 16]], regression)
        for start in range(0, len(picked), 16)
    ]


def _start_gates_from_fisher(config: TrainConfig, task, model, tokenizer, features) -> None:
    """Order the gates' starting values by each unit's Fisher importance per MAC, measured on training
    examples the seed picks (:func:`econlm.gates.start_by_value`)."""
    from econlm.fisher import fisher_importance
    from econlm.flops import Structure
    from econlm.gates import get_gates, start_by_value
    from econlm.prune import value_per_mac

    device = next(model.parameters()).device
    importance = fisher_importance(model, [b.to(device) for b in fisher_start_batches(config, task, tokenizer, features)])
    start_by_value(get_gates(model), value_per_mac(Structure.of_model(model), importance, config.max_length))


def _teacher(config: TrainConfig, task, model, device):
    if not config.teacher:
        return None
    from econlm.distill import Teacher

    return Teacher(
        config.teacher, task=task, student_config=model.config, device=device, hidden=config.distill_hidden_weight > 0
    )


def _restore(out: Path, model, optimizer, scheduler, incentive) -> _State:
    from econlm.checkpoint import load_checkpoint, set_rng_state

    checkpoint = load_checkpoint(out)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # e.g. per-query-head gates of a GQA model, saved before gates covered K/V groups
        first = str(error).strip().splitlines()[-1].strip()
        raise UserError(
            f"the checkpoint in {out / CHECKPOINT} does not fit this model and settings ({first}); it was saved by "
            "another econlm version or model: start the run again without --resume"
        ) from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    incentive.price.load_state_dict(checkpoint["price"])
    set_rng_state(checkpoint["rng"])
    return _State(**checkpoint["state"])


def _loop(run: _Run, progress: bool, on_step) -> None:
    """Steps until the last one; a stop signal saves a checkpoint and raises :class:`Interrupted`."""
    from econlm.progress import bar

    config, state, world = run.config, run.state, run.accelerator.num_processes
    main = run.accelerator.is_main_process
    writer = _tensorboard(run.out) if main else None
    pbar = bar(
        total=run.total_steps, desc=f"train {config.model} on {run.task.name}", unit="step", enabled=progress and main
    )
    pbar.update(state.global_step)
    try:
        with run.incentive, _stop_requests() as stop_signals:
            while state.global_step < run.total_steps:
                batches = _epoch_batches(len(run.features), config.batch_size, world, config.seed, state.epoch)
                while state.step_in_epoch < len(batches) and state.global_step < run.total_steps:
                    log = _step(run, batches[state.step_in_epoch])
                    _record(run, log, writer)
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{log['loss/task']:.4f}", lam=f"{log['price/lambda']:.3g}")
                    if on_step:
                        on_step(state.global_step, run.inner)
                    if config.eval_every and state.global_step % config.eval_every == 0 and main and not stop_signals:
                        _validate(run, writer)
                    if state.global_step % config.save_every == 0 or stop_signals:
                        _checkpoint(run)
                    if stop_signals:
                        raise _interrupted(run, stop_signals[0])
                state.epoch += 1
                state.step_in_epoch = 0
    finally:
        pbar.close()
        if writer:
            writer.flush()
            writer.close()


def _step(run: _Run, global_batch: list[int]) -> dict:
    """One optimizer step on this process's share of a global batch; returns what is logged."""
    import torch

    from econlm.incentive import NonFiniteLoss

    started = time.perf_counter()
    accelerator, incentive, state = run.accelerator, run.incentive, run.state
    mine = global_batch[accelerator.process_index :: accelerator.num_processes]
    batch = _collate(run.tokenizer, [run.features[i] for i in mine], run.task.kind == "regression")
    batch = batch.to(accelerator.device)
    run.model.train()
    incentive.begin(batch["attention_mask"], state.global_step)
    hidden = run.teacher is not None and run.config.distill_hidden_weight > 0
    # A decoder's KV cache is of no use in training (and gradient checkpointing would refuse it with a warning).
    extra = {"use_cache": False} if run.task.is_lm else {}
    output = run.model(**batch, **extra, output_hidden_states=hidden) if hidden else run.model(**batch, **extra)
    loss = incentive.loss(output.loss)
    distilled = _distillation(run, batch, output, hidden)
    loss = loss + sum(distilled.values()) if distilled else loss
    try:
        incentive.check_finite(state.global_step + 1)
    except NonFiniteLoss as fault:
        raise TrainingFault(str(fault)) from None
    total = float(loss.detach())
    if distilled and not math.isfinite(total):  # without a teacher check_finite has seen this total
        raise TrainingFault(f"step {state.global_step + 1}: the distillation loss is not finite")
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    share = incentive.reading.share
    if share is not None and accelerator.num_processes > 1:
        share = float(accelerator.reduce(torch.tensor([share], device=accelerator.device), "mean"))
    log = {**incentive.metrics(), "loss/total": total}
    if share is not None:
        log["cost/compute_share"] = share
    log.update({f"distill/{k}": float(v.detach()) for k, v in distilled.items()})
    incentive.step(share)
    state.global_step += 1
    state.step_in_epoch += 1
    state.train_seconds += time.perf_counter() - started
    return log


def _distillation(run: _Run, batch, output, hidden: bool) -> dict:
    """The weighted distillation terms of this step (empty without a teacher)."""
    if run.teacher is None:
        return {}
    from econlm.distill import hidden_loss, prediction_loss

    config, task = run.config, run.task
    target = run.teacher(batch, hidden)
    mask = batch.get("attention_mask")
    terms = {}
    if config.distill_weight > 0:
        kind = "lm" if task.is_lm else task.kind
        terms["prediction"] = config.distill_weight * prediction_loss(
            output.logits, target.logits, kind=kind, temperature=config.distill_temperature, mask=mask
        )
    if hidden:
        terms["hidden"] = config.distill_hidden_weight * hidden_loss(output.hidden_states, target.hidden_states, mask)
    return terms


def _record(run: _Run, log: dict, writer) -> None:
    state = run.state
    state.last_log = log
    if state.global_step % run.config.log_every == 0 or state.global_step == 1:
        state.lambda_history.append([state.global_step, log["price/lambda"]])
        state.loss_history.append(
            [state.global_step, {k: v for k, v in log.items() if k.startswith(("loss/", "distill/"))}]
        )
        if "cost/compute_share" in log:
            state.share_history.append([state.global_step, log["cost/compute_share"]])
        if writer:
            for key, value in log.items():
                writer.add_scalar(key, value, state.global_step)


def _validation_split(task) -> str:
    if not task.is_lm:
        return "dev"
    if task.user is not None:
        return "dev (your corpus's one held-out split: also the final score's text)"
    return "validation"


def _validate(run: _Run, writer) -> None:
    """Score the validation data as the model stands (gates at their deterministic values): LM perplexity on
    the validation split's first --eval-limit tokens with the final score's sliding window (the test split stays
    for the end), else the dev score. Logged as ``eval/<metric>`` and kept in metrics.json. Only the main process
    scores; in a multi-process run the others wait at the next step, so a validation must end within the process
    group's timeout (30 minutes by default)."""
    import torch


    model = run.inner
    meter = run.incentive.meter  # its hooks stay attached: each scored batch tells it which tokens are real
    model.eval()
    try:
        with torch.no_grad():
            score = _score(run, run.validation_data, on_inputs=lambda batch: meter.begin(batch.get("attention_mask")))
    finally:
        model.train()
    run.state.validation_history.append([run.state.global_step, score.value])
    if writer:
        writer.add_scalar(f"eval/{score.metric}", score.value, run.state.global_step)


def _interrupted(run: _Run, signum: int) -> Interrupted:
    return Interrupted(
        f"interrupted ({signal.Signals(signum).name}) at step {run.state.global_step}/{run.total_steps}; "
        f"checkpoint saved in {run.out / CHECKPOINT}. Continue with: econlm train --out {run.out} --resume",
        signum,
    )


def _checkpoint(run: _Run) -> None:
    from econlm.checkpoint import save_checkpoint

    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        save_checkpoint(
            run.out,
            {
                "model": run.inner.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "price": run.incentive.price.state_dict(),
                "state": run.state.__dict__,
                "config": _config_dict(run.config),
            },
        )
    run.accelerator.wait_for_everyone()


def _end(run: _Run) -> dict:
    """Evaluate and save on the main process; the checkpoint goes once the model is saved."""
    run.accelerator.wait_for_everyone()
    metrics = {}
    if run.accelerator.is_main_process:
        run.state.lambda_history.append([run.state.global_step, run.incentive.price.current])
        metrics = finish(run)
        shutil.rmtree(run.out / CHECKPOINT, ignore_errors=True)
    run.accelerator.wait_for_everyone()
    return metrics


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    return SummaryWriter(str(out / "tb"))


# ---------------------------------------------------------------------------------------------------------
# Final evaluation and saving


def finish(run: _Run) -> dict:
    """Fold gates, evaluate on held-out data, save the checkpoint and ``metrics.json``."""
    from econlm.prices import clearing_advice
    from econlm.runinfo import run_metadata

    config, model = run.config, run.inner
    model.eval()
    gates = run.incentive.finalize()  # folds the gates: closed units become exact zeros
    tokens = gates.get("tokens")  # learned token thresholds: evaluated (and saved) as inference runs them
    evaluation = _evaluate(run, tokens)
    metrics = _metrics(run, evaluation, gates["gates"])
    advice = clearing_advice(metrics["budget_clearing"])
    if advice:
        print(f"econlm: warning: {advice}", file=sys.stderr)
    previous = getattr(model.config, "econlm", None) or {}
    model.config.econlm = {**previous, "train": _config_dict(config), "gates": gates["folded"]}
    meta = run_metadata(seed=config.seed, config=_config_dict(config))
    _save_final(model, run.tokenizer, run.out, {**metrics, "meta": meta}, tokens)
    return metrics


def _evaluate(run: _Run, tokens: dict | None = None) -> dict:
    """Score, attention statistics, FFN sparsity and the dev value of every cost term that is not a gate; with
    learned token thresholds, scored with tokens dropped as at inference, and the MACs that saves."""
    from contextlib import ExitStack

    import torch

    from econlm import evaluate
    from econlm.activations import record_sparsity
    from econlm.cost import CONTROLLABLE, CostMeter
    from econlm.flops import Structure
    from econlm.tokens import attached_rule, threshold_budget

    config, task, model = run.config, run.task, run.inner

    # The terms training measured, less the gates (folded away by now), at the same reduction.
    measured = tuple(n for n in run.incentive.meter.names if n not in CONTROLLABLE)
    meter = CostMeter(model, measured, config.target, reduction=config.cost_reduction)
    sums: dict[str, float] = {}
    calls = [0]

    def before(batch):
        meter.begin(batch.get("attention_mask"))

    def after():
        for k, v in meter.read().terms.items():
            sums[k] = sums.get(k, 0.0) + v
        calls[0] += 1

    with ExitStack() as stack:
        stack.enter_context(meter.attached(record_stats=True))
        dropped = None
        fixed = attached_rule(model)  # --token-budget: scored as it trained, under its schedule
        if fixed is not None:
            dropped = stack.enter_context(fixed.recording(token_mask=meter.tokens))
            tokens = {"schedule": list(fixed.schedule), "rule": fixed.source}
        elif tokens is not None:  # inside the budgeted attention, whose probabilities it reads
            dropped = stack.enter_context(
                threshold_budget(
                    model,
                    tokens["thresholds"],
                    tokenizer=run.tokenizer,
                    special_ids=tokens["special_ids"],
                    token_mask=meter.tokens,
                )
            )
        sparse = stack.enter_context(record_sparsity(model, SPARSITY_EPSILONS, meter.tokens))
        with torch.no_grad():
            data = run.eval_data
            if task.is_lm:
                data = evaluate.lm_token_ids(run.tokenizer, data, config.eval_limit or 8192)
            score = _score(run, data, on_inputs=before, on_batch=after)
        stats, sparsity = meter.stats.summary(), sparse.summary()
    return {
        "score": score,
        "stats": stats,
        "sparsity": sparsity,
        "cost_terms": {k: v / max(calls[0], 1) for k, v in sums.items()},
        "tokens": None if dropped is None else _tokens_summary(tokens, dropped, Structure.of_model(model)),
    }


def _score(run: _Run, data, on_inputs=None, on_batch=None):
    """The task score of the model as it stands: LM perplexity of token ids ``data`` in the sliding windows of
    --max-length, else the dev metric of examples ``data``."""
    from econlm import evaluate

    config, model = run.config, run.inner
    if run.task.is_lm:
        return evaluate.score_lm(
            model,
            data,
            max_length=config.max_length,
            batch_size=config.batch_size,
            on_inputs=on_inputs,
            on_batch=on_batch,
        )
    return evaluate.score_glue(
        model,
        run.tokenizer,
        run.task,
        data,
        "seq-cls",
        batch_size=config.batch_size,
        max_length=config.max_length,
        on_inputs=on_inputs,
        on_batch=on_batch,
    )


VALUE_OF_A_TOKEN = "the attention it receives: column sums over heads and real queries"


def _tokens_summary(tokens: dict, dropped, structure) -> dict:
    """What the token rule (learned thresholds, or --token-budget's schedule) did on the dev data: tokens per
    layer and the exact MACs saved."""
    macs = dropped.macs(structure)
    rule = {"schedule": tokens["schedule"]} if "schedule" in tokens else {"thresholds": tokens["thresholds"]}
    return {
        **rule,
        "value": tokens.get("value", VALUE_OF_A_TOKEN),
        "rule": tokens["rule"],
        "tokens_per_layer": dropped.tokens_per_layer(),
        "macs_ratio_per_layer": [entry["macs"] / entry["reference_macs"] for entry in macs["by_layer"]]
        if macs["examples"]
        else [],
        "macs": macs["macs"],
        "reference_macs": macs["reference_macs"],
        "macs_ratio": macs["ratio"],
        "counted": macs["counted"] + "; measured on the dev data the score is from",
    }


def _trained_on(config: TrainConfig, task, blocks: int) -> str:
    if not task.is_lm:
        return "train split" + (f" (first {config.limit} examples)" if config.limit else "")
    from econlm.data import lm_train_split

    split = lm_train_split(task, config.data_dir)
    note = "" if split == "train" else " (no local train split: trained on validation, scored on test)"
    used = f": {blocks} blocks, {blocks * config.max_length} tokens"
    used += f" (--limit {config.limit})" if config.limit else ""
    return f"{split} split in blocks of {config.max_length} tokens{used}{note}"


def _metrics(run: _Run, evaluation: dict, gates_report: dict | None) -> dict:
    from econlm.cost import COSTS
    from econlm.flops import Structure, dense_macs

    config, task, state, model = run.config, run.task, run.state, run.inner
    score, stats = evaluation["score"], evaluation["stats"]
    macs = dense_macs(Structure.of_model(model), config.max_length, include_head=True)
    return {
        "task": task.name,
        "metric": score.metric,
        "score": score.value,
        "metrics": score.metrics,
        "evaluated_on": "test split" if task.is_lm else "dev split",
        "trained_on": _trained_on(config, task, len(run.features)),
        "eval_examples": score.examples,
        "truncated_train_examples": run.truncated_train,  # longer than max_length, trained on cut
        "scoring": score.details,
        "lambda_final": run.incentive.price.current,
        "lambda_history": state.lambda_history,
        "share_history": state.share_history,
        "budget_clearing": _budget_clearing(run),
        "validation_history": {
            "split": _validation_split(task),
            "every": config.eval_every,
            "scores": state.validation_history,  # [step, score]
        },
        "schedule": config.schedule,
        "cost_terms_dev": evaluation["cost_terms"],
        "cost_terms_last_step": state.last_log,
        "loss_history": state.loss_history,  # task loss, total and each distillation term at each log step
        "ffn_sparsity": {
            "definition": "share of FFN activations (down-projection inputs) with |a| <= eps, "
            "over real tokens of the evaluation data",
            **evaluation["sparsity"],
        },
        "attention": {"gini": stats["gini"], "entropy": stats["entropy"], "per_layer": stats["per_layer"]},
        "gates": gates_report,
        "token_budget": evaluation.get("tokens"),
        "distillation": {"teacher": config.teacher, **vars(config.distill_settings())} if config.teacher else None,
        "dense_macs": macs["macs"],
        "dense_flops": macs["flops"],
        "dense_compute_counted": f"one sequence of {config.max_length} tokens: {macs['counted']}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": {
            "seconds": state.train_seconds,
            "steps": state.global_step,
            "epochs": config.epochs,
            "examples_per_second": state.global_step * config.batch_size / max(state.train_seconds, 1e-9),
        },
        "costs_known": sorted(COSTS),
    }


def _budget_clearing(run: _Run) -> dict | None:
    """Under a budget, whether the price cleared it before the gates froze (:func:`econlm.prices.clearing`)."""
    from econlm.prices import clearing

    config = run.config
    if config.budget is None or not run.state.share_history:
        return None
    froze = run.incentive.frozen  # gates (or token thresholds) fixed from gate_freeze of training on
    return clearing(
        config.budget,
        run.state.share_history,
        run.total_steps,
        config.budget_warmup,
        config.gate_freeze if froze else None,
    )


def _save_final(model, tokenizer, out: Path, metrics: dict, tokens: dict | None = None) -> None:
    """Save the model (and its learned token thresholds), then ``metrics.json`` (which marks the run finished).
    The model is written to a staging folder first, so a failed write (a full disk) leaves no half-written
    model in ``out``."""
    from econlm.checkpoint import staging_dir, tensor_bytes
    from econlm.compact import save_model
    from econlm.learned_tokens import save_thresholds
    from econlm.runinfo import write_json
    from econlm.tokens import attached_rule, save_schedule

    with staging_dir(out, ".final-", tensor_bytes(model.state_dict())) as staging:
        save_model(model, tokenizer, staging)
        if tokens is not None:
            save_thresholds(staging, tokens)
        schedule = attached_rule(model)
        if schedule is not None and schedule.schedule is not None:  # --token-budget: it runs as it was trained
            save_schedule(staging, schedule)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        write_json(out / "metrics.json", metrics)


def resolve_resume_config(out: str, given: dict) -> TrainConfig:
    """The saved config of the run in ``out``; flags that contradict it are an error."""
    saved = saved_config(out)
    if saved is None:
        raise _nothing_to_resume(out)
    conflicts = [k for k, v in given.items() if v is not None and k != "out" and _differs(getattr(saved, k), v)]
    if conflicts:
        raise UserError(f"--resume continues the saved run; these flags differ from it: {', '.join(sorted(conflicts))}")
    return replace(saved, out=out)


def _differs(saved, given) -> bool:
    if isinstance(saved, tuple):
        given = tuple(given.split(",")) if isinstance(given, str) else tuple(given)
    return json.dumps(saved) != json.dumps(given)
