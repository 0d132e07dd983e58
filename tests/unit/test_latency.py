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


def test_interleaved_timing_alternates_rounds_and_rotates_the_order():
    from econlm.latency import measure_interleaved

    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    timings = measure_interleaved(fns, warmup=1, repeats=4)
    assert set(timings) == {"a", "b", "c"} and all(t.repeats == 4 for t in timings.values())
    timed = order[3:]  # the first round is the untimed warm-up
    assert [timed[i : i + 3] for i in range(0, 12, 3)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_interleaved_timing_keeps_each_functions_own_times():
    from econlm.latency import measure_interleaved

    timings = measure_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.003)}, warmup=0, repeats=5)
    assert timings["slow"].p10 >= 0.003 > timings["fast"].median
