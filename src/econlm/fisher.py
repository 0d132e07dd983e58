"""Kwon et al. (2022)'s retraining-free pruning criterion and repair, written for econlm's structures.

**Importance.** Put a mask variable ``m`` (1 at the start) on every attention head (its slice of the output
projection's input) and every FFN neuron (its down-projection input). The diagonal of the empirical Fisher
information of ``m``, ``sum over examples of (dL/dm)^2``, says how much the loss moves when a unit moves;
per-example gradients (one example at a time) keep the sign cancellations of a batch gradient out of it.

**Repair.** After units go, rescale the kept ones so that each layer's output is reproduced, in least
squares, on calibration data. For the FFN of a layer, the output is ``sum_i m_i a_i w_i`` (activation
``a_i``, down-projection column ``w_i``), so the normal equations need only two Gram matrices: the
activations' ``C = sum_t a_t a_t^T`` and the columns' ``W^T W``; their elementwise product is the system
matrix. For heads the same holds with each head's contribution ``W_o[:, h] o_h(t)``. With ``K`` the kept
units, ``m_K = (M_KK + ridge I)^-1 M_K,all 1``: the kept units take over what the removed ones did, as far
as a linear rescaling can.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from econlm import arch
from econlm.errors import UserError

RIDGE = 1e-4  # relative to the mean diagonal of the system matrix: keeps the solve stable


@contextmanager
def mask_hooks(model: nn.Module, masks: dict[str, list[torch.Tensor]]) -> Iterator[None]:
    """Multiply each head's output-projection input slice and each neuron's activation by its mask."""
    from econlm.gates import scale_input_hook

    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    handles = []
    try:
        for i, block in enumerate(arch.blocks(model)):
            heads, neurons = masks["heads"][i], masks["neurons"][i]
            handles.append(
                block.get_submodule(fam.o).register_forward_pre_hook(scale_input_hook(lambda m=heads: m, head_dim))
            )
            handles.append(
                block.get_submodule(fam.ffn_down).register_forward_pre_hook(scale_input_hook(lambda m=neurons: m, 1))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def _examples(batch: dict) -> Iterator[dict]:
    """One example at a time, padding dropped (a per-example gradient must not see other examples)."""
    size = batch["input_ids"].shape[0]
    mask = batch.get("attention_mask")
    for i in range(size):
        one = {}
        for key, value in batch.items():
            row = value[i : i + 1]
            if mask is not None and row.dim() == 2:  # token-level inputs (and LM labels): real tokens only
                row = row[:, mask[i].bool()]
            one[key] = row
        yield one


def fisher_importance(model: nn.Module, batches: Sequence[dict] | None) -> list[dict[str, torch.Tensor]]:
    """Per layer ``{"heads": (H,), "neurons": (F,)}``: the empirical Fisher diagonal of the unit masks on
    ``batches`` (model inputs with ``labels``, so the model returns its loss)."""
    if not batches:
        raise ValueError("Fisher importance needs calibration batches with labels")
    if any("labels" not in b for b in batches):
        raise UserError("Fisher importance needs labelled calibration data (the gradient of the task loss)")
    from econlm.flops import Structure

    structure = Structure.of_model(model)  # the real per-layer widths (a compacted model has its own)
    layers = len(structure.heads)
    device = next(model.parameters()).device
    masks = {
        "heads": [torch.ones(h, requires_grad=True, device=device) for h in structure.heads],
        "neurons": [torch.ones(f, requires_grad=True, device=device) for f in structure.ffn],
    }
    fisher = {kind: [torch.zeros_like(m) for m in masks[kind]] for kind in masks}
    variables, sums = masks["heads"] + masks["neurons"], fisher["heads"] + fisher["neurons"]
    was_training = model.training
    model.eval()  # dropout off: the gradient of the model as it will be used
    try:
        with mask_hooks(model, masks):
            for batch in batches:
                for example in _examples(batch):
                    loss = model(**{k: v.to(device) for k, v in example.items()}).loss
                    for total, grad in zip(sums, torch.autograd.grad(loss, variables)):
                        total += grad.detach().pow(2)
    finally:
        model.train(was_training)
    return [{"heads": fisher["heads"][i], "neurons": fisher["neurons"][i]} for i in range(layers)]


# ---------------------------------------------------------------------------------------------------------
# Least-squares rescaling


@torch.no_grad()
def output_grams(model: nn.Module, batches: Sequence[dict]) -> list[dict[str, torch.Tensor]]:
    """Per layer, the system matrices of the rescaling: ``{"neurons": (F, F), "heads": (H, H)}`` (float64),
    the Gram matrices of the units' contributions to the layer's output over real tokens."""
    from econlm.activations import TokenMask

    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    tokens = TokenMask()
    acts: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def record(kind: str, layer: int, module: nn.Module):
        def hook(mod, args):
            x = tokens.select(args[0]).double()  # (N, units * group)
            if kind == "neurons":
                gram = x.T @ x  # C = sum_t a_t a_t^T
            else:
                w = arch.in_columns(module).double()  # (H * d, D): rows are input features
                heads = x.shape[-1] // head_dim
                contrib = torch.einsum("nhd,hde->nhe", x.view(-1, heads, head_dim), w.view(heads, head_dim, -1))
                gram = torch.einsum("nhe,nge->hg", contrib, contrib)
            key = (kind, layer)
            acts[key] = acts[key] + gram if key in acts else gram

        return hook

    was_training = model.training
    device = next(model.parameters()).device
    try:
        for i, block in enumerate(arch.blocks(model)):
            down, o = block.get_submodule(fam.ffn_down), block.get_submodule(fam.o)
            handles.append(down.register_forward_pre_hook(record("neurons", i, down)))
            handles.append(o.register_forward_pre_hook(record("heads", i, o)))
        model.eval()
        for batch in batches:
            tokens.set(batch.get("attention_mask"))
            model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    out = []
    for i, block in enumerate(arch.blocks(model)):
        columns = arch.in_columns(block.get_submodule(fam.ffn_down)).double()  # (F, D)
        out.append({"neurons": acts[("neurons", i)] * (columns @ columns.T), "heads": acts[("heads", i)]})
    return out


def solve_scales(system: torch.Tensor, keep: Sequence[int], ridge: float = RIDGE) -> torch.Tensor:
    """The least-squares scales of the kept units: ``(M_KK + ridge I) m = M_K,all 1``."""
    keep = torch.as_tensor(list(keep), dtype=torch.long)
    kk = system[keep][:, keep]
    rhs = system[keep].sum(dim=1)
    damping = ridge * kk.diagonal().mean().clamp_min(1e-30)
    return torch.linalg.solve(kk + damping * torch.eye(len(keep), dtype=kk.dtype, device=kk.device), rhs)


@torch.no_grad()
def rescale_kept_units(model: nn.Module, plans, grams: list[dict[str, torch.Tensor]]) -> list[dict[str, list[float]]]:
    """Scale the kept units of an already pruned ``model`` (``plans`` say which were kept, in the original
    numbering; ``grams`` come from the model before pruning). Returns the scales per layer."""
    from econlm.gates import scale_input_columns

    fam = arch.family(model.config)
    head_dim = arch.shape(model.config).head_dim
    applied = []
    for i, (block, plan) in enumerate(zip(arch.blocks(model), plans)):
        neuron_scale = solve_scales(grams[i]["neurons"], plan.keep_neurons).float()
        head_scale = solve_scales(grams[i]["heads"], plan.keep_heads).float()
        scale_input_columns(block.get_submodule(fam.ffn_down), neuron_scale)
        scale_input_columns(block.get_submodule(fam.o), head_scale.repeat_interleave(head_dim))
        applied.append({"heads": head_scale.tolist(), "neurons": neuron_scale.tolist()})
    return applied
