"""Per-family facts, read from ``model.config``: where layers, attention and FFN live, and their shapes.

This is the one place that knows module names of Hugging Face architectures. Everything else asks it,
so supporting a new family means adding one :class:`Family` row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from econlm.errors import UserError


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

FAMILIES: dict[str, Family] = {
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
}


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
