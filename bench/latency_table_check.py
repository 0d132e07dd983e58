"""Does the latency table predict the speedup compaction really gives? (issue #10's latency price)

    python bench/latency_table_check.py [--table bench/latency/minilm_b1_s128_t2.json]

The table (``econlm latency-table minilm --batch 1 --seq-len 128 --threads 2``) predicts, for each compacted
structure timed by ``bench/onnx_runtime.py`` (same machine, batch, sequence length and threads), the batch-1
speedup over the dense model; the measured one is PyTorch's from that run. Writes docs/latency_table.md and
bench/results/latency_table.json. Needs no timing of its own: run the two measurements first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, markdown_table, save  # noqa: E402

TOLERANCE = 0.10  # the target: every prediction within 10% of the measured speedup


def main() -> None:
    from econlm.latency_table import load_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="bench/latency/minilm_b1_s128_t2.json")
    args = parser.parse_args()
    table = load_table(args.table)
    measured = json.loads((RESULTS / "onnx_runtime.json").read_text())
    rows = []
    for r in measured["rows"]:
        predicted = table.predicted_speedup(r["structure"]["heads"], r["structure"]["ffn"])
        rows.append(
            {
                "task": r["task"],
                "trial": r["trial"],
                "flops_reduction": r["flops_reduction"],
                "predicted_speedup": predicted,
                "measured_speedup": r["torch_speedup_batch1"],
                "ratio": predicted / r["torch_speedup_batch1"],
            }
        )
    within = [r for r in rows if abs(r["ratio"] - 1) <= TOLERANCE]
    setup = table.setup
    text = (
        "# Latency table: predicted against measured speedup\n\n"
        f"The table `{args.table}` (batch {setup['batch']}, sequence length {setup['seq_len']}, "
        f"{setup['threads']} threads, median of {setup['repeats']} interleaved rounds per pruned shape; dense "
        f"{table.dense_seconds * 1000:.2f} ms) predicts each compacted structure's batch-1 speedup from its "
        "per-layer heads and FFN widths. The measured speedup is PyTorch's in `bench/onnx_runtime.py` (same "
        "machine, batch, length and threads; a separate run, so this compares ratios, never absolute times).\n\n"
        + markdown_table(
            ["task", "trial", "FLOPs cut", "predicted", "measured", "predicted / measured"],
            [
                [
                    r["task"],
                    r["trial"][:40],
                    f"{r['flops_reduction']:.1%}",
                    f"{r['predicted_speedup']:.2f}x",
                    f"{r['measured_speedup']:.2f}x",
                    f"{r['ratio']:.3f}",
                ]
                for r in rows
            ],
        )
        + f"\n\n{len(within)} of {len(rows)} predictions are within {TOLERANCE:.0%} of the measured speedup "
        f"(the issue's target). The attention curve saves {table.attention.saved[0] * 1000:.2f} ms per layer at "
        f"one kept head of {table.model['heads']}; the FFN curve {table.ffn.saved[0] * 1000:.2f} ms at "
        f"{table.ffn.kept[0]} kept neurons of {table.model['intermediate']}.\n"
    )
    save("latency_table", {"rows": rows, "table": args.table, "setup": setup}, text)


if __name__ == "__main__":
    main()
