"""The compute tax inside a Hugging Face ``Trainer``: a few lines in a script you already have.

::

    from econlm import TaxConfig
    from econlm.hf import IncentiveTrainer

    trainer = IncentiveTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                               tax=TaxConfig(cost=("flops",), budget=0.5), gate_lr=0.1)
    trainer.train()              # logs econlm/price/lambda, econlm/cost/*, econlm/cost/compute_share ...
    trainer.finalize()           # fold the gates: closed heads and neurons become exact zeros
    small = econlm.compact_model(model, batches)   # then remove them

What it changes in the Trainer, and why:

- ``compute_loss`` adds ``lambda * C`` (and the budget anchor) to the task loss while training; evaluation
  losses stay the task loss alone, so ``eval_loss`` compares across prices.
- ``create_optimizer`` gives the gates their own parameter group (their own rate, no weight decay), as
  ``econlm train`` does: gates are logits that move orders of magnitude faster than the weights.
- ``log`` adds the tax's metrics under ``econlm/`` to every training log, so every logger the Trainer
  reports to (TensorBoard, W&B, the console) receives them.
- A callback attaches the hooks when training begins (the run's length sets the budget warm-up and the
  gate freeze), drops the gradients of fixed gates before each optimizer step, moves the price after it,
  and detaches when training ends.
"""

from __future__ import annotations

from transformers import Trainer, TrainerCallback

from econlm.incentive import Incentive, TaxConfig, attach_tax

LOG_PREFIX = "econlm/"


class _TaxCallback(TrainerCallback):
    def __init__(self, trainer: IncentiveTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        tax = self.trainer.tax
        tax.set_total_steps(state.max_steps)
        if not tax.attached:
            tax.__enter__()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.tax.drop_frozen_gate_gradients()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.tax.step(self.trainer._mean_share())

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.tax.detach()


class IncentiveTrainer(Trainer):
    """A ``Trainer`` that trains under a compute tax. ``tax`` is a :class:`~econlm.incentive.TaxConfig` (the
    tax is attached to ``model``) or an :class:`~econlm.incentive.Incentive` you attached yourself."""

    def __init__(self, *args, tax: TaxConfig | Incentive, gate_lr: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.tax = tax if isinstance(tax, Incentive) else attach_tax(self.model, tax)
        self.gate_lr = gate_lr
        self.add_callback(_TaxCallback(self))

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        gates = self.tax.gate_parameters()
        if gates and not any(group.get("econlm_gates") for group in optimizer.param_groups):
            ids = set(map(id, gates))
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group({"params": gates, "lr": self.gate_lr, "weight_decay": 0.0, "econlm_gates": True})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.tax.attached:  # the hooks read which tokens are real from every batch, in evaluation too
            self.tax.begin(inputs.get("attention_mask"), self.state.global_step)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.tax.attached:
            loss = self.tax.loss(loss)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.tax.reading is not None:  # a training log, not an evaluation's
            logs = {**logs, **{LOG_PREFIX + k: v for k, v in self.tax.metrics().items()}}
        super().log(logs, start_time)

    def _mean_share(self) -> float | None:
        """The compute share of the last step, averaged over processes (the price must be one price)."""
        reading = self.tax.reading
        if reading is None or reading.share is None or self.accelerator.num_processes == 1:
            return None
        import torch

        share = torch.tensor([reading.share], device=self.accelerator.device)
        return float(self.accelerator.reduce(share, "mean"))

    def finalize(self) -> dict:
        """Fold the gates into the weights (closed units become exact zeros) and remove them."""
        return self.tax.finalize()
