"""Learned token budgets for encoders, in the style of LTP (Kim et al., 2022, "Learned Token Pruning").

One learnable threshold per layer (but the last, which no layer follows) on a token's *value*: the attention
it receives in that layer, :func:`econlm.tokens.relative_values` (the mean over the open heads of its column
sum over the real query rows; a head shut by its gate, or folded to zero, has no say, so econlm compact can
remove it and the smaller model drops the same tokens) as a share of what the droppable tokens receive,
times their number. Values average exactly 1 over an example's droppable tokens, whatever its length, and
uniform attention gives every token 1: a threshold of 0.8 means "less than 80% of an even share", on short
and long examples alike. (LTP divides by the length as well, so its fixed threshold drops a larger share of
a long example.) The share is taken among the droppable tokens because in late layers [CLS] and [SEP] absorb
most of the attention (attention sinks): measured against every token, all other values fall together and a
threshold empties the sequence (format 1 of the thresholds file did that: MiniLM on STS-B kept 3 tokens of 31
after layer 4 at a 0.5 budget).
[CLS]/[SEP]/BOS/EOS and the first real token are always kept; padding is never counted.

Training (the model in training mode) uses a soft mask. After layer ``l`` each real token gets
``m = sigmoid((value - threshold_l) / temperature)`` and its keep probability ``keep <- keep * m`` (a dropped
token cannot come back, so the masks multiply across layers). ``keep`` acts as a key mask for every later
layer: ``log keep`` is added to the token's column of the attention scores, so a query attends to it with
weight proportional to ``keep * exp(score)``; later values weight each query row by its ``keep``. The output
at each position is the expected state under dropping: ``sum_l (keep_l - keep_{l+1}) h_l + keep_L h_L``, the
states a token has at the layer it leaves. With every ``m`` in {0, 1} this is exactly what hard dropping
computes (a dropped key is gone for every kept query, a dropped token's query row and FFN touch no other
token, and its output is its state when dropped), which is why this form was chosen over LTP's multiplying
of hidden states (a zeroed state is still a key, through the biases of K and V). Thresholds at ``-inf`` give
``m = 1`` and the unmodified model, exactly. Once the tax freezes its gates (``--gate-freeze``) the thresholds
are fixed and the mask turns hard (``m = 1[value >= threshold]``), so the last steps fine-tune the weights under
the dropping inference will do (LTP's second stage).

In eval mode tokens below their layer's threshold leave the sequence (:func:`econlm.tokens.threshold_budget`:
the same gather machinery as the post-hoc budget), so later layers multiply smaller matrices.

The compute tax, the cost term ``tokens`` (:class:`econlm.cost.Tokens`), is :func:`token_share`: the expected
MACs of the blocks at each layer's expected number of tokens, as a share of the blocks' dense MACs on every
token, so the price controller (``--budget``) can clear a token budget. With ``--cost flops,tokens`` the same
share also counts each head and neuron by its probability of being open: one share, one price, one market for
both kinds of compute.

Saved as ``token_thresholds.json`` next to ``config.json``; :func:`econlm.load` attaches the thresholds, so the
loaded model drops tokens in every forward pass (:func:`econlm.tokens.attached_thresholds`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from econlm import arch
from econlm.errors import UserError
from econlm.tokens import (
    BatchReader,
    BudgetSession,
    attached_thresholds,
    check_encoder,
    check_thresholds,
    open_heads,
    register_hooks,
    relative_values,
    special_token_ids,
    threshold_session,
    weights_returned,
)

THRESHOLDS_FILE = "token_thresholds.json"
# Format 2: values relative to the droppable tokens (format 1 read every token's, attention sinks included).
# Format 3: values count the open heads only (format 2 counted every head, a shut one too), so removing shut
# heads (econlm compact) leaves every value as it was. On a model with no shut head the two read the same.
FORMAT = 3
SAME_WITHOUT_SHUT_HEADS = 2  # the oldest format that reads like this one on a model whose heads are all open
ATTRIBUTE = "econlm_token_thresholds"
PREFIX = ATTRIBUTE + "."
# Thresholds start below every value (values are >= 0): nothing is dropped, and at the default temperature a
# token of value 0 keeps sigmoid(5) = 99.3% of itself, so training starts near the unmodified model.
INIT_THRESHOLD = -0.5
DEFAULT_TEMPERATURE = 0.1
VALUE_DEFINITION = (
    "attention a token receives in the layer: the mean over the open heads (those whose output reaches the model: "
    "not gated off, not folded to zero) of its column sum of the attention probabilities over the real query "
    "rows, as a share of what the droppable tokens (real, not special) receive, times their number (averages 1 over the droppable tokens, whatever [CLS]/[SEP] absorb; 1 for every token under uniform "
    "attention)"
)

# ---------------------------------------------------------------------------------------------------------
# The pure core


def soft_keep(values: torch.Tensor, threshold: torch.Tensor | float, temperature: float) -> torch.Tensor:
    """LTP's soft mask: ``sigmoid((value - threshold) / temperature)``, same shape as ``values``."""
    return torch.sigmoid((values - threshold) / temperature)


def key_mask(given: torch.Tensor | None, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask later blocks get: the model's own mask plus ``log keep`` on each key column.

    Args:
        given: the mask the model handed its first block: additive float (0 or the dtype minimum), boolean
            (True = attend), or None (everything allowed).
        keep: float (B, T), each token's probability of still being in the sequence; where it is 0 the key is
            gone (the dtype minimum, no ``-inf``, so no NaN in gradients).
        dtype: the dtype of an additive mask made from a boolean or missing one.

    Returns:
        (B, 1, Q|1, T) additive mask, broadcastable over heads and queries.
    """
    batch, length = keep.shape
    if given is None or given.dtype == torch.bool:
        base = torch.zeros(batch, 1, 1, length, dtype=dtype, device=keep.device)
        if given is not None:
            base = base.masked_fill(~given, torch.finfo(dtype).min)
    else:
        base = given
    lowest = torch.finfo(base.dtype).min
    column = keep[:, None, None, :]  # (B, 1, 1, T)
    bias = torch.log(column.clamp_min(1e-30)).to(base.dtype)
    return torch.where(column > 0, (base + bias).clamp_min(lowest), torch.full_like(bias, lowest))


def block_macs(structure, layer: int, tokens, heads=None, kv_heads=None, neurons=None):
    """MACs of block ``layer`` on ``tokens`` tokens of one sequence, split ``(attention, ffn)``.

    ``heads``, ``kv_heads`` and ``neurons`` are the (expected) open query heads, key/value heads and FFN
    neurons, default all; numbers or tensors. With every unit open the sum is ``flops.layer_macs``: per query
    head its Q and O slices (``2 t D d``) and its scores and attention x value (``2 t^2 d``), per K/V head its
    K and V slices (``2 t D d``), per neuron ``t D`` for each of up (gate) and down.
    """
    d, hidden = structure.head_dim, structure.hidden
    h = structure.heads[layer] if heads is None else heads
    g = structure.kv_heads[layer] if kv_heads is None else kv_heads
    f = structure.ffn[layer] if neurons is None else neurons
    attention = 2 * hidden * d * (h + g) * tokens + 2 * d * h * tokens * tokens
    ffn = (3 if structure.gated_ffn else 2) * hidden * f * tokens
    return attention, ffn


def token_share(
    structure,
    counts: Sequence[torch.Tensor],
    components: Iterable[str] = ("attention", "ffn"),
    weights: dict[str, float] | None = None,
    units: Sequence[tuple] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expected share of the blocks' dense MACs that the kept tokens (and open units) cost.

    Args:
        structure: the model's :class:`~econlm.flops.Structure`.
        counts: per layer, (B,) expected real tokens entering it; ``counts[0]`` the examples' real lengths.
        components: the parts counted, ``attention`` and/or ``ffn``.
        weights: per component, its weight in the weighted share (default 1).
        units: per layer ``(heads, kv_heads, neurons)`` expected open units (None entries: all open): the joint
            share of gates and tokens.

    Returns:
        ``(share, weighted)``: sums over layers and examples of :func:`block_macs` at the expected counts, over
        the same at every token with every unit open; ``weighted`` weights each component's MACs first.
    """
    components = tuple(components)
    weights = weights or {}
    lengths = counts[0]
    expected = {c: 0.0 for c in components}
    dense = 0.0
    for layer, tokens in enumerate(counts):
        heads, kv_heads, neurons = units[layer] if units is not None else (None, None, None)
        got = dict(zip(("attention", "ffn"), block_macs(structure, layer, tokens, heads, kv_heads, neurons)))
        full = dict(zip(("attention", "ffn"), block_macs(structure, layer, lengths)))
        for c in components:
            expected[c] = expected[c] + got[c].sum()
            dense = dense + full[c].sum()
    share = sum(expected.values()) / dense
    weighted = sum(weights.get(c, 1.0) * expected[c] for c in components) / dense
    return share, weighted


# ---------------------------------------------------------------------------------------------------------
# The thresholds


class TokenThresholds(nn.Module):
    """The learnable thresholds of one model, attached as ``model.econlm_token_thresholds``.

    ``threshold[l]`` applies after layer ``l``. In training mode :meth:`keep` is the soft mask; in eval mode
    (fixed thresholds) it is 0 or 1.
    """

    def __init__(
        self, layers: int, temperature: float = DEFAULT_TEMPERATURE, special_ids: Iterable[int] = (), init=None
    ):
        super().__init__()
        values = torch.full((layers - 1,), INIT_THRESHOLD) if init is None else torch.as_tensor(init).float()
        self.threshold = nn.Parameter(values.clone())
        self.temperature = float(temperature)
        self.special_ids = sorted(set(special_ids))

    def keep(self, layer: int, values: torch.Tensor) -> torch.Tensor:
        """Share of each token kept after ``layer``, (B, T) from its values (B, T)."""
        threshold = self.threshold[layer]
        if self.training:
            return soft_keep(values, threshold, self.temperature)
        return (values >= threshold.detach()).to(values.dtype)

    def spec(self) -> dict:
        """What ``token_thresholds.json`` holds."""
        return {
            "format": FORMAT,
            "thresholds": [None if t == -math.inf else t for t in self.threshold.detach().cpu().tolist()],
            "temperature": self.temperature,
            "special_ids": list(self.special_ids),
            "value": VALUE_DEFINITION,
            "rule": "after layer l a token whose value is below thresholds[l] leaves the sequence for every later "
            "layer (special tokens and the first token stay); null never drops",
        }


def get_thresholds(model: nn.Module) -> TokenThresholds | None:
    return getattr(model, ATTRIBUTE, None)


# ---------------------------------------------------------------------------------------------------------
# The soft mask


@dataclass
class _SoftPass:
    real: torch.Tensor  # bool (B, T)
    special: torch.Tensor  # bool (B, T)
    keep: torch.Tensor  # float (B, T): probability each token is still in the sequence (1 at padding)
    counts: list[torch.Tensor] = field(default_factory=list)  # per layer entered: (B,) expected real tokens
    given_mask: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # what later blocks get: the given mask plus log keep
    shortened: bool = False  # never: every token stays in the sequence (the block hook reads it)
    full: torch.Tensor | None = None  # (B, T, D): sum of the states tokens left with, weighted by what left
    probs: torch.Tensor | None = None


class _SoftSession(BudgetSession):
    """Training mode: every token stays in the sequence, weighted by its keep probability (see the module
    docstring). Reuses the budget session's mask hand-over and attention reading."""

    def __init__(self, model: nn.Module, thresholds: TokenThresholds, on_finish: Callable[[list], None]):
        layers = len(arch.blocks(model))
        super().__init__(model, layers, None, thresholds.special_ids, None, None, on_finish=on_finish)
        self.thresholds = thresholds
        self.reader = BatchReader(thresholds.special_ids)

    def begin(self, module, args, kwargs):
        self.state = None
        if not module.training:
            return
        tokens = self.reader(module, args, kwargs)
        if tokens is None:
            return
        real, special = tokens
        keep = torch.ones(real.shape, device=real.device)  # padding stays at 1: its own mask already hides it
        self.state = _SoftPass(real=real, special=special, keep=keep, counts=[real.sum(1).float()])

    # The base hook hands each layer's output to _drop (every layer but the last) or _finish (the last).
    def _drop(self, state: _SoftPass, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        # (B, T): query rows weighted by keep, values relative to the droppable tokens still in
        droppable = state.keep * (state.real & ~state.special)
        heads = open_heads(self.model, layer)  # as at inference: only heads whose output counts
        values = relative_values(state.probs, state.keep * state.real, droppable, heads)
        m = self.thresholds.keep(layer, values)
        kept = state.special | ~state.real
        if heads is not None and not bool(heads.any()):  # no head left to say what matters: keep all
            kept = torch.ones_like(kept)
        m = torch.where(kept, torch.ones_like(m), m)
        keep = state.keep * m  # (B, T)
        left = (state.keep - keep).unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): what leaves here
        state.full = left * hidden if state.full is None else state.full + left * hidden
        state.keep = keep
        state.counts.append((keep * state.real).sum(1))
        state.mask = key_mask(state.given_mask, keep, hidden.dtype)
        return hidden  # every token stays in the sequence, weighted in later layers' keys

    def _finish(self, state: _SoftPass, hidden: torch.Tensor) -> torch.Tensor:
        if state.full is not None:
            hidden = state.full + state.keep.unsqueeze(-1).to(hidden.dtype) * hidden
        self.state = None
        self.on_finish(state.counts)
        return hidden


class LearnedTokens:
    """Learnable token thresholds on one encoder: the soft mask in training mode, hard dropping in eval mode.

    Adds ``model.econlm_token_thresholds`` (a parameter, so optimizers, DDP and checkpoints see it); thresholds
    a loaded checkpoint carries (:func:`econlm.tokens.attached_thresholds`) are where learning starts. Inside
    :meth:`active` the hooks are live; ``counts`` holds, after each forward pass, the (B,) expected real tokens
    entering each layer.
    """

    def __init__(self, model: nn.Module, temperature: float = DEFAULT_TEMPERATURE, special_ids: Iterable[int] = ()):
        check_encoder(model)
        layers = len(arch.blocks(model))
        if layers < 2:
            raise UserError("a learned token budget needs at least 2 layers: tokens leave after a layer, for the next")
        self.model = model
        self.counts: list[torch.Tensor] | None = None
        module = get_thresholds(model)
        if module is None:
            loaded = attached_thresholds(model)
            init = None
            if loaded is not None:  # a learned-token checkpoint: continue from its thresholds (-inf: the start)
                init = [INIT_THRESHOLD if t == -math.inf else t for t in loaded.thresholds]
                special_ids = [*special_ids, *loaded.special_ids]
                loaded.detach()
            module = TokenThresholds(layers, temperature, special_token_ids(None, model.config, special_ids), init)
            model.add_module(ATTRIBUTE, module.to(next(model.parameters()).device))
        self.module = module

    def configure(self, temperature: float, special_ids: Iterable[int] = ()) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise UserError(f"--token-temperature must be a positive number, not {temperature}")
        self.module.temperature = float(temperature)
        self.module.special_ids = sorted(set(self.module.special_ids) | set(special_ids))

    def _record(self, counts: list) -> None:
        self.counts = [c.float() for c in counts]

    @contextmanager
    def active(self) -> Iterator[LearnedTokens]:
        """The hooks: soft masks while the model trains, hard dropping while it is in eval mode."""
        soft = _SoftSession(self.model, self.module, self._record)
        layers = len(arch.blocks(self.model))
        hard, selecting = threshold_session(
            self.model,
            lambda: self.module.threshold.detach().tolist(),
            self.module.special_ids,
            None,
            active=lambda base: not base.training,
            on_finish=lambda state: self._record(state.counts),
        )
        handles = []
        try:
            with weights_returned(self.model):
                handles = register_hooks(self.model, soft, range(layers - 1))
                handles += register_hooks(self.model, hard, selecting)
                yield self
        finally:
            for handle in handles:
                handle.remove()
            soft.state = hard.state = None

    def remove(self) -> dict:
        """Detach the thresholds from the model; returns what ``token_thresholds.json`` holds."""
        spec = self.module.spec()
        if get_thresholds(self.model) is self.module:
            delattr(self.model, ATTRIBUTE)
        return spec


# ---------------------------------------------------------------------------------------------------------
# Saving and loading


def save_thresholds(directory: str | Path, spec: dict) -> Path:
    """Write ``token_thresholds.json`` (sorted JSON) into ``directory``."""
    from econlm.runinfo import write_json

    path = Path(directory) / THRESHOLDS_FILE
    write_json(path, spec)
    return path


def read_thresholds(directory: str | Path, layers: int | None = None) -> dict | None:
    """The checked content of ``directory/token_thresholds.json``, or None when there is none.

    An unreadable file, one without this version's format, or one whose thresholds do not fit a model of
    ``layers`` layers is a one-line :class:`UserError`.
    """
    path = Path(directory) / THRESHOLDS_FILE
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path} is damaged or unreadable ({first}); train the model again") from None
    version = spec.get("format") if isinstance(spec, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(
            f"{path} is not a token-thresholds file this econlm reads (no 'format': {FORMAT}); it was written by "
            "an older econlm or by hand: train the model again"
        )
    if version < SAME_WITHOUT_SHUT_HEADS:
        raise UserError(
            f"{path} has format {version}: its thresholds were learned on token values that counted the attention "
            f"[CLS]/[SEP] absorb, which this econlm (format {FORMAT}) no longer uses; train the model again"
        )
    if version > FORMAT:
        raise UserError(f"{path} has format {version}, newer than this econlm reads ({FORMAT}); upgrade econlm")
    thresholds = spec.get("thresholds")
    if not isinstance(thresholds, list) or not all(t is None or _is_number(t) for t in thresholds):
        raise UserError(f"{path}: 'thresholds' must be a list of numbers (null: drop nothing after that layer)")
    ids = spec.get("special_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UserError(f"{path}: 'special_ids' must be a list of token ids")
    if layers is not None:
        try:
            check_thresholds(thresholds, layers)
        except UserError as error:
            raise UserError(f"{path}: {error}") from None
    return spec


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def attach_saved(model: nn.Module, directory: str | Path, tokenizer=None):
    """Attach the thresholds ``directory`` holds, if any (:func:`econlm.load` does); returns the
    :class:`~econlm.tokens.AttachedThresholds` or None."""
    from econlm.tokens import attach_thresholds

    path = Path(directory) / THRESHOLDS_FILE
    if not path.exists():
        return None
    try:
        check_encoder(model)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    spec = read_thresholds(directory, len(arch.blocks(model)))
    if spec["format"] < FORMAT:
        shut = [layer for layer in range(len(arch.blocks(model)) - 1) if open_heads(model, layer) is not None]
        if shut:
            raise UserError(
                f"{path} has format {spec['format']}, whose token values counted every head, and this model has heads "
                f"shut (layers {', '.join(map(str, shut))}) that format {FORMAT} leaves out: train the model again"
            )
    return attach_thresholds(model, spec["thresholds"], tokenizer=tokenizer, special_ids=spec.get("special_ids", []))
