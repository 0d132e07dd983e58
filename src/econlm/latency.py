"""A latency harness: warm-up, many timed repetitions, median and spread, with the conditions recorded.

On a GPU each repetition is timed with CUDA events (and synchronised); on the CPU with
``time.perf_counter``. Quote ratios of medians measured in one run, not absolute times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls after ``warmup`` untimed ones."""

    median: float
    p10: float
    p90: float
    mean: float
    stdev: float
    repeats: int
    warmup: int
    device: str
    threads: int
    timer: str

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure(fn: Callable[[], object], *, warmup: int = 5, repeats: int = 30, device: str = "cpu") -> Timing:
    """Time ``fn()``; returns median, 10th/90th percentiles, mean and standard deviation in seconds."""
    import torch

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    else:
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    ordered = sorted(times)
    return Timing(
        median=statistics.median(ordered),
        p10=_quantile(ordered, 0.1),
        p90=_quantile(ordered, 0.9),
        mean=statistics.fmean(ordered),
        stdev=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        repeats=repeats,
        warmup=warmup,
        device=device,
        threads=torch.get_num_threads(),
        timer="cuda-events" if on_gpu else "perf_counter",
    )
