"""FFN activations: where they are, how sparse they are, and zeroing the small ones.

"FFN activations" are the inputs of each block's down projection: ``act(up(x))``, or
``act(gate(x)) * up(x)`` for gated FFNs. That is the vector whose zeros a sparse kernel could skip.
All hooks here are forward pre-hooks attached in context managers that always remove them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from econlm import arch

DEFAULT_EPSILONS = (1e-3, 1e-2)


class TokenMask:
    """The real-token mask (B, T) of the batch being processed; set before each forward."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def set(self, attention_mask: torch.Tensor | None) -> None:
        self.mask = None if attention_mask is None else attention_mask.bool()

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (B, T, F) at real tokens, as (N, F)."""
        if self.mask is None or self.mask.shape != x.shape[:2]:
            return x.reshape(-1, x.shape[-1])
        return x[self.mask.to(x.device)]


@contextmanager
def ffn_input_hooks(model: nn.Module, fn: Callable[[int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Call ``fn(layer, activations)`` on every down-projection input; a returned tensor replaces it."""
    fam = arch.family(model.config)
    handles = []

    def make(layer: int):
        def hook(module, args):
            replaced = fn(layer, args[0])
            return None if replaced is None else (replaced, *args[1:])

        return hook

    try:
        for i, block in enumerate(arch.blocks(model)):
            handles.append(block.get_submodule(fam.ffn_down).register_forward_pre_hook(make(i)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class SparsityRecorder:
    """Counts, per layer, activations with ``|a| <= eps`` over real tokens, and each neuron's max ``|a|``."""

    def __init__(self, epsilons: Sequence[float] = DEFAULT_EPSILONS, tokens: TokenMask | None = None):
        self.epsilons = tuple(epsilons)
        self.tokens = tokens or TokenMask()
        self.small: dict[int, torch.Tensor] = {}  # layer -> counts per eps
        self.total: dict[int, int] = {}
        self.max_abs: dict[int, torch.Tensor] = {}  # layer -> (F,)

    def __call__(self, layer: int, x: torch.Tensor) -> None:
        with torch.no_grad():
            a = self.tokens.select(x).abs().float()  # (N, F)
            counts = torch.stack([(a <= eps).sum() for eps in self.epsilons]).cpu()
            peak = a.amax(0).cpu() if a.shape[0] else torch.zeros(a.shape[-1])
        if layer in self.small:
            self.small[layer] += counts
            self.total[layer] += a.numel()
            self.max_abs[layer] = torch.maximum(self.max_abs[layer], peak)
        else:
            self.small[layer], self.total[layer], self.max_abs[layer] = counts, a.numel(), peak

    def summary(self) -> dict:
        """Overall and per-layer share of activations at or below each eps (keys like ``"1e-03"``)."""
        layers = sorted(self.small)
        total = sum(self.total.values())
        overall = {
            _eps_key(eps): (sum(float(self.small[i][k]) for i in layers) / total if total else float("nan"))
            for k, eps in enumerate(self.epsilons)
        }
        per_layer = {
            _eps_key(eps): [float(self.small[i][k]) / max(self.total[i], 1) for i in layers]
            for k, eps in enumerate(self.epsilons)
        }
        return {"overall": overall, "per_layer": per_layer, "activations_counted": total}


def _eps_key(eps: float) -> str:
    return f"{eps:.0e}"


@contextmanager
def record_sparsity(model: nn.Module, epsilons=DEFAULT_EPSILONS, tokens: TokenMask | None = None):
    """Yield a :class:`SparsityRecorder` filled by every forward pass inside the block."""
    recorder = SparsityRecorder(epsilons, tokens)
    with ffn_input_hooks(model, recorder):
        yield recorder


@contextmanager
def hard_threshold(model: nn.Module, eps: float) -> Iterator[None]:
    """Inside the block, FFN activations with ``|a| < eps`` are set to exactly zero (inference only)."""
    if not eps > 0:
        raise ValueError("eps must be positive")

    def zero_small(layer: int, x: torch.Tensor) -> torch.Tensor:
        return x.masked_fill(x.abs() < eps, 0.0)

    with ffn_input_hooks(model, zero_small):
        yield


@torch.no_grad()
def unit_statistics(model: nn.Module, batches: Sequence[dict]) -> list[dict[str, torch.Tensor]]:
    """Per layer, the largest and the mean |output| of every FFN neuron and attention head over real tokens.

    A neuron's output is its activation (the down projection's input); a head's output is its slice of the
    output projection's input. Returns ``[{"neurons_max", "neurons_mean", "heads_max", "heads_mean"}, ...]``.
    """
    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    tokens = TokenMask()
    peak: dict[tuple[str, int], torch.Tensor] = {}
    total: dict[tuple[str, int], torch.Tensor] = {}
    count: dict[tuple[str, int], int] = {}
    handles = []

    def track(kind: str, layer: int, group: int):
        def hook(module, args):
            x = tokens.select(args[0]).abs().float()  # (N, units * group)
            units = x.shape[-1] // group
            per_token = x.view(x.shape[0], units, group)
            key = (kind, layer)
            top = per_token.amax(dim=(0, 2)) if x.shape[0] else x.new_zeros(units)
            peak[key] = torch.maximum(peak[key], top) if key in peak else top
            total[key] = total.get(key, 0) + per_token.mean(dim=2).sum(dim=0)
            count[key] = count.get(key, 0) + x.shape[0]

        return hook

    try:
        for i, block in enumerate(arch.blocks(model)):
            handles.append(block.get_submodule(fam.ffn_down).register_forward_pre_hook(track("neurons", i, 1)))
            handles.append(block.get_submodule(fam.o).register_forward_pre_hook(track("heads", i, head_dim)))
        for batch in batches:
            tokens.set(batch.get("attention_mask"))
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [
        {
            f"{kind}_{stat}": (peak[(kind, i)] if stat == "max" else total[(kind, i)] / max(count[(kind, i)], 1))
            for kind in ("neurons", "heads")
            for stat in ("max", "mean")
        }
        for i in range(len(arch.blocks(model)))
    ]
