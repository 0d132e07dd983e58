"""Metric helpers against hand-computed values and edge cases."""

import math

import pytest
import torch

from econlm import metrics


def test_gini_hand_values():
    assert float(metrics.gini(torch.tensor([1.0, 1, 1, 1]))) == pytest.approx(0.0)
    assert float(metrics.gini(torch.tensor([0.0, 0, 0, 1]))) == pytest.approx(0.75)
    # sorted [1, 2, 3]: sum((2i - n - 1) x_i) = -2*1 + 0*2 + 2*3 = 4; / (n * sum) = 4 / 18
    assert float(metrics.gini(torch.tensor([3.0, 1, 2]))) == pytest.approx(4 / 18)
    assert float(metrics.gini(torch.tensor([5.0]))) == pytest.approx(0.0)


def test_gini_empty_and_zero():
    assert metrics.gini(torch.zeros(0)).shape == ()
    assert float(metrics.gini(torch.zeros(0))) == 0.0
    assert float(metrics.gini(torch.zeros(4))) == 0.0


def test_gini_is_scale_invariant_and_batched():
    x = torch.tensor([[1.0, 2, 3, 10], [2.0, 4, 6, 20]])
    g = metrics.gini(x)
    assert g.shape == (2,)
    assert float(g[0]) == pytest.approx(float(g[1]))


def test_entropy_hand_values():
    for n in (1, 2, 7, 128):
        assert float(metrics.entropy(torch.full((n,), 1.0 / n))) == pytest.approx(math.log(n), abs=1e-5)
    assert float(metrics.entropy(torch.tensor([0.0, 1.0, 0.0]))) == pytest.approx(0.0)
    assert float(metrics.entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))
    assert float(metrics.entropy(torch.zeros(3))) == 0.0
    assert float(metrics.entropy(torch.zeros(0))) == 0.0


def test_masked_rows_match_per_row_definition():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 5, 9)
    allowed = torch.rand(2, 1, 5, 9) > 0.4
    allowed[..., 0] = True  # every row sees at least one key
    probs = probs * allowed
    probs[0, 0, 0, 1:] = 0  # a one-hot row (if its key is allowed)
    probs = probs / probs.sum(-1, keepdim=True)
    gini_rows, entropy_rows = metrics.masked_row_gini_entropy(probs, allowed)
    for b in range(2):
        for h in range(3):
            for q in range(5):
                row = probs[b, h, q][allowed[b, 0, q]]
                assert float(gini_rows[b, h, q]) == pytest.approx(float(metrics.gini(row)), abs=1e-5)
                assert float(entropy_rows[b, h, q]) == pytest.approx(float(metrics.entropy(row)), abs=1e-5)


def test_masked_rows_zero_probability_keys_count_as_zeros():
    # 4 allowed keys, one of them holds everything: Gini (n-1)/n, entropy 0; the 5th key is masked out.
    probs = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    allowed = torch.tensor([[True, True, True, True, False]])
    gini_rows, entropy_rows = metrics.masked_row_gini_entropy(probs, allowed)
    assert float(gini_rows[0]) == pytest.approx(0.75)
    assert float(entropy_rows[0]) == pytest.approx(0.0)
    uniform = torch.full((1, 6), 1 / 6)
    g, e = metrics.masked_row_gini_entropy(uniform, None)
    assert float(g[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(e[0]) == pytest.approx(math.log(6), abs=1e-6)


def test_sort_last_matches_torch_sort():
    x = torch.randn(3, 4, 17)
    assert torch.equal(metrics.sort_last(x), x.sort(-1).values)


def test_sparsity():
    x = torch.tensor([0.0, 1e-4, -0.5, 2.0])
    assert metrics.sparsity(x, 1e-3) == 0.5
    assert metrics.sparsity(torch.zeros(0), 1e-3) == 0.0


def test_accuracy_f1_mcc_hand_values():
    pred = [1, 1, 0, 0, 1, 0]
    gold = [1, 0, 0, 1, 1, 0]
    # tp=2, fp=1, fn=1, tn=2
    assert metrics.accuracy(pred, gold) == pytest.approx(4 / 6)
    assert metrics.f1_binary(pred, gold) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.matthews_corrcoef(pred, gold) == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))


def test_degenerate_classification_metrics():
    assert metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction
    assert metrics.f1_binary([0, 0], [0, 0]) == 0.0
    assert metrics.accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        metrics.accuracy([1], [1, 0])


def test_pearson_spearman_hand_values():
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Spearman is rank-based: any monotone map gives 1.
    assert metrics.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    # x = [1, 2, 3], y = [1, 3, 2]: ranks equal values; pearson = (0*... ) -> 0.5
    assert metrics.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


def test_average_ranks_with_ties():
    assert metrics.average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert metrics.average_ranks([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]


def test_perplexity():
    assert metrics.perplexity(math.log(10) * 4, 4) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        metrics.perplexity(1.0, 0)


def test_masked_row_statistics_do_not_alias_reused_buffers():
    # The statistics reuse per-thread buffers; results from one call must survive the next call.
    first = torch.softmax(torch.randn(2, 3, 40, 40), -1)
    second = torch.softmax(torch.randn(2, 3, 40, 40) * 5, -1)
    g1, e1 = metrics.masked_row_gini_entropy(first, None)
    kept = (g1.clone(), e1.clone())
    metrics.masked_row_gini_entropy(second, None)
    assert torch.equal(g1, kept[0]) and torch.equal(e1, kept[1])
    assert torch.allclose(g1, metrics.gini(first), atol=1e-5)
    assert torch.allclose(e1, metrics.entropy(first), atol=1e-5)


def test_masked_row_statistics_large_input_uses_parallel_sort_exactly(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # 1536 rows: blocks of 220, the last 216
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 6, 64, 300) * 3, -1)  # above the parallel-sort threshold
    g, e = metrics.masked_row_gini_entropy(probs, None)
    assert torch.allclose(g, metrics.gini(probs), atol=1e-5)
    assert torch.allclose(e, metrics.entropy(probs), atol=1e-5)
