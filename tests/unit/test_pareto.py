"""Pareto helpers against hand-worked examples."""

import math

import pytest

from econlm.pareto import aggregate, dominates, hypervolume, pareto_front


def test_dominates():
    assert dominates((0.9, 1.0), (0.8, 2.0))
    assert dominates((0.9, 1.0), (0.9, 2.0))
    assert not dominates((0.9, 1.0), (0.9, 1.0))  # equal points do not dominate each other
    assert not dominates((0.9, 3.0), (0.8, 2.0))
    assert dominates((10.0, 1.0), (12.0, 1.0), higher_is_better=False)  # perplexity


def test_front_is_ordered_by_compute_and_drops_dominated_and_nan():
    points = [(0.80, 1.0), (0.85, 2.0), (0.84, 3.0), (0.90, 4.0), (0.70, 0.5), (float("nan"), 0.1), (0.85, 2.0)]
    assert pareto_front(points) == [4, 0, 1, 3]
    assert pareto_front([(12.0, 1.0), (10.0, 2.0), (11.0, 3.0)], higher_is_better=False) == [0, 1]


def test_hypervolume_hand_value():
    # Staircase from reference (0.5, 10): (0.8, 2) covers [2,4) x [0.5,0.8]; (0.9, 4) covers [4,10) x [0.5,0.9].
    points = [(0.8, 2.0), (0.9, 4.0), (0.7, 5.0)]
    expected = (4 - 2) * (0.8 - 0.5) + (10 - 4) * (0.9 - 0.5)
    assert hypervolume(points, (0.5, 10.0)) == pytest.approx(expected)
    assert hypervolume([(0.4, 1.0)], (0.5, 10.0)) == 0.0
    assert hypervolume([], (0.5, 10.0)) == 0.0
    # Lower is better: perplexity 20 at compute 1 against reference (30, 5): (5 - 1) * (30 - 20)
    assert hypervolume([(20.0, 1.0)], (30.0, 5.0), higher_is_better=False) == pytest.approx(40.0)


def test_aggregate_over_seeds():
    rows = [
        {"lam": 0.1, "seed": 1, "score": 0.8},
        {"lam": 0.1, "seed": 2, "score": 0.9},
        {"lam": 0.2, "seed": 1, "score": 0.5},
    ]
    groups = {g["group"]: g for g in aggregate(rows, lambda r: r["lam"], ["score"])}
    assert groups[0.1]["score"] == pytest.approx(0.85) and groups[0.1]["n"] == 2
    assert groups[0.1]["score_std"] == pytest.approx(math.sqrt(0.005))
    assert groups[0.2]["score_std"] == 0.0


def test_a_frontier_counts_the_trials_it_leaves_out_for_want_of_its_measure():
    """Three finished STS-B trials, one timed before latency_dev_ms was recorded: the latency_dev frontier
    draws two and says one was left out; the dense_flops frontier draws all three."""
    from econlm.analysis import frontier

    def result(i, dev_ms):
        r = {"id": f"t{i}", "kind": "train", "status": "ok", "score": 0.8 + i / 100, "dense_flops": 1e9 - i,
             "settings": {"model": "m", "task": "stsb", "lam": 0.1 * i, "cost": ["ffn_l1"], "seed": 1}}
        if dev_ms is not None:
            r["latency_dev_ms"] = dev_ms
        return r

    results = [result(0, 10.0), result(1, 9.0), result(2, None)]
    dev = frontier(results, "latency_dev")
    assert dev["left_out"] == 1 and len(dev["problems"][0]["points"]) == 2
    flops = frontier(results, "dense_flops")
    assert flops["left_out"] == 0 and len(flops["problems"][0]["points"]) == 3
