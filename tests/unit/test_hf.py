"""The tax inside a Hugging Face Trainer: the loss, the gates' optimizer group, the price, the logs."""

import json
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, TrainingArguments

from econlm.errors import UserError
from econlm.hf import IncentiveTrainer
from econlm.incentive import TaxConfig
from tests.conftest import save_tiny_checkpoint, tiny_model, write_tiny_glue

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from transformers import AutoTokenizer

    from econlm.data import load_examples
    from econlm.models import resolve

    root = tmp_path_factory.mktemp("hf")
    data = write_tiny_glue(root / "data")
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm").location)
    examples = load_examples("sst2", "train", str(data))
    encoded = tokenizer([e.text_a for e in examples], truncation=True, max_length=32)
    dataset = Dataset.from_dict({**encoded, "labels": [e.label for e in examples]})
    return {"root": root, "data": data, "tokenizer": tokenizer, "dataset": dataset}


def _trainer(tiny_data, tmp_path, tax, steps=6):
    model = tiny_model("bert", head="seq-cls", vocab_size=30522).train()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    return IncentiveTrainer(
        model=model,
        args=args,
        train_dataset=tiny_data["dataset"],
        eval_dataset=tiny_data["dataset"],
        data_collator=DataCollatorWithPadding(tiny_data["tokenizer"]),
        tax=tax,
        gate_lr=0.05,
    )


def test_the_trainer_prices_compute_and_logs_it(tiny_data, tmp_path):
    trainer = _trainer(tiny_data, tmp_path, TaxConfig(cost=("flops",), budget=0.5, price_lr=1.0, gate_freeze=0.5))
    gate_ids = {id(p) for p in trainer.tax.gate_parameters()}
    trainer.train()
    # The gates got their own group: their own rate and no weight decay.
    gate_groups = [g for g in trainer.optimizer.param_groups if g.get("econlm_gates")]
    assert len(gate_groups) == 1 and gate_groups[0]["weight_decay"] == 0.0
    assert gate_groups[0]["lr"] <= 0.05  # the linear schedule decays it from 0.05
    assert {id(p) for p in gate_groups[0]["params"]} == gate_ids and len(gate_ids) == 4  # 2 layers x heads, neurons
    # The controller raised the price from 0 while the share was above the budget; the logs carry it.
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 6
    assert all("econlm/price/lambda" in e and "econlm/cost/compute_share" in e for e in logs)
    assert logs[0]["econlm/price/lambda"] == 0.0 and logs[-1]["econlm/price/lambda"] > 0.0
    assert trainer.tax.price.step == 6
    # Training ended: the hooks are gone; evaluation reports the task loss alone.
    assert not trainer.tax.attached
    assert "econlm/price/lambda" not in trainer.evaluate()
    folded = trainer.finalize()
    assert folded["gates"]["heads"]["total"] == 8 and not hasattr(trainer.model, "econlm_gates")


def test_the_training_loss_is_the_task_loss_plus_the_priced_cost(tiny_data, tmp_path):
    trainer = _trainer(tiny_data, tmp_path, TaxConfig(cost=("ffn_l1",), lam=0.5), steps=1)
    batch = DataCollatorWithPadding(tiny_data["tokenizer"])([tiny_data["dataset"][i] for i in range(4)])
    model = trainer.model.train()
    with trainer.tax:
        loss = trainer.compute_loss(model, dict(batch))
        reading = trainer.tax.reading
        task = trainer.tax.task_loss
    assert float(loss.detach()) == pytest.approx(float(task.detach()) + 0.5 * reading.terms["ffn_l1"], rel=1e-6)
    model.eval()
    with trainer.tax, torch.no_grad():
        assert float(trainer.compute_loss(model, dict(batch)).detach()) == pytest.approx(float(
            model(**batch).loss
        ), rel=1e-6)


def test_the_example_script_runs_on_a_tiny_model(tiny_data, tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "examples" / "trainer_tax.py"), "--model", str(checkpoint),
               "--data-dir", str(tiny_data["data"]), "--out", str(out), "--steps", "6", "--limit", "48"]
    subprocess.run(command, check=True, capture_output=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_loss"] > 0 and summary["flops_ratio"] <= 1.0


def test_under_gradient_accumulation_the_tax_is_divided_exactly_when_the_trainer_does_not_divide(tiny_data, tmp_path):
    trainer = _trainer(tiny_data, tmp_path, TaxConfig(cost=("ffn_l1",), lam=0.5), steps=1)
    batch = DataCollatorWithPadding(tiny_data["tokenizer"])([tiny_data["dataset"][i] for i in range(4)])
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    with trainer.tax:
        for scaled, expected_share in ((False, 1.0), (True, 0.5)):
            trainer.loss_is_scaled_for_ga = scaled  # the Trainer's own switch (training_step reads it too)
            loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(4))
            task, cost = trainer.tax.task_loss, trainer.tax.reading.terms["ffn_l1"]
            # Not scaled: the Trainer divides the whole loss by 2 later. Scaled: it does not, so the tax is.
            assert float(loss.detach()) == pytest.approx(float(task.detach()) + expected_share * 0.5 * cost, rel=1e-6)


def test_training_folds_the_gates_and_a_resumed_run_continues_at_its_price(tiny_data, tmp_path):
    tax = TaxConfig(cost=("flops",), budget=0.5, price_lr=1.0, gate_freeze=1.0)
    trainer = _trainer(tiny_data, tmp_path, tax, steps=4)
    trainer.args.save_strategy = "steps"
    trainer.args.save_steps = 2
    trainer.train()
    assert not hasattr(trainer.model, "econlm_gates")  # folded: evaluate and save_model see the chosen model
    assert trainer.finalize()["gates"]["heads"]["total"] == 8
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / "econlm_price.json").read_text())
    assert saved["price"]["step"] == 2 and saved["price"]["current"] > 0
    with pytest.raises(UserError, match="make a new one"):
        trainer.train()
    again = _trainer(tiny_data, tmp_path, tax, steps=4)
    again._restore_price(str(tmp_path / "out" / "checkpoint-2"))
    assert again.tax.price.state_dict() == saved["price"]
