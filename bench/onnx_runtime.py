"""Does the compaction speedup survive in ONNX Runtime? PyTorch eager and ONNX Runtime, one interleaved run.

Latency depends on the shapes of a model, not on its weights. For each compacted checkpoint of the
benchmark sweeps (docs/compaction.md) whose per-layer structure is recorded in
bench/results/train_sweep.json, this rebuilds MiniLM with exactly those per-layer head and FFN widths
(the units kept are chosen by magnitude; which ones does not change a shape), exports the dense and the
compacted model to ONNX (each checked against PyTorch), and times all four (dense and compacted, PyTorch
and ONNX Runtime) round by round in one run: CPU, 2 threads, sequence length 128, batch 1 and 32.

Writes bench/results/onnx_runtime.json, docs/onnx_runtime.md and the ONNX Runtime block of
docs/compaction.md. Resumable: rows already measured with the same settings are kept.

    python bench/onnx_runtime.py [--repeats 20] [--min-cut 0.05]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS, RESULTS, markdown_table, save  # noqa: E402

PARTIAL = RESULTS / "onnx_runtime.partial.json"
BLOCK_START, BLOCK_END = "<!-- onnxruntime:start -->", "<!-- onnxruntime:end -->"


def structures() -> list[dict]:
    """Compacted trials of docs/compaction.md that have their per-layer structure on record."""
    compaction = json.loads((RESULTS / "compaction.json").read_text())["rows"]
    sweep = json.loads((RESULTS / "train_sweep.json").read_text())["rows"]
    by_id = {row["id"]: row for rows in sweep.values() for row in rows}
    out = []
    for task, rows in compaction.items():
        for row in rows:
            trial = by_id.get(row["trial"])
            if trial and trial.get("structure"):
                out.append(
                    {
                        "task": task,
                        "trial": row["trial"],
                        "flops_reduction": row["flops_reduction"],
                        "structure": trial["structure"],
                        "pytorch_speedup_then": {"batch1": row["speedup_batch1"], "batch32": row["speedup_batch32"]},
                    }
                )
    return out


def rebuild(dense, structure: dict):
    """A copy of ``dense`` with the given number of heads and FFN neurons per layer."""
    import copy

    from econlm import arch
    from econlm.prune import prune

    shape = arch.shape(dense.config)
    model = copy.deepcopy(dense)
    prune(
        model,
        [shape.heads - h for h in structure["heads"]],
        [shape.intermediate - f for f in structure["ffn"]],
        importance="magnitude",
    )
    return model.eval()


def measure_row(dense, tokenizer, entry: dict, repeats: int, workdir: Path) -> dict:
    from econlm.compact import CompactConfig, measure_latency
    from econlm.flops import Structure, dense_macs

    compacted = rebuild(dense, entry["structure"])
    got = Structure.of_model(compacted)
    assert list(got.heads) == entry["structure"]["heads"] and list(got.ffn) == entry["structure"]["ffn"]
    config = CompactConfig(checkpoint="minilm", out="-", max_length=128, latency_repeats=repeats, onnx=True)
    latency = measure_latency({"dense": dense, "compacted": compacted}, tokenizer, config, workdir)
    flops = dense_macs(got, 128)["flops"] / dense_macs(Structure.of_model(dense), 128)["flops"]
    row = {**entry, "flops_reduction_rebuilt": 1 - flops, "latency": latency}
    for batch in ("batch1", "batch32"):
        for runtime in ("torch", "onnxruntime"):
            times = latency[runtime]
            row[f"{runtime}_speedup_{batch}"] = times["dense"][batch]["median"] / times["compacted"][batch]["median"]
        row[f"onnxruntime_over_torch_dense_{batch}"] = (
            latency["torch"]["dense"][batch]["median"] / latency["onnxruntime"]["dense"][batch]["median"]
        )
    return row


def markdown(rows: list[dict], repeats: int) -> str:
    table = markdown_table(
        [
            "task",
            "trial",
            "FLOPs cut",
            "PyTorch b1 (compaction)",
            "PyTorch b1",
            "ONNX Runtime b1",
            "PyTorch b32",
            "ONNX Runtime b32",
            "ORT / PyTorch (dense) b1",
            "b32",
        ],
        [
            [
                r["task"],
                r["trial"][:40],
                f"{r['flops_reduction']:.1%}",
                f"{r['pytorch_speedup_then']['batch1']:.2f}x",
                f"{r['torch_speedup_batch1']:.2f}x",
                f"{r['onnxruntime_speedup_batch1']:.2f}x",
                f"{r['torch_speedup_batch32']:.2f}x",
                f"{r['onnxruntime_speedup_batch32']:.2f}x",
                f"{r['onnxruntime_over_torch_dense_batch1']:.2f}x",
                f"{r['onnxruntime_over_torch_dense_batch32']:.2f}x",
            ]
            for r in rows
        ],
    )
    held = [r for r in rows if r["onnxruntime_speedup_batch1"] >= 0.9 * r["torch_speedup_batch1"]]
    return (
        "## ONNX Runtime: does the speedup hold outside PyTorch eager?\n\n"
        "Compacted MiniLM structures of the sweeps above (per-layer heads and FFN widths from "
        "`bench/results/train_sweep.json`, rebuilt on MiniLM: latency depends on shapes only), exported with "
        "`econlm.export.export_onnx` (dynamic batch and sequence axes, checked against PyTorch) and timed on the "
        f"CPU with 2 threads (ONNX Runtime: 2 intra-op threads, spinning off), sequence length 128, median of "
        f"{repeats} rounds after 3 warm-up rounds. Each round times the dense and the compacted model, the order "
        "rotating, so both share the machine's noise; PyTorch's rounds and ONNX Runtime's run one after the other "
        "in the same process (their thread pools never share the cores within a round). Speedup = dense median / "
        "compacted median in the same runtime. `PyTorch b1 (compaction)` is the speedup measured for the trained "
        "checkpoint itself in the table above: the rebuilt structure should agree with it. The last two columns "
        "say how much faster ONNX Runtime runs the dense model than PyTorch."
        "\n\n" + table + "\n\n"
        f"The speedup holds in ONNX Runtime (at least 90% of PyTorch's at batch 1) for {len(held)} of {len(rows)} "
        "structures. Trials of the seed-2 sweeps have no per-layer structure on record and are left out.\n"
    )


def update_compaction_doc(block: str) -> None:
    """Replace (or append) the ONNX Runtime block of docs/compaction.md, leaving the rest as it is."""
    from econlm.runinfo import atomic_write_text

    path = DOCS / "compaction.md"
    text = path.read_text()
    wrapped = f"{BLOCK_START}\n{block.rstrip()}\n\nRaw numbers: `bench/results/onnx_runtime.json`.\n{BLOCK_END}"
    pattern = re.compile(re.escape(BLOCK_START) + ".*?" + re.escape(BLOCK_END), re.S)
    text = pattern.sub(lambda _: wrapped, text) if pattern.search(text) else text.rstrip() + "\n\n" + wrapped + "\n"
    atomic_write_text(path, text)


def main() -> None:
    import torch

    from econlm.models import load_model
    from econlm.progress import bar
    from econlm.runinfo import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--min-cut", type=float, default=0.05, help="skip structures with a smaller FLOPs cut")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    loaded = load_model("minilm", "seq-cls", num_labels=1)
    entries = [e for e in structures() if e["flops_reduction"] >= args.min_cut]
    done = json.loads(PARTIAL.read_text()) if PARTIAL.exists() else {}
    done = {k: v for k, v in done.items() if v.get("repeats") == args.repeats}
    with tempfile.TemporaryDirectory() as workdir, bar(total=len(entries), desc="onnx runtime", unit="model") as pbar:
        for entry in entries:
            if entry["trial"] not in done:
                row = measure_row(loaded.model, loaded.tokenizer, entry, args.repeats, Path(workdir))
                done[entry["trial"]] = {**row, "repeats": args.repeats}
                write_json(PARTIAL, done)
            pbar.update(1)
    rows = [done[e["trial"]] for e in entries]
    text = markdown(rows, args.repeats)
    save("onnx_runtime", {"rows": rows, "settings": vars(args)}, "# ONNX Runtime latency\n\n" + text)
    update_compaction_doc(text)
    PARTIAL.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
