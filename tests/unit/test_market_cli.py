"""`econlm market` end to end on a tiny fine-tuned-shaped checkpoint, and its bad input."""

from __future__ import annotations

import json

import pytest

from econlm.cli import main
from tests.conftest import save_tiny_checkpoint, write_tiny_glue


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def glue(tmp_path):
    return write_tiny_glue(tmp_path / "data", n_dev=130)


def test_market_writes_values_allocations_and_figures(capsys, tmp_path, glue):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    out = tmp_path / "market"
    code, err = _run(
        capsys,
        "market",
        ckpt,
        "--task",
        "sst2",
        "--data-dir",
        glue,
        "--out",
        out,
        "--examples",
        24,
        "--tol",
        0.1,
        "--pairs",
        3,
        "--block",
        32,
        "--interaction-top",
        3,
        "--interaction-samples",
        2,
        "--budgets",
        "0.8,0.5",
    )
    assert code == 0, err
    result = json.loads((out / "market.json").read_text())
    assert len(result["units"]) == 2 * 4 + 2 * 2  # 4 heads and 2 FFN blocks of 32 in each of 2 layers
    assert result["estimator"]["pairs"] <= 3 and result["meta"]["held_out_examples"] == 130 - 24
    assert len(result["interactions"]["pairs"]) == 3
    methods = {(r["budget"], r["method"]) for r in result["allocations"]}
    assert {(0.5, "market"), (0.5, "activation"), (0.5, "fisher")} <= methods
    # The rivals remove exactly as many units per layer as the market did.
    for budget in (0.8, 0.5):
        shares = {r["method"]: r["dense_share"] for r in result["allocations"] if r["budget"] == budget}
        assert shares["market"] == pytest.approx(shares["activation"]) == pytest.approx(shares["fisher"])
        assert shares["market"] < 1
    assert {r["ranking"] for r in result["head_ranking_at_half"]["rows"]} == {"shapley", "activation", "fisher"}
    for name in ("market_head_values", "market_ffn_values", "market_lorenz", "market_interactions"):
        assert (out / f"{name}.png").stat().st_size > 1000
    from econlm.report import _market_sections

    page = "".join(_market_sections(tmp_path))  # econlm report on a folder holding market/market.json
    assert page.count("<img") == 4 and "Market-clearing allocations" in page


def test_the_market_from_python_is_the_market_from_the_command_line(capsys, tmp_path, glue):
    import econlm

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    settings = {"examples": 24, "tol": 0.1, "pairs": 2, "block": 32, "interaction_top": 0, "budgets": (0.5,)}
    code, err = _run(
        capsys, "market", ckpt, "--task", "sst2", "--data-dir", glue, "--out", tmp_path / "cli",
        "--examples", 24, "--tol", 0.1, "--pairs", 2, "--block", 32, "--interaction-top", 0, "--budgets", "0.5",
    )  # fmt: skip
    assert code == 0, err
    config = econlm.MarketConfig(model=str(ckpt), task="sst2", data_dir=str(glue), out=str(tmp_path / "py"), **settings)
    result = econlm.run_market(config, progress=False)
    econlm.save_market(result, config.out)  # market.json and the figures, as the command writes them
    assert json.loads((tmp_path / "py" / "market.json").read_text())["units"] == result["units"]
    assert sorted(p.name for p in (tmp_path / "py").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "cli").glob("*.png")
    )
    cli = json.loads((tmp_path / "cli" / "market.json").read_text())
    assert [u["value"] for u in result["units"]] == [u["value"] for u in cli["units"]]  # same seed, same game
    with pytest.raises(econlm.UserError, match="zero permutations"):
        econlm.MarketConfig(model=str(ckpt), task="sst2", pairs=0)


def test_a_latency_table_prices_the_market_and_a_foreign_one_is_one_line(capsys, tmp_path, glue):
    """A table for the tiny model's shape, with each layer's attention saving 1 ms per head removed and its FFN
    2 ms per block of 32, of 20 ms dense: every allocation's predicted latency fits its budget."""
    from econlm.latency_table import FORMAT, model_shape
    from econlm.models import load_config

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    config, _ = load_config(str(ckpt))
    table = {
        "format": FORMAT,
        "model": model_shape(config),
        "setup": {"batch": 1, "seq_len": 32, "threads": 1},
        "dense_seconds": 0.020,
        "attention": {"kept": [1, 2, 3, 4], "saved": [0.003, 0.002, 0.001, 0.0]},
        "ffn": {"kept": [32, 64], "saved": [0.002, 0.0]},
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    argv = ["market", ckpt, "--task", "sst2", "--data-dir", glue, "--examples", 24, "--tol", 0.1, "--pairs", 2]
    argv += ["--block", 32, "--interaction-top", 0, "--budgets", "0.9,0.75", "--latency-table", path]
    code, err = _run(capsys, *argv, "--out", tmp_path / "market")
    assert code == 0, err
    result = json.loads((tmp_path / "market" / "market.json").read_text())
    assert result["priced_by"] == "latency"
    for row in result["allocations"]:
        if row["method"] != "dense":
            assert row["predicted_latency_share"] <= row["budget"] + 1e-9
    # The market's rows are the clearing of its own values under this table.
    from econlm import market
    from econlm.flops import Structure
    from econlm.latency_table import load_table
    from econlm.models import load_model

    units = [market.Unit(u["kind"], u["layer"], u["index"]) for u in result["units"]]
    structure = Structure.of_model(load_model(str(ckpt)).model)
    loaded_table = load_table(path)
    for row in (r for r in result["allocations"] if r["method"] == "market"):
        kept = market.clear_market_latency(
            [u["value"] for u in result["units"]], units, structure, loaded_table, row["budget"], 32
        )
        heads = [sum(k for u, k in zip(units, kept) if u.kind == "head" and u.layer == i) for i in range(2)]
        ffn = [32 * sum(k for u, k in zip(units, kept) if u.kind == "ffn" and u.layer == i) for i in range(2)]
        assert row["predicted_latency_share"] == pytest.approx(1 / loaded_table.predicted_speedup(heads, ffn))
    table["model"]["heads"] = 6
    path.write_text(json.dumps(table))
    code, err = _run(capsys, *argv, "--out", tmp_path / "again")
    assert code == 2 and "made for another model or layer shape: heads 6 (model: 4)" in err and "\n" not in err
    assert not (tmp_path / "again" / "market.json").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--budgets", "0.5,1.5"], "a budget must be in (0, 1]"),
        (
            ["--budgets", "0.5,,0.6"],
            "--budgets takes comma-separated numbers in (0, 1], such as 0.8,0.6,0.5, not '0.5,,0.6'",
        ),
        (["--budgets", "abc"], "not 'abc'"),
        (["--pairs", "0"], "zero permutations"),
        (["--examples", "50"], "--examples 50 is too few for --tol 0.01"),
        (["--units", "neurons"], "--units takes head, ffn or both"),
    ],
)
def test_bad_settings_are_one_line_before_loading(capsys, tmp_path, flags, message):
    code, err = _run(capsys, "market", tmp_path / "nothing", "--task", "sst2", "--out", tmp_path / "o", *flags)
    assert code == 2 and message in err and "\n" not in err
    if "examples" in flags:
        assert "use at least 200" in err


def test_a_block_that_does_not_divide_the_ffn(capsys, tmp_path, glue):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    capsys.readouterr()  # the checkpoint's own save messages
    code, err = _run(
        capsys,
        "market",
        ckpt,
        "--task",
        "sst2",
        "--data-dir",
        glue,
        "--out",
        tmp_path / "o",
        "--examples",
        24,
        "--tol",
        0.1,
        "--block",
        24,
    )
    assert code == 2 and "--block 24 does not divide the FFN width 64; use one of 1, 2, 4, 8, 16, 32, 64" in err
    assert "\n" not in err


@pytest.mark.parametrize(
    "examples, tol, message",
    [
        # 130 dev examples, 100 kept back to score pruned models: 30 fit the game, enough for --tol 0.1 (20)
        (40, 0.1, "--examples 40 leaves fewer than 100 to score pruned models on: use --examples 30 or fewer"),
        # --tol 0.01 needs 200 in the game; 30 fit, and 2 / 30 = 0.0667 is the finest --tol they allow
        (
            200,
            0.01,
            "too few for --tol 0.01 (needs 200 for the game) plus 100 held out to score pruned models on; "
            "use --tol 0.0667 or larger",
        ),
    ],
)
def test_a_dev_split_too_small_for_the_game_and_the_held_out_scores(capsys, tmp_path, glue, examples, tol, message):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    capsys.readouterr()  # the checkpoint's own save messages
    flags = ["--data-dir", glue, "--out", tmp_path / "o", "--examples", examples, "--tol", tol]
    code, err = _run(capsys, "market", ckpt, "--task", "sst2", *flags)
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "o" / "market.json").exists()


def test_a_model_without_a_task_head_is_told_to_fine_tune(capsys, tmp_path, glue):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="base")
    code, err = _run(
        capsys,
        "market",
        ckpt,
        "--task",
        "stsb",
        "--data-dir",
        glue,
        "--out",
        tmp_path / "o",
        "--examples",
        24,
        "--tol",
        0.1,
    )
    assert code == 2 and "needs a model fine-tuned on stsb" in err and "econlm train" in err


def test_too_few_dev_examples_for_a_held_out_part(capsys, tmp_path, glue):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", head="seq-cls")
    code, err = _run(
        capsys,
        "market",
        ckpt,
        "--task",
        "sst2",
        "--data-dir",
        glue,
        "--out",
        tmp_path / "o",
        "--examples",
        100,
        "--tol",
        0.1,
    )
    assert code == 2 and "use --examples 30 or fewer" in err


def test_shadow_price_of_a_pair_by_hand():
    from econlm.shadow import compare

    lo = {"seed": 1, "cost": ["flops"], "budget": 0.5, "share": 0.5, "loss": 0.60, "lambda_final": 0.3}
    hi = {"seed": 1, "cost": ["flops"], "budget": 0.6, "share": 0.6, "loss": 0.58, "lambda_final": 0.1}
    pair = compare(lo, hi)
    assert pair["finite_difference"] == pytest.approx(0.2)  # -(0.58 - 0.60) / (0.6 - 0.5)
    assert pair["ratio_to_mean_lambda"] == pytest.approx(1.0) and pair["consistent"]
    far = compare(lo, {**hi, "loss": 0.20})  # 4.0: twenty times the lower price, over twice the higher
    assert far["finite_difference"] == pytest.approx(4.0) and not far["consistent"]


def _fake_sweep(tmp_path, glue):
    """Two controller runs of one seed at neighbouring budgets (tiny checkpoints), and a lambda = 0 run."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    lines = []
    for i, (budget, share, lam) in enumerate([(0.5, 0.52, 0.4), (0.7, 0.69, 0.1), (None, 1.0, 0.0)]):
        model_dir = save_tiny_checkpoint(tmp_path / f"m{i}", head="seq-cls", seed=i)
        (model_dir / "metrics.json").write_text(json.dumps({"cost_terms_last_step": {"cost/compute_share": share}}))
        settings = {"task": "sst2", "seed": 1, "cost": ["flops"], "lam": 0.0, "budget": budget, "data_dir": str(glue)}
        lines.append(
            json.dumps(
                {
                    "id": f"t{i}",
                    "kind": "train",
                    "status": "ok",
                    "settings": settings,
                    "model_dir": str(model_dir),
                    "lambda_final": lam,
                }
            )
        )
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_shadow_prices_of_a_sweep_and_the_report_section(capsys, tmp_path, glue):
    from econlm.report import _market_sections
    from econlm.shadow import dev_loss

    sweep = _fake_sweep(tmp_path, glue)
    code, err = _run(capsys, "market", "--sweep", sweep, "--out", sweep / "market")
    assert code == 0, err
    shadow = json.loads((sweep / "market" / "market.json").read_text())["shadow_prices"]
    assert len(shadow["runs"]) == 2 and len(shadow["pairs"]) == 1  # the lambda = 0 run has no budget
    (pair,) = shadow["pairs"]
    losses = [dev_loss(str(tmp_path / f"m{i}"), {"task": "sst2", "data_dir": str(glue)})["loss"] for i in (0, 1)]
    assert pair["losses"] == pytest.approx(losses)
    assert pair["finite_difference"] == pytest.approx(-(losses[1] - losses[0]) / (0.69 - 0.52))
    import econlm  # the same check from Python

    again = econlm.shadow_prices(sweep)
    assert again["pairs"][0]["losses"] == pytest.approx(losses) and again["pairs"][0]["shares"] == [0.52, 0.69]
    page = "".join(_market_sections(sweep))  # the section econlm report adds (the fake trials lack the rest)
    assert "Is the price a shadow price of compute?" in page and "0.52, 0.69" in page
