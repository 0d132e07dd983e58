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
  gate freeze), moves the price after each optimizer step, and saves the price with every checkpoint, so
  ``train(resume_from_checkpoint=...)`` continues at the price it had reached.
- The priced cost is divided by the accumulation steps exactly when the Trainer does not divide the loss
  itself, so ``gradient_accumulation_steps`` does not multiply the tax.
- When ``train()`` returns, the hooks are gone and the gates are folded into the weights: evaluation,
  prediction and ``save_model`` see the model the gates chose (``finalize()`` returns their report).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from econlm.errors import UserError
from econlm.incentive import Incentive, TaxConfig, attach_tax

LOG_PREFIX = "econlm/"
PRICE_FILE = "econlm_price.json"


class _TaxCallback(TrainerCallback):
    def __init__(self, trainer: IncentiveTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        tax = self.trainer.tax
        tax.set_total_steps(state.max_steps)
        if not tax.attached:
            tax.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.tax.step(self.trainer._mean_share())

    def on_save(self, args, state, control, **kwargs):
        # The price is state too: a resumed run must continue at the price and budget it had reached.
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir() and self.trainer.is_world_process_zero():
            from econlm.runinfo import write_json

            write_json(folder / PRICE_FILE, self.trainer.tax.state_dict())


class IncentiveTrainer(Trainer):
    """A ``Trainer`` that trains under a compute tax. ``tax`` is a :class:`~econlm.incentive.TaxConfig` (the
    tax is attached to ``model``) or an :class:`~econlm.incentive.Incentive` you attached yourself."""

    def __init__(self, *args, tax: TaxConfig | Incentive, gate_lr: float = 0.1, **kwargs):
        if "tokens" in (tax.config if isinstance(tax, Incentive) else tax).cost:
            raise UserError(
                "IncentiveTrainer does not train learned token budgets yet (cost 'tokens'): use econlm train, or "
                "attach_tax in your own loop"
            )
        super().__init__(*args, **kwargs)
        self.tax = tax if isinstance(tax, Incentive) else attach_tax(self.model, tax)
        self.gate_lr = gate_lr
        self.tax_report: dict | None = None
        self.add_callback(_TaxCallback(self))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Train under the tax; afterwards the gates are folded into the weights (closed units become exact
        zeros), so evaluate, predict and save_model see the model the gates chose. One call per trainer."""
        if self.tax_report is not None:
            raise UserError("this IncentiveTrainer has trained and folded its gates; make a new one to train again")
        self._restore_price(resume_from_checkpoint)
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.tax.detach()  # hooks never outlive training, also when it raises
        self.tax_report = self.tax.finalize()
        return output

    def _restore_price(self, resume_from_checkpoint) -> None:
        if not resume_from_checkpoint:
            return
        folder = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        saved = Path(folder or "") / PRICE_FILE
        if saved.is_file():
            self.tax.load_state_dict(json.loads(saved.read_text()))

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
            priced = self.tax.loss(loss) - loss
            if self._loss_scaled_for_accumulation(num_items_in_batch):
                # The Trainer will not divide this loss by the accumulation steps (the task loss was normalised
                # by the items of the whole accumulated batch): the tax, a per-batch mean, is divided here.
                priced = priced / self.current_gradient_accumulation_steps
            loss = loss + priced
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        """The Trainer's own rule (training_step) for whether it divides the loss by the accumulation steps."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        accepts = bool(getattr(self, "model_accepts_loss_kwargs", False))
        return (accepts and num_items_in_batch is not None) or getattr(self, "compute_loss_func", None) is not None

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
        """The gates' report; folds them into the weights first when training has not already done so."""
        if self.tax_report is None:
            self.tax_report = self.tax.finalize()
        return self.tax_report
