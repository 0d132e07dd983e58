"""Structural surgery and the compacted-checkpoint format.

A :class:`LayerPlan` says which heads and FFN neurons of one layer stay; :func:`apply_plan` shrinks a model
in place to them (``econlm compact`` and post-hoc pruning decide the plans). transformers 5 has no head
pruning and its configs hold one FFN width for all layers, so a model whose shapes differ from its
config's is saved with the per-layer shapes in ``econlm_structure.json`` (:func:`save_model`), and
:func:`load_compacted` rebuilds it: the dense model from its config, shrunk to the saved shapes, then the
weights.

A leaf module: it knows architectures only through :mod:`econlm.arch` and shapes through
:mod:`econlm.flops`, and imports neither the model loader nor the compaction command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from econlm import arch
from econlm.errors import UserError
from econlm.flops import Structure
from econlm.progress import quiet_transformers

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
# Surgery


def _select_outputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """A copy of ``module`` computing only the output features ``index``."""
    new = arch.resized(module, arch.in_features(module), len(index))
    with torch.no_grad():
        arch.out_rows(new).copy_(arch.out_rows(module)[index])
        if module.bias is not None:
            new.bias.copy_(module.bias[index])
    return new


def _select_inputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """A copy of ``module`` reading only the input features ``index``."""
    new = arch.resized(module, len(index), arch.out_features(module))
    with torch.no_grad():
        arch.in_columns(new).copy_(arch.in_columns(module)[index])
        if module.bias is not None:
            new.bias.copy_(module.bias)
    return new


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
            fused = arch.fused_qkv_index(q_index, kv_index, shape.hidden)
            _set(block, fam.q, _select_outputs(block.get_submodule(fam.q), fused))
        else:
            _set(block, fam.q, _select_outputs(block.get_submodule(fam.q), q_index))
            _set(block, fam.k, _select_outputs(block.get_submodule(fam.k), kv_index))
            _set(block, fam.v, _select_outputs(block.get_submodule(fam.v), kv_index))
        _set(block, fam.o, _select_inputs(block.get_submodule(fam.o), q_index))
        arch.set_head_counts(block.get_submodule(fam.attention), len(plan.keep_heads), len(plan.keep_kv_heads), d)
        n_index = torch.tensor(plan.keep_neurons, dtype=torch.long)
        _set(block, fam.ffn_up, _select_outputs(block.get_submodule(fam.ffn_up), n_index))
        if fam.ffn_gate:
            _set(block, fam.ffn_gate, _select_outputs(block.get_submodule(fam.ffn_gate), n_index))
        _set(block, fam.ffn_down, _select_inputs(block.get_submodule(fam.ffn_down), n_index))


# ---------------------------------------------------------------------------------------------------------
# The compacted-checkpoint format


def structure_dict(plans: list[LayerPlan]) -> dict:
    """The content of ``econlm_structure.json``: per layer, the numbers of heads, K/V heads and FFN neurons."""
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
    structure = Structure.of_model(model)
    return [
        LayerPlan(list(range(h)), list(range(g)), list(range(f)))
        for h, g, f in zip(structure.heads, structure.kv_heads, structure.ffn)
    ]


def save_model(model: nn.Module, tokenizer, out: str | Path) -> None:
    """``save_pretrained`` plus, when the shapes differ from the config's, the per-layer structure file."""
    out = Path(out)
    with quiet_transformers():
        model.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    actual, dense = Structure.of_model(model), Structure.dense(model.config)
    if actual.heads != dense.heads or actual.ffn != dense.ffn:
        (out / STRUCTURE_FILE).write_text(json.dumps(structure_dict(current_plans(model)), indent=2) + "\n")


def read_structure(path: Path, layers: int) -> dict:
    """The saved per-layer shapes, checked: a damaged or foreign structure file is one line, not a KeyError."""
    file = Path(path) / STRUCTURE_FILE
    try:
        structure = json.loads(file.read_text())
        rows = structure["layers"]
        ok = structure.get("format") == 1 and len(rows) == layers
        ok = ok and all(all(isinstance(r[k], int) and r[k] > 0 for k in ("heads", "kv_heads", "ffn")) for r in rows)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UserError(
            f"{file} is not a structure file this econlm reads (format 1: heads, kv_heads and ffn for each of the "
            f"model's {layers} layers); restore it, or compact or save the model again"
        )
    return structure


def is_compacted(path: str | Path) -> bool:
    """True when the checkpoint folder holds a structure file (its shapes differ from its config's)."""
    return (Path(path) / STRUCTURE_FILE).exists()


def load_compacted(path: str | Path, head: str, dtype=None):
    """Rebuild a compacted model: dense model from config, shrunk to the saved shapes, then the weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    auto = {"seq-cls": AutoModelForSequenceClassification, "causal-lm": AutoModelForCausalLM}.get(head, AutoModel)
    model = auto.from_config(config, attn_implementation="eager", dtype=dtype or torch.float32)
    apply_plan(model, plans_from_structure(read_structure(path, len(arch.blocks(model)))))
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a size mismatch: the structure file is not the one saved with these weights
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)).rstrip(".")
        raise UserError(
            f"the weights in {path} do not match its {STRUCTURE_FILE} ({first}); restore the structure file "
            "saved with these weights, or compact the model again"
        ) from None
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]:
        raise UserError(
            f"the weights in {path} do not match its {STRUCTURE_FILE} ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected); restore the structure file saved with these weights, or compact the "
            "model again"
        )
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
