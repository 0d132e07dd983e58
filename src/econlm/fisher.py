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

import warnings
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


# ---------------------------------------------------------------------------------------------------------
# Least-squares rescaling layer by layer, in Kwon et al.'s order

MAX_SCALE = 10.0  # a larger least-squares scale means the kept units cannot stand in for the removed ones


class RepairStopped(UserWarning):
    """The layer-by-layer repair stopped early: a solve asked for a scale beyond its bound."""


class _Reached(Exception):
    """Raised once the layer being repaired has run: the layers after it are not needed."""


def _sublayer_sums(model: nn.Module, layer: int, batch: dict, first_token_only: bool = False) -> dict[str, torch.Tensor]:
    """One block's tensors on ``batch``'s real tokens, (N, width) float64: the attention output projection's input
    (``o_in``) and output (``o_out``), the FFN down-projection's (``down_in``, ``down_out``), and the residual each
    sublayer's output is added to (``o_residual``, ``down_residual``). ``first_token_only``: each example's first
    token alone (N = batch size)."""
    fam = arch.family(model.config)
    block = arch.blocks(model)[layer]
    seen: dict[str, torch.Tensor] = {}

    def block_input(module, args, kwargs):
        seen["block_in"] = args[0] if args else kwargs["hidden_states"]

    def around(name: str):
        def hook(module, args, out):
            seen[f"{name}_in"], seen[f"{name}_out"] = args[0], out

        return hook

    def ffn_input(module, args):
        seen["up_in"] = args[0]

    def reached(module, args, out):
        raise _Reached

    handles = [
        block.register_forward_pre_hook(block_input, with_kwargs=True),
        block.get_submodule(fam.o).register_forward_hook(around("o")),
        block.get_submodule(fam.ffn_up).register_forward_pre_hook(ffn_input),
        block.get_submodule(fam.ffn_down).register_forward_hook(around("down")),
        block.register_forward_hook(reached),
    ]
    device = next(model.parameters()).device
    try:
        model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    mask = batch.get("attention_mask")

    def real(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        if first_token_only:
            return x[:, 0]
        if mask is None:
            return x.reshape(-1, x.shape[-1])
        if mask.shape != x.shape[:2]:  # a chunked FFN, say: the hooks saw part of the tokens
            raise ValueError(f"layer {layer}: tensors of shape {tuple(x.shape)} do not match the mask's {tuple(mask.shape)}")
        return x[mask.bool().to(x.device)]

    out = {name: real(seen[name]) for name in ("o_in", "o_out", "down_in", "down_out") if name in seen}
    out["o_residual"] = real(seen["block_in"])
    # Post-norm blocks (BERT) add the FFN's output to the attention sublayer's normalized output, which is the
    # FFN's input; pre-norm blocks (Llama, GPT-2) add it to the block input plus the attention output.
    out["down_residual"] = real(seen["up_in"]) if fam.kind == "encoder" else out["o_residual"] + out["o_out"]
    return out


def _teacher_sums(model: nn.Module, layer: int, batch: dict, first_token_only: bool) -> dict[str, torch.Tensor]:
    """What the student's sublayers must reproduce: each sublayer's output plus its residual, (N, D)."""
    tensors = _sublayer_sums(model, layer, batch, first_token_only)
    return {name: tensors[f"{name}_out"] + tensors[f"{name}_residual"] for name in ("o", "down")}


def _bias(module: nn.Module) -> torch.Tensor | float:
    bias = getattr(module, "bias", None)
    return 0.0 if bias is None else bias.detach().double()


def _solve_near_one(ata: torch.Tensor, atb: torch.Tensor, ridge: float) -> torch.Tensor:
    """The least-squares scales, damped toward 1 (leaving a unit as it is), not toward 0: a unit the calibration
    data never fires, or a direction it cannot see, keeps its weights instead of losing them."""
    damping = ridge * ata.diagonal().mean().clamp_min(1e-30)
    ones = torch.ones_like(atb)
    system = ata + damping * torch.eye(len(atb), dtype=ata.dtype, device=ata.device)
    return ones + torch.linalg.solve(system, atb - ata @ ones)


@torch.no_grad()
def repair_layer_by_layer(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[dict],
    ridge: float = RIDGE,
    max_scale: float = MAX_SCALE,
    last_layer_first_token: bool = False,
) -> dict:
    """Rescale the kept units of the pruned ``student`` so that each sublayer of it reproduces the dense
    ``teacher``'s, layer by layer in order, heads before the FFN (Kwon et al.'s order).

    Unlike :func:`rescale_kept_units`, which reproduces each layer's output on the dense model's own inputs, the
    regressors here are the units' contributions on the *student's* inputs (its earlier layers already
    repaired) and the target is the teacher's sublayer sum: its output plus its residual, less the student's
    residual. So each layer also absorbs the error its earlier layers left. Once a solve asks for a scale beyond
    ``max_scale`` (the kept units cannot stand in for the removed ones), the repair stops there and leaves that
    sublayer and the later ones as pruned, as Kwon et al. do. ``last_layer_first_token``: the last layer matches the
    first token alone, all that a pooled classification head reads of it (Kwon et al. do this for the last FFN).

    Returns ``{"heads": [...], "neurons": [...], "stopped": None or "layer L heads|neurons"}``, the scales applied
    per layer (empty lists where none)."""
    from econlm.gates import scale_input_columns

    fam = arch.family(student.config)
    head_dim = arch.shape(student.config).head_dim
    layers = len(arch.blocks(student))
    applied: dict = {"heads": [[] for _ in range(layers)], "neurons": [[] for _ in range(layers)], "stopped": None}
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        for layer in range(layers):
            block = arch.blocks(student)[layer]
            first = last_layer_first_token and layer == layers - 1
            targets = [_teacher_sums(teacher, layer, batch, first) for batch in batches]
            for kind, path in (("heads", fam.o), ("neurons", fam.ffn_down)):
                module = block.get_submodule(path)
                width = arch.in_features(module)
                if width == 0:
                    continue
                columns = arch.in_columns(module).double()  # (width, D): what each input feature writes
                units = width // head_dim if kind == "heads" else width
                ata = torch.zeros(units, units, dtype=torch.float64, device=columns.device)
                atb = torch.zeros(units, dtype=torch.float64, device=columns.device)
                name = "o" if kind == "heads" else "down"
                group = head_dim if kind == "heads" else 1  # input features per unit
                writes = columns @ columns.T  # (width, width): the weights' half of the Gram, the same every batch
                for batch, teacher_sums in zip(batches, targets):
                    mine = _sublayer_sums(student, layer, batch, first)
                    # (N, D): what the kept units' contributions must add up to
                    target = teacher_sums[name] - _bias(module) - mine[f"{name}_residual"]
                    # Unit i's contribution is x_i W_i (its input features times the columns they write), so the
                    # Gram of contributions is (X^T X) * (W W^T) summed over each unit's features, without
                    # forming an (N, units, D) tensor; a head is head_dim features, a neuron one.
                    x = mine[f"{name}_in"]
                    ata += ((x.T @ x) * writes).view(units, group, units, group).sum(dim=(1, 3))
                    atb += (x * (target @ columns.T)).sum(dim=0).view(units, group).sum(dim=1)
                scales = _solve_near_one(ata, atb, ridge)
                if not torch.isfinite(scales).all() or scales.abs().max() > max_scale:
                    applied["stopped"] = f"layer {layer} {kind}"
                    warnings.warn(
                        f"least-squares repair stopped at layer {layer} {kind}: a scale of "
                        f"{float(scales.abs().max()):.3g} passes {max_scale:g}, so these units and the later layers "
                        "stay as pruned",
                        RepairStopped,
                        stacklevel=2,
                    )
                    return applied
                scale_input_columns(module, (scales.repeat_interleave(head_dim) if kind == "heads" else scales).float())
                applied[kind][layer] = scales.tolist()
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return applied
