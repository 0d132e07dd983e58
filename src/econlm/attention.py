"""Budgeted attention: a per-query top-k budget before the softmax, with streaming statistics.

One attention function, registered with ``transformers.AttentionInterface`` under the name
``"econlm_budget"``, replaces the model's attention while :func:`budgeted_attention` is active. It

* keeps, for every query, only its ``k`` highest-scoring keys among those the padding and causal masks
  allow (``k`` a number of keys or a fraction of the allowed ones; never fewer than one);
* records per layer and head the mean Gini coefficient and entropy (nats) of attention rows, over real
  query rows and allowed keys only, without storing attention maps;
* with a budget at or above the number of allowed keys, performs exactly the eager computation.

Example::

    with budgeted_attention(model, Budget.parse("8")) as stats:
        model(**batch)
    print(stats.summary()["gini"])
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from econlm.errors import UserError
from econlm.metrics import masked_row_gini_entropy, release_scratch

ATTENTION_NAME = "econlm_budget"

# ---------------------------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class Budget:
    """How many keys each query may attend to.

    Exactly one of ``keys`` (an absolute number) or ``fraction`` (a share of the row's allowed keys,
    rounded up) is set, or neither for the full budget.
    """

    keys: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.keys is not None and self.fraction is not None:
            raise ValueError("a budget is a number of keys or a fraction, not both")
        if self.keys is not None and self.keys < 1:
            raise UserError(f"budget {self.keys} is not allowed: a query keeps at least one key (use 1 or more)")
        if self.fraction is not None and not (0 < self.fraction <= 1):
            raise UserError(f"budget fraction {self.fraction} must lie in (0, 1]")

    @classmethod
    def parse(cls, text: str | int | float) -> Budget:
        """Parse ``"full"``, a whole number of keys (``"32"``) or a fraction in (0, 1] (``"0.25"``, ``"25%"``)."""
        raw = str(text).strip().lower()
        if raw in ("full", "all", "none", "inf"):
            return cls()
        try:
            if raw.endswith("%"):
                value = float(raw[:-1]) / 100
                return cls._from_fraction(value, text)
            if re.fullmatch(r"[+-]?\d+", raw):
                keys = int(raw)
                if keys < 1:
                    raise UserError(f"budget '{text}' must be at least 1 key (or 'full', or a fraction in (0, 1])")
                return cls(keys=keys)
            return cls._from_fraction(float(raw), text)
        except ValueError:
            raise UserError(
                f"budget '{text}' is not a number: use 'full', a whole number of keys such as 8, "
                "or a fraction of the allowed keys such as 0.25"
            ) from None

    @classmethod
    def _from_fraction(cls, value: float, text: object) -> Budget:
        if not math.isfinite(value) or not (0 < value <= 1):
            raise UserError(f"budget '{text}' must be 'full', a whole number >= 1, or a fraction in (0, 1]")
        return cls() if value == 1 else cls(fraction=value)

    @property
    def is_full(self) -> bool:
        return self.keys is None and self.fraction is None

    @property
    def label(self) -> str:
        if self.keys is not None:
            return str(self.keys)
        if self.fraction is not None:
            return f"{self.fraction:g}"
        return "full"

    def keys_per_row(self, allowed_counts: torch.Tensor) -> torch.Tensor:
        """Keys each row keeps: the budget, never more than allowed, at least one where any is allowed."""
        if self.keys is not None:
            k = torch.full_like(allowed_counts, self.keys)
        elif self.fraction is not None:
            k = torch.ceil(allowed_counts.float() * self.fraction).long()
        else:
            return allowed_counts
        return torch.minimum(k.clamp_min(1), allowed_counts)


def parse_budgets(text: str) -> list[Budget]:
    """Parse a comma-separated budget list such as ``"full,32,16,8"``; duplicates are an error."""
    parts = [p for p in (s.strip() for s in str(text).split(",")) if p]
    if not parts:
        raise UserError("no budgets given: pass a list such as --budgets full,32,16,8")
    budgets = [Budget.parse(p) for p in parts]
    labels = [b.label for b in budgets]
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise UserError(f"budget list repeats {', '.join(duplicates)}: give each budget once")
    return budgets


# ---------------------------------------------------------------------------------------------------------
# Streaming statistics


class AttentionStats:
    """Running sums of per-row Gini and entropy, per layer and head; no attention maps are kept."""

    def __init__(self) -> None:
        self._gini: dict[str, torch.Tensor] = {}
        self._entropy: dict[str, torch.Tensor] = {}
        self._rows: dict[str, int] = {}
        self._keys: dict[str, list[float]] = {}  # layer -> [allowed keys, kept keys] summed over real rows

    def update(
        self, layer: str, gini_rows: torch.Tensor, entropy_rows: torch.Tensor, real: torch.Tensor, rows: int
    ) -> None:
        """Add one batch. ``gini_rows``/``entropy_rows``: (B, H, Q); ``real``: bool (B, 1, Q) with ``rows`` True."""
        # per-batch sums in float32 (at most B * Q rows each), running totals in float64
        weight = real.to(gini_rows.dtype)
        gini_sum = torch.einsum("bhq,bzq->h", gini_rows, weight).double().cpu()  # (H,)
        entropy_sum = torch.einsum("bhq,bzq->h", entropy_rows, weight).double().cpu()
        if layer in self._gini:
            self._gini[layer] += gini_sum
            self._entropy[layer] += entropy_sum
            self._rows[layer] += rows
        else:
            self._gini[layer], self._entropy[layer], self._rows[layer] = gini_sum, entropy_sum, rows

    def update_keys(self, layer: str, allowed_total: float, kept_total: float) -> None:
        """Add the allowed and kept keys summed over one batch's real rows (budgets are per row)."""
        previous = self._keys.get(layer, [0.0, 0.0])
        self._keys[layer] = [previous[0] + allowed_total, previous[1] + kept_total]

    @property
    def rows(self) -> int:
        """Query rows counted per head, summed over layers."""
        return sum(self._rows.values())

    def per_layer(self) -> list[dict]:
        """One entry per layer, in layer order: mean Gini and entropy per head, and the rows counted."""
        out = []
        for layer in sorted(self._gini, key=_layer_sort_key):
            rows = max(self._rows[layer], 1)
            allowed_sum, kept_sum = self._keys.get(layer, [float("nan"), float("nan")])
            out.append(
                {
                    "layer": layer,
                    "index": _layer_index(layer),
                    "rows": self._rows[layer],
                    "gini": (self._gini[layer] / rows).tolist(),
                    "entropy": (self._entropy[layer] / rows).tolist(),
                    "allowed_keys_mean": allowed_sum / rows,
                    "kept_keys_mean": kept_sum / rows,
                }
            )
        return out

    def summary(self) -> dict:
        """Mean Gini and entropy over all layers, heads and real query rows, plus :meth:`per_layer`."""
        layers = self.per_layer()
        heads_rows = sum(len(entry["gini"]) * entry["rows"] for entry in layers)
        if heads_rows == 0:
            return {"gini": float("nan"), "entropy": float("nan"), "rows": 0, "per_layer": layers}
        gini_total = sum(float(self._gini[entry["layer"]].sum()) for entry in layers)
        entropy_total = sum(float(self._entropy[entry["layer"]].sum()) for entry in layers)
        return {
            "gini": gini_total / heads_rows,
            "entropy": entropy_total / heads_rows,
            "rows": self.rows,
            "per_layer": layers,
        }


def _layer_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


def _layer_sort_key(name: str) -> tuple:
    index = _layer_index(name)
    return (index if index is not None else -1, name)


# ---------------------------------------------------------------------------------------------------------
# The attention function


@dataclass(frozen=True)
class AttentionView:
    """What a tap sees of one attention call (for cost terms and custom instrumentation).

    Attributes:
        layer: qualified module name, e.g. ``"encoder.layer.3.attention.self"``.
        scores: pre-softmax scores with the masks added, before the budget, (B, H, Q, K); has gradients.
        probs: post-softmax probabilities after the budget, (B, H, Q, K); has gradients.
        allowed: bool (B, 1 or H, Q, K), keys the padding/causal masks allow.
        real: bool (B, 1, Q), query rows at real (non-padding) positions that see at least one key.
    """

    layer: str
    scores: torch.Tensor
    probs: torch.Tensor
    allowed: torch.Tensor
    real: torch.Tensor


AttentionTap = Callable[[AttentionView], None]


@dataclass
class _Session:
    budget: Budget
    stats: AttentionStats | None
    taps: tuple[AttentionTap, ...]
    names: dict[int, str] = field(default_factory=dict)
    # Facts derived from the mask, which every layer of one forward pass shares: (weakref to the mask or
    # None, (batch, queries, keys), facts). Deriving them costs about as much as the statistics themselves.
    mask_cache: tuple | None = None

    def mask_facts(
        self, attention_mask: torch.Tensor | None, batch: int, q_len: int, key_len: int, device
    ) -> _MaskFacts:
        shape = (batch, q_len, key_len)
        cached = self.mask_cache
        if cached is not None and cached[1] == shape and _same_mask(cached[0], attention_mask):
            return cached[2]
        facts = _mask_facts(attention_mask, batch, q_len, key_len, device, self.budget)
        self.mask_cache = (None if attention_mask is None else weakref.ref(attention_mask), shape, facts)
        return facts


def _same_mask(held: weakref.ref | None, attention_mask: torch.Tensor | None) -> bool:
    """Whether a cached weak reference (None for "no mask") points at ``attention_mask``."""
    if attention_mask is None:
        return held is None
    return held is not None and held() is attention_mask


@dataclass(frozen=True)
class _MaskFacts:
    allowed: torch.Tensor | None  # bool (B, 1|H, Q, K), None when every key is allowed
    counts: torch.Tensor  # allowed keys per row, float (B, 1|H, Q)
    real: torch.Tensor  # bool (B, 1, Q): real query rows
    real_rows: int
    allowed_total: float  # allowed keys summed over real rows (first head)
    kept_total: float  # keys the budget keeps, likewise


def _mask_facts(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, key_len: int, device, budget: Budget
) -> _MaskFacts:
    allowed = allowed_keys(attention_mask, key_len)
    if allowed is None:
        counts = torch.full((batch, 1, q_len), float(key_len), device=device)
    else:
        counts = allowed.sum(-1, dtype=torch.float32)
    real = real_query_rows(allowed, batch, q_len, key_len, device)
    row_counts = counts[:, :1].expand(batch, 1, q_len)
    weight = real.to(row_counts.dtype)
    return _MaskFacts(
        allowed=allowed,
        counts=counts,
        real=real,
        real_rows=int(real.sum()),
        allowed_total=float((row_counts * weight).sum()),
        kept_total=float((budget.keys_per_row(row_counts) * weight).sum()),
    )


# module -> session; weak so a dropped model never lingers here.
_SESSIONS: weakref.WeakKeyDictionary[nn.Module, _Session] = weakref.WeakKeyDictionary()


def allowed_keys(attention_mask: torch.Tensor | None, key_len: int) -> torch.Tensor | None:
    """Boolean (B, 1|H, Q, K) of keys the model's own mask allows; None when it allows everything."""
    if attention_mask is None:
        return None
    mask = attention_mask[..., :key_len]
    if mask.dtype == torch.bool:
        return mask
    # Eager masks are 0 where allowed and the dtype's minimum where not (possibly plus a finite bias).
    return mask > torch.finfo(mask.dtype).min / 2


def real_query_rows(allowed: torch.Tensor | None, batch: int, q_len: int, key_len: int, device) -> torch.Tensor:
    """Bool (B, 1, Q): the query is a real token (its own key column is visible to someone) and sees a key."""
    if allowed is None:
        return torch.ones(batch, 1, q_len, dtype=torch.bool, device=device)
    allowed = allowed.expand(batch, -1, q_len, key_len)[:, :1]  # heads share the padding mask
    key_is_real = allowed.any(dim=-2)  # (B, 1, K)
    query_is_real = key_is_real[..., key_len - q_len :]  # queries are the last Q positions
    return query_is_real & allowed.any(dim=-1)


def apply_budget(
    scores: torch.Tensor, allowed: torch.Tensor | None, budget: Budget, *, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Set every score outside a row's top-k allowed keys to the dtype's minimum.

    ``scores`` already has the mask added, so disallowed keys rank below every allowed one and top-k
    never picks them while any allowed key remains. Exactly ``k`` keys are kept per row (ties broken by
    ``topk``).
    """
    if budget.is_full:
        return scores
    key_len = scores.shape[-1]
    if counts is not None:
        counts = counts.expand(scores.shape[:-1])
    elif allowed is None:
        counts = torch.full(scores.shape[:-1], key_len, dtype=torch.long, device=scores.device)
    else:
        counts = allowed.expand_as(scores).sum(-1)  # (B, H, Q)
    keep_counts = budget.keys_per_row(counts)
    if bool((keep_counts >= counts).all()):
        return scores  # the budget binds nowhere: identical to the unbudgeted computation
    k_max = int(keep_counts.max())
    top = scores.topk(k_max, dim=-1).indices  # (B, H, Q, k_max)
    within = torch.arange(k_max, device=scores.device) < keep_counts.unsqueeze(-1)  # (B, H, Q, k_max)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, within)
    return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D) for grouped-query attention."""
    if n_rep == 1:
        return x
    batch, kv_heads, length, dim = x.shape
    return x[:, :, None].expand(batch, kv_heads, n_rep, length, dim).reshape(batch, kv_heads * n_rep, length, dim)


def budgeted_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``AttentionInterface`` function. Shapes: query (B, H, Q, D), key/value (B, H_kv, K, D)."""
    session = _SESSIONS.get(module)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    key = _repeat_kv(key, n_rep)
    value = _repeat_kv(value, n_rep)
    key_len = key.shape[-2]

    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Q, K)
    if attention_mask is not None:
        scores = scores + attention_mask[..., :key_len]

    facts = None
    budgeted = scores
    if session is not None and not session.budget.is_full:
        facts = session.mask_facts(attention_mask, scores.shape[0], scores.shape[2], key_len, scores.device)
        budgeted = apply_budget(scores, facts.allowed, session.budget, counts=facts.counts)

    probs = nn.functional.softmax(budgeted, dim=-1, dtype=torch.float32).to(query.dtype)

    if session is not None and (session.stats is not None or session.taps):
        if facts is None:
            facts = session.mask_facts(attention_mask, scores.shape[0], scores.shape[2], key_len, scores.device)
        _observe(session, module, scores, probs, facts)

    probs_dropped = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs_dropped, value)  # (B, H, Q, D)
    return output.transpose(1, 2).contiguous(), probs_dropped


def _observe(session: _Session, module: nn.Module, scores, probs, facts: _MaskFacts) -> None:
    layer = session.names.get(id(module), module.__class__.__name__)
    if session.stats is not None:
        with torch.no_grad():
            gini_rows, entropy_rows = masked_row_gini_entropy(probs.detach(), facts.allowed, counts=facts.counts)
            session.stats.update(layer, gini_rows, entropy_rows, facts.real, facts.real_rows)
            session.stats.update_keys(layer, facts.allowed_total, facts.kept_total)
    if session.taps:
        allowed = facts.allowed
        if allowed is None:
            allowed = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=scores.device)
        for tap in session.taps:
            tap(AttentionView(layer=layer, scores=scores, probs=probs, allowed=allowed, real=facts.real))


def register() -> None:
    """Register the attention function and its mask builder with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, budgeted_attention_forward)
    # Our function consumes the same additive float mask as eager attention.
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


# ---------------------------------------------------------------------------------------------------------
# Attaching


@contextmanager
def budgeted_attention(
    model: nn.Module,
    budget: Budget | str = "full",
    *,
    record_stats: bool = True,
    taps: tuple[AttentionTap, ...] = (),
) -> Iterator[AttentionStats | None]:
    """Run ``model`` with budgeted attention inside the ``with`` block; restore it afterwards, always.

    Args:
        model: a transformers ``PreTrainedModel`` whose attention goes through ``AttentionInterface``.
        budget: a :class:`Budget` or its text form (``"full"``, ``"8"``, ``"0.25"``).
        record_stats: accumulate per-layer, per-head Gini and entropy.
        taps: callables that receive an :class:`AttentionView` on every attention call (cost terms).

    Yields:
        The :class:`AttentionStats` being filled, or None when ``record_stats`` is False.
    """
    register()
    if not isinstance(budget, Budget):
        budget = Budget.parse(budget)
    if not hasattr(model, "set_attn_implementation") or not getattr(model, "_supports_attention_backend", False):
        raise UserError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, so "
            "econlm cannot budget it; supported families include BERT, RoBERTa, DistilBERT, ELECTRA, GPT-2, "
            "Llama, Qwen2 and Mistral"
        )
    stats = AttentionStats() if record_stats else None
    session = _Session(budget=budget, stats=stats, taps=tuple(taps))
    modules = list(model.named_modules())
    session.names = {id(m): name for name, m in modules}
    previous_impl = model.config._attn_implementation
    previous_sessions = {m: _SESSIONS[m] for _, m in modules if m in _SESSIONS}
    try:
        for _, m in modules:
            _SESSIONS[m] = session
        model.set_attn_implementation(ATTENTION_NAME)
        yield stats
    finally:
        for _, m in modules:
            _SESSIONS.pop(m, None)
        _SESSIONS.update(previous_sessions)
        if model.config._attn_implementation != previous_impl:
            model.set_attn_implementation(previous_impl)
        if not previous_sessions:
            release_scratch()  # the outermost session frees the statistics buffers
