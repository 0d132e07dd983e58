"""Per-family facts, read from ``model.config``: where layers, attention and FFN live, and their shapes.

This is the one place that knows module names of Hugging Face architectures, how their attention modules
store head counts, GPT-2's fused Q/K/V layout and which way a layer stores its weight. Everything else
asks it, so supporting a new family means adding one :class:`Family` row here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from econlm.errors import UserError
from econlm.registry import Registry


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family, relative to ``model.base_model``.

    ``layers`` is the ModuleList of transformer blocks; the other paths are relative to one block.
    ``ffn_gate`` is set for gated FFNs (SwiGLU), where the activation is ``act(gate(x)) * up(x)``.
    ``qkv_fused`` marks GPT-2's single ``c_attn`` projection (a Conv1D holding Q, K and V).
    """

    kind: str  # "encoder" or "decoder"
    layers: str
    attention: str  # the module that calls the AttentionInterface function
    q: str
    k: str
    v: str
    o: str
    ffn_up: str
    ffn_down: str
    ffn_gate: str | None = None
    qkv_fused: bool = False


_BERT_LIKE = Family(
    kind="encoder",
    layers="encoder.layer",
    attention="attention.self",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    ffn_up="intermediate.dense",
    ffn_down="output.dense",
)
_LLAMA_LIKE = Family(
    kind="decoder",
    layers="layers",
    attention="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    ffn_up="mlp.up_proj",
    ffn_down="mlp.down_proj",
    ffn_gate="mlp.gate_proj",
)

FAMILIES: Registry[Family] = Registry(
    "model type",
    {
        "bert": _BERT_LIKE,
        "roberta": _BERT_LIKE,
        "electra": _BERT_LIKE,
        "distilbert": Family(
            kind="encoder",
            layers="transformer.layer",
            attention="attention",
            q="attention.q_lin",
            k="attention.k_lin",
            v="attention.v_lin",
            o="attention.out_lin",
            ffn_up="ffn.lin1",
            ffn_down="ffn.lin2",
        ),
        "gpt2": Family(
            kind="decoder",
            layers="h",
            attention="attn",
            q="attn.c_attn",
            k="attn.c_attn",
            v="attn.c_attn",
            o="attn.c_proj",
            ffn_up="mlp.c_fc",
            ffn_down="mlp.c_proj",
            qkv_fused=True,
        ),
        "llama": _LLAMA_LIKE,
        "qwen2": _LLAMA_LIKE,
        "mistral": _LLAMA_LIKE,
    },
)


@dataclass(frozen=True)
class Shape:
    """Sizes of a (dense) model, as its config states them."""

    model_type: str
    kind: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_ffn: bool


def family(config) -> Family:
    """The :class:`Family` of a config; a clear error names the supported model types otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        # Not a name the user typed but what a checkpoint's config says: no "did you mean".
        raise UserError(
            f"architecture '{model_type}' is not supported; supported model types: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def shape(config) -> Shape:
    """Read layer count, widths and head counts from a config of a supported family."""
    fam = family(config)
    heads = config.num_attention_heads
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = (
        getattr(config, "intermediate_size", None)
        or getattr(config, "hidden_dim", None)  # DistilBERT
        or getattr(config, "n_inner", None)  # GPT-2 (None means 4 * hidden)
        or 4 * hidden
    )
    return Shape(
        model_type=config.model_type,
        kind=fam.kind,
        layers=config.num_hidden_layers,
        hidden=hidden,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=config.vocab_size,
        gated_ffn=fam.ffn_gate is not None,
    )


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model`` (with or without a task head), in order."""
    fam = family(model.config)
    return list(get_submodule(model.base_model, fam.layers))


def is_decoder(config) -> bool:
    return family(config).kind == "decoder"


# ---------------------------------------------------------------------------------------------------------
# Attention modules


def set_head_counts(attention: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    """Tell an attention module (``Family.attention``) that it now has ``heads`` query and ``kv_heads`` K/V heads.

    transformers' attention modules read their sizes from attributes whose names differ by family.
    """
    sizes = {
        "num_attention_heads": heads,
        "num_heads": heads,
        "n_heads": heads,
        "all_head_size": heads * head_dim,
        "num_key_value_heads": kv_heads,
        "num_key_value_groups": heads // kv_heads,
        "split_size": heads * head_dim,  # GPT-2 splits c_attn's output with it
    }
    for name, value in sizes.items():
        if hasattr(attention, name):
            setattr(attention, name, value)


def fused_qkv_index(q_index: torch.Tensor, kv_index: torch.Tensor, hidden: int) -> torch.Tensor:
    """Output features of GPT-2's fused ``c_attn`` ([Q | K | V], each ``hidden`` wide) for the given Q and K/V
    features."""
    return torch.cat([q_index, kv_index + hidden, kv_index + 2 * hidden])


def split_fused_qkv(rows: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of GPT-2's fused ``c_attn`` weight (see :func:`out_rows`) split into the Q, K and V parts."""
    q, k, v = rows.split(hidden)
    return q, k, v


# ---------------------------------------------------------------------------------------------------------
# Weight orientation: nn.Linear stores its weight as (out, in), GPT-2's Conv1D as (in, out). Other modules
# read and build weights through these functions only.


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear``; False for GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear)


def out_rows(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), a view: row ``i`` computes output feature ``i``."""
    return module.weight if is_linear(module) else module.weight.t()


def in_columns(module: nn.Module) -> torch.Tensor:
    """The weight as (in_features, out_features), a view: row ``j`` holds what reads input feature ``j``."""
    return module.weight.t() if is_linear(module) else module.weight


def in_features(module: nn.Module) -> int:
    return in_columns(module).shape[0]


def out_features(module: nn.Module) -> int:
    return out_rows(module).shape[0]


def resized(module: nn.Module, n_in: int, n_out: int) -> nn.Module:
    """A new layer of the same kind as ``module`` (bias, dtype, device too) with other sizes; its weights are
    random, to be overwritten."""
    if is_linear(module):
        new = nn.Linear(n_in, n_out, bias=module.bias is not None)
    else:
        new = type(module)(n_out, n_in)  # Conv1D(nf=out, nx=in)
    return new.to(dtype=module.weight.dtype, device=module.weight.device)
