"""The compute tax in your own Hugging Face Trainer script: a flops budget on SST-2, then compaction.

    python examples/trainer_tax.py --model minilm --data-dir ../shared/data --out runs/trainer_tax
    python examples/trainer_tax.py --model DIR --data-dir DIR --out OUT --steps 6 --limit 48   # a quick check

Only the lines marked ``econlm`` differ from a plain Trainer script.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

import econlm
from econlm.hf import IncentiveTrainer  # econlm
from econlm.models import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm or a checkpoint folder")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--limit", type=int, default=None, help="training examples")
    parser.add_argument("--budget", type=float, default=0.5)
    args = parser.parse_args()

    location = resolve(args.model).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=2, attn_implementation="eager")

    def dataset(split: str, limit: int | None) -> Dataset:
        examples = econlm.load_examples("sst2", split, args.data_dir, limit)
        encoded = tokenizer([e.text_a for e in examples], truncation=True, max_length=64)
        return Dataset.from_dict({**encoded, "labels": [e.label for e in examples]})

    train, dev = dataset("train", args.limit), dataset("dev", 64)
    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=5e-5,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = IncentiveTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        tax=econlm.TaxConfig(cost=("flops",), budget=args.budget, gate_freeze=0.7),  # econlm
    )
    trainer.train()
    gates = trainer.finalize()["gates"]  # econlm: closed units become exact zeros
    batches = [DataCollatorWithPadding(tokenizer)([train[i] for i in range(j, min(j + 16, len(train)))])
               for j in range(0, min(len(train), 64), 16)]
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    small, report = econlm.compact_model(model, batches)  # econlm: remove them
    summary = {
        "eval_loss": trainer.evaluate()["eval_loss"],
        "closed_heads": gates["heads"]["closed"],
        "closed_neurons": gates["neurons"]["closed"],
        "removed": report.to_json()["removed"],
        "flops_ratio": report.flops_ratio,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
