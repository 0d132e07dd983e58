"""Incentive training: fine-tune with ``L_total = L_task + lambda * C_comp`` (an accelerate loop).

The loop runs in one process on the CPU by default, and unchanged under ``accelerate launch`` on several
GPUs (each process takes its shard of every global batch; the compute share that sets the price is
averaged over processes). It is exactly resumable: batches follow a per-epoch permutation of the seed,
and checkpoints hold model, gates, optimizer, LR schedule, price and every RNG state, written at step
boundaries only, and read back with ``weights_only=True`` (plain tensors, numbers, strings, lists and
dicts), so resuming from a folder someone else made cannot run their code. Ctrl-C or SIGTERM finishes the
current step, saves, and tells how to resume; a NaN or infinite loss stops the run, naming the step and
the term, and leaves the last good checkpoint in place. A full disk is a one-line error that leaves no
half-written checkpoint behind.

Outputs in ``--out``: a standard ``save_pretrained`` checkpoint (gates folded into the weights; its
``config.json`` also carries the training config under ``econlm``), ``train_config.json``,
``metrics.json``, TensorBoard logs in ``tb/``, and ``checkpoint/`` while a run is unfinished.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from econlm.errors import UserError

CHECKPOINT = "checkpoint"
SPARSITY_EPSILONS = (1e-3, 1e-2)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass(frozen=True)
class TrainConfig:
    """One incentive-training run. Validated on construction, before anything heavy happens."""

    model: str = "minilm"
    task: str = "stsb"
    out: str = ""
    lam: float = 0.0
    cost: tuple[str, ...] = ("ffn_l1",)
    target: str = "both"
    attention_weight: float = 1.0
    ffn_weight: float = 1.0
    schedule: str = "constant"  # constant, warmup, controller (implied by budget)
    warmup_steps: int = 0  # lambda warm-up (schedule "warmup")
    budget: float | None = None  # target share of dense compute (controller)
    price_lr: float = 0.5  # eta of the controller's dual ascent
    budget_rho: float = 20.0  # weight of the quadratic anchor 0.5 * rho * (share - budget)^2 (controller only)
    budget_warmup: float = 0.5  # share of training over which the budget falls from 1 to its value
    gate_freeze: float = 0.7  # flops: after this share of training the gates stop learning and turn deterministic
    epochs: float = 3.0
    lr: float = 5e-5
    gate_lr: float = 0.1  # learning rate of the flops gates
    weight_decay: float = 0.01
    lr_warmup_ratio: float = 0.06
    batch_size: int = 32
    max_length: int = 128
    seed: int = 42
    limit: int | None = None  # training examples (sequences of max_length tokens for LM tasks)
    eval_limit: int | None = None  # dev examples (test tokens for LM tasks; default 8192)
    data_dir: str | None = None
    save_every: int = 200  # steps between checkpoints
    log_every: int = 10
    device: str = "cpu"  # cpu or auto (accelerate's choice: a GPU when there is one)

    def __post_init__(self) -> None:
        from econlm.config import check_max_length
        from econlm.cost import parse_cost_names, target_components
        from econlm.data import get_task

        get_task(self.task)
        object.__setattr__(self, "cost", parse_cost_names(self.cost))
        target_components(self.target)
        if not math.isfinite(self.lam) or self.lam < 0:
            raise UserError(f"--lam must be a non-negative number (a price), not {self.lam}")
        if self.budget is not None:
            if not (0 < self.budget <= 1):
                raise UserError(f"--budget {self.budget} must lie in (0, 1]: a share of the dense compute")
            if "flops" not in self.cost:
                raise UserError("--budget needs a cost that measures compute: add --cost flops")
            object.__setattr__(self, "schedule", "controller")
        elif self.schedule == "controller":
            raise UserError("the controller schedule needs --budget (a target share of dense compute)")
        from econlm.prices import SCHEDULES

        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}")
        for name in ("epochs", "lr", "batch_size", "save_every", "log_every"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        check_max_length(self.max_length)
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.device not in ("cpu", "auto"):
            raise UserError(f"--device must be cpu or auto, not {self.device}")


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
    last_log: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Data


def _glue_features(tokenizer, task, examples, max_length):
    """Tokenized training examples cut to ``max_length``, and how many of them were longer than that."""
    from econlm.evaluate import too_long

    pairs = examples and examples[0].text_b is not None
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if pairs else None
    encoded = (
        tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
        if pairs
        else tokenizer(texts_a, truncation=True, max_length=max_length)
    )
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    features = [{**{k: encoded[k][i] for k in keys}, "labels": e.label} for i, e in enumerate(examples)]
    return features, sum(too_long(tokenizer, texts_a, texts_b, max_length))


def _lm_features(ids: list[int], max_length: int, limit: int | None):
    blocks = [ids[i : i + max_length] for i in range(0, len(ids) - max_length + 1, max_length)]
    blocks = blocks[:limit] if limit else blocks
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


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    """Every RNG state in types ``torch.load(weights_only=True)`` reads: lists, numbers, strings, tensors."""
    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(out: Path, model, optimizer, scheduler, price, state: _State, config: TrainConfig) -> None:
    """Write ``out/checkpoint`` atomically: to a fresh folder, then swapped in by rename."""
    import torch

    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "price": price.state_dict(),
        "state": state.__dict__,
        "rng": _rng_state(),
        "config": _config_dict(config),
    }
    with _staging_dir(out, ".checkpoint-", _tensor_bytes(checkpoint)) as staging:
        # A Python file, not a path: torch then chains the OSError (a full disk) to its own RuntimeError.
        with open(staging / "state.pt", "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        target = out / CHECKPOINT
        old = out / ".checkpoint-old"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _staging_dir(parent: Path, prefix: str, nbytes: int) -> Iterator[Path]:
    """A fresh folder in ``parent`` to write into before it is renamed into place. Removed when writing
    fails, so no half-written copy lingers; a full disk becomes a UserError saying how much was needed."""
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        yield staging
    except Exception as error:
        if _disk_full(error):
            raise UserError(
                f"the disk is full: could not write {nbytes / 1e6:.1f} MB to {parent}; "
                "free space or choose another --out"
            ) from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _disk_full(error: BaseException) -> bool:
    """Whether ``error``, or one it arose from, is a full disk or quota. torch and safetensors report it as
    their own exception, with the OSError as its context or its text in the message."""
    texts = [os.strerror(code) for code in DISK_FULL]
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        if any(text in str(error) for text in texts):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state dict: the size of what is about to be written."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _load_checkpoint(out: str | Path) -> dict:
    """The saved training state of ``out``. Read with ``weights_only=True``: the folder may come from
    someone else, and a full unpickler would run whatever code its file names."""
    import torch

    path = Path(out) / CHECKPOINT / "state.pt"
    damaged = UserError(
        f"{path} is not an econlm checkpoint or is damaged; delete {path.parent} to start over, or restore it"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's guesses about a damaged file; the error below says it
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    except Exception:  # a pickle that needs code, a truncated file, garbage: torch raises several kinds
        raise damaged from None
    keys = {"model", "optimizer", "scheduler", "price", "state", "rng", "config"}
    if not isinstance(checkpoint, dict) or not keys <= checkpoint.keys() or not isinstance(checkpoint["config"], dict):
        raise damaged
    return checkpoint


def _config_dict(config: TrainConfig) -> dict:
    from econlm.config import to_dict

    return to_dict(config)


def saved_config(out: str | Path) -> TrainConfig | None:
    """The config of the unfinished run in ``out``, or None."""
    path = Path(out) / CHECKPOINT / "state.pt"
    if not path.exists():
        return None
    saved = _load_checkpoint(out)["config"]
    try:
        return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    except TypeError:  # fields this version does not know
        raise UserError(
            f"{path} holds settings this version of econlm does not know; resume it with the version that "
            f"started it, or delete {path.parent} to start over"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# The run


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
        return load_model(config.model, "causal-lm")
    existing = model_head(model_config)
    num_labels = task.num_labels
    same_head = existing == "seq-cls" and getattr(model_config, "num_labels", None) == num_labels
    loaded = load_model(config.model, "seq-cls", num_labels=None if same_head else num_labels)
    if task.kind == "regression":
        loaded.model.config.problem_type = "regression"
    else:
        loaded.model.config.problem_type = "single_label_classification"
    return loaded


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
        return _train(config, resume, progress, on_step)


def _train(config: TrainConfig, resume: bool, progress: bool, on_step) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    from econlm import data, evaluate
    from econlm.cost import CostMeter
    from econlm.prices import Price
    from econlm.progress import bar

    task = data.get_task(config.task)
    out = prepare_out_dir(config, resume)
    # accelerate needs cpu=True to form a multi-process CPU group; "auto" takes a GPU when one exists.
    accelerator = Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available())
    main_process = accelerator.is_main_process

    # Data first: a missing file should not cost a model load.
    if task.is_lm:
        train_text = data.load_text(task, "dev", config.data_dir)  # offline only valid/test exist
        eval_text = data.load_text(task, "test", config.data_dir)
    else:
        train_examples = data.load_examples(task, "train", config.data_dir, config.limit)
        eval_examples = data.load_examples(task, "dev", config.data_dir, config.eval_limit)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    loaded = _load_for_task(config, task)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    truncated_train = 0  # language-modelling blocks are max_length tokens by construction
    if task.is_lm:
        features = _lm_features(evaluate.lm_token_ids(tokenizer, train_text, None), config.max_length, config.limit)
        if not features:
            raise UserError(f"the training text is shorter than one block of {config.max_length} tokens")
    else:
        features, truncated_train = _glue_features(tokenizer, task, train_examples, config.max_length)
    regression = task.kind == "regression"

    meter = CostMeter(model, config.cost, config.target, config.attention_weight, config.ffn_weight)
    model.to(accelerator.device)
    gate_params = [p for n, p in model.named_parameters() if n.startswith("econlm_gates.")]
    other_params = [p for n, p in model.named_parameters() if not n.startswith("econlm_gates.")]
    groups = [{"params": other_params, "weight_decay": config.weight_decay}]
    if gate_params:
        groups.append({"params": gate_params, "lr": config.gate_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)

    world = accelerator.num_processes
    steps_per_epoch = len(_epoch_batches(len(features), config.batch_size, world, config.seed, 0))
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.lr_warmup_ratio * total_steps), total_steps)
    price = Price(
        config.schedule,
        config.lam,
        config.warmup_steps,
        config.budget,
        config.price_lr,
        target_warmup_steps=int(config.budget_warmup * total_steps),
    )
    state = _State()

    if resume:
        checkpoint = _load_checkpoint(out)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        price.load_state_dict(checkpoint["price"])
        state = _State(**checkpoint["state"])
        _set_rng_state(checkpoint["rng"])
    elif main_process:
        from econlm.runinfo import write_json

        write_json(out / "train_config.json", _config_dict(config))

    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    writer = _tensorboard(out) if main_process else None

    pbar = bar(
        total=total_steps, desc=f"train {config.model} on {task.name}", unit="step", enabled=progress and main_process
    )
    pbar.update(state.global_step)
    try:
        with meter.attached(), _stop_requests() as stop_signals:
            while state.global_step < total_steps:
                batches = _epoch_batches(len(features), config.batch_size, world, config.seed, state.epoch)
                while state.step_in_epoch < len(batches) and state.global_step < total_steps:
                    started = time.perf_counter()
                    global_batch = batches[state.step_in_epoch]
                    mine = global_batch[accelerator.process_index :: world]
                    batch = _collate(tokenizer, [features[i] for i in mine], regression).to(accelerator.device)
                    model.train()
                    frozen = _freeze_gates_if_due(inner, config, state.global_step, total_steps)
                    meter.begin(batch["attention_mask"])
                    output = model(**batch)
                    reading = meter.read()
                    lam = price.current
                    loss = output.loss + lam * reading.total
                    if config.budget is not None and not frozen:
                        # Augmented Lagrangian: dual ascent alone only ever pushes gates shut (lambda >= 0),
                        # and a closed gate gets no task gradient; the quadratic anchor reopens gates when
                        # the share undershoots the budget and damps the overshoot.
                        loss = loss + 0.5 * config.budget_rho * (reading.share_tensor - price.target()) ** 2
                    _check_finite(state.global_step + 1, output.loss, reading, loss)
                    accelerator.backward(loss)
                    if frozen:
                        # Fixed gates: drop their gradients (parameters stay registered, which DDP needs).
                        for p in gate_params:
                            p.grad = None
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    share = reading.share
                    if share is not None and world > 1:
                        share = float(accelerator.reduce(torch.tensor([share], device=accelerator.device), "mean"))
                    if not frozen:
                        price.update(share)
                    state.global_step += 1
                    state.step_in_epoch += 1
                    state.train_seconds += time.perf_counter() - started
                    log = {
                        "loss/task": float(output.loss.detach()),
                        "loss/total": float(loss.detach()),
                        "price/lambda": lam,
                    }
                    log.update({f"cost/{k}": v for k, v in reading.terms.items()})
                    if share is not None:
                        log["cost/compute_share"] = share
                    if config.budget is not None:
                        log["price/budget_in_force"] = price.target()
                    state.last_log = log
                    if state.global_step % config.log_every == 0 or state.global_step == 1:
                        state.lambda_history.append([state.global_step, lam])
                        if writer:
                            for key, value in log.items():
                                writer.add_scalar(key, value, state.global_step)
                    pbar.update(1)
                    pbar.set_postfix(
                        loss=f"{log['loss/task']:.4f}", cost=f"{float(reading.total.detach()):.4g}", lam=f"{lam:.3g}"
                    )
                    if on_step:
                        on_step(state.global_step, inner)
                    if state.global_step % config.save_every == 0 or stop_signals:
                        _checkpoint(accelerator, out, inner, optimizer, scheduler, price, state, config)
                    if stop_signals:
                        raise Interrupted(
                            f"interrupted ({signal.Signals(stop_signals[0]).name}) at step {state.global_step}/"
                            f"{total_steps}; checkpoint saved in {out / CHECKPOINT}. "
                            f"Continue with: econlm train --out {out} --resume",
                            stop_signals[0],
                        )
                state.epoch += 1
                state.step_in_epoch = 0
    finally:
        pbar.close()
        if writer:
            writer.flush()
            writer.close()

    accelerator.wait_for_everyone()
    metrics = {}
    if main_process:
        state.lambda_history.append([state.global_step, price.current])
        metrics = finish(
            inner,
            tokenizer,
            task,
            config,
            out,
            state,
            price,
            meter,
            eval_examples if not task.is_lm else eval_text,
            truncated_train_examples=truncated_train,
        )
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    accelerator.wait_for_everyone()
    return metrics


def _freeze_gates_if_due(model, config: TrainConfig, step: int, total_steps: int) -> bool:
    """From ``gate_freeze`` of training on, gates are deterministic (and their gradients are dropped): the
    remaining steps fine-tune the weights under the mask the gates chose (sampling noise and the
    train/eval mismatch end there)."""
    from econlm.gates import get_gates

    gates = get_gates(model)
    if gates is None or step < int(config.gate_freeze * total_steps):
        return False
    gates.eval()  # model.train() switched them back on; in eval mode they are deterministic
    return True


def _checkpoint(accelerator, out, model, optimizer, scheduler, price, state, config) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_checkpoint(out, model, optimizer, scheduler, price, state, config)
    accelerator.wait_for_everyone()


def _check_finite(step: int, task_loss, reading, total) -> None:
    if not math.isfinite(float(task_loss.detach())):
        raise TrainingFault(f"step {step}: the task loss is {float(task_loss.detach())}")
    for name, value in reading.terms.items():
        if not math.isfinite(value):
            raise TrainingFault(f"step {step}: the cost term {name} is {value}")
    if not math.isfinite(float(total.detach())):
        raise TrainingFault(
            f"step {step}: the total loss is {float(total.detach())} (lambda times the cost overflowed)"
        )


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    return SummaryWriter(str(out / "tb"))


# ---------------------------------------------------------------------------------------------------------
# Final evaluation and saving


def finish(
    model,
    tokenizer,
    task,
    config: TrainConfig,
    out: Path,
    state: _State,
    price,
    meter,
    eval_data,
    truncated_train_examples: int = 0,
) -> dict:
    """Fold gates, evaluate on held-out data, save the checkpoint and ``metrics.json``."""
    import torch

    from econlm import evaluate
    from econlm.activations import record_sparsity
    from econlm.cost import COSTS, CostMeter
    from econlm.flops import Structure, dense_macs
    from econlm.gates import fold_gates
    from econlm.runinfo import run_metadata

    model.eval()
    gates_report = _gates_report(model, meter)
    folded = fold_gates(model)

    eval_meter = (
        CostMeter(model, tuple(n for n in config.cost if n != "flops"), config.target, 1.0, 1.0)
        if any(n != "flops" for n in config.cost)
        else None
    )
    if eval_meter is None:
        eval_meter = CostMeter(model, (), config.target)
    sums: dict[str, float] = {}
    calls = {"n": 0}

    with eval_meter.attached(record_stats=True), record_sparsity(model, SPARSITY_EPSILONS, eval_meter.tokens) as sparse:

        def before(batch):
            eval_meter.begin(batch.get("attention_mask"))

        def after():
            reading = eval_meter.read()
            for k, v in reading.terms.items():
                sums[k] = sums.get(k, 0.0) + v
            calls["n"] += 1

        with torch.no_grad():
            if task.is_lm:
                ids = evaluate.lm_token_ids(tokenizer, eval_data, config.eval_limit or 8192)
                score = evaluate.score_lm(
                    model,
                    ids,
                    max_length=config.max_length,
                    batch_size=config.batch_size,
                    on_inputs=before,
                    on_batch=after,
                )
            else:
                score = evaluate.score_glue(
                    model,
                    tokenizer,
                    task,
                    eval_data,
                    "seq-cls",
                    batch_size=config.batch_size,
                    max_length=config.max_length,
                    on_inputs=before,
                    on_batch=after,
                )
        stats = eval_meter.stats.summary()
        sparsity = sparse.summary()

    structure = Structure.of_model(model)
    macs = dense_macs(structure, config.max_length, include_head=True)
    params = sum(p.numel() for p in model.parameters())
    metrics = {
        "task": task.name,
        "metric": score.metric,
        "score": score.value,
        "metrics": score.metrics,
        "evaluated_on": "test split (WikiText offline has no train split: trained on validation)"
        if task.is_lm
        else "dev split",
        "eval_examples": score.examples,
        "truncated_train_examples": truncated_train_examples,  # longer than max_length, trained on cut
        "scoring": score.details,
        "lambda_final": price.current,
        "lambda_history": state.lambda_history,
        "schedule": config.schedule,
        "cost_terms_dev": {k: v / max(calls["n"], 1) for k, v in sums.items()},
        "cost_terms_last_step": state.last_log,
        "ffn_sparsity": {
            "definition": "share of FFN activations (down-projection inputs) with |a| <= eps, "
            "over real tokens of the evaluation data",
            **sparsity,
        },
        "attention": {"gini": stats["gini"], "entropy": stats["entropy"], "per_layer": stats["per_layer"]},
        "gates": gates_report,
        "dense_macs": macs["macs"],
        "dense_flops": macs["flops"],
        "dense_compute_counted": f"one sequence of {config.max_length} tokens: {macs['counted']}",
        "parameters": params,
        "train": {
            "seconds": state.train_seconds,
            "steps": state.global_step,
            "epochs": config.epochs,
            "examples_per_second": state.global_step * config.batch_size / max(state.train_seconds, 1e-9),
        },
        "costs_known": sorted(COSTS),
    }
    previous = getattr(model.config, "econlm", None) or {}
    model.config.econlm = {**previous, "train": _config_dict(config), "gates": folded}
    meta = run_metadata(seed=config.seed, config=_config_dict(config))
    _save_final(model, tokenizer, out, {**metrics, "meta": meta})
    return metrics


def _save_final(model, tokenizer, out: Path, metrics: dict) -> None:
    """Save the model, then ``metrics.json`` (which marks the run finished). The model is written to a
    staging folder first, so a failed write (a full disk) leaves no half-written model in ``out``."""
    from econlm.compact import save_model
    from econlm.runinfo import write_json

    with _staging_dir(out, ".final-", _tensor_bytes(model.state_dict())) as staging:
        save_model(model, tokenizer, staging)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        write_json(out / "metrics.json", metrics)


def _gates_report(model, meter) -> dict | None:
    from econlm.cost import Flops
    from econlm.gates import gate_values

    flops_terms = [t for t in meter.terms if isinstance(t, Flops)]
    if not flops_terms:
        return None
    values = gate_values(model)
    report = {"expected_compute_share": flops_terms[0].compute_share()}
    for name, layers in values.items():
        closed = [sum(1 for v in layer if v == 0.0) for layer in layers]
        report[name] = {
            "closed_per_layer": closed,
            "total": sum(len(layer) for layer in layers),
            "closed": sum(closed),
        }
    return report


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
