"""Learnable hard-concrete gates on attention heads and FFN neurons (L0 relaxation, Louizos et al. 2018).

A gate ``z`` in [0, 1] multiplies one unit's output: a query head's slice of the attention output
before the output projection, or one FFN activation before the down projection. With grouped-query
attention one gate covers a whole K/V group (the K/V head and every query head reading it): only whole
groups can be removed (:mod:`econlm.compact`), so a gate per query head would be priced for compute that no
compacted model saves. During training ``z``
is sampled from the hard-concrete distribution (so it can be exactly 0 or 1 yet has gradients); in
eval mode it is deterministic. ``P(z != 0)`` is differentiable in the gate's ``log_alpha``, so the
expected number of open units, each weighted by the MACs it costs, is a differentiable expected
compute: the ``flops`` cost term.

Gates live in a small module attached to the model as ``model.econlm_gates`` (so optimizers, DDP and
checkpoints see them); :func:`fold_gates` multiplies the deterministic gate values into the output and
down projections and removes the module, leaving a standard checkpoint that computes the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from econlm import arch

BETA = 2 / 3  # temperature
GAMMA, ZETA = -0.1, 1.1  # stretch interval: z = clamp(s * (ZETA - GAMMA) + GAMMA, 0, 1)
ATTRIBUTE = "econlm_gates"
# Gates start fully open and nearly noise-free: the eval value is 1 and a training sample falls below 1
# with probability P(logit(u) < (logit(11/12) * BETA - 5)) ~ 3%. (The common "drop rate 0.5" start, with
# log_alpha = 0, scales most units at random and needs many epochs to recover; fine-tuning here is short.)
INIT_LOG_ALPHA = 5.0


class HardConcrete(nn.Module):
    """``n`` independent hard-concrete gates."""

    def __init__(self, n: int, init_log_alpha: float = INIT_LOG_ALPHA):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n,), float(init_log_alpha)))
        self.last: torch.Tensor | None = None  # the latest value drawn, detached: which units this pass shut

    def forward(self) -> torch.Tensor:
        """A gate sample in training mode; the deterministic value in eval mode. Shape (n,)."""
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        z = (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        self.last = z.detach()
        return z

    def prob_open(self) -> torch.Tensor:
        """P(z != 0) per gate, differentiable. Shape (n,)."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))


class ModelGates(nn.Module):
    """Per-layer head gates and/or neuron gates for one model."""

    def __init__(self, heads: list[int] | None, neurons: list[int] | None):
        super().__init__()
        self.heads = nn.ModuleList(HardConcrete(n) for n in heads) if heads else None
        self.neurons = nn.ModuleList(HardConcrete(n) for n in neurons) if neurons else None


def heads_per_gate(structure, layer: int) -> int:
    """Query heads one attention gate covers in ``layer``: its K/V group (1 without grouped-query attention)."""
    return structure.heads[layer] // structure.kv_heads[layer]


def add_gates(model: nn.Module, components: tuple[str, ...]) -> ModelGates:
    """Attach gates for ``components`` (``"attention"``, ``"ffn"``) to ``model`` as ``model.econlm_gates``: one
    per K/V group (per head without GQA) and one per FFN neuron."""
    from econlm.flops import Structure

    if hasattr(model, ATTRIBUTE):
        return getattr(model, ATTRIBUTE)
    structure = Structure.of_model(model)
    gates = ModelGates(
        heads=list(structure.kv_heads) if "attention" in components else None,
        neurons=list(structure.ffn) if "ffn" in components else None,
    )
    device = next(model.parameters()).device
    model.add_module(ATTRIBUTE, gates.to(device))
    return gates


def get_gates(model: nn.Module) -> ModelGates | None:
    return getattr(model, ATTRIBUTE, None)


def scale_input_hook(scales: Callable[[], torch.Tensor], group: int):
    """A forward pre-hook multiplying the last dim of the input, in groups of ``group``, by ``scales()`` (n,):
    a gate's sample, or a fixed mask."""

    def hook(module, args):
        (x, *rest) = args
        z = scales()  # (n,)
        shape = x.shape
        scaled = (x.view(*shape[:-1], z.shape[0], group) * z.to(x.dtype).unsqueeze(-1)).view(shape)
        return (scaled, *rest)

    return hook


@contextmanager
def gates_active(model: nn.Module) -> Iterator[ModelGates | None]:
    """Apply ``model.econlm_gates`` in the forward pass inside the block; hooks are removed afterwards."""
    gates = get_gates(model)
    if gates is None:
        yield None
        return
    from econlm.flops import Structure

    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    structure = Structure.of_model(model)
    handles = []
    try:
        for i, block in enumerate(arch.blocks(model)):
            if gates.heads is not None:
                o_proj = block.get_submodule(fam.o)
                width = head_dim * heads_per_gate(structure, i)  # the o_proj inputs one gate scales
                handles.append(o_proj.register_forward_pre_hook(scale_input_hook(gates.heads[i], width)))
            if gates.neurons is not None:
                down = block.get_submodule(fam.ffn_down)
                handles.append(down.register_forward_pre_hook(scale_input_hook(gates.neurons[i], 1)))
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def scale_input_columns(module: nn.Module, scale: torch.Tensor) -> None:
    """Multiply the weights that read input feature ``j`` by ``scale[j]``."""
    with torch.no_grad():
        arch.in_columns(module).mul_(scale.to(module.weight.dtype).unsqueeze(1))  # (in, out), a view


@torch.no_grad()
def gate_values(model: nn.Module) -> dict[str, list[list[float]]]:
    """The deterministic (eval-mode) gate values per layer."""
    gates = get_gates(model)
    out: dict[str, list[list[float]]] = {}
    if gates is None:
        return out
    for name in ("heads", "neurons"):
        group = getattr(gates, name)
        if group is not None:
            was_training = group.training
            group.eval()
            out[name] = [g().tolist() for g in group]
            group.train(was_training)
    return out


@torch.no_grad()
def fold_gates(model: nn.Module) -> dict[str, list[list[float]]]:
    """Multiply deterministic gate values into the output/down projections and detach the gates.

    Afterwards the model, without any hook, computes what the gated model computed in eval mode.
    Returns the folded gate values (closed gates are exact zeros: those units are dead).
    """
    from econlm.flops import Structure

    values = gate_values(model)
    if not values:
        return values
    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    structure = Structure.of_model(model)
    for i, block in enumerate(arch.blocks(model)):
        if "heads" in values:
            z = torch.tensor(values["heads"][i]).repeat_interleave(head_dim * heads_per_gate(structure, i))
            scale_input_columns(block.get_submodule(fam.o), z)
        if "neurons" in values:
            scale_input_columns(block.get_submodule(fam.ffn_down), torch.tensor(values["neurons"][i]))
    delattr(model, ATTRIBUTE)
    return values


# A Fisher start (``--gate-init fisher``) spreads the starting log_alpha over [INIT - SPREAD, INIT] by rank: the
# unit worth least per MAC starts at 1.0 (eval value 0.78, P(open) 0.93), the one worth most at 5.0 (as with
# the open start). The price then reaches the cheap-to-lose units first; training can still reverse the order.
FISHER_START_SPREAD = 4.0
GATE_STARTS = ("open", "fisher")


@torch.no_grad()
def start_by_value(gates: ModelGates, per_mac: list[dict[str, torch.Tensor]], spread: float = FISHER_START_SPREAD):
    """Set every gate's starting ``log_alpha`` from its unit's value per MAC, ranked across all gated units.

    ``per_mac[layer]`` holds ``"heads"`` (one value per K/V group) and ``"neurons"``. A unit of rank ``q``
    (0 the least valuable per MAC, 1 the most, ties in layer-then-index order) starts at
    ``INIT_LOG_ALPHA - spread * (1 - q)``. Ranking across layers and kinds is what Kwon et al.'s global
    allocation does with the same numbers; here it only orders the start, and the price decides the rest.
    """
    names = [name for name in ("heads", "neurons") if getattr(gates, name) is not None]
    values = torch.cat([layer[name].flatten().double() for name in names for layer in per_mac])
    n = values.numel()
    rank = torch.empty(n, dtype=torch.float64)
    rank[torch.argsort(values, stable=True)] = torch.arange(n, dtype=torch.float64)
    quantile = rank / max(n - 1, 1)
    start = 0
    for name in names:
        for gate in getattr(gates, name):
            size = gate.log_alpha.numel()
            part = quantile[start : start + size].to(gate.log_alpha.dtype).to(gate.log_alpha.device)
            gate.log_alpha.copy_(INIT_LOG_ALPHA - spread * (1 - part))
            start += size
