"""Benchmark (issue #12, the decoder economy): seconds per training step of SmolLM2-135M on WikiText-2.

    nice python bench/decoder_step_time.py [--max-length 256] [--batch-size 8] [--steps 5] [--warmup 1]
                                           [--max-seconds 170]

Runs the real ``econlm train`` step (``econlm.training._setup`` and ``_step``: the tax with ``--cost flops
--budget 0.5``, AdamW, gradient clipping) on the first part of WikiText-2's train split (the step time does
not depend on how much text there is, so only what the steps need is tokenized), first with gradient
checkpointing and then, on the same model, without. ``--warmup`` untimed steps come first (AdamW allocates
its state), then each mode gets ``--steps`` timed ones (fewer, but at least two, once the mode has used half
of ``--max-seconds``). The median wall time is reported, with the process's CPU time per step (all threads:
on a busy machine wall time stretches, CPU time much less) and the peak resident memory during the mode's steps
(checkpointing first, so the second mode's peak is its own whenever it is the larger). Writes
``bench/results/decoder_step_time.json``; docs/decoder.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, RESULTS  # noqa: E402


class PeakRSS:
    """The largest resident set size of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        import psutil

        self._process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def small_wikitext(source: Path, target: Path, chars: int) -> Path:
    """A WikiText-2 folder with the first ``chars`` characters of each split (enough for the timed steps)."""
    folder = target / "wikitext-2"
    folder.mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt"):
        with open(source / "wikitext-2" / name, encoding="utf-8") as f:
            (folder / name).write_text(f.read(chars), encoding="utf-8")
    return target


def main() -> None:
    import torch

    from econlm.training import TrainConfig, _epoch_batches, _setup, _step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode at most")
    parser.add_argument("--max-seconds", type=float, default=170.0, help="both modes' steps together, roughly")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per mode (AdamW allocates its state)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=DATA)
    parser.add_argument("--out", default=str(RESULTS / "decoder_step_time.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens = (args.warmup + 2 * args.steps) * args.batch_size * args.max_length
    results = {}
    with tempfile.TemporaryDirectory(prefix="econlm-steptime-") as tmp:
        data = small_wikitext(Path(args.data_dir), Path(tmp), chars=8 * tokens)  # ~4 characters a token, with room
        config = TrainConfig(
            model=args.model,
            task="wikitext2",
            out=str(Path(tmp) / "run"),
            cost=("flops",),
            budget=0.5,
            epochs=10,  # the gates never reach --gate-freeze in the few steps timed: every step does the same work
            batch_size=args.batch_size,
            max_length=args.max_length,
            limit=tokens,
            data_dir=str(data),
            gradient_checkpointing=True,
            save_every=10**9,
        )
        started = time.perf_counter()
        run = _setup(config, resume=False)
        setup_seconds = time.perf_counter() - started
        batches = _epoch_batches(len(run.features), args.batch_size, 1, config.seed, 0)
        assert len(batches) >= args.warmup + 2 * args.steps, f"only {len(batches)} batches of text"
        with run.incentive:
            for mode in ("gradient checkpointing", "no checkpointing"):
                if mode == "no checkpointing":
                    model = run.inner
                    disable = getattr(model, "activation_checkpointing_disable", None)
                    (disable or model.gradient_checkpointing_disable)()
                warmup = args.warmup if mode == "gradient checkpointing" else 0
                times, cpu = [], []
                mode_started = time.perf_counter()
                with PeakRSS() as rss:
                    while len(times) < warmup + args.steps:
                        if len(times) - warmup >= 2 and time.perf_counter() - mode_started > args.max_seconds / 2:
                            break
                        t0, c0 = time.perf_counter(), time.process_time()
                        log = _step(run, batches[run.state.global_step])
                        times.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                        print(
                            f"{mode}: step {run.state.global_step} {times[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU, "
                            f"loss {log['loss/task']:.3f}",
                            flush=True,
                        )
                timed = times[warmup:]
                results[mode] = {
                    "seconds_per_step_median": statistics.median(timed),
                    "seconds_per_step": timed,
                    "cpu_seconds_per_step_median": statistics.median(cpu[warmup:]),
                    "cpu_seconds_per_step": cpu[warmup:],
                    "warmup_seconds": times[:warmup],
                    "peak_rss_gb": rss.peak / 1e9,
                    "tokens_per_second": args.batch_size * args.max_length / statistics.median(timed),
                }
    from econlm.runinfo import run_metadata

    payload = {
        "setup": {
            "model": args.model,
            "task": "wikitext2",
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "threads": torch.get_num_threads(),
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "load_average_at_end": list(os.getloadavg()),
            "tax": "--cost flops --budget 0.5",
            "setup_seconds": setup_seconds,
        },
        "results": results,
        "meta": {**run_metadata(), "command": "python " + " ".join(sys.argv)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(json.dumps(payload["results"], indent=2))


if __name__ == "__main__":
    main()
