"""Turn the benchmark sweeps (runs/bench_sweep/<task>) into tables in docs/ and raw numbers in bench/results/.

    python bench/summarize.py [--latency-repeats 20]

Writes three benchmark documents from the same trials:
  docs/train_sweep.md   incentive training (score, sparsity, Gini, entropy, time per cost term and lambda)
  docs/compaction.md    compaction of the flops-gated checkpoints: FLOPs, measured CPU latency, score
  docs/frontier.md      Pareto frontiers, baselines, seeds, and the paper's claims checked
Every statement in them is computed by econlm.verdicts from the results (and the trials' recorded machines, the
latency timings and the sweeps' compaction threshold); this script only finds, reads and times what it needs and
writes the documents. Runs that have not finished are listed as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save  # noqa: E402

from econlm import verdicts  # noqa: E402

SWEEPS = ROOT / "runs" / "bench_sweep"
LATENCY_THREADS = 2
LATENCY_WARMUP = 5
LATENCY_SEQ_LEN = 128
LATENCY_BATCHES = (1, 32)


def load(task: str) -> list[dict]:
    path = SWEEPS / task / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_machines(task: str, results: list[dict]) -> dict[str, dict]:
    """The ``machine`` each training trial recorded in its metrics.json (cores, torch threads), by trial id."""
    machines = {}
    for r in results:
        metrics = _read(SWEEPS / task / "trials" / r["id"] / "model" / "metrics.json") or {}
        machine = (metrics.get("meta") or {}).get("machine")
        if machine:
            machines[r["id"]] = machine
    return machines


def compaction_eps(task: str) -> list[float]:
    """The compaction thresholds of every sweep run into the task's folder (from its sweep.json)."""
    recorded = _read(SWEEPS / task / "sweep.json") or {}
    configs = list((recorded.get("configs") or {}).values()) + [recorded.get("config") or {}]
    return sorted({c["compact"]["eps"] for c in configs if (c.get("compact") or {}).get("eps") is not None})


def measure_latency(model_dir: str, compact_dir: str, repeats: int) -> dict:
    """CPU timings of a checkpoint and its compacted copy at each batch size in ``LATENCY_BATCHES``, the two
    timed round by round in one run (so machine noise hits both alike): ``{"before": ..., "after": ...}``."""
    import torch

    from econlm.latency import measure_interleaved, model_call, random_inputs
    from econlm.models import load_model

    torch.set_num_threads(LATENCY_THREADS)
    models = {"before": load_model(model_dir).model, "after": load_model(compact_dir).model}
    out: dict = {"before": {}, "after": {}}
    for batch in LATENCY_BATCHES:
        inputs = random_inputs(batch, LATENCY_SEQ_LEN)
        calls = {name: model_call(model, inputs) for name, model in models.items()}
        for name, timing in measure_interleaved(calls, warmup=LATENCY_WARMUP, repeats=repeats).items():
            out[name][f"batch{batch}"] = timing.as_dict()
    return out


def compaction_entries(task: str, results: list[dict], repeats: int) -> list[dict]:
    """Every finished training trial whose compaction removed something, timed before and after."""
    entries = []
    for r in results:
        if r["kind"] != "train" or r.get("status") != "ok" or not (r.get("compact") or {}).get("removed"):
            continue
        trial_dir = SWEEPS / task / "trials" / r["id"]
        report = json.loads((trial_dir / "compact" / "compact.json").read_text())
        latency = measure_latency(str(trial_dir / "model"), str(trial_dir / "compact"), repeats)
        base = verdicts.baseline_for(results, r)
        entries.append(verdicts.compaction_entry(r, report, latency, base, sequence_length=LATENCY_SEQ_LEN))
    return entries


def frontiers(results: list[dict]) -> dict:
    from econlm.analysis import frontier

    return {axis: frontier(results, axis) for axis in ("dense_flops", "effective_flops")}


def documents(tasks: dict[str, dict]) -> dict[str, tuple[dict, str]]:
    """docs/<name>.md and the payload of bench/results/<name>.json for train_sweep, compaction and frontier.

    ``tasks`` maps a task to what was read and measured for it: ``results`` (its results.jsonl rows) and, for a
    task with results, ``machines`` (:func:`load_machines`), ``compaction`` (:func:`compaction_entries`),
    ``fronts`` (:func:`frontiers`) and ``eps`` (:func:`compaction_eps`). Every sentence comes from
    econlm.verdicts; this only puts the sections together."""
    train_parts, compaction_parts, frontier_parts = [], [], []
    raw_train, raw_machines, raw_compaction, raw_frontier = {}, {}, {}, {}
    for task, read in tasks.items():
        results = read["results"]
        if not results:
            continue
        text, rows = verdicts.train_section(task, results, read.get("machines"))
        train_parts.append(text)
        raw_train[task] = rows
        raw_machines[task] = {
            r["id"]: read["machines"][r["id"]] for r in rows if r["id"] in (read.get("machines") or {})
        }
        model = verdicts.model_names([r for r in results if r["kind"] == "train"])
        compaction_parts.append(verdicts.compaction_section(task, read["compaction"], model))
        raw_compaction[task] = read["compaction"]
        text, data = verdicts.frontier_section(
            task, results, read["fronts"], read.get("eps"), report=f"bench/results/report_{task}.html"
        )
        frontier_parts.append(text)
        raw_frontier[task] = data
    every = [r for read in tasks.values() for r in read["results"] if r["kind"] == "train"]
    model = verdicts.model_names(every)
    header = (
        "Trials come from `bench/run_sweeps.sh` (sweep files in `bench/sweeps/`), outputs in `runs/bench_sweep/`."
        "\n\nStatus when this was written:\n"
        + "\n".join(verdicts.status_line(task, read["results"]) for task, read in tasks.items())
        + "\n\n"
    )
    return {
        "train_sweep": (
            {"rows": raw_train, "machines": raw_machines},
            f"# Incentive training: compute taxes on {model}\n\n" + header + "\n".join(train_parts),
        ),
        "compaction": (
            {"rows": raw_compaction},
            "# Compaction: removing what the gates closed\n\n" + header + "\n".join(compaction_parts),
        ),
        "frontier": (
            {"tasks": raw_frontier},
            "# Pareto frontiers: incentive training against post-hoc pruning and top-k budgets\n\n"
            + header
            + "\n".join(frontier_parts),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--tasks", default="stsb,cola")
    args = parser.parse_args()
    from econlm.report import write_report

    tasks = {}
    for task in args.tasks.split(","):
        results = load(task)
        tasks[task] = {"results": results}
        if results:
            tasks[task].update(
                machines=load_machines(task, results),
                compaction=compaction_entries(task, results, args.latency_repeats),
                fronts=frontiers(results),
                eps=compaction_eps(task),
            )
            write_report(SWEEPS / task, ROOT / "bench" / "results" / f"report_{task}.html")
    for name, (payload, markdown) in documents(tasks).items():
        save(name, payload, markdown)
        if name == "compaction":
            _keep_onnx_runtime_block()  # docs/compaction.md was just rewritten


def _keep_onnx_runtime_block() -> None:
    """docs/compaction.md was just rewritten: put back the ONNX Runtime table bench/onnx_runtime.py measured."""
    measured = ROOT / "bench" / "results" / "onnx_runtime.json"
    if measured.exists():
        from onnx_runtime import markdown, update_compaction_doc

        saved = json.loads(measured.read_text())
        update_compaction_doc(markdown(saved["rows"], saved["settings"]["repeats"]))


if __name__ == "__main__":
    main()
