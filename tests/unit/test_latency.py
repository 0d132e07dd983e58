"""The latency harness: statistics over repeated calls, conditions recorded."""

import time

import pytest

from econlm.latency import _quantile, measure


def test_measure_counts_calls_and_orders_statistics():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)

    timing = measure(work, warmup=3, repeats=9)
    assert len(calls) == 12  # warm-up calls are made but not timed
    assert timing.repeats == 9 and timing.warmup == 3 and timing.timer == "perf_counter" and timing.device == "cpu"
    assert 0.002 <= timing.p10 <= timing.median <= timing.p90
    assert timing.threads >= 1


def test_quantile_interpolates():
    assert _quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert _quantile([1.0, 2.0], 0.5) == 1.5
    assert _quantile([7.0], 0.9) == 7.0


def test_repeats_must_be_positive():
    with pytest.raises(ValueError):
        measure(lambda: None, repeats=0)
