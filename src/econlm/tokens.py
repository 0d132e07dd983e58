"""A post-hoc token budget at inference for encoders (PoWER-BERT style): later layers run on fewer tokens.

After layer ``l`` each example keeps its ``r_l`` most attended-to tokens and the others leave the sequence
for every later layer (Goyal et al., 2020, "PoWER-BERT", section 3, without the retraining). A token's
value is the attention it receives in layer ``l``: the column sum of the attention probabilities over
heads and over real (non-padding) query rows. The first real token ([CLS], which classification heads
read) and the tokenizer's [CLS]/[SEP]/BOS/EOS tokens are always kept; padding is never kept or counted.

The computation really shrinks: the kept tokens of each example are gathered into a shorter batch
(padded to the longest kept row, with its own attention mask), so later layers multiply smaller
matrices. Nothing is forked: forward hooks on the blocks gather the hidden states, forward pre-hooks
hand later blocks the shortened mask in the format the block was given (additive float or boolean), and
a forward hook on each attention module reads the probabilities it returns. After the last block the
output is put back at full length: kept tokens carry their final state, a dropped token the state it
had when it was dropped (so mean pooling over the original mask still works; the [CLS] head reads a
token that is always kept).

Two rules decide what stays: a schedule of fractions (:func:`token_budget`, the top ``r_l`` per example),
or a threshold per layer on the value relative to an even share (:func:`threshold_budget`: a token whose
:func:`relative_values` fall below it leaves), which is how thresholds learned by ``econlm train --cost
tokens`` (:mod:`econlm.learned_tokens`) run at inference. :func:`attach_thresholds` keeps the threshold
rule on a model for good (what :func:`econlm.load` does for such a checkpoint; ``.detach()`` undoes it).

The pure core (:func:`keep_counts`, :func:`token_values`, :func:`relative_values`, :func:`threshold_keep`,
:func:`select_tokens`, :func:`padding_mask`) takes tensors and returns tensors; :func:`token_budget` and
:func:`threshold_budget` attach the hooks in a context manager that always removes them.

Example::

    with token_budget(model, "0.5", tokenizer=tokenizer) as stats:
        model(**batch)
    stats.macs(Structure.of_model(model))["ratio"]
"""

from __future__ import annotations

import functools
import json
import math
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from econlm import arch
from econlm.attention import ATTENTION_NAME
from econlm.errors import UserError

# Attention implementations that return their probabilities (the token values need them). Under any other
# (sdpa, flash) the model runs eager attention inside the block: the same numbers, and the weights.
_RETURNS_WEIGHTS = ("eager", ATTENTION_NAME)

# ceil(fraction * length) in floating point: 0.7 * 10 is 7.000000000000001, whose ceiling is 8, not 7.
_CEIL_SLACK = 1e-9

# ---------------------------------------------------------------------------------------------------------
# The schedule


@dataclass(frozen=True)
class TokenSchedule:
    """The share of each example's real length kept after each layer: one fraction per layer, or one for all.

    After layer ``l`` an example of ``n`` real tokens keeps ``ceil(fraction_l * n)`` of them (never fewer
    than its special tokens). Tokens once dropped stay dropped, so fractions may not grow with depth. The
    last layer's entry decides nothing: no layer follows it, and the output is put back at full length.
    """

    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.fractions:
            raise UserError("a token budget needs a fraction, such as 0.5, or one per layer, such as 1,0.8,0.6")
        for f in self.fractions:
            if not (isinstance(f, (int, float)) and math.isfinite(f) and 0 < f <= 1):
                raise UserError(
                    f"token budget fraction {f} must lie in (0, 1]: the share of each example's tokens kept"
                )
        for layer, (before, after) in enumerate(zip(self.fractions, self.fractions[1:])):
            if after > before:
                raise UserError(
                    f"token budget {self.label} grows from {before:g} to {after:g} after layer {layer + 1}: a dropped "
                    "token cannot come back, so give fractions that never increase"
                )

    @classmethod
    def parse(cls, text: str | float | Sequence[float] | TokenSchedule) -> TokenSchedule:
        """``0.5``, ``"0.5"``, ``"50%"``, ``"1,0.8,0.6,..."`` (one per layer) or a sequence of floats."""
        if isinstance(text, TokenSchedule):
            return text
        if isinstance(text, (int, float)):
            parts: list = [text]
        elif isinstance(text, str):
            parts = [p.strip() for p in text.split(",")]
        else:
            parts = list(text)
        values = []
        for part in parts:
            try:
                value = float(part[:-1]) / 100 if isinstance(part, str) and part.endswith("%") else float(part)
            except (TypeError, ValueError):
                raise UserError(
                    f"token budget '{text}' is not a list of numbers: give a fraction such as 0.5, or one per "
                    "layer such as 1,0.8,0.6"
                ) from None
            values.append(value)
        return cls(tuple(values))

    @property
    def label(self) -> str:
        return ",".join(f"{f:g}" for f in self.fractions)

    @property
    def is_full(self) -> bool:
        return all(f == 1 for f in self.fractions)

    def per_layer(self, layers: int) -> tuple[float, ...]:
        """One fraction per layer; a single fraction applies to every layer."""
        if len(self.fractions) == 1:
            return self.fractions * layers
        if len(self.fractions) != layers:
            raise UserError(
                f"token budget {self.label} gives {len(self.fractions)} fractions but the model has {layers} layers: "
                f"give one per layer, or a single fraction for all"
            )
        return self.fractions


# ---------------------------------------------------------------------------------------------------------
# The pure core


def keep_counts(fraction: float, lengths: torch.Tensor, specials: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Tokens each example keeps: ``ceil(fraction * length)``, at least its specials, at most what it has now.

    Args:
        fraction: share of the example's original real length to keep.
        lengths: (B,) original real lengths.
        specials: (B,) special tokens per example (always kept).
        current: (B,) real tokens the example has now.
    """
    keep = torch.ceil(lengths.double() * fraction - _CEIL_SLACK).long()  # (B,)
    return torch.minimum(torch.maximum(keep, specials), current)


def token_values(probs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Attention each token receives: probabilities (B, H, Q, K) summed over heads and real query rows.

    ``real`` is the bool (B, Q) mask of real query rows (queries and keys are the same tokens here).
    Returns float32 (B, K).
    """
    return _received(probs, real)


def _received(probs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, K) float32: attention each key receives, summed over heads and the query rows ``real`` weighs (a bool
    mask, or a soft float one while thresholds learn)."""
    if real.dtype == torch.bool and bool(real.all()):  # no padding row (always so at batch 1): one reduction
        return probs.float().sum(dim=(1, 2))
    return torch.einsum("bhqk,bq->bk", probs.float(), real.float())


def relative_values(
    probs: torch.Tensor, real: torch.Tensor, content: torch.Tensor | None = None, heads: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention each token receives relative to an even share.

    Without ``content``: :func:`token_values` over the heads' mean. Every real query row sums to 1, so over an
    example's real tokens the values average exactly 1, whatever its length; under uniform attention every
    token has value 1. (LTP's importance score is this divided by the length, which makes a fixed threshold
    drop more of a long example.) ``real`` may be a float (B, Q) weight per query row (a soft keep mask).

    With ``content``, the (B, K) weight of each droppable token (real and not special; in training its keep
    probability): the share of the attention the droppable tokens receive that goes to this one, times their
    number. These values average exactly 1 over the droppable tokens however much attention the always-kept
    [CLS]/[SEP] absorb. In late layers those attention sinks take most of it, so plain values sink below any
    threshold for every other token at once; this is the value learned thresholds read. Returns float32 (B, K).

    ``heads``, bool (H,), counts only those heads (:func:`open_heads`: a head whose output never reaches the
    model has no say in which tokens matter, and removing it must not change the values); None: every head.
    """
    if heads is not None:
        probs = probs[:, heads.to(probs.device)]
    values = _received(probs, real) / max(probs.shape[1], 1)
    if content is None:
        return values
    content = content.float()
    received = (values * content).sum(1, keepdim=True)  # (B, 1): attention the droppable tokens receive
    return values * content.sum(1, keepdim=True) / received.clamp_min(torch.finfo(torch.float32).tiny)


def open_heads(model: nn.Module, layer: int) -> torch.Tensor | None:
    """(H,) bool: the heads of ``layer`` whose output reaches the model, the ones token values count. A head is
    shut when every weight reading its slice of the output projection's input is exactly zero (a gate closed
    and folded: what econlm compact removes) or, while gates are attached (training), when its gate is 0 in
    this forward pass. None when every head is open (the common case: nothing to select)."""
    from econlm.gates import get_gates

    o_proj = arch.blocks(model)[layer].get_submodule(arch.family(model.config).o)
    live, all_live = _live_heads(o_proj, arch.shape(model.config).head_dim)
    gates = get_gates(model)
    sample = gates.heads[layer].last if gates is not None and gates.heads is not None else None
    if sample is None:
        return None if all_live else live
    # one gate per K/V group: it shuts every query head of its group
    live = live & (sample > 0).to(live.device).repeat_interleave(live.shape[0] // sample.shape[0])
    return None if bool(live.all()) else live


# o_proj -> ((weight storage, its version, head size), ((H,) live heads, all live)): reading a 384 x 384 weight
# on every drop of every forward pass costs as much as the drop itself at batch 1; the version counter tells
# when the weight changed.
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _live_heads(o_proj: nn.Module, head_dim: int) -> tuple[torch.Tensor, bool]:
    """(H,) bool: heads of which some weight reading their output is non-zero, and whether all are; cached
    until the weight changes."""
    weight = o_proj.weight
    key = (weight.data_ptr(), weight._version, head_dim)
    cached = _LIVE.get(o_proj)
    if cached is not None and cached[0] == key:
        return cached[1]
    columns = arch.in_columns(o_proj).detach()  # (heads x head_dim, hidden)
    live = columns.reshape(columns.shape[0] // head_dim, -1).abs().amax(1) > 0
    _LIVE[o_proj] = (key, (live, bool(live.all())))
    return _LIVE[o_proj][1]


def threshold_keep(values: torch.Tensor, real: torch.Tensor, special: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B,) tokens each row keeps under the threshold rule: its specials and the real tokens whose
    :func:`relative_values` (over the droppable tokens) reach ``threshold`` (a token below it leaves)."""
    return (real & (special | (values >= threshold))).sum(1)


def select_tokens(
    values: torch.Tensor, real: torch.Tensor, special: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``keep`` highest-value real tokens, specials first, in their original order.

    Args:
        values: (B, T) token values.
        real: bool (B, T), real (non-padding) tokens; padding is never kept.
        special: bool (B, T), tokens kept whatever their value (``keep`` must cover them).
        keep: (B,) tokens to keep per row, at most the row's real tokens.

    Returns:
        ``index`` (B, T') positions to gather (T' = the largest ``keep``, at least 1) and ``kept`` bool
        (B, T'), True at real kept tokens, which come first in each row in their original order; the
        slots after them are padding (their index points at some dropped token). Ties go to the earlier
        position.
    """
    batch, length = values.shape
    width = max(int(keep.max()) if batch else 0, 1)
    if batch and bool(real.all()) and int(keep.min()) == width:  # no padding in or out (always so at batch 1)
        order = values.float().masked_fill(special, math.inf).argsort(dim=1, descending=True, stable=True)
        return order[:, :width].sort(dim=1).values, torch.ones(batch, width, dtype=torch.bool, device=values.device)
    rank = values.float().masked_fill(special, math.inf).masked_fill(~real, -math.inf)  # (B, T)
    order = rank.argsort(dim=1, descending=True, stable=True)  # (B, T), best first
    chosen = order[:, :width]  # (B, T')
    within = torch.arange(width, device=values.device) < keep.unsqueeze(1)  # (B, T')
    # Kept positions sort by position; the rest are pushed behind them (+T) and become padding slots.
    key = torch.where(within, chosen, chosen + length).sort(dim=1).values  # (B, T')
    return key % length, key < length


def padding_mask(kept: torch.Tensor, like: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The (B, 1, T, T) mask a block expects for a batch whose real tokens are ``kept`` (bool (B, T)).

    Boolean (True = attend) when the model gave its blocks a boolean mask, otherwise additive: 0 where a
    key may be attended, the dtype's minimum where not (what eager attention and transformers' eager
    mask use). Every query row sees the real keys of its example, as in transformers' padding masks.
    """
    batch, length = kept.shape
    keys = kept[:, None, None, :].expand(batch, 1, length, length)  # (B, 1, T, T)
    if like is not None and like.dtype == torch.bool:
        return keys
    mask_dtype = like.dtype if like is not None else dtype
    zeros = torch.zeros(batch, 1, length, length, dtype=mask_dtype, device=kept.device)
    return zeros.masked_fill(~keys, torch.finfo(mask_dtype).min)


# ---------------------------------------------------------------------------------------------------------
# What a run recorded


@dataclass
class TokenBudgetStats:
    """Real tokens each example fed each layer, over every forward pass inside :func:`token_budget`.

    ``profiles`` counts length profiles: ``(n_0, n_1, ..., n_{L-1})`` -> examples, where ``n_l`` is the
    number of real tokens layer ``l`` ran on (``n_0`` the example's real length). ``last_positions``
    holds, for the last forward pass, the original positions of the tokens each layer ran on, (B, T_l)
    with -1 at padding slots (:meth:`last_kept` gives them as lists).
    """

    schedule: tuple[float, ...]
    profiles: Counter = field(default_factory=Counter)
    last_positions: list[torch.Tensor] = field(default_factory=list)
    # The threshold rule (:func:`threshold_budget`): the value threshold after each layer but the last; the
    # schedule is then empty.
    thresholds: tuple[float, ...] | None = None

    @property
    def layers(self) -> int:
        return len(self.schedule) if self.thresholds is None else len(self.thresholds) + 1

    @property
    def label(self) -> str:
        """The schedule (``0.5,0.5``), or ``learned`` for the threshold rule."""
        return "learned" if self.thresholds is not None else ",".join(f"{f:g}" for f in self.schedule)

    @property
    def examples(self) -> int:
        return sum(self.profiles.values())

    def tokens_per_layer(self) -> list[float]:
        """Mean real tokens per example entering each layer."""
        n = self.examples
        if not n:
            return [float("nan")] * self.layers
        return [sum(p[layer] * c for p, c in self.profiles.items()) / n for layer in range(self.layers)]

    def last_kept(self) -> list[list[list[int]]]:
        """Per layer, per example of the last batch, the original positions of the real tokens it ran on."""
        return [[[int(i) for i in row if i >= 0] for row in pos.tolist()] for pos in self.last_positions]

    def macs(self, structure) -> dict:
        """Exact MACs of the blocks on the shortened sequences and on the full ones (same real tokens);
        see :func:`econlm.flops.shortened_macs`."""
        from econlm.flops import shortened_macs

        return shortened_macs(structure, self.profiles)

    def summary(self, structure=None) -> dict:
        out = {
            "schedule": list(self.schedule),
            "examples": self.examples,
            "tokens_per_layer": self.tokens_per_layer(),
        }
        if self.thresholds is not None:
            out["thresholds"] = list(self.thresholds)
        if structure is not None:
            out.update(self.macs(structure))
        return out


# ---------------------------------------------------------------------------------------------------------
# The hooks


@dataclass
class _Pass:
    """State of one forward pass: where each row's tokens came from and what is real."""

    real: torch.Tensor  # bool (B, T): real tokens of the current (possibly shortened) batch
    special: torch.Tensor  # bool (B, T): always-kept tokens
    lengths: torch.Tensor  # (B,) original real lengths
    specials: torch.Tensor  # (B,) special tokens per row
    positions: torch.Tensor  # (B, T) original position of each slot; `width` at padding slots after a drop
    width: int  # original sequence length
    counts: list[torch.Tensor]  # real tokens per row entering each layer so far
    original_real: torch.Tensor  # the batch's own real mask, (B, T0)
    entered: list[torch.Tensor]  # per layer so far, (B, T_l): original positions of its tokens, -1 at padding
    mask: torch.Tensor | None = None  # the shortened mask later blocks get (None: the batch has no padding)
    shortened: bool = False  # a token was dropped: later blocks get `mask` instead of the model's own
    given_mask: torch.Tensor | None = None  # what the model handed its first block (its format is kept)
    full: torch.Tensor | None = None  # (B, T0 + 1, D): every token's latest state (last slot: scratch)
    probs: torch.Tensor | None = None  # the current layer's attention probabilities
    model: nn.Module | None = None  # the model running the pass (a rule reads its open heads)


class BudgetSession:
    """The hooks' shared state (subclassed by :mod:`econlm.learned_tokens` for its soft mask). ``keep(layer, state)`` is the rule: the (B,) real tokens each row keeps after
    ``layer`` (its current count where nothing is selected). ``active(model)`` says whether a forward pass is
    shortened (always, by default); ``on_finish(state)`` sees every finished pass."""

    def __init__(
        self,
        model: nn.Module,
        layers: int,
        keep: Callable[[int, _Pass], torch.Tensor],
        special_ids: list[int],
        stats: TokenBudgetStats | None,
        token_mask,
        active: Callable[[nn.Module], bool] | None = None,
        on_finish: Callable[[_Pass], None] | None = None,
    ):
        self.model = model
        self.layers = layers
        self.keep = keep
        self.special_ids = special_ids
        self.stats = stats
        self.token_mask = token_mask
        self.active = active
        self.on_finish = on_finish
        self.state: _Pass | None = None
        self.reader = BatchReader(special_ids)

    # -- the whole model --------------------------------------------------------------------------------
    def begin(self, module, args, kwargs):
        self.state = None
        if self.active is not None and not self.active(module):
            return
        tokens = self.reader(module, args, kwargs)
        if tokens is None:
            return
        real, special = tokens
        batch, width = real.shape
        lengths = real.sum(1)
        positions = torch.arange(width, device=real.device).expand(batch, width)
        self.state = _Pass(
            real=real,
            special=special,
            lengths=lengths,
            specials=special.sum(1),
            positions=positions,
            width=width,
            counts=[lengths],
            original_real=real,
            entered=[torch.where(real, positions, -1)],
            model=self.model,
        )

    # -- each block ---------------------------------------------------------------------------------------
    # Hooks are this session's bound methods (partials of them), never closures: a deep copy of the model
    # (copy.deepcopy, as compaction and pruning make) then gets hooks bound to a copy of the session, which
    # drives the copy, not the original.
    def before_layer(self, layer: int, mask_index: int | None):
        return functools.partial(self._before_layer, layer, mask_index)

    def _before_layer(self, layer: int, mask_index: int | None, module, args, kwargs):
        state = self.state
        if state is None:
            return None
        if state.mask is None and not state.shortened:
            if layer == 0:
                state.given_mask = kwargs.get("attention_mask") if mask_index is None else _arg(args, mask_index)
            return None
        if mask_index is None or "attention_mask" in kwargs:
            return args, {**kwargs, "attention_mask": state.mask}
        args = list(args) + [None] * max(0, mask_index + 1 - len(args))
        args[mask_index] = state.mask
        return tuple(args), kwargs

    def read_probs(self, module, args, output):
        if self.state is not None:
            self.state.probs = attention_weights(output)

    def after_layer(self, layer: int):
        return functools.partial(self._after_layer, layer)

    def _after_layer(self, layer: int, module, args, output):
        state = self.state
        if state is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output  # (B, T, D)
        if layer < self.layers - 1:
            hidden = self._drop(state, layer, hidden)
        else:
            hidden = self._finish(state, hidden)
        state.probs = None
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _drop(self, state: _Pass, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        current = state.counts[-1]
        keep = self.keep(layer, state)
        state.counts.append(keep)
        if keep is current or state.probs is None or not bool((keep < current).any()):
            state.entered.append(state.entered[-1])
            return hidden
        heads = open_heads(self.model, layer)  # rank by the heads whose output counts, as the rule measured
        if heads is not None and bool(heads.any()):  # (with none open, every head's attention is all there is)
            probs = state.probs[:, heads.to(state.probs.device)]
        else:
            probs = state.probs
        values = token_values(probs, state.real)  # (B, T)
        index, kept = select_tokens(values, state.real, state.special, keep)  # (B, T')
        if state.full is None:  # the first drop: every slot is still at its own position
            batch, _, dim = hidden.shape
            state.full = hidden.new_zeros(batch, state.width + 1, dim)
        self._store(state, hidden)
        hidden = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, T', D)
        state.positions = torch.where(kept, state.positions.gather(1, index), state.width)
        state.special = state.special.gather(1, index) & kept
        state.real = kept
        # A shortened batch without padding (always so at batch 1) needs no mask: every key may be attended.
        state.mask = None if bool(kept.all()) else padding_mask(kept, state.given_mask, hidden.dtype)
        state.shortened = True
        state.entered.append(torch.where(kept, state.positions, -1))
        if self.token_mask is not None:
            self.token_mask.mask = kept
        return hidden

    @staticmethod
    def _store(state: _Pass, hidden: torch.Tensor) -> None:
        """Write each slot's state at its original position (padding slots after a drop go to scratch)."""
        index = state.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, T, D)
        state.full.scatter_(1, index, hidden)

    def _finish(self, state: _Pass, hidden: torch.Tensor) -> torch.Tensor:
        if self.stats is not None:
            profile = torch.stack(state.counts, dim=1).tolist()  # (B, L)
            self.stats.profiles.update(tuple(row) for row, real in zip(profile, state.lengths.tolist()) if real)
            self.stats.last_positions = state.entered
        if self.on_finish is not None:
            self.on_finish(state)
        if state.full is not None:
            self._store(state, hidden)
            hidden = state.full[:, : state.width]
        if self.token_mask is not None:
            self.token_mask.mask = state.original_real
        self.state = None
        return hidden


def attention_weights(output) -> torch.Tensor:
    """The probabilities an attention module returned (its second output)."""
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if weights is None:
        raise UserError(
            "the attention module returned no probabilities, which a token budget reads: run the model with "
            "model.set_attn_implementation('eager')"
        )
    return weights


class BatchReader:
    """Reads which tokens of a forward pass are real and which are always kept, from the base model's inputs."""

    def __init__(self, special_ids: Iterable[int]):
        self.special_ids = list(special_ids)
        self._signatures: dict[int, object] = {}

    def __call__(self, module, args, kwargs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(real, special)``, bool (B, T) each, or None when the call has no token inputs. [CLS] (the first
        real token) and the special ids are special; padding is neither."""
        import inspect

        signature = self._signatures.get(id(module))
        if signature is None:
            signature = self._signatures[id(module)] = inspect.signature(module.forward)
        bound = signature.bind_partial(*args, **kwargs).arguments
        input_ids, mask, embeds = bound.get("input_ids"), bound.get("attention_mask"), bound.get("inputs_embeds")
        source = input_ids if input_ids is not None else embeds
        if source is None:
            return None
        batch, width = source.shape[:2]
        device = source.device
        if mask is None:
            real = torch.ones(batch, width, dtype=torch.bool, device=device)
        elif mask.dim() == 2:
            real = mask.to(device).bool()
        else:
            raise UserError("a token budget needs the usual (batch, tokens) attention mask of 0s and 1s")
        special = torch.zeros_like(real)
        if input_ids is not None and self.special_ids:
            special = torch.isin(input_ids, torch.tensor(self.special_ids, device=device))
        first = real.long().argmax(dim=1)  # (B,) the first real token: [CLS]
        special[torch.arange(batch, device=device), first] = True
        return real, special & real


def _arg(args: tuple, index: int):
    return args[index] if index < len(args) else None


def _mask_position(block: nn.Module) -> int | None:
    """Where a block's forward takes ``attention_mask`` positionally (None: keyword only)."""
    import inspect

    names = [
        name
        for name, p in inspect.signature(block.forward).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return names.index("attention_mask") if "attention_mask" in names else None


def special_token_ids(tokenizer=None, config=None, extra: Iterable[int] = ()) -> list[int]:
    """Ids of the tokens a budget always keeps: [CLS], [SEP], BOS and EOS of the tokenizer and the config."""
    ids = set(extra)
    for source in (tokenizer, config):
        if source is None:
            continue
        for name in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                ids.add(value)
    return sorted(ids)


def check_encoder(model: nn.Module) -> None:
    """A token budget is for encoders; decoders are refused with the reason."""
    check_encoder_config(model.config)


def check_encoder_config(config) -> None:
    """``check_encoder`` on a Hugging Face config alone: a command can refuse before it loads any weights."""
    if arch.is_decoder(config) or getattr(config, "is_decoder", False):
        raise UserError(
            f"a token budget drops tokens from the sequence, which breaks causal generation ({config.model_type} "
            "is a decoder: every later token and the key/value cache need the earlier tokens); use it on an encoder "
            "(BERT, RoBERTa, DistilBERT, ELECTRA)"
        )


@contextmanager
def token_budget(
    model: nn.Module,
    schedule: str | float | Sequence[float] | TokenSchedule,
    *,
    tokenizer=None,
    special_ids: Iterable[int] = (),
    token_mask=None,
) -> Iterator[TokenBudgetStats]:
    """Run an encoder with a token budget inside the ``with`` block; remove every hook afterwards, always.

    Args:
        model: a transformers encoder of a supported family (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM),
            with or without a task head.
        schedule: a fraction of each example's real length kept after every layer (``0.5``), or one per layer
            (``"1,0.8,0.6,0.5,0.4,0.4"``); see :class:`TokenSchedule`.
        tokenizer: its tokenizer, whose [CLS]/[SEP]/BOS/EOS ids are always kept (so are ids the config names
            and ``special_ids``; the first real token always is).
        token_mask: an :class:`econlm.activations.TokenMask` to keep pointed at the real tokens of the current
            (shortened) batch, so FFN statistics count real tokens only.

    Yields:
        :class:`TokenBudgetStats`, filled by every forward pass: tokens per layer and exact MACs.

    Under an attention implementation that returns no probabilities (sdpa, flash) the model runs eager
    attention inside the block (the same numbers), and gets its own back afterwards.
    """
    check_encoder(model)
    _check_not_learned(model)
    fractions = TokenSchedule.parse(schedule).per_layer(len(arch.blocks(model)))
    session, selecting = schedule_session(model, fractions, _special_ids(model, tokenizer, special_ids), token_mask)
    session.stats = TokenBudgetStats(schedule=fractions)
    with _hooked(model, session, selecting):
        yield session.stats


def schedule_session(model, fractions: tuple[float, ...], ids: list[int], token_mask) -> tuple[BudgetSession, list]:
    """A session of the schedule rule (one fraction per layer) and the layers whose selection can drop
    something: all but the last (no layer follows it) that keep less than everything."""

    def keep(layer: int, state: _Pass) -> torch.Tensor:
        if fractions[layer] >= 1:  # nothing leaves: skip the arithmetic (and the drop)
            return state.counts[-1]
        return keep_counts(fractions[layer], state.lengths, state.specials, state.counts[-1])

    session = BudgetSession(model, len(fractions), keep, ids, None, token_mask)
    return session, [i for i in range(len(fractions) - 1) if fractions[i] < 1]


@contextmanager
def threshold_budget(
    model: nn.Module,
    thresholds: Sequence[float],
    *,
    tokenizer=None,
    special_ids: Iterable[int] = (),
    token_mask=None,
) -> Iterator[TokenBudgetStats]:
    """Run an encoder with the threshold rule inside the ``with`` block: after layer ``l`` every token whose
    :func:`relative_values` fall below ``thresholds[l]`` leaves the sequence (specials stay; padding never
    counts). Learned thresholds (``econlm train --cost tokens``) run this way at inference.

    Args:
        thresholds: one per layer but the last (no layer follows it); ``-inf`` drops nothing.
        tokenizer, special_ids, token_mask: as for :func:`token_budget`.

    Yields:
        :class:`TokenBudgetStats` with ``thresholds`` set.
    """
    check_encoder(model)
    _check_not_learned(model)
    ids = _special_ids(model, tokenizer, special_ids)
    session, selecting = threshold_session(model, thresholds, ids, token_mask)
    with _hooked(model, session, selecting):
        yield session.stats


def check_thresholds(thresholds: Sequence[float], layers: int) -> tuple[float, ...]:
    """Thresholds as floats, one per layer but the last; a wrong count or a NaN is a one-line error."""
    try:
        values = tuple(-math.inf if t is None else float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise UserError(f"token thresholds {thresholds!r} are not a list of numbers") from None
    if len(values) != layers - 1:
        raise UserError(
            f"{len(values)} token thresholds for a model of {layers} layers: give one per layer but the last "
            f"({layers - 1}), since no layer follows the last"
        )
    if any(math.isnan(t) for t in values):
        raise UserError("a token threshold is NaN: give numbers (-inf, or null in JSON, drops nothing)")
    return values


def threshold_session(model, thresholds, ids: list[int], token_mask, active=None, on_finish=None):
    """A session of the threshold rule; ``thresholds`` a sequence, or a callable giving it afresh each pass."""
    blocks = arch.blocks(model)
    if callable(thresholds):  # read afresh each pass (a learnable parameter)
        current = thresholds
        fixed = None
    else:
        fixed = check_thresholds(thresholds, len(blocks))
        current = lambda: fixed  # noqa: E731
    stats = TokenBudgetStats(schedule=(), thresholds=fixed) if fixed is not None else None

    def keep(layer: int, state: _Pass) -> torch.Tensor:
        threshold = current()[layer]
        heads = open_heads(state.model, layer) if state.probs is not None else None
        if state.probs is None or threshold == -math.inf or (heads is not None and not bool(heads.any())):
            return state.counts[-1]  # nothing read, nothing to drop, or no head left to say what matters
        values = relative_values(state.probs, state.real, state.real & ~state.special, heads)
        return threshold_keep(values, state.real, state.special, threshold)

    session = BudgetSession(model, len(blocks), keep, ids, stats, token_mask, active, on_finish)
    selecting = list(range(len(blocks) - 1)) if fixed is None else [i for i, t in enumerate(fixed) if t > -math.inf]
    return session, selecting


def _special_ids(model, tokenizer, special_ids) -> list[int]:
    ids = special_token_ids(tokenizer, model.config, special_ids)
    if not ids:
        warnings.warn(
            "token budget: no special token ids known (pass tokenizer=...), so only the first token is always kept",
            stacklevel=4,
        )
    return ids


def register_hooks(model: nn.Module, session: BudgetSession, selecting: Sequence[int]) -> list:
    """Attach ``session``'s hooks (the layers in ``selecting`` read their attention); returns the handles."""
    fam = arch.family(model.config)
    handles = [model.base_model.register_forward_pre_hook(session.begin, with_kwargs=True)]
    try:
        for i, block in enumerate(arch.blocks(model)):
            handles.append(
                block.register_forward_pre_hook(session.before_layer(i, _mask_position(block)), with_kwargs=True)
            )
            handles.append(block.register_forward_hook(session.after_layer(i)))
            if i in selecting:
                handles.append(arch.get_submodule(block, fam.attention).register_forward_hook(session.read_probs))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


@contextmanager
def weights_returned(model: nn.Module, needed: bool = True) -> Iterator[None]:
    """Inside the block the model's attention returns its probabilities: under sdpa or flash it runs eager
    attention (the same numbers); its own implementation comes back afterwards."""
    previous = model.config._attn_implementation
    try:
        if needed and previous not in _RETURNS_WEIGHTS:
            model.set_attn_implementation("eager")
        yield
    finally:
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)


@contextmanager
def _hooked(model: nn.Module, session: BudgetSession, selecting: Sequence[int]) -> Iterator[None]:
    handles = []
    try:
        with weights_returned(model, bool(selecting)):
            handles = register_hooks(model, session, selecting)
            yield
    finally:
        for handle in handles:
            handle.remove()
        session.state = None


# ---------------------------------------------------------------------------------------------------------
# Thresholds that stay with a model (a checkpoint trained with learned token budgets)

ATTACHED = "_econlm_token_thresholds"


class AttachedRule:
    """A token rule attached to a model for good: every forward pass drops tokens until :meth:`detach`.
    :meth:`recording` collects :class:`TokenBudgetStats` for a while. Two kinds: :class:`AttachedThresholds`
    (learned, ``token_thresholds.json``) and :class:`AttachedSchedule` (a fixed schedule the model was
    fine-tuned under, ``token_schedule.json``)."""

    thresholds: tuple[float, ...] | None = None
    schedule: tuple[float, ...] | None = None
    source = "a token rule"  # what messages call it
    kind = "token_rule"  # its file's stem, and its key in compact.json's verification

    @property
    def label(self) -> str:
        """``learned`` for thresholds, the schedule (``0.5,0.5,...``) for a fixed one, as probe rows write it."""
        return self._stats().label

    def __init__(self, model: nn.Module, session: BudgetSession, selecting: Sequence[int], special_ids: list[int]):
        self.model = model
        self.special_ids = special_ids
        self.session = session
        self.session.stats = None
        self.session.active = self._check_attention
        self._selecting = list(selecting)
        self.handles = register_hooks(model, self.session, self._selecting)

    def _check_attention(self, module) -> bool:
        if self._selecting and self.model.config._attn_implementation not in _RETURNS_WEIGHTS:
            raise UserError(
                f"this model drops tokens by {self.source}, which reads the attention probabilities; its "
                f"attention is {self.model.config._attn_implementation}: run model.set_attn_implementation('eager')"
            )
        return True

    def _stats(self) -> TokenBudgetStats:
        return TokenBudgetStats(schedule=self.schedule or (), thresholds=self.thresholds)

    @contextmanager
    def recording(self, token_mask=None) -> Iterator[TokenBudgetStats]:
        """Collect the tokens each layer ran on (and keep ``token_mask`` pointed at the shortened batch)."""
        previous = self.session.stats, self.session.token_mask
        stats = self._stats()
        self.session.stats = stats
        self.session.token_mask = token_mask if token_mask is not None else previous[1]
        try:
            yield stats
        finally:
            self.session.stats, self.session.token_mask = previous

    def reattach(self, model: nn.Module) -> AttachedRule:
        """The same rule attached to ``model`` (another model, or this one after :meth:`detach`)."""
        raise NotImplementedError

    def detach(self) -> None:
        """Remove the hooks: the model computes on every token again."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.session.state = None
        if getattr(self.model, ATTACHED, None) is self:
            delattr(self.model, ATTACHED)


class AttachedThresholds(AttachedRule):
    """Learned thresholds attached for good (:func:`attach_thresholds`)."""

    source = "its learned thresholds (token_thresholds.json)"
    kind = "token_thresholds"

    def __init__(self, model: nn.Module, thresholds: tuple[float, ...], special_ids: list[int]):
        self.thresholds = thresholds
        session, selecting = threshold_session(model, thresholds, special_ids, None)
        super().__init__(model, session, selecting, special_ids)

    def reattach(self, model: nn.Module) -> AttachedThresholds:
        return attach_thresholds(model, self.thresholds, special_ids=self.special_ids)


class AttachedSchedule(AttachedRule):
    """A fixed token schedule attached for good (:func:`attach_schedule`): the model was fine-tuned with it in
    force (PoWER-BERT's retraining step), so it runs with it."""

    kind = "token_schedule"

    def __init__(self, model: nn.Module, schedule: tuple[float, ...], special_ids: list[int], token_mask=None):
        self.schedule = schedule
        session, selecting = schedule_session(model, schedule, special_ids, token_mask)
        super().__init__(model, session, selecting, special_ids)

    @property
    def source(self) -> str:
        return f"the token schedule {TokenSchedule(self.schedule).label} it was fine-tuned under (token_schedule.json)"

    def reattach(self, model: nn.Module) -> AttachedSchedule:
        return attach_schedule(model, self.schedule, special_ids=self.special_ids)


def attach_thresholds(
    model: nn.Module, thresholds: Sequence[float], *, tokenizer=None, special_ids: Iterable[int] = ()
) -> AttachedThresholds:
    """Make ``model`` drop tokens by ``thresholds`` in every forward pass (until ``.detach()``): what
    :func:`econlm.load` does for a checkpoint with ``token_thresholds.json``. Needs eager attention."""
    check_encoder(model)
    _detach_existing(model)
    ids = _special_ids(model, tokenizer, special_ids)
    attached = AttachedThresholds(model, check_thresholds(thresholds, len(arch.blocks(model))), ids)
    setattr(model, ATTACHED, attached)
    return attached


def attach_schedule(
    model: nn.Module,
    schedule: str | float | Sequence[float] | TokenSchedule,
    *,
    tokenizer=None,
    special_ids: Iterable[int] = (),
    token_mask=None,
) -> AttachedSchedule:
    """Make ``model`` drop tokens by a fixed ``schedule`` (as :func:`token_budget` does) in every forward pass,
    gradients included, until ``.detach()``: ``econlm train --token-budget`` fine-tunes under it, and
    :func:`econlm.load` attaches it for a checkpoint with ``token_schedule.json``. Needs eager attention.
    ``token_mask`` (an :class:`econlm.activations.TokenMask`) is kept pointed at the shortened batch.

    In train mode the ranking reads the attention probabilities the layer used, after attention dropout (what
    the model returns), so near the cut the kept tokens vary a little from pass to pass, as dropout itself
    does; in eval mode (evaluation, inference) there is no dropout and the selection is deterministic."""
    check_encoder(model)
    _detach_existing(model)
    fractions = TokenSchedule.parse(schedule).per_layer(len(arch.blocks(model)))
    attached = AttachedSchedule(model, fractions, _special_ids(model, tokenizer, special_ids), token_mask)
    setattr(model, ATTACHED, attached)
    return attached


SCHEDULE_FILE = "token_schedule.json"


def save_schedule(directory: str | Path, attached: AttachedSchedule) -> Path:
    """Write ``token_schedule.json`` (the schedule a model was fine-tuned under) into ``directory``."""
    from econlm.runinfo import write_json

    path = Path(directory) / SCHEDULE_FILE
    write_json(
        path,
        {
            "schedule": list(attached.schedule),
            "special_ids": list(attached.special_ids),
            "rule": "after layer l each example keeps its ceil(schedule[l] x real length) tokens that receive the "
            "most attention (column sums over heads and real queries); special tokens always kept",
        },
    )
    return path


def attach_saved_schedule(model: nn.Module, directory: str | Path, tokenizer=None) -> AttachedSchedule | None:
    """Attach the schedule ``directory/token_schedule.json`` holds, if any (:func:`econlm.load` does). A damaged
    file, or one that does not fit the model, is a one-line :class:`UserError`."""
    path = Path(directory) / SCHEDULE_FILE
    if not path.exists():
        return None
    vocab = getattr(model.config, "vocab_size", None) or 2**31
    try:
        spec = json.loads(path.read_bytes())
        schedule, ids = spec["schedule"], spec.get("special_ids", [])
        fractions = schedule if isinstance(schedule, list) else [schedule]
        if not fractions or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions):
            raise ValueError("'schedule' must be a fraction or a list of them")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids
        ):
            raise ValueError("'special_ids' must be a list of token ids of this model's vocabulary")
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path} is damaged or unreadable ({first}); train the model again") from None
    try:
        return attach_schedule(model, fractions, tokenizer=tokenizer, special_ids=ids)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _detach_existing(model: nn.Module) -> None:
    existing = attached_rule(model)
    if existing is not None:
        existing.detach()


@contextmanager
def every_token(model: nn.Module) -> Iterator[None]:
    """``model`` with its attached token rule off for the block, then attached again: the same model computing on
    every token, for a comparison with the rule in force."""
    attached = attached_rule(model)
    if attached is None:
        yield
        return
    attached.detach()
    try:
        yield
    finally:
        attached.reattach(model)


def attached_rule(model: nn.Module) -> AttachedRule | None:
    """The token rule (learned thresholds or a fixed schedule) attached to ``model`` for good, or None."""
    return getattr(model, ATTACHED, None)


def attached_thresholds(model: nn.Module) -> AttachedThresholds | None:
    """The learned thresholds attached to ``model`` for good, or None (see :func:`attached_rule` for either
    kind of rule)."""
    rule = attached_rule(model)
    return rule if isinstance(rule, AttachedThresholds) else None


def _check_not_learned(model: nn.Module) -> None:
    rule = attached_rule(model)
    if rule is not None:
        raise UserError(
            f"this model already drops tokens by {rule.source}; a second token budget would drop twice: leave out "
            "--token-budget, or detach it first (econlm.tokens.attached_rule(model).detach())"
        )
