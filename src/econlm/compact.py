"""Compaction: remove dead FFN neurons and attention heads, giving a smaller dense model that is faster.

Dead units, layer by layer:

* an FFN neuron whose down-projection column is zero (a closed gate folded in by ``econlm train``), or
  whose activation never exceeds ``eps`` in magnitude on a calibration set;
* an attention head whose slice of the output projection is zero, or whose output never exceeds ``eps``
  on the calibration set. With grouped-query attention a key/value head goes only together with all
  the query heads that share it (transformers' modules need equal groups), so GQA models lose whole groups.

Every layer keeps at least one head and one neuron. transformers 5 has no head pruning and its configs
hold one FFN width for all layers, so the per-layer shapes are saved next to the weights in
``econlm_structure.json``; :func:`load` (and every econlm command given the folder) rebuilds the model.
On save the result is verified against the original on the calibration batches: when only truly dead
units went (zero weights or activations exactly zero) outputs must match (``torch.testing.assert_close``);
the largest difference is reported either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from econlm import arch
from econlm.errors import UserError

STRUCTURE_FILE = "econlm_structure.json"


@dataclass
class LayerPlan:
    """Units kept in one layer, and why others went."""

    keep_heads: list[int]
    keep_kv_heads: list[int]
    keep_neurons: list[int]
    heads_zero: int = 0
    heads_unused: int = 0
    neurons_zero: int = 0
    neurons_unused: int = 0


# ---------------------------------------------------------------------------------------------------------
# Surgery on Linear and GPT-2 Conv1D layers


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def _select_outputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """A copy of ``module`` computing only the output features ``index``."""
    with torch.no_grad():
        if _is_linear(module):
            new = nn.Linear(module.in_features, len(index), bias=module.bias is not None)
            new.weight.copy_(module.weight[index])
        else:  # Conv1D: weight (in, out)
            new = type(module)(len(index), module.weight.shape[0])
            new.weight.copy_(module.weight[:, index])
        if module.bias is not None:
            new.bias.copy_(module.bias[index])
    return new.to(module.weight.dtype).to(module.weight.device)


def _select_inputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """A copy of ``module`` reading only the input features ``index``."""
    with torch.no_grad():
        if _is_linear(module):
            new = nn.Linear(len(index), module.out_features, bias=module.bias is not None)
            new.weight.copy_(module.weight[:, index])
        else:
            new = type(module)(module.weight.shape[1], len(index))
            new.weight.copy_(module.weight[index])
        if module.bias is not None:
            new.bias.copy_(module.bias)
    return new.to(module.weight.dtype).to(module.weight.device)


def _input_columns(module: nn.Module) -> torch.Tensor:
    """Weights as (in_features, out_features), whatever the layer type."""
    return module.weight.t() if _is_linear(module) else module.weight


def _set(block: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(block.get_submodule(parent_path) if parent_path else block, name, module)


def _feature_index(units: list[int], width: int) -> torch.Tensor:
    return torch.tensor([u * width + j for u in units for j in range(width)], dtype=torch.long)


def apply_plan(model: nn.Module, plans: list[LayerPlan]) -> None:
    """Shrink every block of ``model`` in place to the units its plan keeps."""
    fam = arch.family(model.config)
    shape = arch.shape(model.config)
    d = shape.head_dim
    for block, plan in zip(arch.blocks(model), plans, strict=True):
        q_index = _feature_index(plan.keep_heads, d)
        kv_index = _feature_index(plan.keep_kv_heads, d)
        if fam.qkv_fused:
            # GPT-2's c_attn outputs [Q | K | V], each hidden wide.
            fused = torch.cat([q_index, kv_index + shape.hidden, kv_index + 2 * shape.hidden])
            _set(block, fam.q, _select_outputs(block.get_submodule(fam.q), fused))
        else:
            _set(block, fam.q, _select_outputs(block.get_submodule(fam.q), q_index))
            _set(block, fam.k, _select_outputs(block.get_submodule(fam.k), kv_index))
            _set(block, fam.v, _select_outputs(block.get_submodule(fam.v), kv_index))
        _set(block, fam.o, _select_inputs(block.get_submodule(fam.o), q_index))
        attention = block.get_submodule(fam.attention)
        heads, kv_heads = len(plan.keep_heads), len(plan.keep_kv_heads)
        for name, value in (
            ("num_attention_heads", heads),
            ("num_heads", heads),
            ("n_heads", heads),
            ("all_head_size", heads * d),
            ("num_key_value_heads", kv_heads),
            ("num_key_value_groups", heads // kv_heads),
            ("split_size", heads * d),  # GPT-2 splits c_attn's output with it
        ):
            if hasattr(attention, name):
                setattr(attention, name, value)
        n_index = torch.tensor(plan.keep_neurons, dtype=torch.long)
        _set(block, fam.ffn_up, _select_outputs(block.get_submodule(fam.ffn_up), n_index))
        if fam.ffn_gate:
            _set(block, fam.ffn_gate, _select_outputs(block.get_submodule(fam.ffn_gate), n_index))
        _set(block, fam.ffn_down, _select_inputs(block.get_submodule(fam.ffn_down), n_index))


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
    """Decide, per layer, which heads and neurons stay."""
    fam = arch.family(model.config)
    shape = arch.shape(model.config)
    d = shape.head_dim
    plans = []
    for i, block in enumerate(arch.blocks(model)):
        down = _input_columns(block.get_submodule(fam.ffn_down))  # (F, D)
        neuron_zero = (down == 0).all(dim=1)
        o_cols = _input_columns(block.get_submodule(fam.o))  # (H*d, D)
        heads = o_cols.shape[0] // d
        head_zero = (o_cols.view(heads, d, -1) == 0).all(dim=2).all(dim=1)
        neuron_unused = torch.zeros_like(neuron_zero)
        head_unused = torch.zeros_like(head_zero)
        if calibration is not None:
            neuron_unused = calibration["neuron_max"][i] <= eps
            head_unused = calibration["head_max"][i] <= eps
        neuron_dead = neuron_zero | neuron_unused
        head_dead = head_zero | head_unused
        kv_heads = _kv_heads_of(block, fam, shape, heads)
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


def _kv_heads_of(block, fam, shape, heads: int) -> int:
    if fam.qkv_fused:
        return heads
    k = block.get_submodule(fam.k)
    out = k.out_features if _is_linear(k) else k.weight.shape[1]
    return out // shape.head_dim


def exactly_dead_only(plans: list[LayerPlan], calibration: dict | None, model_before: nn.Module) -> bool:
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
# Saving and loading


def structure_dict(plans: list[LayerPlan]) -> dict:
    return {
        "format": 1,
        "layers": [
            {"heads": len(p.keep_heads), "kv_heads": len(p.keep_kv_heads), "ffn": len(p.keep_neurons)} for p in plans
        ],
    }


def plans_from_structure(structure: dict) -> list[LayerPlan]:
    """Plans that rebuild saved shapes (which original units they were no longer matters)."""
    return [
        LayerPlan(
            keep_heads=list(range(layer["heads"])),
            keep_kv_heads=list(range(layer["kv_heads"])),
            keep_neurons=list(range(layer["ffn"])),
        )
        for layer in structure["layers"]
    ]


def current_plans(model: nn.Module) -> list[LayerPlan]:
    """Plans describing the model's present shapes (for saving a model that was shrunk earlier)."""
    from econlm.flops import Structure

    structure = Structure.of_model(model)
    return [
        LayerPlan(list(range(h)), list(range(g)), list(range(f)))
        for h, g, f in zip(structure.heads, structure.kv_heads, structure.ffn)
    ]


def save_model(model: nn.Module, tokenizer, out: str | Path) -> None:
    """``save_pretrained`` plus, when the shapes differ from the config's, the per-layer structure file."""
    from econlm.flops import Structure
    from econlm.models import _quiet_transformers

    out = Path(out)
    with _quiet_transformers():
        model.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    if (
        Structure.of_model(model).heads != Structure.dense(model.config).heads
        or Structure.of_model(model).ffn != Structure.dense(model.config).ffn
    ):
        (out / STRUCTURE_FILE).write_text(json.dumps(structure_dict(current_plans(model)), indent=2) + "\n")


def is_compacted(path: str | Path) -> bool:
    return (Path(path) / STRUCTURE_FILE).exists()


def load_compacted(path: str | Path, head: str, dtype=None):
    """Rebuild a compacted model: dense model from config, shrunk to the saved shapes, then the weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    auto = {"seq-cls": AutoModelForSequenceClassification, "causal-lm": AutoModelForCausalLM}.get(head, AutoModel)
    model = auto.from_config(config, attn_implementation="eager", dtype=dtype or torch.float32)
    apply_plan(model, plans_from_structure(json.loads((path / STRUCTURE_FILE).read_text())))
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]:
        raise RuntimeError(f"compacted checkpoint {path} does not match its structure: {missing} {unexpected}")
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class CompactConfig:
    checkpoint: str
    out: str
    calib_examples: int = 512
    eps: float = 1e-3
    task: str | None = None  # default: the task the checkpoint was trained on
    data_dir: str | None = None
    max_length: int = 128
    batch_size: int = 32
    eval_limit: int | None = None
    latency_repeats: int = 20
    threads: int | None = None
    onnx: bool = False  # also time both models in ONNX Runtime (the CLI turns it on when onnxruntime is installed)

    def __post_init__(self) -> None:
        import math

        if not (math.isfinite(self.eps) and self.eps > 0):
            raise UserError(f"--eps must be a positive number (an activation threshold), not {self.eps}")
        if self.calib_examples < 1:
            raise UserError("--calib-examples must be at least 1")
        if self.latency_repeats < 1:
            raise UserError("--latency-repeats must be at least 1")
        if self.onnx:
            from econlm.export import require_onnx

            require_onnx()
        if self.task is not None:
            from econlm.data import get_task

            get_task(self.task)


def _calibration_batches(loaded, task, config: CompactConfig) -> list[dict]:
    from econlm import data, evaluate

    tokenizer = loaded.tokenizer
    if task.is_lm:
        ids = evaluate.lm_token_ids(tokenizer, data.load_text(task, "dev", config.data_dir), None)
        blocks = [ids[i : i + config.max_length] for i in range(0, len(ids) - config.max_length + 1, config.max_length)]
        blocks = blocks[: config.calib_examples]
        return [
            {"input_ids": torch.tensor(blocks[i : i + config.batch_size])}
            for i in range(0, len(blocks), config.batch_size)
        ]
    examples = data.load_examples(task, "train", config.data_dir, config.calib_examples)
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
        batches.append(dict(encoded))
    return batches


def _outputs(model, batch):
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def measure_model(model, loaded, task, config: CompactConfig, head: str) -> dict:
    """Parameters, dense MACs (one sequence of max_length tokens) and the dev score; latency is measured for
    the original and compacted model together, by :func:`measure_latency`."""
    from econlm import data, evaluate
    from econlm.flops import Structure, dense_macs

    structure = Structure.of_model(model)
    macs = dense_macs(structure, latency_seq_len(model, config), include_head=True)
    score = None
    if task is not None:
        with torch.no_grad():
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
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "dense_macs": macs["macs"],
        "dense_flops": macs["flops"],
        "structure": {"heads": list(structure.heads), "kv_heads": list(structure.kv_heads), "ffn": list(structure.ffn)},
        "score": score,
    }


LATENCY_BATCHES = (1, 32)


def latency_seq_len(model, config: CompactConfig) -> int:
    return min(config.max_length, getattr(model.config, "max_position_embeddings", None) or config.max_length)


def measure_latency(models: dict, tokenizer, config: CompactConfig, workdir: Path) -> dict:
    """CPU latency of each model at batch 1 and 32, all models timed round by round in one run (so noise hits
    them alike), in PyTorch eager and, when the onnx extra is installed and ``config.onnx``, in ONNX Runtime.

    Returns ``{runtime: {name: {"batchN": timing}}}`` with runtime ``torch`` and ``onnxruntime``.
    """
    from econlm.latency import measure_interleaved

    runtimes = {"torch": {name: _torch_forward(model) for name, model in models.items()}}
    if config.onnx:
        runtimes["onnxruntime"] = _onnx_forwards(models, tokenizer, workdir)
    seq_len = latency_seq_len(next(iter(models.values())), config)
    results: dict = {runtime: {name: {} for name in models} for runtime in runtimes}
    for batch in LATENCY_BATCHES:
        ids = torch.randint(1000, 2000, (batch, seq_len))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        calls = {
            (runtime, name): (lambda f=forward: f(inputs))
            for runtime, forwards in runtimes.items()
            for name, forward in forwards.items()
        }
        timings = measure_interleaved(calls, warmup=3, repeats=config.latency_repeats)
        for (runtime, name), timing in timings.items():
            entry = timing.as_dict()
            entry["sequences_per_second"] = batch / entry["median"]
            entry["tokens_per_second"] = batch * seq_len / entry["median"]
            results[runtime][name][f"batch{batch}"] = entry
    return results


def _torch_forward(model):
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)

    def forward(inputs):
        with torch.no_grad():
            model(**{k: v for k, v in inputs.items() if k in accepted})

    return forward


def _onnx_forwards(models: dict, tokenizer, workdir: Path) -> dict:
    """Export each model to ``workdir`` (checked against PyTorch) and return ONNX Runtime forward calls."""
    from econlm.export import export_onnx, onnx_forward, onnx_session

    forwards = {}
    for name, model in models.items():
        report = export_onnx(model, tokenizer, workdir / f"{name}.onnx")
        if not report.matches:
            raise RuntimeError(f"the ONNX export of the {name} model differs from PyTorch by {report.max_abs_difference}")
        session = onnx_session(report.path)
        forwards[name] = lambda inputs, s=session: onnx_forward(s, inputs)
    return forwards


def latency_setup(seq_len: int, runtimes) -> dict:
    return {
        "seq_len": seq_len,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "runtimes": list(runtimes),
        "statistic": "median of repeated forward passes after warm-up (no grad); the original and compacted "
        "models (and both runtimes) timed round by round in one run, the order rotating each round",
    }


def run_compact(config: CompactConfig, progress: bool = True) -> dict:
    """Compact a checkpoint into ``config.out``; returns the report also written to ``compact.json``."""
    from econlm.models import check_spec

    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --out (nothing is overwritten)")
    from econlm.progress import bar

    check_spec(config.checkpoint)
    if config.threads:
        torch.set_num_threads(config.threads)
    with bar(total=6, desc=f"compact {config.checkpoint}", unit="stage", enabled=progress) as pbar:
        return _compact(config, out, pbar)


def _compact(config: CompactConfig, out: Path, pbar) -> dict:
    import copy
    import os
    import shutil
    import tempfile

    from econlm import data
    from econlm.models import load_model
    from econlm.runinfo import run_metadata, write_json

    pbar.set_postfix_str("calibrating")
    loaded = load_model(config.checkpoint)
    model = loaded.model
    trained = (getattr(model.config, "econlm", None) or {}).get("train", {})
    task_name = config.task or trained.get("task")
    if task_name is None:
        raise UserError("the checkpoint does not say which task it was trained on; pass --task for calibration")
    task = data.get_task(task_name)
    if config.data_dir is None and trained.get("data_dir"):
        config = CompactConfig(**{**config.__dict__, "data_dir": trained["data_dir"]})
    batches = _calibration_batches(loaded, task, config)
    calibration = calibrate(model, batches) if batches else None
    plans = plan_removal(model, calibration, config.eps)
    removed_heads = sum(arch.shape(model.config).heads - len(p.keep_heads) for p in plans)
    removed_neurons = sum(arch.shape(model.config).intermediate - len(p.keep_neurons) for p in plans)
    if removed_heads == 0 and removed_neurons == 0:
        raise UserError(
            f"nothing to remove in {config.checkpoint}: no head or FFN neuron is gated off or stays at or below "
            f"|a| <= {config.eps:g} on {config.calib_examples} calibration examples; nothing was written"
        )
    pbar.update(1)
    pbar.set_postfix_str("scoring the original")
    before = measure_model(model, loaded, task, config, loaded.head)
    pbar.update(1)
    pbar.set_postfix_str("removing and verifying")
    compacted = copy.deepcopy(model)
    apply_plan(compacted, plans)
    compacted.eval()
    differences = []
    with torch.no_grad():
        for batch in batches:
            differences.append(float((_outputs(compacted, batch) - _outputs(model, batch)).abs().max()))
    exact = exactly_dead_only(plans, calibration, model)
    if exact:
        with torch.no_grad():
            for batch in batches:
                torch.testing.assert_close(_outputs(compacted, batch), _outputs(model, batch), rtol=1e-4, atol=1e-5)
    pbar.update(1)
    pbar.set_postfix_str("scoring the compacted model")
    after = measure_model(compacted, loaded, task, config, loaded.head)
    pbar.update(1)
    pbar.set_postfix_str("timing both models" + (" in PyTorch and ONNX Runtime" if config.onnx else ""))
    with tempfile.TemporaryDirectory(prefix="econlm-onnx-") as workdir:
        latency = measure_latency({"before": model, "after": compacted}, loaded.tokenizer, config, Path(workdir))
    for name, measured in (("before", before), ("after", after)):
        measured["latency_seconds"] = latency["torch"][name]
        if "onnxruntime" in latency:
            measured["onnxruntime_latency_seconds"] = latency["onnxruntime"][name]
        measured["latency_setup"] = latency_setup(latency_seq_len(model, config), latency)
    pbar.update(1)
    pbar.set_postfix_str("saving")
    report = {
        "checkpoint": config.checkpoint,
        "task": task.name,
        "eps": config.eps,
        "calibration_examples": sum(len(b["input_ids"]) for b in batches),
        "removed": {
            "heads": removed_heads,
            "neurons": removed_neurons,
            "per_layer": [
                {
                    "heads_kept": len(p.keep_heads),
                    "heads_zero": p.heads_zero,
                    "heads_unused": p.heads_unused,
                    "neurons_kept": len(p.keep_neurons),
                    "neurons_zero": p.neurons_zero,
                    "neurons_unused": p.neurons_unused,
                }
                for p in plans
            ],
        },
        "verification": {
            "only_exactly_dead_units_removed": exact,
            "max_abs_output_difference": max(differences) if differences else 0.0,
            "checked": "assert_close(rtol=1e-4, atol=1e-5) on the calibration batches"
            if exact
            else "not asserted: units below eps but not exactly zero were removed",
        },
        "before": before,
        "after": after,
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
        },
        "meta": run_metadata(config=config.__dict__),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        compacted.config.econlm = {**(getattr(model.config, "econlm", None) or {}), "compact": report["removed"]}
        save_model(compacted, loaded.tokenizer, staging)
        write_json(staging / "compact.json", report)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    pbar.update(1)
    return report
