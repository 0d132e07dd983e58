"""The market's estimators against hand-computed games and exact enumeration on tiny models."""

from __future__ import annotations

import itertools

import pytest
import torch

from econlm import market
from econlm.errors import UserError
from tests.conftest import tiny_model


class TableGame:
    """A game given by a formula (no model): v(S) = sum of weights in S + bonus if both of ``pair`` are in S."""

    def __init__(self, weights, pair=(0, 1), bonus=0.0):
        self.weights, self.pair, self.bonus = weights, pair, bonus
        self.evaluations, self.blocks_run, self._layers = 0, 0, 1

    @property
    def n(self):
        return len(self.weights)

    def value(self, kept):
        self.evaluations += 1
        v = sum(w for w, k in zip(self.weights, kept) if k)
        return v + (self.bonus if kept[self.pair[0]] and kept[self.pair[1]] else 0.0)

    def full(self):
        return self.value([True] * self.n)


def test_shapley_of_an_additive_game_with_one_complementary_pair():
    # Shapley: each unit gets its weight, the pair splits its bonus: 1 + 0.5, 2 + 0.5, 3, 4. Every
    # marginal of units 2 and 3 is exactly their weight, so their intervals are zero.
    game = TableGame([1.0, 2.0, 3.0, 4.0], bonus=1.0)
    result = market.shapley(game, pairs=400, tol=0.0, truncate="none", seed=1)
    values = [e.mean for e in result["values"]]
    assert values[2] == pytest.approx(3.0) and values[3] == pytest.approx(4.0)
    assert values[0] == pytest.approx(1.5, abs=0.1) and values[1] == pytest.approx(2.5, abs=0.1)
    assert result["values"][2].ci95 == pytest.approx(0.0)
    # The interaction index of the pair is the bonus; of an additive pair it is 0.
    both, additive = market.interactions(game, [(0, 1), (2, 3)], samples=20, truncate="none")
    assert both.mean == pytest.approx(1.0) and additive.mean == pytest.approx(0.0)


def test_all_permutations_reproduce_exact_enumeration():
    game = TableGame([0.3, -0.2, 0.5, 0.1, 0.7], pair=(1, 3), bonus=0.4)
    pairs = [p for p in itertools.permutations(range(5)) if p < p[::-1]]
    for truncate in market.TRUNCATIONS:
        result = market.shapley(game, permutations=pairs, truncate=truncate)
        exact = market.exact_values(game, truncate)
        assert [e.mean for e in result["values"]] == pytest.approx(exact, abs=1e-12)
    # Without truncation the exact values are the Shapley values: they add up to v(N) - v(empty).
    exact = market.exact_values(game, "none")
    assert sum(exact) == pytest.approx(game.full() - game.value([False] * 5))
    assert exact[0] == pytest.approx(0.3) and exact[1] == pytest.approx(-0.2 + 0.2)


def test_position_weights():
    assert market.position_weights(4, "none") == pytest.approx([0.25] * 4)
    assert market.position_weights(4, "half") == pytest.approx([0.5, 0.5, 0, 0])
    # Odd count: the middle unit is reached in both walks of a pair, at the same position.
    assert market.position_weights(5, "half") == pytest.approx([0.4, 0.4, 0.2, 0, 0])


def _logit_sum(logits):
    return float(sum(x.double().sum() for x in logits))


def _tiny_game(family="bert", kinds=("head",), block=32, **overrides):
    model = tiny_model(family, head="seq-cls", **overrides)
    g = torch.Generator().manual_seed(3)
    batches = [
        {"input_ids": torch.randint(5, 100, (3, 9), generator=g), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
        for _ in range(2)
    ]
    batches[1]["attention_mask"][0, 6:] = 0
    units = market.units_of(model, kinds, block)
    return model, batches, market.Game(model, batches, units, _logit_sum, block)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_cached_evaluation_equals_a_fresh_forward(family):
    from econlm.fisher import mask_hooks

    model, batches, game = _tiny_game(family, kinds=("head", "ffn"))
    g = torch.Generator().manual_seed(0)
    top = [u for u, unit in enumerate(game.units) if unit.layer == 1]
    for step in range(8):
        if step % 2 == 0:
            kept = (torch.rand(game.n, generator=g) > 0.4).tolist()
        else:  # one unit of the top layer flips: the bottom block replays its cached output
            kept[top[step % len(top)]] ^= True
        cached = game.value(kept)
        with torch.no_grad(), mask_hooks(model, game.masks):
            fresh = _logit_sum([model(**b).logits for b in batches])
        assert cached == pytest.approx(fresh, rel=1e-5, abs=1e-6)
    assert game.blocks_run == 4 * 2 + 4 * 1  # 4 full evaluations, 4 of the top block alone


def test_sampled_values_agree_with_exact_enumeration_on_a_model():
    # 2 layers x 2 heads + 2 FFN blocks per layer: 8 units, 256 coalitions.
    model, batches, game = _tiny_game(kinds=("head", "ffn"), num_attention_heads=2)
    assert game.n == 8
    exact = market.exact_values(game, "half")
    result = market.shapley(game, pairs=300, tol=0.0, truncate="half", seed=0)
    for e, x in zip(result["values"], exact):
        assert abs(e.mean - x) <= 4 * e.ci95 + 1e-6
    exact_pair = market.exact_interaction(game, 0, 1, "half")
    (sampled,) = market.interactions(game, [(0, 1)], samples=300, truncate="half", seed=1)
    assert abs(sampled.mean - exact_pair) <= 4 * sampled.ci95 + 1e-6


def test_early_stopping_stops_units_with_no_variance():
    game = TableGame([1.0, 2.0, 3.0, 4.0], bonus=1.0)
    # Units 2 and 3 add their weight in every coalition. Units 0 and 1 gain the bonus in exactly one walk of
    # each antithetic pair (the partner comes first in one of the two orders), so every pair sample is the
    # Shapley value itself: no variance, and every unit stops as soon as it may.
    result = market.shapley(game, pairs=50, tol=0.05, truncate="none", interval="bernstein")
    assert result["stopped_by"] == "every unit within tol"
    assert result["pairs"] == market.MIN_PAIRS
    assert [e.mean for e in result["values"]] == pytest.approx([1.5, 2.5, 3.0, 4.0])


def test_market_clearing_keeps_the_best_value_per_mac_within_budget():
    units = [market.Unit("head", 0, 0), market.Unit("head", 0, 1), market.Unit("ffn", 0, 0), market.Unit("ffn", 0, 1)]
    values, macs = [1.0, 0.5, 4.0, -1.0], [1.0, 1.0, 4.0, 2.0]
    # Forced first: the best head (0) and best block (2), 5 of 8 MACs. Budget 0.75 = 6: head 1 fits.
    assert market.clear_market(values, macs, units, 0.75) == [True, True, True, False]
    assert market.clear_market(values, macs, units, 0.6) == [True, False, True, False]
    # The harmful block is never bought, even when the budget allows it.
    assert market.clear_market(values, macs, units, 1.0)[3] is False
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        market.clear_market(values, macs, units, 1.5)


def test_unit_macs_add_up_to_the_dense_block_macs():
    from econlm.flops import Structure, dense_macs

    model = tiny_model("llama", head="causal-lm")
    units = market.units_of(model, ("head", "ffn"), 16)
    macs = market.unit_macs(model, units, 16, seq_len=20)
    assert sum(macs) == pytest.approx(dense_macs(Structure.of_model(model), 20)["macs"] / 20)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_market_plan_compacts_to_the_masked_model(family):
    from econlm.surgery import apply_plan

    model, batches, game = _tiny_game(family, kinds=("head", "ffn"))
    kept = [i % 3 != 1 for i in range(game.n)]
    masked = game.value(kept)
    apply_plan(model, market.plans_for(model, game.units, kept, 32))
    with torch.no_grad():
        compacted = _logit_sum([model(**b).logits for b in batches])
    assert compacted == pytest.approx(masked, rel=1e-5, abs=1e-6)


def test_a_block_that_does_not_divide_the_width_names_the_ones_that_do():
    model = tiny_model("bert")
    with pytest.raises(UserError, match="does not divide the FFN width 64; use one of 1, 2, 4, 8, 16, 32, 64"):
        market.units_of(model, ("ffn",), 24)


def test_a_stopped_estimate_resumes_with_the_same_permutations(tmp_path):
    game = TableGame([0.3, -0.2, 0.5, 0.1, 0.7, 0.2], pair=(1, 3), bonus=0.4)
    whole = market.shapley(game, pairs=12, tol=0.0, seed=4)
    state = tmp_path / "state.json"
    first = market.shapley(game, pairs=5, tol=0.0, seed=4, state=state)
    assert first["pairs"] == 5
    rest = market.shapley(game, pairs=12, tol=0.0, seed=4, state=state)
    assert rest["resumed_from_pair"] == 5 and rest["pairs"] == 12
    assert [e.mean for e in rest["values"]] == pytest.approx([e.mean for e in whole["values"]], abs=1e-12)
    # Other settings do not reuse the saved samples.
    other = market.shapley(game, pairs=3, tol=0.0, seed=5, state=state)
    assert other["resumed_from_pair"] == 0


def test_a_discrete_metric_never_claims_a_zero_interval():
    same = [0.0] * 10  # ten pair samples of a head that never changed a prediction
    assert market.estimate(same).ci95 == 0.0
    floored = market.estimate(same, resolution=1 / 200)  # accuracy on 200 examples moves in steps of 0.005
    assert floored.ci95 == pytest.approx(2.262 * (0.005 / 2) / 10**0.5)  # t(9 df) x floor sd / sqrt(10)


def test_a_key_with_tuples_still_matches_after_saving(tmp_path):
    game = TableGame([0.3, -0.2, 0.5, 0.1])
    state = tmp_path / "state.json"
    market.shapley(game, pairs=2, tol=0.0, state=state, key={"units": ("head",)})
    again = market.shapley(game, pairs=4, tol=0.0, state=state, key={"units": ("head",)})
    assert again["resumed_from_pair"] == 2


def test_latency_priced_clearing_buys_by_value_per_marginal_second():
    """One layer, 4 heads and 4 FFN blocks of 16. The table: one layer's attention saves 3, 1, 0, 0 ms at 1..4
    kept heads (flat near dense: the 4th head costs nothing), its FFN 6, 4, 2, 0 ms at 16..64 neurons, of 20 ms
    dense. Forced first: head 0 and block 0, 20 - 3 - 6 = 11 ms. At budget 0.7 (14 ms): head 1 (3 / 2 ms, the
    best ratio) -> 13 ms; head 2 now costs 1 ms (2 / 1 ms) -> 14 ms; head 3 is free -> 14 ms; block 1 (2 ms)
    no longer fits. The harmful block is never bought."""
    from econlm.flops import Structure
    from econlm.latency_table import Curve, LatencyTable

    structure = Structure(kind="encoder", hidden=32, head_dim=8, gated_ffn=False, heads=(4,), kv_heads=(4,), ffn=(64,))
    table = LatencyTable(
        model={},
        setup={},
        machine={},
        dense_seconds=0.020,
        attention=Curve((1, 2, 3, 4), (0.003, 0.001, 0.0, 0.0), (0.003, 0.001, 0.0, 0.0)),
        ffn=Curve((16, 32, 48, 64), (0.006, 0.004, 0.002, 0.0), (0.006, 0.004, 0.002, 0.0)),
    )
    units = [market.Unit("head", 0, h) for h in range(4)] + [market.Unit("ffn", 0, b) for b in range(4)]
    values = [4.0, 3.0, 2.0, 1.0, 5.0, 1.0, 0.5, -1.0]
    kept = market.clear_market_latency(values, units, structure, table, 0.7, block=16)
    assert kept == [True, True, True, True, True, False, False, False]
    assert table.predict([4], [16]) == pytest.approx(0.014)
    # At 0.6 (12 ms) nothing beyond the forced units fits: every next unit costs 2 ms.
    assert market.clear_market_latency(values, units, structure, table, 0.6, block=16) == [True] + [False] * 3 + [True] + [False] * 3
    # At 1 everything worth something is bought.
    assert market.clear_market_latency(values, units, structure, table, 1.0, block=16) == [True] * 7 + [False]
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        market.clear_market_latency(values, units, structure, table, 0.0, block=16)


def test_lorenz_gini_and_the_costly_units_by_hand():
    from econlm.market_run import _costly_low_return, _inequality

    units = [market.Unit("head", 0, 0), market.Unit("head", 0, 1), market.Unit("ffn", 0, 0), market.Unit("ffn", 0, 1)]
    values, macs = [0.3, -0.1, 0.1, 0.2], [1.0, 1.0, 2.0, 2.0]
    # negative values hold no share: sorted 0, 0.1, 0.2, 0.3 of a total 0.6
    assert market.lorenz(values) == pytest.approx([0.0, 0.0, 1 / 6, 0.5, 1.0])
    # Gini = sum of |x_i - x_j| over ordered pairs / (2 n^2 mean): 2.0 / (2 * 16 * 0.15)
    assert market.gini(values) == pytest.approx(2.0 / 4.8)
    table = _inequality(units, values, macs)
    assert table["all"]["gini_compute"] == pytest.approx(8 / 48)  # 1, 1, 2, 2: |1 - 2| in 8 ordered pairs
    assert table["head"]["gini_value"] == pytest.approx(0.5) and table["head"]["negative_value"] == 1
    assert table["ffn"]["gini_compute"] == 0.0 and table["ffn"]["lorenz_value"] == pytest.approx([0, 1 / 3, 1])
    # value per MAC: 0.3, -0.1, 0.05, 0.1
    assert [u["name"] for u in _costly_low_return(units, values, macs)] == ["L0.H1", "L0.F0", "L0.F1", "L0.H0"]
