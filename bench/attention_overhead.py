"""Benchmark (issue: scarcity probe): the cost of econlm's instrumentation.

    python bench/attention_overhead.py [--threads 2] [--rounds 8] [--per-round 3]

Forward time of the same model on the same batch with (a) plain eager attention, (b) PyTorch SDPA, and
(c) econlm's budgeted attention at the full budget with statistics on; ratios of medians from one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import markdown_table, save  # noqa: E402

from econlm.attention import budgeted_attention  # noqa: E402
from econlm.models import load_model  # noqa: E402


def _times(fn, n: int) -> list[float]:
    fn()  # warm-up after switching implementation
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p10": ordered[len(ordered) // 10],
        "p90": ordered[(9 * len(ordered)) // 10],
        "repeats": len(ordered),
        "timer": "perf_counter",
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }


def time_model(spec: str, batch: int, length: int, rounds: int, per_round: int) -> dict:
    loaded = load_model(spec)
    model = loaded.model
    ids = torch.randint(1000, 20000, (batch, length))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def forward():
        with torch.no_grad():
            model(**inputs)

    # Interleaved rounds, so that drift in the machine's speed hits every variant alike.
    variants = {
        "eager": (lambda: model.set_attn_implementation("eager"), None),
        "sdpa": (lambda: model.set_attn_implementation("sdpa"), None),
        "econlm_full_stats": (lambda: model.set_attn_implementation("eager"), "full"),
    }
    samples = {name: [] for name in variants}
    rows_seen = 0
    for _ in range(rounds):
        for name, (setup, budget) in variants.items():
            setup()
            if budget is None:
                samples[name] += _times(forward, per_round)
            else:
                with budgeted_attention(model, budget) as stats:
                    samples[name] += _times(forward, per_round)
                rows_seen += stats.rows
    model.set_attn_implementation("eager")
    assert rows_seen > 0
    timings = {name: _summary(values) for name, values in samples.items()}
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
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("minilm", 32, 128), ("minilm", 1, 128), ("smollm2", 4, 512)]
    results = [time_model(spec, b, n, args.rounds, args.per_round) for spec, b, n in cases]
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
        f"{args.threads} threads; {args.rounds} interleaved rounds of {args.per_round} timed runs per variant, "
        "each round after one warm-up run; medians; one process, same batch). "
        "Target: econlm's budgeted attention at the full budget with statistics on costs at most 1.2x eager.\n\n"
        + table,
    )


if __name__ == "__main__":
    main()
