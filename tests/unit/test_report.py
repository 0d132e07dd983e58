"""The report's frontier plots: zoom on the scores that matter, reference lines, speedup labels."""

import json

import pytest

from econlm.report import _frontier_figure, read_probes, references, score_window


def _problem(scores_by_method: dict[str, list[tuple[float, float]]], plain: float | None = 0.86):
    points, methods = [], {}
    for method, pairs in scores_by_method.items():
        mine = [
            {"method": method, "score": s, "score_std": 0.0, "compute": c, "compute_std": 0.0, "trials": [f"{method}{i}"],
             "ablation": "flops gates (both)"}
            for i, (s, c) in enumerate(pairs)
        ]
        points += mine
        best = sorted(mine, key=lambda p: p["compute"])
        front, top = [], -1.0
        for p in best:  # higher score at more compute: the non-dominated ones
            if p["score"] > top:
                front.append(p)
                top = p["score"]
        methods[method] = {"front": front, "hypervolume": 0.1}
    if plain is not None:
        points.append({"method": "incentive", "score": plain, "score_std": 0.0, "compute": 10.0, "compute_std": 0.0,
                       "trials": ["plain"], "ablation": "baseline (lambda = 0)"})
    return {"model": "minilm", "task": "stsb", "metric": "spearman", "higher_is_better": True, "points": points,
            "methods": methods, "compute_label": "dense FLOPs"}


def test_the_window_leaves_a_collapsed_run_out_even_when_it_is_cheap():
    # Scores 0.86 (plain), 0.86, 0.85, 0.84 and a collapse at 0.05 that is the cheapest point of all.
    problem = _problem({"incentive": [(0.85, 5.0), (0.86, 7.0), (0.05, 1.0)], "topk": [(0.84, 9.0)]})
    low, high = score_window(problem)
    # 0.05 is under a quarter of the best (0.215): the axis spans 0.84 .. 0.86 with a margin of 8% of that.
    assert low == pytest.approx(0.84 - 0.0016) and high == pytest.approx(0.86 + 0.0016)
    # Reference lines stay on the axis.
    low, high = score_window(problem, (0.867,))
    assert high == pytest.approx(0.867 + 0.027 * 0.08)


@pytest.mark.parametrize(
    "scores",
    [
        [0.85, 0.86, 0.84],  # all close
        [0.835, 0.829, 0.811, 0.594],  # a weak but real point (the quick start's smallest budget) stays in view
        [0.26, 0.18, 0.10, 0.09],  # CoLA's budgets: weak, not collapsed (over a quarter of 0.26)
        [0.0, -0.05, -0.2],  # no positive best score to judge a collapse by
    ],
)
def test_no_zoom_when_nothing_collapsed(scores):
    problem = _problem({"incentive": [(s, float(i)) for i, s in enumerate(scores)]}, plain=None)
    assert score_window(problem) is None


def test_a_cola_run_at_zero_mcc_is_collapsed():
    problem = _problem({"incentive": [(0.26, 1.0), (0.10, 2.0), (0.0, 3.0)]}, plain=None)
    low, high = score_window(problem)
    assert low == pytest.approx(0.10 - 0.16 * 0.08) and high == pytest.approx(0.26 + 0.16 * 0.08)


def test_references_are_the_plain_fine_tune_and_the_zero_shot_probe(tmp_path):
    probe = tmp_path / "probe" / "probe.json"
    probe.parent.mkdir()
    other = tmp_path / "other" / "probe.json"  # a probe of another model is no zero-shot reference here
    other.parent.mkdir()
    other.write_text(json.dumps({"model": "runs/small", "task": "stsb", "examples_scored": 9, "unit_of_examples": "x",
                                 "rows": [{"budget": "full", "metric": "spearman", "score": 0.5}]}))
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "probe.json").write_text("{cut")
    probe.write_text(json.dumps({"model": "minilm", "task": "stsb", "examples_scored": 1500, "unit_of_examples": "examples",
                                 "rows": [{"budget": "full", "metric": "spearman", "score": 0.867},
                                          {"budget": "8", "metric": "spearman", "score": 0.86}]}))
    refs = references(_problem({"incentive": [(0.85, 5.0)]}), read_probes(tmp_path))
    assert refs == {"lambda = 0 fine-tune": 0.86, "zero-shot (1500 examples)": 0.867}
    assert references(_problem({"incentive": [(0.85, 5.0)]}, plain=None), read_probes(None)) == {}


def test_the_figure_draws_collapsed_runs_on_the_edge_and_labels_speedups(tmp_path):
    problem = _problem({"incentive": [(0.85, 5.0), (0.86, 7.0), (0.05, 9.0)], "topk": [(0.84, 4.0)]})
    fig = _frontier_figure(problem, read_probes(tmp_path), {"incentive0": 1.93})
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low == pytest.approx(0.84 - 0.0016) and high == pytest.approx(0.86 + 0.0016)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["1.93x"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("1 below the axis" in label for label in labels)
    assert any(label.startswith("lambda = 0 fine-tune: 0.8600") for label in labels)


def test_perplexity_keeps_its_axis_upright_and_marks_collapses_on_the_worse_end(tmp_path):
    problem = _problem({"incentive": [(16.0, 5.0), (16.5, 7.0), (900.0, 1.0)], "topk": [(17.0, 9.0)]}, plain=None)
    problem["higher_is_better"] = False
    low, high = score_window(problem)
    assert low < 16.0 and 17.0 < high < 900.0
    ax = _frontier_figure(problem).axes[0]
    assert ax.get_ylim()[0] < ax.get_ylim()[1]  # not inverted
    edge_markers = [line for line in ax.lines if list(line.get_ydata()) == [high]]
    assert edge_markers, "the collapsed run is drawn on the upper (worse) edge"
