"""The compute tax on a model you hold, in any training loop: ``L = L_task + lambda * C_comp``.

In the spirit of PEFT's ``get_peft_model(model, config)``::

    from econlm import TaxConfig, attach_tax

    tax = attach_tax(model, TaxConfig(cost=("flops",), budget=0.5), total_steps=1000)
    optimizer = torch.optim.AdamW(tax.parameter_groups(lr=5e-5, gate_lr=0.1))
    with tax:                                  # hooks, attention taps and gates are live inside
        for batch in batches:
            tax.begin(batch["attention_mask"])
            out = model(**batch)
            loss = tax.loss(out.loss)          # the task loss plus the priced cost (and the budget anchor)
            loss.backward(); optimizer.step(); optimizer.zero_grad()   # fixed gates get no gradient
            tax.step()                         # the price moves (controller) or follows its schedule
    print(tax.metrics())
    report = tax.finalize()                    # fold the gates into the weights; the model is plain again

``econlm train`` and the Hugging Face :class:`~econlm.hf.IncentiveTrainer` are built on this object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from econlm.errors import UserError

GATE_PREFIX = "econlm_gates."


@dataclass(frozen=True)
class TaxConfig:
    """What is taxed, at what price. Validated on construction."""

    cost: tuple[str, ...] = ("ffn_l1",)
    lam: float = 0.0  # the price; the controller's starting price when a budget is set
    target: str = "both"  # attention, ffn or both
    attention_weight: float = 1.0
    ffn_weight: float = 1.0
    schedule: str = "constant"  # constant, warmup or controller (implied by budget)
    warmup_steps: int = 0
    budget: float | None = None  # target share of dense compute (flops) or dense latency (latency)
    price_lr: float = 0.5  # eta of the controller's dual ascent
    budget_rho: float = 20.0  # weight of the anchor 0.5 * rho * (share - budget)^2
    budget_warmup: float = 0.5  # share of training over which the budget falls from 1 to its value
    gate_freeze: float = 0.7  # share of training after which gates are fixed
    latency_table: str | None = None  # the table a latency cost prices gates by
    cost_reduction: str = "mean"  # mean per token and unit, or the paper's sums ("sum")
    token_temperature: float = 0.1  # tokens: temperature of the soft mask sigmoid((value - threshold) / T)

    def __post_init__(self) -> None:
        from econlm.cost import CONTROLLABLE, parse_cost_names, target_components
        from econlm.prices import SCHEDULES

        object.__setattr__(self, "cost", parse_cost_names(self.cost))
        target_components(self.target)
        if not math.isfinite(self.lam) or self.lam < 0:
            raise UserError(f"--lam must be a non-negative number (a price), not {self.lam}")
        if self.budget is not None:
            if not (0 < self.budget <= 1):
                raise UserError(f"--budget {self.budget} must lie in (0, 1]: a share of the dense compute")
            if not CONTROLLABLE & set(self.cost):
                raise UserError("--budget needs a cost that measures compute: add --cost flops (or latency, or tokens)")
            object.__setattr__(self, "schedule", "controller")
        elif self.schedule == "controller":
            raise UserError("the controller schedule needs --budget (a target share of dense compute)")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}")
        from econlm.cost import REDUCTIONS

        if self.cost_reduction not in REDUCTIONS:
            raise UserError(f"--cost-reduction must be one of {', '.join(REDUCTIONS)}, not {self.cost_reduction!r}")
        if {"flops", "latency"} <= set(self.cost):
            raise UserError("flops and latency price the same gates; choose one of them")
        if not (math.isfinite(self.token_temperature) and self.token_temperature > 0):
            raise UserError(f"--token-temperature must be a positive number, not {self.token_temperature}")
        if "latency" in self.cost and not self.latency_table:
            raise UserError("--cost latency needs --latency-table FILE (make one with econlm latency-table)")
        if {"tokens", "latency"} <= set(self.cost):  # before anything is written: the table must price tokens
            from econlm.cost import tokens_without_curve
            from econlm.latency_table import load_table

            if load_table(self.latency_table).tokens is None:
                raise UserError(tokens_without_curve(self.latency_table))
        for name in ("gate_freeze", "budget_warmup"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{name.replace('_', '-')} must lie in [0, 1], not {getattr(self, name)}")
        # A negative weight or anchor would reward compute; a negative eta would run the controller backwards.
        for name in ("attention_weight", "ffn_weight", "budget_rho", "price_lr", "warmup_steps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a number >= 0, not {value}")
        if self.budget is not None and self.price_lr <= 0:
            raise UserError("--price-lr must be positive with --budget: it is how fast the price moves")

    @classmethod
    def from_settings(cls, settings) -> TaxConfig:
        """The tax part of a config that carries these fields (a TrainConfig)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


class Incentive:
    """Cost terms, gates and a price attached to one model. See the module docstring for the loop."""

    def __init__(self, model: nn.Module, config: TaxConfig, total_steps: int | None = None, tokenizer=None):
        from econlm.cost import CostMeter
        from econlm.prices import Price
        from econlm.tokens import special_token_ids

        self.model = model
        self.config = config
        table = None
        if config.latency_table:
            from econlm.latency_table import check_table, load_table

            table = load_table(config.latency_table)
            check_table(table, model.config, config.latency_table)
            if config.budget is not None:
                _check_reachable(config, table)  # before the meter adds gates to the model
        if config.budget is not None and "flops" in config.cost:
            _check_flops_reachable(config, model)
        self.meter = CostMeter(
            model,
            config.cost,
            config.target,
            config.attention_weight,
            config.ffn_weight,
            latency_table=table,
            reduction=config.cost_reduction,
            token_temperature=config.token_temperature,
            special_ids=tuple(special_token_ids(tokenizer)),  # tokens: the tokenizer's [CLS]/[SEP] always stay
        )
        self.price = Price(config.schedule, config.lam, config.warmup_steps, config.budget, config.price_lr)
        self.total_steps = None
        self.set_total_steps(total_steps)
        self.reading = None
        self.frozen = False
        self._stack = None
        self._freeze_hooks: list = []
        self._finalized: dict | None = None

    # -- setup ------------------------------------------------------------------------------------------

    def set_total_steps(self, total_steps: int | None) -> None:
        """The run's length sets when the budget reaches its value and when gates freeze."""
        self.total_steps = total_steps
        if total_steps:
            self.price.target_warmup_steps = int(self.config.budget_warmup * total_steps)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n.startswith(GATE_PREFIX)]

    def token_parameters(self) -> list[nn.Parameter]:
        """The learned token thresholds (cost ``tokens``), one per layer but the last."""
        from econlm.learned_tokens import PREFIX

        return [p for n, p in self.model.named_parameters() if n.startswith(PREFIX)]

    def parameter_groups(
        self, lr: float, gate_lr: float = 0.1, weight_decay: float = 0.01, token_lr: float = 0.01
    ) -> list[dict]:
        """AdamW groups: the model's weights; the gates and the token thresholds each at their own rate without
        weight decay."""
        gates, thresholds = self.gate_parameters(), self.token_parameters()
        own = set(map(id, gates + thresholds))
        groups = [
            {
                "params": [p for p in self.model.parameters() if id(p) not in own],
                "weight_decay": weight_decay,
                "lr": lr,
            }
        ]
        if gates:
            groups.append({"params": gates, "lr": gate_lr, "weight_decay": 0.0})
        if thresholds:
            groups.append({"params": thresholds, "lr": token_lr, "weight_decay": 0.0})
        return groups

    @property
    def attached(self) -> bool:
        """Whether the hooks are live (inside ``with tax:``)."""
        return self._stack is not None

    def __enter__(self) -> Incentive:
        if self.attached:  # hooks twice would scale every unit by its gate squared
            raise RuntimeError("the tax is already attached")
        if self._finalized is not None:
            raise RuntimeError("the tax was finalized: its gates are folded into the weights")
        stack = self.meter.attached()
        stack.__enter__()
        self._stack = stack
        return self

    def __exit__(self, *exc) -> bool:
        self.detach()
        return False

    def detach(self) -> None:
        """Remove every hook and attention tap; the gates stay until :meth:`finalize` folds them."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.__exit__(None, None, None)
        for handle in self._freeze_hooks:
            handle.remove()
        self._freeze_hooks = []

    # -- one step ---------------------------------------------------------------------------------------

    def begin(self, attention_mask: torch.Tensor | None, step: int | None = None) -> None:
        """Call before the forward pass: which tokens are real, and whether the gates are now fixed."""
        if not self.attached:
            raise RuntimeError("the tax is not attached: use `with tax:` around the training loop")
        self.frozen = self._freeze_gates_if_due(self.price.step if step is None else step)
        self.meter.begin(attention_mask)

    def loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        """The task loss plus lambda times the cost (plus the budget anchor while the gates learn)."""
        self.reading = self.meter.read()
        total = task_loss + self.price.current * self.reading.total
        if self.config.budget is not None and not self.frozen and self.reading.share_tensor is not None:
            # Augmented Lagrangian: dual ascent alone only ever pushes gates shut (lambda >= 0), and a closed
            # gate gets no task gradient; the anchor reopens gates when the share undershoots the budget.
            total = total + 0.5 * self.config.budget_rho * (self.reading.share_tensor - self.price.target()) ** 2
        self.task_loss, self.total_loss = task_loss, total
        return total

    def step(self, share: float | None = None) -> float:
        """Call after the optimizer step; ``share`` overrides the measured compute share (averaged over
        processes, say). Returns the price for the next step."""
        share = self.reading.share if share is None and self.reading is not None else share
        if self.frozen:
            self.price.step += 1  # the schedule's clock runs on; a fixed structure has nothing to price
            return self.price.current
        return self.price.update(share)

    def _freeze_gates_if_due(self, step: int) -> bool:
        """From ``gate_freeze`` of training on, gates are deterministic and stop learning, and so are token
        thresholds (their mask turns hard): the remaining steps fine-tune the weights under the mask the gates
        and thresholds chose."""
        from econlm.gates import get_gates
        from econlm.learned_tokens import get_thresholds

        learned = [m for m in (get_gates(self.model), get_thresholds(self.model)) if m is not None]
        if not learned or not self.total_steps or step < int(self.config.gate_freeze * self.total_steps):
            return False
        for module in learned:
            module.eval()  # model.train() switched them back on; in eval mode they are deterministic
        if not self._freeze_hooks:
            # Drop each gate's gradient as soon as backward produces it: whatever loop runs the optimizer (ours,
            # a Trainer, the user's), fixed gates then take no step and do not count in gradient clipping.
            self._freeze_hooks = [
                p.register_post_accumulate_grad_hook(lambda param: setattr(param, "grad", None))
                for p in self.gate_parameters() + self.token_parameters()
            ]
        return True

    # -- reporting --------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The last step's losses, cost terms, price and compute share, keyed for loggers."""
        out = {"price/lambda": self.price.current}
        if self.reading is None:
            return out
        out["loss/task"] = float(self.task_loss.detach())
        out["loss/total"] = float(self.total_loss.detach())
        out.update({f"cost/{k}": v for k, v in self.reading.terms.items()})
        if self.reading.share is not None:
            out["cost/compute_share"] = self.reading.share
        if self.config.budget is not None:
            out["price/budget_in_force"] = self.price.target()
        for p in self.token_parameters():
            out.update({f"tokens/threshold_{i}": t for i, t in enumerate(p.detach().cpu().tolist())})
        return out

    def check_finite(self, step: int) -> None:
        """A NaN or infinite loss names the step and the term (raises :class:`NonFiniteLoss`)."""
        task = float(self.task_loss.detach())
        if not math.isfinite(task):
            raise NonFiniteLoss(f"step {step}: the task loss is {task}")
        for name, value in self.reading.terms.items():
            if not math.isfinite(value):
                raise NonFiniteLoss(f"step {step}: the cost term {name} is {value}")
        total = float(self.total_loss.detach())
        if not math.isfinite(total):
            raise NonFiniteLoss(f"step {step}: the total loss is {total} (lambda times the cost overflowed)")

    def gates_report(self) -> dict | None:
        """Expected compute share and closed gates per layer (None without gates)."""
        from econlm.cost import Flops
        from econlm.gates import gate_values, heads_per_gate

        priced = [t for t in self.meter.terms if isinstance(t, Flops)]
        if not priced:
            return None
        report = {"expected_compute_share": priced[0].compute_share()}
        structure = priced[0].structure
        for name, layers in gate_values(self.model).items():
            # A head gate covers a K/V group: counted here in the query heads it closes.
            size = [heads_per_gate(structure, i) if name == "heads" else 1 for i in range(len(layers))]
            closed = [n * sum(1 for v in layer if v == 0.0) for n, layer in zip(size, layers, strict=True)]
            report[name] = {
                "closed_per_layer": closed,
                "total": sum(n * len(layer) for n, layer in zip(size, layers, strict=True)),
                "closed": sum(closed),
            }
            if name == "heads" and max(size) > 1:
                report[name]["gate_covers"] = "a K/V group: its K/V head and the query heads reading it"
        return report

    def state_dict(self) -> dict:
        return {"price": self.price.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.price.load_state_dict(state["price"])

    def tokens_term(self):
        """The ``tokens`` cost term, or None."""
        from econlm.cost import Tokens

        return next((t for t in self.meter.terms if isinstance(t, Tokens)), None)

    def finalize(self) -> dict:
        """Detach, fold the gates into the weights (closed units become exact zeros) and remove them; take the
        learned token thresholds off the model. Returns ``{"gates": report before folding, "folded": per-layer
        gate values, "tokens": what token_thresholds.json holds, or None}`` (the same on later calls)."""
        from econlm.gates import fold_gates

        if self._finalized is None:
            self.detach()
            report = self.gates_report()
            term = self.tokens_term()
            tokens = term.learned.remove() if term is not None else None
            self._finalized = {"gates": report, "folded": fold_gates(self.model), "tokens": tokens}
        return self._finalized


def _check_reachable(config: TaxConfig, table) -> None:
    """A latency budget below what removing every removable unit reaches would make the price grow without
    bound: embeddings, norms and the task head cost time that no gate saves."""
    from econlm.cost import target_components

    components = target_components(config.target)
    model, layers = table.model, table.model["layers"]
    heads = [table.group if "attention" in components else model["heads"]] * layers  # one K/V group stays
    ffn = [1 if "ffn" in components else model["intermediate"]] * layers
    floor = table.predict(heads, ffn) / table.dense_seconds
    if config.budget < floor:
        raise UserError(
            f"--budget {config.budget} is below what this latency table says removing units can reach "
            f"({floor:.3f} of dense latency with --target {config.target}); choose a budget of at least {floor:.2f}"
        )


def _check_flops_reachable(config: TaxConfig, model: nn.Module, seq_len: int = 128) -> None:
    """A FLOPs budget that only closing every K/V group or every neuron of a layer would meet is out of reach:
    a layer keeps at least one of each (compaction cannot empty it), so refuse it and say what is reachable."""
    from econlm.cost import target_components
    from econlm.flops import Structure, unit_macs_per_token

    components = target_components(config.target)
    structure = Structure.of_model(model)
    kept = dense = 0.0
    for layer in range(structure.layers):
        unit = unit_macs_per_token(structure, layer, seq_len)
        if "attention" in components:
            kept, dense = kept + unit["kv_group"], dense + unit["kv_group"] * structure.kv_heads[layer]
        if "ffn" in components:
            kept, dense = kept + unit["ffn_neuron"], dense + unit["ffn_neuron"] * structure.ffn[layer]
    floor = kept / dense
    if config.budget < floor:
        what = "K/V group" if structure.kv_heads[0] < structure.heads[0] else "head"
        raise UserError(
            f"--budget {config.budget} would remove every {what} or every FFN neuron of a layer, and each layer keeps "
            f"at least one of each ({floor:.3f} of the gated FLOPs with --target {config.target}); choose a budget "
            f"of at least {math.ceil(floor * 1000) / 1000:g}"
        )


class NonFiniteLoss(Exception):
    """A NaN or infinite loss or cost term."""


def attach_tax(
    model: nn.Module, config: TaxConfig | None = None, total_steps: int | None = None, tokenizer=None, **settings
):
    """Attach cost terms, gates and a price to ``model``; returns the :class:`Incentive` handle.

    ``settings`` are :class:`TaxConfig` fields, for ``attach_tax(model, cost=("flops",), budget=0.5)``. With the
    ``tokens`` cost pass the ``tokenizer``: its [CLS]/[SEP] ids are never dropped.
    """
    if config is None:
        config = TaxConfig(**settings)
    elif settings:
        raise TypeError("give either a TaxConfig or its fields, not both")
    return Incentive(model, config, total_steps, tokenizer)
