"""Incentive training: fine-tune with ``L_total = L_task + lambda * C_comp`` (an accelerate loop).

The loop runs in one process on the CPU by default, and unchanged under ``accelerate launch`` on several
GPUs (each process takes its shard of every global batch; the compute share that sets the price is
averaged over processes). It is exactly resumable: batches follow a per-epoch permutation of the seed,
and checkpoints hold model, gates, optimizer, LR schedule, price and every RNG state, written at step
boundaries only. Ctrl-C finishes the current step, saves, and tells how to resume; a NaN or infinite
loss stops the run, naming the step and the term, and leaves the last good checkpoint in place.

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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from econlm.errors import UserError

CHECKPOINT = "checkpoint"
SPARSITY_EPSILONS = (1e-3, 1e-2)


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
        for name in ("epochs", "lr", "batch_size", "max_length", "save_every", "log_every"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.device not in ("cpu", "auto"):
            raise UserError(f"--device must be cpu or auto, not {self.device}")


class TrainingFault(Exception):
    """A non-finite loss: training stops, the last good checkpoint stays."""


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was saved at a step boundary."""


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
    pairs = examples and examples[0].text_b is not None
    texts_a = [e.text_a for e in examples]
    encoded = (
        tokenizer(texts_a, [e.text_b for e in examples], truncation=True, max_length=max_length)
        if pairs
        else tokenizer(texts_a, truncation=True, max_length=max_length)
    )
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    return [{**{k: encoded[k][i] for k in keys}, "labels": e.label} for i, e in enumerate(examples)]


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
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(out: Path, model, optimizer, scheduler, price, state: _State, config: TrainConfig) -> None:
    """Write ``out/checkpoint`` atomically: to a fresh folder, then swapped in by rename."""
    import torch

    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=out))
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "price": price.state_dict(),
            "state": state.__dict__,
            "rng": _rng_state(),
            "config": _config_dict(config),
        },
        staging / "state.pt",
    )
    target = out / CHECKPOINT
    old = out / ".checkpoint-old"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _config_dict(config: TrainConfig) -> dict:
    from econlm.config import to_dict

    return to_dict(config)


def saved_config(out: str | Path) -> TrainConfig | None:
    """The config of the unfinished run in ``out``, or None."""
    import torch

    path = Path(out) / CHECKPOINT / "state.pt"
    if not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)["config"]
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


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
        if finished and not has_checkpoint:
            raise UserError(f"{out} holds a finished run (metrics.json); nothing to resume")
        if not has_checkpoint:
            raise UserError(f"{out} has no checkpoint to resume from; start a new run without --resume")
    elif has_checkpoint:
        raise UserError(f"{out} holds an unfinished run; continue it with --resume, or choose another --out")
    elif finished:
        raise UserError(f"{out} already holds a finished run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    """
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
    if task.is_lm:
        features = _lm_features(evaluate.lm_token_ids(tokenizer, train_text, None), config.max_length, config.limit)
        if not features:
            raise UserError(f"the training text is shorter than one block of {config.max_length} tokens")
    else:
        features = _glue_features(tokenizer, task, train_examples, config.max_length)
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
        checkpoint = torch.load(out / CHECKPOINT / "state.pt", map_location="cpu", weights_only=False)
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

    interrupted = {"flag": False}
    previous_handler = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    signal.signal(signal.SIGINT, on_sigint)
    pbar = bar(
        total=total_steps, desc=f"train {config.model} on {task.name}", unit="step", enabled=progress and main_process
    )
    pbar.update(state.global_step)
    try:
        with meter.attached():
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
                    if state.global_step % config.save_every == 0 or interrupted["flag"]:
                        _checkpoint(accelerator, out, inner, optimizer, scheduler, price, state, config)
                    if interrupted["flag"]:
                        raise Interrupted(
                            f"interrupted at step {state.global_step}/{total_steps}; checkpoint saved in "
                            f"{out / CHECKPOINT}. Continue with: econlm train --out {out} --resume"
                        )
                state.epoch += 1
                state.step_in_epoch = 0
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        pbar.close()
        if writer:
            writer.flush()
            writer.close()

    accelerator.wait_for_everyone()
    metrics = {}
    if main_process:
        state.lambda_history.append([state.global_step, price.current])
        metrics = finish(
            inner, tokenizer, task, config, out, state, price, meter, eval_examples if not task.is_lm else eval_text
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


def finish(model, tokenizer, task, config: TrainConfig, out: Path, state: _State, price, meter, eval_data) -> dict:
    """Fold gates, evaluate on held-out data, save the checkpoint and ``metrics.json``."""
    import torch

    from econlm import evaluate
    from econlm.activations import record_sparsity
    from econlm.cost import COSTS, CostMeter
    from econlm.flops import Structure, dense_macs
    from econlm.gates import fold_gates
    from econlm.runinfo import run_metadata, write_json

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
    from econlm.compact import save_model

    previous = getattr(model.config, "econlm", None) or {}
    model.config.econlm = {**previous, "train": _config_dict(config), "gates": folded}
    save_model(model, tokenizer, out)
    meta = run_metadata(seed=config.seed, config=_config_dict(config))
    write_json(out / "metrics.json", {**metrics, "meta": meta})
    return metrics


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
        raise UserError(f"{out} has no checkpoint to resume from; start a new run without --resume")
    conflicts = [k for k, v in given.items() if v is not None and k != "out" and _differs(getattr(saved, k), v)]
    if conflicts:
        raise UserError(f"--resume continues the saved run; these flags differ from it: {', '.join(sorted(conflicts))}")
    return replace(saved, out=out)


def _differs(saved, given) -> bool:
    if isinstance(saved, tuple):
        given = tuple(given.split(",")) if isinstance(given, str) else tuple(given)
    return json.dumps(saved) != json.dumps(given)
