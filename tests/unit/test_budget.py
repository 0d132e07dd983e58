"""Budget parsing and the top-k selection core."""

import pytest
import torch

from econlm.attention import Budget, apply_budget, parse_budgets
from econlm.errors import UserError


@pytest.mark.parametrize(
    "text, keys, fraction",
    [
        ("full", None, None),
        ("FULL", None, None),
        ("32", 32, None),
        ("1", 1, None),
        ("0.25", None, 0.25),
        ("25%", None, 0.25),
        ("1.0", None, None),
    ],
)
def test_parse(text, keys, fraction):
    budget = Budget.parse(text)
    assert budget.keys == keys and budget.fraction == fraction


@pytest.mark.parametrize("text", ["0", "-3", "abc", "nan", "inf%", "1.5", "0.0", "-0.5", "", "3.5.1"])
def test_parse_rejects(text):
    with pytest.raises(UserError):
        Budget.parse(text)


def test_parse_list_labels_and_duplicates():
    assert [b.label for b in parse_budgets("full, 8,0.5")] == ["full", "8", "0.5"]
    with pytest.raises(UserError, match="repeats 8"):
        parse_budgets("8,full,8")
    with pytest.raises(UserError):
        parse_budgets(" , ")


def test_keys_per_row():
    counts = torch.tensor([0, 1, 3, 10])
    assert Budget(keys=4).keys_per_row(counts).tolist() == [0, 1, 3, 4]
    assert Budget(fraction=0.25).keys_per_row(counts).tolist() == [0, 1, 1, 3]  # ceil, at least one
    assert Budget().keys_per_row(counts).tolist() == [0, 1, 3, 10]


def _masked_scores(scores, allowed):
    return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)


def test_apply_budget_keeps_exactly_top_k_allowed():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 6, 8)
    allowed = torch.ones(2, 1, 6, 8, dtype=torch.bool).tril()  # causal: row q sees q + 1 keys
    masked = _masked_scores(scores, allowed)
    out = apply_budget(masked, allowed, Budget(keys=3))
    kept = out > torch.finfo(out.dtype).min / 2
    assert kept.sum(-1).tolist() == torch.minimum(torch.arange(1, 7), torch.tensor(3)).expand(2, 3, 6).tolist()
    assert not (kept & ~allowed).any()  # never a masked key
    # the kept ones are the largest allowed scores
    for b, h, q in [(0, 0, 5), (1, 2, 4)]:
        expected = masked[b, h, q].topk(3).indices.sort().values
        assert kept[b, h, q].nonzero().flatten().tolist() == expected.tolist()


def test_apply_budget_is_a_no_op_when_it_does_not_bind():
    scores = torch.randn(1, 2, 4, 4)
    allowed = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    assert apply_budget(scores, allowed, Budget(keys=4)) is scores
    assert apply_budget(scores, allowed, Budget()) is scores


def test_apply_budget_fraction_per_row():
    scores = torch.randn(1, 1, 2, 10)
    allowed = torch.zeros(1, 1, 2, 10, dtype=torch.bool)
    allowed[0, 0, 0, :10] = True
    allowed[0, 0, 1, :4] = True
    out = apply_budget(_masked_scores(scores, allowed), allowed, Budget(fraction=0.3))
    kept = (out > torch.finfo(out.dtype).min / 2).sum(-1)
    assert kept.flatten().tolist() == [3, 2]  # ceil(3.0) and ceil(1.2)
