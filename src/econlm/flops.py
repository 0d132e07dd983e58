"""Analytic compute model: multiply-accumulates (MACs) per layer, dense and effective.

Counted: every matrix product of a forward pass. Per transformer block, for ``T`` tokens of one
sequence, hidden size ``D``, head size ``d``, ``h`` query heads, ``g`` key/value heads and FFN width ``f``:

=============  ==========================  =====================================================
q_proj         T * D * h*d                 k_proj, v_proj: T * D * g*d each
scores (QK^T)  h * T * S * d               S = keys per query: T when dense
attn_v         h * T * S * d               o_proj: T * h*d * D
ffn_up         T * D * f                   ffn_gate (gated FFNs only): T * D * f; ffn_down: T * f * D
=============  ==========================  =====================================================

plus the task head when asked (linear layers outside the blocks: the LM head over all ``T`` tokens for
decoders; pooler and classifier over the first token for encoders). Not counted: embeddings (lookups),
softmax, normalisation, activations, bias additions and residual adds, which are not matrix products
and are what ``torch.utils.flop_counter`` leaves out too. FLOPs = 2 x MACs, everywhere.

Dense eager attention multiplies the full ``T x T`` score matrix even under a causal mask, so dense
counts use ``S = T``; :func:`effective_macs` counts what an implementation skipping zeros would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from econlm import arch

ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "scores", "attn_v", "o_proj")
FFN_PARTS = ("ffn_up", "ffn_gate", "ffn_down")


@dataclass(frozen=True)
class Structure:
    """What a model computes: global sizes plus heads and FFN width per layer (which compaction changes)."""

    kind: str  # "encoder" or "decoder"
    hidden: int
    head_dim: int
    gated_ffn: bool
    heads: tuple[int, ...]  # query heads per layer
    kv_heads: tuple[int, ...]  # key/value heads per layer
    ffn: tuple[int, ...]  # FFN width per layer
    head_linears: tuple[tuple[int, int], ...] = field(default=())  # (in, out) of task-head linears

    @property
    def layers(self) -> int:
        return len(self.heads)

    @classmethod
    def dense(cls, config) -> Structure:
        """The structure a config describes (every layer full size)."""
        s = arch.shape(config)
        return cls(
            kind=s.kind,
            hidden=s.hidden,
            head_dim=s.head_dim,
            gated_ffn=s.gated_ffn,
            heads=(s.heads,) * s.layers,
            kv_heads=(s.kv_heads,) * s.layers,
            ffn=(s.intermediate,) * s.layers,
        )

    @classmethod
    def of_model(cls, model: nn.Module) -> Structure:
        """The structure a loaded model actually has, read from its weight shapes (compacted or not)."""
        fam = arch.family(model.config)
        dense = cls.dense(model.config)
        heads, kv_heads, ffn = [], [], []
        for block in arch.blocks(model):
            o_in = arch.in_features(block.get_submodule(fam.o))
            heads.append(o_in // dense.head_dim)
            if fam.qkv_fused:
                kv_heads.append(heads[-1])
            else:
                kv_heads.append(arch.out_features(block.get_submodule(fam.k)) // dense.head_dim)
            ffn.append(arch.in_features(block.get_submodule(fam.ffn_down)))
        return cls(
            kind=dense.kind,
            hidden=dense.hidden,
            head_dim=dense.head_dim,
            gated_ffn=dense.gated_ffn,
            heads=tuple(heads),
            kv_heads=tuple(kv_heads),
            ffn=tuple(ffn),
            head_linears=_head_linears(model),
        )


def _head_linears(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """(in, out) of every linear layer outside the transformer blocks (pooler, classifier, LM head)."""
    block_modules = {id(m) for block in arch.blocks(model) for m in block.modules()}
    found = []
    for _, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module) not in block_modules:
            found.append((module.in_features, module.out_features))
    return tuple(found)


def layer_macs(structure: Structure, layer: int, seq_len: int, keys_per_query: float | None = None) -> dict[str, float]:
    """MACs of one block for one sequence of ``seq_len`` tokens, by part (see the module docstring).

    ``keys_per_query`` is the mean number of keys each query multiplies (dense: ``seq_len``).
    """
    t = seq_len
    s = t if keys_per_query is None else keys_per_query
    d, hidden = structure.head_dim, structure.hidden
    h, g, f = structure.heads[layer], structure.kv_heads[layer], structure.ffn[layer]
    return {
        "q_proj": t * hidden * h * d,
        "k_proj": t * hidden * g * d,
        "v_proj": t * hidden * g * d,
        "scores": h * t * s * d,
        "attn_v": h * t * s * d,
        "o_proj": t * h * d * hidden,
        "ffn_up": t * hidden * f,
        "ffn_gate": t * hidden * f if structure.gated_ffn else 0,
        "ffn_down": t * f * hidden,
    }


def head_macs(structure: Structure, seq_len: int) -> int:
    """MACs of the task head: decoders apply it to every token, encoders to the first token only."""
    tokens = seq_len if structure.kind == "decoder" else 1
    return sum(tokens * i * o for i, o in structure.head_linears)


def dense_macs(structure: Structure, seq_len: int, batch: int = 1, include_head: bool = False) -> dict:
    """Dense MACs of a forward pass over ``batch`` sequences of ``seq_len`` tokens.

    Returns ``{"macs": total, "flops": 2 * total, "by_part": {...}, "by_layer": [...]}``.
    """
    by_layer = [layer_macs(structure, i, seq_len) for i in range(structure.layers)]
    by_part = {part: batch * sum(layer[part] for layer in by_layer) for part in ATTENTION_PARTS + FFN_PARTS}
    total = sum(by_part.values())
    if include_head:
        by_part["head"] = batch * head_macs(structure, seq_len)
        total += by_part["head"]
    return {
        "macs": total,
        "flops": 2 * total,
        "by_part": by_part,
        "by_layer": [batch * sum(layer.values()) for layer in by_layer],
        "seq_len": seq_len,
        "batch": batch,
        "counted": "matrix products of the blocks" + (" and the task head" if include_head else ""),
    }


def unit_macs_per_token(structure: Structure, layer: int, seq_len: int) -> dict[str, float]:
    """MACs per token that one query head, one key/value head, one K/V group and one FFN neuron of ``layer``
    cost.

    A query head pays its Q and O projection slices and its share of scores and attn_v; a key/value head
    its K and V slices; a K/V group (the unit removal can take: one head without grouped-query attention)
    its key/value head and every query head reading it; an FFN neuron its row of the up (and gate)
    projection and its column of down.
    """
    d, hidden = structure.head_dim, structure.hidden
    query_head, kv_head = 2 * hidden * d + 2 * seq_len * d, 2 * hidden * d
    return {
        "query_head": query_head,
        "kv_head": kv_head,
        "kv_group": structure.heads[layer] // structure.kv_heads[layer] * query_head + kv_head,
        "ffn_neuron": hidden * (3 if structure.gated_ffn else 2),
    }


def effective_macs_per_token(structure: Structure, layers: list[dict]) -> dict:
    """MACs per real token of an implementation that skips what a sparse run makes zero.

    ``layers[i]`` holds measured means over real query rows: ``allowed_keys_mean`` (keys the masks allow),
    ``kept_keys_mean`` (keys left by the attention budget) and ``ffn_active_share`` (share of FFN
    activations that are not zero, after any hard threshold). Such an implementation still scores every
    allowed key (top-k needs all scores) and computes every FFN activation (zeros are only known after
    the activation), but multiplies values over kept keys only, and runs the down projection over
    non-zero activations only; removed heads and neurons are absent from ``structure`` altogether.

    Returns effective and reference MACs per token (the reference is the same computation at the full
    budget with no activation skipped: masked keys skipped, nothing else), and their ratio.
    """
    effective = reference = 0.0
    by_layer = []
    for i, stats in enumerate(layers):
        d, hidden = structure.head_dim, structure.hidden
        h, g, f = structure.heads[i], structure.kv_heads[i], structure.ffn[i]
        projections = hidden * h * d + 2 * hidden * g * d + h * d * hidden
        up = hidden * f * (2 if structure.gated_ffn else 1)
        scores = h * stats["allowed_keys_mean"] * d
        layer_reference = projections + up + scores + h * stats["allowed_keys_mean"] * d + f * hidden
        layer_effective = (
            projections + up + scores + h * stats["kept_keys_mean"] * d + f * hidden * stats["ffn_active_share"]
        )
        by_layer.append({"effective": layer_effective, "reference": layer_reference})
        effective += layer_effective
        reference += layer_reference
    return {
        "effective_macs_per_token": effective,
        "reference_macs_per_token": reference,
        "effective_flops_per_token": 2 * effective,
        "ratio": effective / reference if reference else float("nan"),
        "by_layer": by_layer,
    }


def shortened_macs(structure: Structure, profiles) -> dict:
    """Exact MACs of the blocks when examples run later layers on fewer tokens (a token budget).

    ``profiles`` maps a length profile ``(n_0, ..., n_{L-1})`` (real tokens layer ``l`` runs on; ``n_0``
    the example's real length) to how many examples had it; a plain sequence of profiles counts each once.
    Each layer is counted densely on its own tokens (:func:`layer_macs` with ``seq_len = n_l``: every
    projection and FFN over ``n_l`` tokens, ``n_l x n_l`` scores and attention x value products), each
    example alone, so padding is not counted (a batch padded to its longest row multiplies more). The
    reference is the full model on the same real tokens (``n_l = n_0`` in every layer). Not counted: the
    selection itself (column sums of the attention probabilities and a sort: no matrix products), nor the
    task head, which reads the first token either way.

    Returns ``{"macs", "reference_macs", "flops", "reference_flops", "ratio", "examples", "by_layer",
    "counted"}``, ``by_layer`` a list of ``{"macs", "reference_macs", "tokens_mean"}``.
    """
    from collections import Counter
    from collections.abc import Mapping

    counts = Counter(profiles) if not isinstance(profiles, Mapping) else profiles
    by_layer = [{"macs": 0, "reference_macs": 0, "tokens": 0} for _ in range(structure.layers)]
    examples = 0
    for profile, count in counts.items():
        profile = tuple(int(n) for n in profile)
        if len(profile) != structure.layers:
            raise ValueError(f"a length profile has {len(profile)} entries for {structure.layers} layers")
        examples += count
        for layer, n in enumerate(profile):
            by_layer[layer]["macs"] += count * sum(layer_macs(structure, layer, n).values())
            by_layer[layer]["reference_macs"] += count * sum(layer_macs(structure, layer, profile[0]).values())
            by_layer[layer]["tokens"] += count * n
    macs = sum(entry["macs"] for entry in by_layer)
    reference = sum(entry["reference_macs"] for entry in by_layer)
    return {
        "macs": macs,
        "reference_macs": reference,
        "flops": 2 * macs,
        "reference_flops": 2 * reference,
        "ratio": macs / reference if reference else float("nan"),
        "examples": examples,
        "by_layer": [
            {
                "macs": entry["macs"],
                "reference_macs": entry["reference_macs"],
                "tokens_mean": entry["tokens"] / examples if examples else float("nan"),
            }
            for entry in by_layer
        ],
        "counted": "matrix products of the blocks over each example's real tokens, per layer on the tokens it "
        "kept; padding, the token selection and the task head not counted",
    }
