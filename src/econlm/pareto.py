"""Pareto analysis of (score, compute) points: non-dominated sets, 2-D hypervolume, seed aggregation.

Pure functions on plain numbers. Scores may be higher-is-better (accuracy) or lower-is-better
(perplexity); compute is always lower-is-better.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Sequence


def _better_or_equal(a: float, b: float, higher_is_better: bool) -> bool:
    return a >= b if higher_is_better else a <= b


def dominates(p: tuple[float, float], q: tuple[float, float], higher_is_better: bool = True) -> bool:
    """p = (score, compute) dominates q: at least as good on both, strictly better on one."""
    no_worse = _better_or_equal(p[0], q[0], higher_is_better) and p[1] <= q[1]
    return no_worse and (p[0] != q[0] or p[1] != q[1])


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the non-dominated points, ordered by increasing compute. NaN points are never on it."""
    valid = [i for i, (s, c) in enumerate(points) if not (math.isnan(s) or math.isnan(c))]
    front = [i for i in valid if not any(dominates(points[j], points[i], higher_is_better) for j in valid if j != i)]
    # Equal points: keep the first only.
    unique, seen = [], set()
    for i in front:
        if points[i] not in seen:
            seen.add(points[i])
            unique.append(i)
    return sorted(unique, key=lambda i: (points[i][1], -points[i][0] if higher_is_better else points[i][0]))


def hypervolume(
    points: Sequence[tuple[float, float]],
    reference: tuple[float, float],
    higher_is_better: bool = True,
) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` = (worst score, largest compute).

    Points not better than the reference on both axes add nothing. For lower-is-better scores the
    reference score is the largest acceptable value.
    """
    sign = 1.0 if higher_is_better else -1.0
    ref_score, ref_compute = sign * reference[0], reference[1]
    usable = [(sign * s, c) for s, c in points if sign * s > ref_score and c < ref_compute]
    if not usable:
        return 0.0
    front = [usable[i] for i in pareto_front(usable, True)]  # increasing compute, increasing score
    area = 0.0
    for k, (score, compute) in enumerate(front):
        next_compute = front[k + 1][1] if k + 1 < len(front) else ref_compute
        # between this compute and the next frontier point's, the best score reachable is this one's
        area += (next_compute - compute) * (score - ref_score)
    return area


def aggregate(rows: Sequence[dict], key: Callable[[dict], Hashable], fields: Sequence[str]) -> list[dict]:
    """Group rows (e.g. over seeds) and give mean, standard deviation and count of each field."""
    groups: dict[Hashable, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = []
    for group_key, members in groups.items():
        entry = {"group": group_key, "n": len(members), "members": members}
        for name in fields:
            values = [float(m[name]) for m in members if m.get(name) is not None and not math.isnan(float(m[name]))]
            entry[name] = statistics.fmean(values) if values else float("nan")
            entry[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out
