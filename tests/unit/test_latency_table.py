"""Latency tables: the monotone fit, interpolation, predictions, file checks, and a measured tiny table."""

import json

import pytest
import torch

from econlm.errors import UserError
from econlm.latency_table import (
    Curve,
    LatencyTable,
    check_table,
    expected_savings,
    fit_curve,
    interpolate,
    interpolate_many,
    latency_token_share,
    load_table,
    measure_table,
    model_shape,
    monotone_fit,
)
from tests.conftest import tiny_config, tiny_model


def test_monotone_fit_pools_adjacent_violators():
    assert monotone_fit([5.0, 3.0, 4.0, 1.0]) == [5.0, 3.5, 3.5, 1.0]
    assert monotone_fit([1.0, 2.0, 3.0]) == [2.0, 2.0, 2.0]
    assert monotone_fit([3.0, 2.0, 1.0]) == [3.0, 2.0, 1.0]


def test_fit_curve_anchors_the_dense_count_at_zero_and_never_goes_negative():
    curve = fit_curve([4, 1, 2, 3], [0.001, 0.010, 0.004, 0.005])  # noise made 2 < 3
    assert curve.kept == (1, 2, 3, 4)
    assert curve.saved == pytest.approx((0.010, 0.0045, 0.0045, 0.0))  # 2 and 3 pooled; dense is 0
    assert curve.raw_saved == (0.010, 0.004, 0.005, 0.001)


def _curve():
    return Curve(kept=(2, 4, 8), saved=(0.3, 0.1, 0.0), raw_saved=(0.3, 0.1, 0.0))


def test_interpolation_is_linear_between_points_and_differentiable():
    curve = _curve()
    assert (
        curve.at(4) == pytest.approx(0.1) and curve.at(6) == pytest.approx(0.05) and curve.at(3) == pytest.approx(0.2)
    )
    assert curve.at(8) == pytest.approx(0.0)
    k = torch.tensor(6.0, requires_grad=True)
    interpolate(k, curve).backward()
    assert float(k.grad) == pytest.approx(-0.1 / 4)  # the segment from 4 to 8 kept units


def _table(**overrides):
    settings = dict(
        model={"name": "tiny", **model_shape(tiny_config("bert"))},
        setup={"batch": 1, "seq_len": 16, "threads": torch.get_num_threads()},
        machine={},
        dense_seconds=1.0,
        attention=Curve((1, 2, 3, 4), (0.06, 0.04, 0.02, 0.0), (0.06, 0.04, 0.02, 0.0)),
        ffn=Curve((16, 32, 64), (0.2, 0.1, 0.0), (0.2, 0.1, 0.0)),
    )
    settings.update(overrides)
    return LatencyTable(**settings)


def test_predicted_latency_subtracts_each_layers_savings():
    table = _table()
    # Layer 0 keeps 2 heads (0.04 saved) and 32 neurons (0.1); layer 1 stays dense.
    assert table.predict([2, 4], [32, 64]) == pytest.approx(1.0 - 0.04 - 0.1)
    assert table.predicted_speedup([2, 4], [32, 64]) == pytest.approx(1 / 0.86)
    attention, ffn = expected_savings(
        table, [torch.tensor(2.0), torch.tensor(4.0)], [torch.tensor(32.0), torch.tensor(64.0)]
    )
    assert (float(attention), float(ffn)) == pytest.approx((0.04, 0.1))


def test_a_table_round_trips_through_json(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_table().to_json()))
    assert load_table(path) == _table()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something else"}', "malformed"),
        (json.dumps({**_table().to_json(), "dense_seconds": -1}), "dense_seconds must be positive"),
        (json.dumps({**_table().to_json(), "ffn": {"kept": [3, 2], "saved": [0, 0]}}), "increasing"),
    ],
)
def test_a_malformed_table_is_one_line(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        load_table(path)
    assert "\n" not in str(error.value)


def test_a_missing_table_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="econlm latency-table"):
        load_table(tmp_path / "none.json")


def test_a_table_of_another_shape_is_refused_and_another_machine_warns(capsys, monkeypatch):
    with pytest.raises(UserError, match="intermediate 64 \\(model: 128\\)"):
        check_table(_table(), tiny_config("bert", intermediate_size=128))
    check_table(_table(setup={"threads": 99}), tiny_config("bert"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "99 threads" in err and "warning" in err
    check_table(_table(), tiny_config("bert"))
    assert capsys.readouterr().err == ""
    # Another CPU model of the same architecture and core count (platform.processor() says only "x86_64").
    from econlm import runinfo

    here = {**runinfo.machine(), "cpu_model": "This CPU 1000"}  # a name even where /proc/cpuinfo has none
    monkeypatch.setattr(runinfo, "machine", lambda: here)
    check_table(_table(machine={**here, "cpu_model": "Some Other CPU 9000"}), tiny_config("bert"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CPU Some Other CPU 9000 (here: This CPU 1000)" in err
    check_table(_table(machine=here), tiny_config("bert"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_measure_table_on_a_tiny_model(family):
    model = tiny_model(family, intermediate_size=64)
    table = measure_table(model, name="tiny", batch=2, seq_len=16, repeats=3, warmup=1, ffn_points=4, progress=False)
    groups = 4 if family == "bert" else 2  # llama: 4 query heads over 2 K/V groups
    assert table.attention.kept == tuple(range(1, groups + 1)) and table.ffn.kept == (16, 32, 48, 64)
    assert table.group == 4 // groups and table.model["kv_heads"] == groups
    assert table.tokens.kept == (2, 4, 6, 8, 10, 12, 14, 16)  # 8 token counts up to the sequence length
    for curve in (table.attention, table.ffn, table.tokens):
        assert curve.saved[-1] == 0.0 and all(a >= b for a, b in zip(curve.saved, curve.saved[1:]))
    assert table.dense_seconds > 0 and table.setup["seq_len"] == 16


def _token_table(**overrides) -> LatencyTable:
    """3 layers, 12 ms dense (4 ms a layer); a layer saves 1 ms at 1 kept group (of 2), at 32 neurons (of 64)
    and on 4 tokens (of 8)."""
    settings = dict(
        model={"name": "tiny", **model_shape(tiny_config("bert"))},
        setup={"batch": 1, "seq_len": 8, "threads": 1},
        machine={},
        dense_seconds=0.012,
        attention=Curve((1, 2), (0.001, 0.0), (0.001, 0.0)),
        ffn=Curve((32, 64), (0.001, 0.0), (0.001, 0.0)),
        tokens=Curve((4, 8), (0.001, 0.0), (0.001, 0.0)),
    )
    return LatencyTable(**{**settings, **overrides})


def test_latency_token_share_by_hand():
    table = _token_table()
    lengths = torch.tensor([8.0])
    # Layer 0 dense on 8 tokens: 4 ms. Layer 1: one group shut (3 of 4 ms) on 4 tokens (3 of 4 ms): 4 x 3/4 x 3/4
    # = 2.25 ms. Layer 2: half the neurons (3 of 4 ms) on 4 tokens: 2.25 ms. Dense: 3 x 4 ms on 8 tokens.
    counts = [lengths, torch.tensor([4.0]), torch.tensor([4.0])]
    groups = [torch.tensor(2.0), torch.tensor(1.0), torch.tensor(2.0)]
    neurons = [torch.tensor(64.0), torch.tensor(64.0), torch.tensor(32.0)]
    assert float(latency_token_share(table, counts, groups, neurons)) == pytest.approx(8.5 / 12)
    assert float(latency_token_share(table, [lengths] * 3)) == pytest.approx(1.0)  # nothing shut or dropped
    # An example of 4 real tokens is its own reference: dropping nothing from it costs its whole latency.
    short = torch.tensor([4.0])
    assert float(latency_token_share(table, [short] * 3)) == pytest.approx(1.0)
    # Per example: the share sums seconds over examples, each against its own full length.
    two = [torch.tensor([8.0, 4.0]), torch.tensor([4.0, 4.0]), torch.tensor([4.0, 4.0])]
    assert float(latency_token_share(table, two)) == pytest.approx((4 + 3 + 3 + 3 * 3) / (3 * 4 + 3 * 3))


def test_latency_token_share_has_gradients_where_the_curves_slope():
    table = _token_table()
    tokens = torch.tensor([6.0], requires_grad=True)
    group = torch.tensor(1.5, requires_grad=True)
    share = latency_token_share(table, [torch.tensor([8.0]), tokens, tokens], [group] * 3, [])
    share.backward()
    assert tokens.grad.item() > 0 and group.grad.item() > 0  # more tokens or groups kept: more latency
    many = interpolate_many(torch.tensor([[2.0, 6.0], [8.0, 9.0]]), table.tokens)  # any shape, entry by entry
    # below the grid the first slope continues; above it nothing is saved
    assert many.flatten().tolist() == pytest.approx([0.0015, 0.0005, 0.0, 0.0]) and many.shape == (2, 2)


def test_a_table_without_a_token_curve_cannot_price_tokens(tmp_path):
    from econlm.incentive import TaxConfig

    old = _token_table(tokens=None)
    with pytest.raises(UserError, match="measures no token curve") as info:
        latency_token_share(old, [torch.tensor([8.0])] * 3)
    assert "\n" not in str(info.value)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old.to_json()))
    assert "tokens" not in json.loads(path.read_text())  # written as tables were before token curves
    assert load_table(path).tokens is None
    with pytest.raises(UserError, match="measures no token curve") as info:
        TaxConfig(cost=("latency", "tokens"), latency_table=str(path))
    assert "\n" not in str(info.value)


def test_latency_table_cli_writes_a_table_that_loads_and_refuses_to_overwrite(tmp_path, capsys):
    from econlm.cli import main
    from tests.conftest import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "table.json"
    argv = [
        "latency-table",
        str(checkpoint),
        "--out",
        str(out),
        "--seq-len",
        "16",
        "--repeats",
        "2",
        "--ffn-points",
        "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "predicted speedup with half the heads" in printed and "half the tokens after the first layer" in printed
    table = load_table(out)
    assert table.ffn.kept == (32, 64) and table.setup["seq_len"] == 16 and table.tokens.kept[-1] == 16
    assert json.loads(out.read_text())["meta"]["versions"]["torch"]
    assert main(argv) == 2 and "exists" in capsys.readouterr().err
    assert main(["latency-table", str(checkpoint), "--out", str(tmp_path / "t2.json"), "--seq-len", "999"]) == 2
    assert "context" in capsys.readouterr().err
