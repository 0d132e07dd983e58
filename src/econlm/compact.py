"""Compaction: remove dead FFN neurons and attention heads, giving a smaller dense model that is faster.

Dead units, layer by layer:

* an FFN neuron whose down-projection column is zero (a closed gate folded in by ``econlm train``), or
  whose activation never exceeds ``eps`` in magnitude on a calibration set;
* an attention head whose slice of the output projection is zero, or whose output never exceeds ``eps``
  on the calibration set. With grouped-query attention a key/value head goes only together with all
  the query heads that share it (transformers' modules need equal groups), so GQA models lose whole groups.

Every layer keeps at least one head (K/V group) and one neuron: transformers' attention and MLP modules
cannot be empty. When the gates closed every head of a layer (or every neuron), the first group (neuron)
stays with its output projection at zero, so the layer adds nothing but the residual and outputs do not
change; the plan never asks surgery for a zero-width layer (tested). The removal itself and the saved
format (per-layer shapes in ``econlm_structure.json`` next to the weights, which ``econlm.load`` and every
econlm command given the folder rebuild) are :mod:`econlm.surgery`'s; this module decides what goes, and
runs the command.
On save the result is verified against the original on the calibration batches: when only truly dead
units went (zero weights or activations exactly zero) outputs must match (``torch.testing.assert_close``);
the largest difference is reported either way.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from econlm import arch
from econlm.errors import UserError
from econlm.flops import Structure
from econlm.surgery import (  # the surgery and checkpoint format; all these names stay importable from here
    STRUCTURE_FILE,  # noqa: F401
    LayerPlan,
    apply_plan,
    is_compacted,  # noqa: F401
    load_compacted,  # noqa: F401
    save_model,
)
from econlm.userdata import DataFields

# ---------------------------------------------------------------------------------------------------------
# Finding dead units


def calibrate(model: nn.Module, batches: list[dict]) -> dict:
    """Largest |activation| per FFN neuron and per head output (o-proj input), over real tokens."""
    from econlm.activations import unit_statistics

    stats = unit_statistics(model, batches)
    return {
        "neuron_max": {i: layer["neurons_max"] for i, layer in enumerate(stats)},
        "head_max": {i: layer["heads_max"] for i, layer in enumerate(stats)},
    }


def plan_removal(model: nn.Module, calibration: dict | None, eps: float) -> list[LayerPlan]:
    """Decide, per layer, which heads and neurons stay (at least one K/V group and one neuron per layer)."""
    fam = arch.family(model.config)
    structure = Structure.of_model(model)
    d = structure.head_dim
    plans = []
    for i, block in enumerate(arch.blocks(model)):
        down = arch.in_columns(block.get_submodule(fam.ffn_down))  # (F, D)
        neuron_zero = (down == 0).all(dim=1)
        o_cols = arch.in_columns(block.get_submodule(fam.o))  # (H*d, D)
        heads, kv_heads = structure.heads[i], structure.kv_heads[i]
        head_zero = (o_cols.view(heads, d, -1) == 0).all(dim=2).all(dim=1)
        neuron_unused = torch.zeros_like(neuron_zero)
        head_unused = torch.zeros_like(head_zero)
        if calibration is not None:
            neuron_unused = calibration["neuron_max"][i] <= eps
            head_unused = calibration["head_max"][i] <= eps
        neuron_dead = neuron_zero | neuron_unused
        head_dead = head_zero | head_unused
        group = heads // kv_heads
        # Only whole GQA groups can go: a K/V head and every query head reading it.
        group_dead = head_dead.view(kv_heads, group).all(dim=1)
        keep_kv = [g for g in range(kv_heads) if not group_dead[g]] or [0]
        keep_heads = [g * group + j for g in keep_kv for j in range(group)]
        keep_neurons = [n for n in range(len(neuron_dead)) if not neuron_dead[n]] or [0]
        removed_heads = [h for h in range(heads) if h not in keep_heads]
        removed_neurons = set(range(len(neuron_dead))) - set(keep_neurons)
        plans.append(
            LayerPlan(
                keep_heads=keep_heads,
                keep_kv_heads=keep_kv,
                keep_neurons=keep_neurons,
                heads_zero=sum(bool(head_zero[h]) for h in removed_heads),
                heads_unused=sum(not bool(head_zero[h]) for h in removed_heads),
                neurons_zero=sum(bool(neuron_zero[n]) for n in removed_neurons),
                neurons_unused=sum(not bool(neuron_zero[n]) for n in removed_neurons),
            )
        )
    return plans


def exactly_dead_only(plans: list[LayerPlan], calibration: dict | None) -> bool:
    """True when every removed unit had zero weights or activations exactly zero (outputs must not change)."""
    for i, plan in enumerate(plans):
        if plan.heads_unused or plan.neurons_unused:
            if calibration is None:
                return False
            kept = set(plan.keep_neurons)
            unused = [n for n in range(len(calibration["neuron_max"][i])) if n not in kept]
            if any(float(calibration["neuron_max"][i][n]) > 0 for n in unused):
                return False
            kept_heads = set(plan.keep_heads)
            gone = [h for h in range(len(calibration["head_max"][i])) if h not in kept_heads]
            if any(float(calibration["head_max"][i][h]) > 0 for h in gone):
                return False
    return True


# ---------------------------------------------------------------------------------------------------------
# The command


DEFAULT_MAX_LENGTH = 128  # tokens, when a checkpoint does not record the length it trained at


@dataclass(frozen=True)
class CompactConfig(DataFields):  # a user's data file: by default as the checkpoint was trained
    checkpoint: str
    out: str
    calib_examples: int = 512
    # Which training examples calibrate: a sample this seed picks (None: the first ones, as before 2026-12-06).
    # Training files are often sorted (CoLA's by source, STS-B's by genre), so the first rows are not a sample.
    calib_seed: int | None = 0
    calib_from: int | None = None  # sample among the first this many (a run trained with a limit saw only those)
    eps: float = 1e-3
    task: str | None = None  # default: the task the checkpoint was trained on
    data_dir: str | None = None
    max_length: int | None = None  # default: the length the checkpoint was trained at, else 128
    batch_size: int = 32
    eval_limit: int | None = None
    latency_repeats: int = 20
    threads: int | None = None
    onnx: bool = False  # also time both models in ONNX Runtime (the CLI turns it on when onnxruntime is installed)
    latency_table: str | None = None  # report the speedup this table predicts next to the measured one
    # Decoders also get what their users feel: prefill of one long prompt, and generation throughput.
    prefill_length: int = 512
    decode_tokens: int = 128  # new tokens per greedy generate call (with the KV cache)
    decode_batches: tuple[int, ...] = (1, 8)
    # Encoders: also measure a token budget (econlm.tokens) on both models, each lever alone and both together.
    token_budget: str | None = None
    # A checkpoint that drops tokens by a rule of its own: also each lever alone (its rule switched off), which
    # costs two more dev scorings and timings; a sweep, which reads only the checkpoint as it runs, turns it off.
    levers: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise UserError(f"--eps must be a positive number (an activation threshold), not {self.eps}")
        if self.calib_examples < 1:
            raise UserError("--calib-examples must be at least 1")
        if self.latency_repeats < 1:
            raise UserError("--latency-repeats must be at least 1")
        if min(self.prefill_length, self.decode_tokens, *self.decode_batches) < 1:
            raise UserError("the prefill length, decode tokens and decode batch sizes must be at least 1")
        if self.onnx:
            from econlm.export import require_onnx

            require_onnx()
        if self.token_budget is not None:
            from econlm.tokens import TokenSchedule

            object.__setattr__(self, "token_budget", TokenSchedule.parse(self.token_budget).label)
        if self.latency_table:
            from econlm.latency_table import load_table

            load_table(self.latency_table)  # a missing or malformed table fails before any work
        if self.task is not None:
            from econlm.data import normalise_data_fields

            normalise_data_fields(self)


def _calibration_batches(loaded, task, config: CompactConfig, labels: bool = False) -> list[dict]:
    """Model inputs of ``calib_examples`` training examples, a sample ``calib_seed`` picks (LM: the first blocks
    of validation text); with ``labels`` each batch carries its labels, so the model returns a loss (Fisher
    importance needs it). The sample is :func:`econlm.data.sample_indices`, the draw
    :func:`econlm.training.fisher_start_batches` makes, so a post-hoc rival of a Fisher-started student is
    measured on the very examples the student's gates started from."""
    from econlm import data, evaluate

    tokenizer = loaded.tokenizer
    if task.is_lm:
        # WikiText calibrates on validation and is scored on test; a user's corpus has one held-out split,
        # which it is scored on, so it calibrates on its training text.
        split = "train" if task.user is not None else "dev"
        ids = evaluate.lm_token_ids(tokenizer, data.load_text(task, split, config.data_dir), None)
        blocks = [ids[i : i + config.max_length] for i in range(0, len(ids) - config.max_length + 1, config.max_length)]
        blocks = blocks[: config.calib_examples]
        batches = [
            {"input_ids": torch.tensor(blocks[i : i + config.batch_size])}
            for i in range(0, len(blocks), config.batch_size)
        ]
        return [{**b, "labels": b["input_ids"]} for b in batches] if labels else batches
    if config.calib_seed is None:
        examples = data.load_examples(task, "train", config.data_dir, config.calib_examples)
    else:
        everything = data.load_examples(task, "train", config.data_dir, config.calib_from)
        examples = [everything[i] for i in data.sample_indices(len(everything), config.calib_examples, config.calib_seed)]
    batches = []
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start : start + config.batch_size]
        texts_b = [e.text_b for e in chunk] if chunk[0].text_b is not None else None
        encoded = (
            tokenizer(
                [e.text_a for e in chunk],
                texts_b,
                truncation=True,
                max_length=config.max_length,
                padding=True,
                return_tensors="pt",
            )
            if texts_b
            else tokenizer(
                [e.text_a for e in chunk],
                truncation=True,
                max_length=config.max_length,
                padding=True,
                return_tensors="pt",
            )
        )
        batch = dict(encoded)
        if labels:
            dtype = torch.float32 if task.kind == "regression" else torch.long
            batch["labels"] = torch.tensor([e.label for e in chunk], dtype=dtype)
        batches.append(batch)
    return batches


def _outputs(model, batch):
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def measure_model(model, loaded, task, config: CompactConfig, head: str) -> dict:
    """Parameters, dense MACs (one sequence of max_length tokens) and the dev score; latency is measured for
    the original and compacted model together, by :func:`measure_latency`."""
    from econlm import data, evaluate
    from econlm.flops import Structure, dense_macs
    from econlm.tokens import attached_rule

    structure = Structure.of_model(model)
    macs = dense_macs(structure, latency_seq_len(model, config), include_head=True)
    score, stats = None, None
    learned = attached_rule(model)
    recording = learned.recording() if learned is not None and task is not None else contextlib.nullcontext()
    if task is not None:
        with torch.no_grad(), recording as stats:
            if task.is_lm:
                ids = evaluate.lm_token_ids(
                    loaded.tokenizer, data.load_text(task, "test", config.data_dir), config.eval_limit or 8192
                )
                result = evaluate.score_lm(model, ids, max_length=config.max_length, batch_size=4)
            else:
                examples = data.load_examples(task, "dev", config.data_dir, config.eval_limit)
                result = evaluate.score_glue(
                    model,
                    loaded.tokenizer,
                    task,
                    examples,
                    head,
                    batch_size=config.batch_size,
                    max_length=config.max_length,
                )
        score = {"metric": result.metric, "value": result.value, "metrics": result.metrics, "examples": result.examples}
    measured = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "dense_macs": macs["macs"],
        "dense_flops": macs["flops"],
        "structure": {"heads": list(structure.heads), "kv_heads": list(structure.kv_heads), "ffn": list(structure.ffn)},
        "score": score,
    }
    if stats is not None:  # its token rule dropped tokens while it was scored: what the blocks ran on
        measured["token_budget"] = stats.summary(structure)
    return measured


LATENCY_BATCHES = (1, 32)


def latency_seq_len(model, config: CompactConfig) -> int:
    length = config.max_length or DEFAULT_MAX_LENGTH
    return min(length, getattr(model.config, "max_position_embeddings", None) or length)


def measure_latency(models: dict, tokenizer, config: CompactConfig, workdir: Path, around: dict | None = None) -> dict:
    """CPU latency of each model at batch 1 and 32, the models timed round by round in one run (so noise hits
    them alike), in PyTorch eager and, when the onnx extra is installed and ``config.onnx``, in ONNX Runtime
    (each runtime's rounds of its own).

    ``around`` maps a name to a context factory entered around that model's timed calls (a token budget);
    such a name is timed in PyTorch only.

    Returns ``{runtime: {name: {"batchN": timing}}}`` with runtime ``torch`` and ``onnxruntime``.
    """
    from econlm.latency import measure_interleaved, model_call, random_inputs

    # Each runtime makes, for a batch of inputs, the call that is timed (built outside the timed region).
    runtimes = {"torch": {name: (lambda inputs, m=model: model_call(m, inputs)) for name, model in models.items()}}
    around = around or {}
    if config.onnx:
        runtimes["onnxruntime"] = _onnx_forwards({k: m for k, m in models.items() if k not in around}, tokenizer, workdir)
    seq_len = latency_seq_len(next(iter(models.values())), config)
    results: dict = {runtime: {name: {} for name in makers} for runtime, makers in runtimes.items()}
    for batch in LATENCY_BATCHES:
        inputs = random_inputs(batch, seq_len)
        # One runtime at a time, its models interleaved: two runtimes' thread pools never share the cores
        # within a round, and each speedup is a ratio of medians taken under the same noise.
        for runtime, makers in runtimes.items():
            calls = {name: make_call(inputs) for name, make_call in makers.items()}
            timed = measure_interleaved(
                calls, warmup=3, repeats=config.latency_repeats, around=around if runtime == "torch" else None
            )
            for name, timing in timed.items():
                entry = timing.as_dict()
                entry["sequences_per_second"] = batch / entry["median"]
                entry["tokens_per_second"] = batch * seq_len / entry["median"]
                results[runtime][name][f"batch{batch}"] = entry
    return results


def measure_decoding(models: dict, config: CompactConfig) -> dict:
    """What a decoder's users feel, for each model, the models interleaved round by round in one run:
    ``prefill`` (one forward pass over a batch-1 prompt of ``prefill_length`` tokens) and ``decode_batchN``
    (greedy ``generate`` of ``decode_tokens`` new tokens with the KV cache from a 16-token prompt, batch N;
    ``tokens_per_second`` counts the new tokens of the whole batch)."""
    from econlm.latency import measure_interleaved, model_call, random_inputs

    any_model = next(iter(models.values()))
    context = getattr(any_model.config, "max_position_embeddings", None) or config.prefill_length
    prefill = min(config.prefill_length, context)
    prompt = 16
    new_tokens = max(1, min(config.decode_tokens, context - prompt))
    results: dict = {name: {} for name in models}
    inputs = random_inputs(1, prefill, 100, min(1000, any_model.config.vocab_size))
    for name, timing in measure_interleaved(
        {name: model_call(m, inputs) for name, m in models.items()}, warmup=1, repeats=config.latency_repeats
    ).items():
        results[name]["prefill"] = {**timing.as_dict(), "tokens": prefill, "batch": 1}
    for batch in config.decode_batches:
        ids = random_inputs(batch, prompt, 100, min(1000, any_model.config.vocab_size))["input_ids"]
        calls = {name: _generate_call(m, ids, new_tokens) for name, m in models.items()}
        for name, timing in measure_interleaved(calls, warmup=1, repeats=config.latency_repeats).items():
            entry = timing.as_dict()
            entry.update({"batch": batch, "new_tokens": new_tokens, "prompt_tokens": prompt})
            entry["tokens_per_second"] = batch * new_tokens / entry["median"]
            results[name][f"decode_batch{batch}"] = entry
    return results


def _generate_call(model, ids: torch.Tensor, new_tokens: int):
    def call():
        with torch.no_grad():
            # min_new_tokens: no early stop at an end-of-text token, so every call does the same work
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=getattr(model.config, "pad_token_id", None) or 0,
            )

    return call


def _onnx_forwards(models: dict, tokenizer, workdir: Path) -> dict:
    """Export each model to ``workdir`` (checked against PyTorch) and return ONNX Runtime forward calls."""
    from econlm.export import export_onnx, onnx_forward, onnx_session

    forwards = {}
    for name, model in models.items():
        report = export_onnx(model, tokenizer, workdir / f"{name}.onnx")
        if not report.matches:
            raise RuntimeError(f"the ONNX export of the {name} model differs from PyTorch by {report.max_abs_difference}")
        session = onnx_session(report.path)
        forwards[name] = lambda inputs, s=session: (lambda: onnx_forward(s, inputs))
    return forwards


def latency_setup(seq_len: int, runtimes) -> dict:
    return {
        "seq_len": seq_len,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "runtimes": list(runtimes),
        "statistic": "median of repeated forward passes after warm-up (no grad); the original and compacted "
        "models timed round by round in one run, the order rotating each round (each runtime on its own)",
    }


def run_compact(config: CompactConfig, progress: bool = True) -> dict:
    """Compact a checkpoint into ``config.out``; returns the report also written to ``compact.json``."""
    from econlm.models import check_spec

    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --out (nothing is overwritten)")
    from econlm.progress import bar

    check_spec(config.checkpoint)
    if config.token_budget is not None:  # before the progress bar and the weights: a refusal is one line
        _check_token_budget(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    with bar(total=5, desc=f"compact {config.checkpoint}", unit="stage", enabled=progress) as pbar:
        return _compact(config, out, pbar)


def _check_token_budget(config: CompactConfig) -> None:
    """Refuse a token budget on a decoder, or a schedule with the wrong number of fractions, from the config alone."""
    from econlm.models import load_config
    from econlm.tokens import TokenSchedule, check_encoder_config

    model_config, _ = load_config(config.checkpoint)
    check_encoder_config(model_config)
    TokenSchedule.parse(config.token_budget).per_layer(arch.shape(model_config).layers)  # one fraction per layer


class NothingToRemove(UserError):
    """No head or neuron is gated off or below eps: compaction would write a copy of the model."""


@dataclass(frozen=True)
class CompactReport:
    """What :func:`compact_model` removed, how it checked the result, and the dense compute before and after
    (MACs of one sequence of ``seq_len`` tokens, task head included)."""

    removed_heads: int
    removed_neurons: int
    per_layer: tuple[dict, ...]
    calibration_examples: int
    only_exactly_dead_units_removed: bool
    max_abs_output_difference: float
    checked: str
    parameters_before: int
    parameters_after: int
    dense_macs_before: int
    dense_macs_after: int
    seq_len: int

    @property
    def flops_ratio(self) -> float:
        return self.dense_macs_after / self.dense_macs_before

    @property
    def removed_anything(self) -> bool:
        return self.removed_heads > 0 or self.removed_neurons > 0

    def to_json(self) -> dict:
        return {
            "removed": {"heads": self.removed_heads, "neurons": self.removed_neurons, "per_layer": list(self.per_layer)},
            "calibration_examples": self.calibration_examples,
            "verification": {
                "only_exactly_dead_units_removed": self.only_exactly_dead_units_removed,
                "max_abs_output_difference": self.max_abs_output_difference,
                "checked": self.checked,
            },
            "parameters": {"before": self.parameters_before, "after": self.parameters_after},
            "dense_macs": {"before": self.dense_macs_before, "after": self.dense_macs_after, "seq_len": self.seq_len},
            "flops_ratio": self.flops_ratio,
        }


# Dropping exact zeros changes only the order of float32 sums. Over many layers that rounding grows: SmolLM2's
# logits over 30 layers moved by up to 6.2e-4 at a few of 400M elements (1.6e-5 of their largest magnitude),
# while the whole tensor moved by under 1e-6 of its norm. Removing a live unit moves outputs by orders of
# magnitude more, everywhere. So the check bounds the relative norm of the difference tightly and its largest
# element loosely.
SAME_RELATIVE_NORM = 1e-5
SAME_MAX_OF_SCALE = 1e-4


def check_same_outputs(got: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest difference between ``got`` and ``expected``; AssertionError unless they are equal up to float32
    rounding (see SAME_RELATIVE_NORM)."""
    difference = got - expected
    norm = functools.partial(torch.linalg.vector_norm, dtype=torch.float64)  # 400M float32 terms: sum in double
    relative = float(norm(difference) / norm(expected).clamp_min(1e-12))
    worst = float(difference.abs().max())
    allowed = SAME_MAX_OF_SCALE * max(1.0, float(expected.abs().max()))
    if relative > SAME_RELATIVE_NORM or worst > allowed:
        raise AssertionError(
            f"the compacted model's outputs differ from the model's beyond float32 rounding: relative error "
            f"{relative:.2e} (allowed {SAME_RELATIVE_NORM:.0e}), largest difference {worst:.2e} (allowed {allowed:.2e})"
        )
    return worst


def compact_model(
    model: nn.Module, batches: list[dict], eps: float = 1e-3, *, seq_len: int = 128
) -> tuple[nn.Module, CompactReport]:
    """A smaller copy of ``model`` without the heads and FFN neurons that are gated off (exact zeros, as
    gates fold to) or never exceed ``eps`` on the calibration ``batches`` (model inputs: input_ids,
    attention_mask, ...). The copy is checked against the model on those batches: ``assert_close`` when
    only exactly-dead units went, and the largest output difference is always reported. ``model`` is not
    changed. With nothing to remove, the copy is the same size and ``report.removed_anything`` is False."""
    import copy

    from econlm.flops import Structure, dense_macs

    if not (math.isfinite(eps) and eps >= 0):
        raise UserError(f"eps must be a number >= 0 (an activation threshold), not {eps}")
    model = model.eval()
    calibration = calibrate(model, batches) if batches else None
    plans = plan_removal(model, calibration, eps)
    shape = arch.shape(model.config)
    compacted = copy.deepcopy(model)
    apply_plan(compacted, plans)
    compacted.eval()
    exact = exactly_dead_only(plans, calibration)
    differences = []
    with torch.no_grad():
        for batch in batches:
            got, expected = _outputs(compacted, batch), _outputs(model, batch)
            differences.append(check_same_outputs(got, expected) if exact else float((got - expected).abs().max()))
    report = CompactReport(
        removed_heads=sum(shape.heads - len(p.keep_heads) for p in plans),
        removed_neurons=sum(shape.intermediate - len(p.keep_neurons) for p in plans),
        per_layer=tuple(
            {
                "heads_kept": len(p.keep_heads),
                "heads_zero": p.heads_zero,
                "heads_unused": p.heads_unused,
                "neurons_kept": len(p.keep_neurons),
                "neurons_zero": p.neurons_zero,
                "neurons_unused": p.neurons_unused,
            }
            for p in plans
        ),
        calibration_examples=sum(len(b["input_ids"]) for b in batches),
        only_exactly_dead_units_removed=exact,
        max_abs_output_difference=max(differences) if differences else 0.0,
        checked="assert_close(rtol=1e-4, atol=1e-5 x the outputs' largest magnitude, at least 1) on the calibration "
        "batches"
        if exact
        else "not asserted: units below eps but not exactly zero were removed",
        parameters_before=sum(p.numel() for p in model.parameters()),
        parameters_after=sum(p.numel() for p in compacted.parameters()),
        dense_macs_before=dense_macs(Structure.of_model(model), seq_len, include_head=True)["macs"],
        dense_macs_after=dense_macs(Structure.of_model(compacted), seq_len, include_head=True)["macs"],
        seq_len=seq_len,
    )
    return compacted, report


def _set_aside_rule(model, config: CompactConfig):
    """A checkpoint that drops tokens (learned thresholds, or the fixed schedule it was fine-tuned under): its
    rule (:class:`econlm.tokens.AttachedRule`), detached from ``model`` so that calibration and the unit check
    see every token (which units are dead does not depend on which tokens they see). None for a model without."""
    from econlm.tokens import attached_rule

    attached = attached_rule(model)
    if attached is None:
        return None
    if config.token_budget is not None:
        raise UserError(
            f"{config.checkpoint} drops tokens by {attached.source}; --token-budget would drop them twice: leave it out"
        )
    attached.detach()
    return attached


def _with_rule(model, compacted, rule, batches: list[dict]) -> dict:
    """Attach the checkpoint's token rule to both models and compare them on the calibration batches, tokens
    dropped. Token values count open heads only (:func:`econlm.tokens.open_heads`), so removing shut heads
    leaves every value, and so every token dropped, as it was; but a value within float32 rounding of its
    threshold (or of another token's value) can fall either way in the smaller matrices, so this is reported,
    not asserted."""
    attached = [rule.reattach(net) for net in (model, compacted)]
    differences, same_tokens = [], True
    with torch.no_grad():
        for batch in batches:
            with attached[0].recording() as before:
                expected = _outputs(model, batch)
            with attached[1].recording() as after:
                got = _outputs(compacted, batch)
            differences.append(float((got - expected).abs().max()))
            same_tokens = same_tokens and before.last_kept() == after.last_kept()
    return {
        "same_tokens_dropped": same_tokens,
        "max_abs_output_difference": max(differences) if differences else 0.0,
        "checked": f"both models dropping tokens by {rule.source} on the calibration batches: the tokens "
        "each layer kept, and the outputs",
    }


def _compact(config: CompactConfig, out: Path, pbar) -> dict:
    import os
    import tempfile

    from econlm import data
    from econlm.checkpoint import staging_dir, tensor_bytes
    from econlm.models import load_model
    from econlm.runinfo import run_metadata, write_json

    pbar.set_postfix_str("calibrating")
    loaded = load_model(config.checkpoint)
    model = loaded.model
    rule = _set_aside_rule(model, config)
    onnx_skipped = None
    if rule is not None and config.onnx:  # ONNX Runtime would time a graph that computes every token
        onnx_skipped = f"not timed in ONNX Runtime: the checkpoint drops tokens by {rule.source}, which one ONNX graph does not express"
        config = replace(config, onnx=False)
    trained = (getattr(model.config, "econlm", None) or {}).get("train", {})
    as_trained = {}
    if config.task is None and trained.get("task"):
        # The task it was trained on, read as it was then (a user's file with its columns and splits).
        from econlm.userdata import DATA_FIELDS

        as_trained = {k: trained[k] for k in ("task", *DATA_FIELDS) if trained.get(k)}
    if config.data_dir is None and trained.get("data_dir"):
        as_trained["data_dir"] = trained["data_dir"]
    if config.max_length is None:  # a language model's calibration blocks and scoring windows, as it trained
        as_trained["max_length"] = trained.get("max_length") or DEFAULT_MAX_LENGTH
    config = replace(config, **as_trained) if as_trained else config
    if config.task is None:
        raise UserError("the checkpoint does not say which task it was trained on; pass --task for calibration")
    task = data.get_task(config.task)
    if task.is_lm:  # calibration blocks and scoring windows are --max-length tokens long
        from econlm.config import check_context

        check_context(config.max_length, model.config)
    batches = _calibration_batches(loaded, task, config)
    compacted, core = compact_model(model, batches, config.eps, seq_len=latency_seq_len(model, config))
    if not core.removed_anything:
        raise NothingToRemove(
            f"nothing to remove in {config.checkpoint}: no head or FFN neuron is gated off or stays at or below "
            f"|a| <= {config.eps:g} on {config.calib_examples} calibration examples; nothing was written"
        )
    with_tokens = None
    if rule is not None:  # both score and time as the checkpoint runs: dropping tokens
        with_tokens = _with_rule(model, compacted, rule, batches)
    pbar.update(1)
    pbar.set_postfix_str("scoring the original")
    before = measure_model(model, loaded, task, config, loaded.head)
    pbar.update(1)
    pbar.set_postfix_str("scoring the compacted model")
    after = measure_model(compacted, loaded, task, config, loaded.head)
    pbar.update(1)
    pbar.set_postfix_str("timing both models" + (" in PyTorch and ONNX Runtime" if config.onnx else ""))
    models, around = {"before": model, "after": compacted}, {}
    levers = _levers(config, rule if config.levers else None, model, compacted, loaded.tokenizer)
    if levers is not None:  # the two variants compaction does not time already, in the same interleaved run
        for name, timed in levers.timed.items():
            if timed not in models:
                models[timed] = model if name in ("dense", "tokens") else compacted
                around[timed] = levers.around[name]
    with tempfile.TemporaryDirectory(prefix="econlm-onnx-") as workdir:
        latency = measure_latency(models, loaded.tokenizer, config, Path(workdir), around)
        decoding = measure_decoding({"before": model, "after": compacted}, config) if loaded.head == "causal-lm" else None
    for name, measured in (("before", before), ("after", after)):
        measured["latency_seconds"] = latency["torch"][name]
        if "onnxruntime" in latency:
            measured["onnxruntime_latency_seconds"] = latency["onnxruntime"][name]
        measured["latency_setup"] = latency_setup(latency_seq_len(model, config), latency)
        if decoding is not None:
            measured["decoding"] = decoding[name]
    pbar.update(1)
    pbar.set_postfix_str("saving")
    core_json = core.to_json()
    report = {
        "checkpoint": config.checkpoint,
        "task": task.name,
        "eps": config.eps,
        "calibration_examples": core.calibration_examples,
        "removed": core_json["removed"],
        "verification": {
            **core_json["verification"],
            **({rule.kind: with_tokens} if with_tokens else {}),
        },
        "before": before,
        "after": after,
        **({"onnxruntime": onnx_skipped} if onnx_skipped else {}),
        "ratios": {
            "flops": after["dense_flops"] / before["dense_flops"],
            "parameters": after["parameters"] / before["parameters"],
            **{
                f"speedup_{k}": before["latency_seconds"][k]["median"] / after["latency_seconds"][k]["median"]
                for k in before["latency_seconds"]
            },
            **{
                f"onnxruntime_speedup_{k}": before["onnxruntime_latency_seconds"][k]["median"]
                / after["onnxruntime_latency_seconds"][k]["median"]
                for k in before.get("onnxruntime_latency_seconds", {})
            },
            **{
                f"{k}_speedup": before["decoding"][k]["median"] / after["decoding"][k]["median"]
                for k in (before.get("decoding") or {})
                if k != "setup"
            },
        },
        "meta": run_metadata(config=config.__dict__),
    }
    if config.latency_table:
        report["latency_table"] = _table_prediction(config, model, before, after)
    if levers is not None:  # the two models as loaded: every token, or dropping tokens by the checkpoint's rule
        measured = {"dense" if rule is None else "tokens": before, "units" if rule is None else "units+tokens": after}
        report["levers"] = measure_levers(model, compacted, loaded, task, config, latency["torch"], measured, levers)
    out.parent.mkdir(parents=True, exist_ok=True)
    compacted.config.econlm = {**(getattr(model.config, "econlm", None) or {}), "compact": report["removed"]}
    # Written beside --out and renamed into place: a failed write (a full disk) leaves no half-written model.
    with staging_dir(out.parent, f".{out.name}-", tensor_bytes(compacted.state_dict())) as staging:
        save_model(compacted, loaded.tokenizer, staging)
        if rule is not None and rule.thresholds is not None:  # no shut head is left: read the same in the newest format
            from econlm.learned_tokens import FORMAT, read_thresholds, save_thresholds

            save_thresholds(staging, {**read_thresholds(config.checkpoint), "format": FORMAT})
        elif rule is not None:  # the fixed schedule it was fine-tuned under goes with it
            from econlm.tokens import save_schedule

            save_schedule(staging, rule)
        write_json(staging / "compact.json", report)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    pbar.update(1)
    return report


@dataclass(frozen=True)
class Levers:
    """How compaction tells the two levers apart. ``on(net)`` is a context in which ``net`` drops tokens and
    yields the :class:`~econlm.tokens.TokenBudgetStats` of what it ran on; ``around[variant]`` makes a plain
    call into that variant; ``timed[variant]`` names its entry in compaction's latency run."""

    label: str
    on: Callable
    around: dict
    timed: dict


def _levers(config: CompactConfig, rule, model, compacted, tokenizer) -> Levers | None:
    """--token-budget on a model that computes every token, or the token rule a checkpoint carries (learned
    thresholds, or the schedule it was fine-tuned under), attached to both models: then each lever alone is
    the model with that rule off for the call. None when no token is dropped."""
    from econlm.tokens import attached_rule, every_token, token_budget

    if config.token_budget is not None:

        def on(net):
            return token_budget(net, config.token_budget, tokenizer=tokenizer)

        around = {"tokens": lambda: on(model), "units+tokens": lambda: on(compacted)}
        timed = {"dense": "before", "units": "after", "tokens": "before+tokens", "units+tokens": "after+tokens"}
        return Levers(f"token budget {config.token_budget}", on, around, timed)
    if rule is None:
        return None

    def recording(net):
        return attached_rule(net).recording()

    around = {"dense": lambda: every_token(model), "units": lambda: every_token(compacted)}
    timed = {"dense": "before-every-token", "units": "after-every-token", "tokens": "before", "units+tokens": "after"}
    label = "its learned thresholds" if rule.thresholds is not None else f"the token schedule {rule.label} it was fine-tuned under"
    return Levers(label, recording, around, timed)


def measure_levers(
    model, compacted, loaded, task, config: CompactConfig, latency: dict, measured: dict, levers: Levers
) -> dict:
    """Both levers, alone and together: the dense model, units (compacted), tokens (the token rule on the
    dense model) and units + tokens. ``measured`` holds compaction's measurements of the two models as loaded
    (:func:`measure_model`), under the variant names they are; the others are scored here on the same examples. Compute is the MACs of the blocks on
    each example's real tokens, each layer on the tokens it ran on (padding never counted), as a share of the
    dense model's on the same tokens. A speedup is the dense model's median over the variant's at each batch,
    all four timed round by round in one run (``latency``, and again on real dev batches)."""
    from econlm import data, evaluate
    from econlm.flops import Structure

    examples = data.load_examples(task, "dev", config.data_dir, config.eval_limit)

    def score(net, context) -> float:
        with torch.no_grad(), context:
            return evaluate.score_glue(
                net, loaded.tokenizer, task, examples, loaded.head, batch_size=config.batch_size, max_length=config.max_length
            ).value

    def value(name: str) -> float | None:
        return (measured[name]["score"] or {}).get("value")

    variants = {}
    for alone, together, net in (("dense", "tokens", model), ("units", "units+tokens", compacted)):
        if together in measured:  # scored as loaded, its own rule dropping tokens: what each layer ran on too
            with_tokens, macs = value(together), measured[together]["token_budget"]
        else:
            with levers.on(net) as stats:  # what each layer ran on, recorded while scoring
                with_tokens = score(net, contextlib.nullcontext())
            macs = stats.macs(Structure.of_model(net))
        every = value(alone) if alone in measured else score(net, levers.around[alone]())
        variants[alone] = (every, macs["reference_macs"])
        variants[together] = (with_tokens, macs["macs"])
    reference = variants["dense"][1]
    dev = time_levers_on_dev(model, compacted, loaded.tokenizer, examples, config, levers)
    dense = latency[levers.timed["dense"]]
    out = {}
    for name in ("dense", "units", "tokens", "units+tokens"):
        value, macs = variants[name]
        timed = latency[levers.timed[name]]
        out[name] = {
            "score": value,
            "block_macs_real_tokens": macs,
            "macs_share": macs / reference,
            **{f"speedup_{case}": dev[case]["dense"] / dev[case][name] for case in dev},
            **{f"speedup_{b}": dense[b]["median"] / timed[b]["median"] for b in timed},
        }
    return {
        "tokens": levers.label,
        **({"token_budget": config.token_budget} if config.token_budget is not None else {}),
        "examples": len(examples),
        "counted": "MACs of the blocks over each example's real dev tokens, each layer on the tokens it ran on "
        "(econlm.flops.shortened_macs); padding, the token selection, embeddings and the task head not counted",
        "timed_on": {
            **{
                case: f"{dev[case]['examples']} dev examples (evenly spaced over the split, so its mix of lengths) in "
                f"batches of {case[5:]}, each padded to its own longest row ({dev[case]['padding']}); the dense "
                f"model's median over each variant's, all four interleaved round by round, "
                f"{config.latency_repeats} rounds"
                for case in dev
            },
            **{
                b: "random rows of --max-length tokens (every token real, no padding to drop); the same, from the "
                "compaction's own timing"
                for b in dense
            },
        },
        "variants": out,
    }


DEV_TIMED = {1: 64, 32: 256}  # dev examples per timed pass of the levers at each batch size


def time_levers_on_dev(model, compacted, tokenizer, examples, config: CompactConfig, levers: Levers) -> dict:
    """Median seconds of one pass over real dev batches (dynamic padding, as scoring runs them) for the four
    levers, interleaved round by round: what a user serving this data would see. Random full-length rows
    (the compaction's own timing) flatter a token budget: real text is shorter, and its padding is never a
    saving. Returns ``{"dev_bN": {variant: seconds, ..., "padding": "R real of P padded tokens", "examples": n}}``."""
    from econlm.latency import batches_call, example_batches, measure_interleaved, spread

    out = {}
    for batch, count in DEV_TIMED.items():
        subset = spread(examples, count)
        batches = example_batches(tokenizer, subset, batch_size=batch, max_length=config.max_length)
        fns = {
            "dense": batches_call(model, batches),
            "units": batches_call(compacted, batches),
            "tokens": batches_call(model, batches),
            "units+tokens": batches_call(compacted, batches),
        }
        timed = measure_interleaved(fns, warmup=2, repeats=config.latency_repeats, around=levers.around)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["attention_mask"].numel() for b in batches)
        out[f"dev_b{batch}"] = {
            **{name: timing.median for name, timing in timed.items()},
            "padding": f"{real} real of {padded} padded tokens",
            "examples": len(subset),
        }
    return out


def _table_prediction(config: CompactConfig, model, before: dict, after: dict) -> dict:
    """The speedup the latency table predicts for the compacted structure, next to the one measured at the
    table's batch size (when compaction measured it)."""
    from econlm.latency_table import check_table, load_table

    table = load_table(config.latency_table)
    check_table(table, model.config, config.latency_table)
    predicted = table.predicted_speedup(after["structure"]["heads"], after["structure"]["ffn"])
    key = f"batch{table.setup.get('batch')}"
    measured = None
    if key in before["latency_seconds"] and table.setup.get("seq_len") == before["latency_setup"]["seq_len"]:
        measured = before["latency_seconds"][key]["median"] / after["latency_seconds"][key]["median"]
    return {
        "file": config.latency_table,
        "batch": table.setup.get("batch"),
        "seq_len": table.setup.get("seq_len"),
        "predicted_speedup": predicted,
        "measured_speedup": measured,
        "predicted_over_measured": predicted / measured if measured else None,
    }
