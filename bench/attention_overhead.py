"""Benchmark (issue: scarcity probe): the cost of econlm's instrumentation.

    python bench/attention_overhead.py [--threads 2] [--repeats 20]

Forward time of the same model on the same batch with (a) plain eager attention, (b) PyTorch SDPA, and
(c) econlm's budgeted attention at the full budget with statistics on; ratios of medians from one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import markdown_table, save  # noqa: E402

from econlm.attention import budgeted_attention  # noqa: E402
from econlm.latency import measure  # noqa: E402
from econlm.models import load_model  # noqa: E402


def time_model(spec: str, batch: int, length: int, repeats: int) -> dict:
    loaded = load_model(spec)
    model = loaded.model
    ids = torch.randint(1000, 20000, (batch, length))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def forward():
        with torch.no_grad():
            model(**inputs)

    timings = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        timings[impl] = measure(forward, warmup=3, repeats=repeats).as_dict()
    model.set_attn_implementation("eager")
    with budgeted_attention(model, "full") as stats:
        timings["econlm_full_stats"] = measure(forward, warmup=3, repeats=repeats).as_dict()
    assert stats.rows > 0
    eager = timings["eager"]["median"]
    return {
        "model": spec,
        "batch": batch,
        "seq_len": length,
        "timings": timings,
        "ratio_to_eager": {k: v["median"] / eager for k, v in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("minilm", 32, 128), ("minilm", 1, 128), ("smollm2", 4, 512)]
    results = [time_model(spec, b, n, args.repeats) for spec, b, n in cases]
    rows = [
        [
            r["model"],
            r["batch"],
            r["seq_len"],
            r["ratio_to_eager"]["sdpa"],
            r["ratio_to_eager"]["econlm_full_stats"],
            r["timings"]["eager"]["median"] * 1000,
        ]
        for r in results
    ]
    table = markdown_table(
        ["model", "batch", "seq len", "sdpa / eager", "econlm full+stats / eager", "eager median (ms, this run)"], rows
    )
    save(
        "attention_overhead",
        {"cases": results, "threads": args.threads},
        "# Instrumentation overhead\n\nForward pass (no grad, CPU, "
        f"{args.threads} threads, median of {args.repeats} runs after 3 warm-up runs; one process, same batch). "
        "Target: econlm's budgeted attention at the full budget with statistics on costs at most 1.2x eager.\n\n"
        + table,
    )


if __name__ == "__main__":
    main()
