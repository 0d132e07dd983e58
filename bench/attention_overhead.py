"""Benchmark (issue: scarcity probe): the cost of econlm's instrumentation.

    python bench/attention_overhead.py [--threads 2] [--rounds 8] [--per-round 3]

Forward time of the same model on the same batch with (a) plain eager attention, (b) PyTorch SDPA, and
(c) econlm's budgeted attention at the full budget with statistics on; ratios of medians from one run.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import markdown_table, save  # noqa: E402

from econlm.attention import budgeted_attention  # noqa: E402
from econlm.models import load_model  # noqa: E402


def time_model(spec: str, batch: int, length: int, rounds: int, per_round: int) -> dict:
    from econlm.latency import measure_interleaved, model_call, random_inputs

    loaded = load_model(spec)
    model = loaded.model
    forward = model_call(model, random_inputs(batch, length, 1000, 20000))
    stats_seen = []

    @contextmanager
    def implementation(name: str, budget: str | None = None):
        model.set_attn_implementation(name)
        if budget is None:
            yield
            return
        with budgeted_attention(model, budget) as stats:
            yield
        stats_seen.append(stats.rows)

    # Interleaved rounds, so that drift in the machine's speed hits every variant alike.
    timings = measure_interleaved(
        {"eager": forward, "sdpa": forward, "econlm_full_stats": forward},
        warmup=1,
        repeats=rounds,
        per_round=per_round,
        around={
            "eager": lambda: implementation("eager"),
            "sdpa": lambda: implementation("sdpa"),
            "econlm_full_stats": lambda: implementation("eager", "full"),
        },
    )
    model.set_attn_implementation("eager")
    assert sum(stats_seen) > 0
    eager = timings["eager"].median
    return {
        "model": spec,
        "batch": batch,
        "seq_len": length,
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "ratio_to_eager": {name: t.median / eager for name, t in timings.items()},
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
