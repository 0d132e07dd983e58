"""Compute-cost terms: differentiable "taxes" added to the task loss, ``L = L_task + lambda * C``.

Every term returns a scalar tensor, normalised per token and per unit so that one lambda means about
the same on models of different sizes:

``ffn_l1``          mean |a| of FFN activations (inputs of the down projection), over real tokens,
                    neurons and layers. The paper's FFN term.
``attn_logits_l1``  mean |s| of pre-softmax attention scores over real query rows and allowed keys, heads
                    and layers: the literal reading of "L1 of attention scores". Post-softmax rows always
                    sum to 1 (zero gradient), so the paper's term must mean something else; this is one.
``attn_entropy``    mean entropy (nats) of attention rows over real rows, heads and layers: pushes
                    attention to concentrate.
``attn_sqrt``       mean over rows of sum_j sqrt(p_ij): 1 for a one-hot row, sqrt(n) for a uniform one;
                    an L1/2 quasi-norm, which unlike L1 does reward concentration.
``flops``           hard-concrete gates on every attention head and FFN neuron; the expected MACs of
                    the open units as a share of the dense MACs of the gated parts (in [0, 1]). The
                    hardware-aware term: closed gates are removable structure (see ``econlm compact``).
``tokens``          encoders: a learned threshold per layer on the attention a token receives (LTP); the
                    expected MACs of the blocks on the soft-kept tokens as a share of their dense MACs
                    on every token (in [0, 1]). At inference tokens below the threshold leave the
                    sequence (:mod:`econlm.learned_tokens`). With ``flops`` the share is joint.

Targets restrict terms to components: ``attention``, ``ffn`` or ``both`` (the paper's ablation), and
each component carries a weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from econlm.activations import TokenMask, ffn_input_hooks
from econlm.attention import AttentionView, budgeted_attention
from econlm.errors import UserError, unknown_name
from econlm.registry import Registry

TARGETS = ("attention", "ffn", "both")
# mean: per token and unit (one lambda means about the same on any model size); sum: the paper's L1 sums over
# the batch's tokens and units and the layers, so its lambda grid (1e-6 .. 1e-2) can be run as written.
REDUCTIONS = ("mean", "sum")


def target_components(target: str) -> tuple[str, ...]:
    if target not in TARGETS:
        raise unknown_name("target", target, TARGETS)
    return ("attention", "ffn") if target == "both" else (target,)


class CostTerm:
    """Base class. Subclasses collect what they need during the forward pass and return ``value()``."""

    name = ""
    component = ""  # "attention", "ffn" or "both"

    def __init__(self, model: nn.Module, components: tuple[str, ...], tokens: TokenMask, reduction: str = "mean"):
        self.model = model
        self.components = components
        self.tokens = tokens
        self.reduction = reduction
        self._per_layer: dict[object, torch.Tensor] = {}
        self._calls: dict[object, int] = {}

    def _reduce(self, total: torch.Tensor, count) -> torch.Tensor:
        """Per token and unit (``mean``), or the plain sum over the batch's real tokens and units (``sum``)."""
        if self.reduction == "sum":
            return total
        return total / (count.clamp_min(1) if isinstance(count, torch.Tensor) else max(count, 1))

    def reset(self) -> None:
        self._per_layer = {}
        self._calls = {}

    def attention_tap(self, view: AttentionView) -> None:  # noqa: B027 - optional hook
        pass

    def hooks(self):
        """A context manager for hooks of the term's own, live while the meter is attached."""
        return nullcontext()

    def ffn_activation(self, layer: int, x: torch.Tensor) -> None:  # noqa: B027 - optional hook
        pass

    def _add(self, layer: object, value: torch.Tensor) -> None:
        # A layer called several times in one step (not the case for the supported models) averages its calls.
        calls = self._calls.get(layer, 0)
        previous = self._per_layer.get(layer)
        self._per_layer[layer] = value if previous is None else (previous * calls + value) / (calls + 1)
        self._calls[layer] = calls + 1

    def value(self, weights: dict[str, float]) -> torch.Tensor:
        """The weighted term for the last forward pass: the mean over layers of the per-layer values (the sum
        over layers with ``reduction="sum"``)."""
        if not self._per_layer:
            return torch.zeros((), device=_device(self.model))
        stacked = torch.stack(list(self._per_layer.values()))
        return weights[self.component] * (stacked.sum() if self.reduction == "sum" else stacked.mean())

    def compute_share(self) -> float | None:
        """Measured share of dense compute this term controls, if it has one (for the price controller)."""
        return None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _real_rows(view: AttentionView) -> torch.Tensor:
    return view.real.expand(view.probs.shape[0], view.probs.shape[1], view.probs.shape[2])  # (B, H, Q)


class FfnL1(CostTerm):
    name, component = "ffn_l1", "ffn"

    def ffn_activation(self, layer: int, x: torch.Tensor) -> None:
        real = self.tokens.select(x)
        self._add(layer, self._reduce(real.abs().sum(), real.numel()))


class AttnLogitsL1(CostTerm):
    name, component = "attn_logits_l1", "attention"

    def attention_tap(self, view: AttentionView) -> None:
        entries = view.allowed.expand_as(view.scores) & _real_rows(view).unsqueeze(-1)
        scores = view.scores.masked_fill(~entries, 0.0)  # masked scores hold the dtype minimum
        self._add(view.layer, self._reduce(scores.abs().sum(), entries.sum()))


class AttnEntropy(CostTerm):
    name, component = "attn_entropy", "attention"

    def attention_tap(self, view: AttentionView) -> None:
        p = view.probs.float()
        # xlogy's gradient at p = 0 is -inf * 0 = NaN (masked keys have p = 0 exactly); clamping inside the
        # log keeps the value and makes that gradient log(tiny) * 0 = 0.
        rows = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (B, H, Q)
        real = _real_rows(view)
        self._add(view.layer, self._reduce((rows * real).sum(), real.sum()))


class AttnSqrt(CostTerm):
    name, component = "attn_sqrt", "attention"
    EPS = 1e-12  # sqrt has an infinite slope at 0: masked and budget-dropped keys have p = 0 exactly

    def attention_tap(self, view: AttentionView) -> None:
        p = view.probs.float().masked_fill(~view.allowed, 0.0)
        rows = (p + self.EPS).sqrt().sum(-1)  # (B, H, Q)
        real = _real_rows(view)
        self._add(view.layer, self._reduce((rows * real).sum(), real.sum()))


class Flops(CostTerm):
    """Expected MACs of gated units over the dense MACs of the gated parts."""

    name, component = "flops", "both"

    def __init__(self, model, components, tokens, reduction="mean"):
        super().__init__(model, components, tokens)  # a share of compute: the reduction does not apply
        from econlm.flops import Structure
        from econlm.gates import add_gates

        self.structure = Structure.of_model(model)
        self.gates = add_gates(model, components)
        self.seq_len = 128
        self._last_share: float | None = None

    def ffn_activation(self, layer: int, x: torch.Tensor) -> None:
        self.seq_len = x.shape[1]  # the batch's sequence length sets the attention part's cost

    def expected(self) -> dict[str, tuple[torch.Tensor, float]]:
        """Per component: (expected MACs per token of open units, dense MACs per token), at ``seq_len``."""
        from econlm.flops import unit_macs_per_token

        device = self.gates.heads[0].log_alpha.device if self.gates.heads is not None else _device(self.model)
        out = {}
        if self.gates.heads is not None:
            expected = torch.zeros((), device=device)
            dense = 0.0
            for i, gate in enumerate(self.gates.heads):
                unit = unit_macs_per_token(self.structure, i, self.seq_len)
                p = gate.prob_open()  # (K/V groups,): a group is its K/V head and the query heads reading it
                expected = expected + unit["kv_group"] * p.sum()
                dense += unit["kv_group"] * p.numel()
            out["attention"] = (expected, dense)
        if self.gates.neurons is not None:
            expected = torch.zeros((), device=device)
            dense = 0.0
            for i, gate in enumerate(self.gates.neurons):
                unit = unit_macs_per_token(self.structure, i, self.seq_len)["ffn_neuron"]
                expected = expected + unit * gate.prob_open().sum()
                dense += unit * gate.log_alpha.numel()
            out["ffn"] = (expected, dense)
        return out

    def value(self, weights: dict[str, float]) -> torch.Tensor:
        parts = self.expected()
        dense_total = sum(dense for _, dense in parts.values())
        weighted = sum(weights[c] * expected for c, (expected, _) in parts.items())
        self.share_tensor = sum(expected for expected, _ in parts.values()) / dense_total
        self._last_share = float(self.share_tensor.detach())
        return weighted / dense_total

    def compute_share(self) -> float | None:
        if self._last_share is None:
            self.value({"attention": 1.0, "ffn": 1.0})
        return self._last_share

    def expected_units(self) -> list[tuple]:
        """Per layer: expected open query heads, K/V heads and FFN neurons (None for a part without gates)."""
        from econlm.gates import heads_per_gate

        out = []
        for i in range(self.structure.layers):
            heads = kv_heads = neurons = None
            if self.gates.heads is not None:
                kv_heads = self.gates.heads[i].prob_open().sum()  # one gate per K/V group
                heads = kv_heads * heads_per_gate(self.structure, i)
            if self.gates.neurons is not None:
                neurons = self.gates.neurons[i].prob_open().sum()
            out.append((heads, kv_heads, neurons))
        return out


class Latency(Flops):
    """The same gates priced by a measured latency table (``econlm latency-table``): the expected latency of
    the open units as a share of the dense model's latency, read off each layer's monotone piecewise-linear
    curve at the expected number of open K/V groups and FFN neurons. Removing units where the curve is flat
    buys nothing, so the gradient there is zero."""

    name, component = "latency", "both"
    table = None  # the LatencyTable, set by CostMeter

    def expected_kept(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer: expected open K/V groups (heads without GQA) and expected open FFN neurons."""
        groups, neurons = [], []
        if self.gates.heads is not None:
            groups = [gate.prob_open().sum() for gate in self.gates.heads]  # one gate per K/V group
        if self.gates.neurons is not None:
            neurons = [gate.prob_open().sum() for gate in self.gates.neurons]
        return groups, neurons

    def value(self, weights: dict[str, float]) -> torch.Tensor:
        from econlm.latency_table import expected_savings

        saved_attention, saved_ffn = expected_savings(self.table, *self.expected_kept())
        dense = self.table.dense_seconds
        self.share_tensor = (dense - saved_attention - saved_ffn) / dense
        self._last_share = float(self.share_tensor.detach())
        return (dense - weights["attention"] * saved_attention - weights["ffn"] * saved_ffn) / dense


class Tokens(CostTerm):
    """A learned token budget (:mod:`econlm.learned_tokens`): one learnable threshold per layer on the attention
    a token receives; the expected MACs of the blocks at each layer's expected number of kept tokens, as a share
    of their dense MACs on every token (in [0, 1]). Together with ``flops`` (or ``latency``: shares of predicted
    dense seconds, :func:`econlm.latency_table.latency_token_share`) the share is joint: heads and neurons
    count by their probability of being open and tokens by theirs, so one price clears one market for both (the
    flops term is then reported, not added again). Encoders only."""

    name, component = "tokens", "both"

    def __init__(self, model, components, tokens, reduction="mean"):
        super().__init__(model, components, tokens)  # a share of compute: the reduction does not apply
        from econlm.flops import Structure
        from econlm.learned_tokens import LearnedTokens

        self.learned = LearnedTokens(model)
        self.structure = Structure.of_model(model)
        self.units = None  # Flops.expected_units when priced jointly with gates
        self.latency = None  # the Latency term when priced jointly by a latency table: shares of dense seconds
        self.share_tensor: torch.Tensor | None = None
        self._last_share: float | None = None

    def hooks(self):
        return self.learned.active()

    def reset(self) -> None:
        super().reset()
        self.learned.counts = None

    def value(self, weights: dict[str, float]) -> torch.Tensor:
        from econlm.learned_tokens import token_share

        counts = self.learned.counts
        if counts is None:  # no forward pass since begin(): nothing was measured
            self.share_tensor, self._last_share = None, None
            return torch.zeros((), device=_device(self.model))
        if self.latency is not None:  # one market priced in seconds: units and tokens off the same table
            from econlm.latency_table import latency_token_share

            groups, neurons = self.latency.expected_kept()
            share = latency_token_share(self.latency.table, counts, groups, neurons)
            self.share_tensor, self._last_share = share, float(share.detach())
            return share
        units = self.units() if self.units is not None else None
        share, weighted = token_share(self.structure, counts, self.components, weights, units)
        self.share_tensor, self._last_share = share, float(share.detach())
        return weighted

    def compute_share(self) -> float | None:
        return self._last_share


def tokens_without_curve(path) -> str:
    return (
        f"latency table {path} measures no token curve (it was made before econlm priced tokens by latency), so it "
        "cannot price kept tokens: make it again with econlm latency-table, or use --cost flops,tokens"
    )

COSTS: Registry[type[CostTerm]] = Registry(
    "cost", {c.name: c for c in (FfnL1, AttnLogitsL1, AttnEntropy, AttnSqrt, Flops, Latency, Tokens)}
)
CONTROLLABLE = frozenset({"flops", "latency", "tokens"})  # terms that measure a share a budget can be set on


def parse_cost_names(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip())
    if not names:
        raise UserError(f"no cost term given; choose from {', '.join(COSTS)}")
    for name in names:
        if name not in COSTS:
            raise COSTS.unknown(name)
    if len(set(names)) != len(names):
        raise UserError(f"cost list {','.join(names)} repeats a name")
    return names


@dataclass
class CostReading:
    total: torch.Tensor  # weighted sum of the terms (with gradients)
    terms: dict[str, float]  # each term's weighted value (detached)
    share: float | None  # measured compute share, where a term provides one
    share_tensor: torch.Tensor | None = None  # the same, differentiable (flops gates)


class CostMeter:
    """The chosen cost terms on one model: attach once, then ``begin`` each batch and ``read`` after forward.

    Example::

        meter = CostMeter(model, ("ffn_l1", "attn_entropy"), target="both")
        with meter.attached():
            meter.begin(batch["attention_mask"])
            out = model(**batch)
            loss = out.loss + lam * meter.read().total
    """

    def __init__(
        self,
        model: nn.Module,
        names: tuple[str, ...],
        target: str = "both",
        attention_weight: float = 1.0,
        ffn_weight: float = 1.0,
        latency_table=None,
        reduction: str = "mean",
        token_temperature: float = 0.1,
        special_ids: tuple[int, ...] = (),
    ):
        names = parse_cost_names(names) if names else ()
        if reduction not in REDUCTIONS:
            raise unknown_name("cost reduction", reduction, REDUCTIONS)
        if "flops" in names and "latency" in names:
            raise UserError("flops and latency price the same gates; choose one of them")
        if "latency" in names and latency_table is None:
            raise UserError("--cost latency needs --latency-table FILE (make one with econlm latency-table)")
        if "tokens" in names and "latency" in names and latency_table.tokens is None:
            raise UserError(tokens_without_curve("--latency-table"))
        components = target_components(target)
        self.tokens = TokenMask()
        self.weights = {"attention": attention_weight, "ffn": ffn_weight}
        chosen = [n for n in names if COSTS[n].component in components or COSTS[n].component == "both"]
        if names and not chosen:
            raise UserError(
                f"target '{target}' leaves none of the costs {', '.join(names)}: attention costs are "
                f"{', '.join(n for n, c in COSTS.items() if c.component == 'attention')}; FFN costs: ffn_l1; "
                "flops covers both"
            )
        self.model = model
        self.terms = [COSTS[n](model, components, self.tokens, reduction) for n in chosen]
        gates = next((t for t in self.terms if type(t) is Flops), None)
        latency = next((t for t in self.terms if isinstance(t, Latency)), None)
        for term in self.terms:
            if isinstance(term, Latency):
                term.table = latency_table
            if isinstance(term, Tokens):
                term.learned.configure(token_temperature, special_ids)
                term.units = gates.expected_units if gates is not None else None
                term.latency = latency

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def needs_attention(self) -> bool:
        return any(type(t).attention_tap is not CostTerm.attention_tap for t in self.terms)

    @contextmanager
    def attached(self, record_stats: bool = False) -> Iterator[CostMeter]:
        """Hooks and attention taps (and gates, for ``flops``) are active inside the block only.

        With ``record_stats`` the attention statistics are collected too, in ``self.stats``.
        """
        from econlm.gates import gates_active

        self.stats = None
        with ExitStack() as stack:
            stack.enter_context(gates_active(self.model))  # gates first: costs see gated activations
            if self.needs_attention() or record_stats:
                taps = tuple(t.attention_tap for t in self.terms)
                self.stats = stack.enter_context(
                    budgeted_attention(self.model, "full", record_stats=record_stats, taps=taps)
                )

            def on_ffn(layer, x):
                for term in self.terms:
                    term.ffn_activation(layer, x)

            for term in self.terms:
                stack.enter_context(term.hooks())
            stack.enter_context(ffn_input_hooks(self.model, on_ffn))
            yield self

    def begin(self, attention_mask: torch.Tensor | None) -> None:
        self.tokens.set(attention_mask)
        for term in self.terms:
            term.reset()

    def read(self) -> CostReading:
        values = {t.name: t.value(self.weights) for t in self.terms}
        tokens = next((t for t in self.terms if isinstance(t, Tokens)), None)
        # Priced jointly, the tokens term already counts the gates' expected units: flops (or latency) is
        # reported, not added.
        joint = tokens is not None and (tokens.units is not None or tokens.latency is not None)
        priced = [v for name, v in values.items() if not (joint and name in ("flops", "latency"))]
        total = torch.stack(priced).sum() if priced else torch.zeros(())
        if tokens is not None:  # the share the budget is on: tokens (and gates, jointly)
            share, share_tensor = tokens.compute_share(), tokens.share_tensor
        else:
            shares = [s for s in (t.compute_share() for t in self.terms) if s is not None]
            flops = [t for t in self.terms if isinstance(t, Flops)]
            share, share_tensor = (shares[0] if shares else None), (flops[0].share_tensor if flops else None)
        return CostReading(
            total=total,
            terms={k: float(v.detach()) for k, v in values.items()},
            share=share,
            share_tensor=share_tensor,
        )
