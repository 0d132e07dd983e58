"""Sweeps: expansion, schema errors with lines, resumability, failures, baselines, Pareto output."""

import json

import pytest

from econlm.cli import main
from econlm.errors import UserError
from econlm.sweep import expand, load_sweep
from tests.conftest import save_tiny_checkpoint, write_tiny_glue


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return {"model": save_tiny_checkpoint(root / "bert"), "data": write_tiny_glue(root / "data")}


def _yaml(tiny, extra="", grid="  lam: [0, 0.1]\n  cost: [[ffn_l1], [attn_entropy]]\n"):
    return (
        f"name: t\nbase:\n  model: {tiny['model']}\n  task: sst2\n  epochs: 1\n  lr: 0.001\n  batch_size: 16\n"
        f"  max_length: 32\n  data_dir: {tiny['data']}\ngrid:\n{grid}{extra}"
    )


def test_expand_grid_and_drop_duplicates(tiny, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(_yaml(tiny, extra="trials:\n  - {lam: 0.1, cost: [ffn_l1]}\n"))
    specs = expand(load_sweep(path))
    assert len(specs) == 4  # 2 x 2 grid; the explicit trial repeats a grid point and runs once
    assert len({s["id"] for s in specs}) == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: t\nbogus: 1\n", r":2: unknown key 'bogus'"),
        ("name: t\nbase:\n  task: sst2\n  lamda: 0.1\n", r":4: unknown training setting 'lamda'.*Did you mean 'lam'"),
        ("name: t\ngrid:\n  lam: 0.1\n", r":3: grid values of 'lam' must be a non-empty list"),
        ("name: t\nbase:\n  task: sst2\ngrid:\n  lam: [0.1, -1]\n", r"non-negative"),
        ("name: t\nbase: [1, 2\n", r"not valid YAML"),
    ],
)
def test_schema_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_sweep(path)


def test_sweep_runs_resumes_records_failures_and_builds_baselines(tiny, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    grid = "  lam: [0, 0.05]\n  cost: [[ffn_l1]]\n"
    extra = (
        "trials:\n  - {lam: 0.1, cost: [ffn_l1], model: /no/such/model}\n"
        "  - {lam: 0.0, cost: [flops], budget: 0.3, price_lr: 50.0, gate_lr: 2.0, epochs: 4, budget_warmup: 0.2}\n"
        "  - {lam: 0.0, cost: [ffn_l1], epochs: 4}\n"
        "compact: {eps: 1.0e-9, calib_examples: 16}\n"
        "baselines:\n  topk: {budgets: [2]}\n  posthoc: {importance: [magnitude], finetune_epochs: 0.5}\n"
    )
    path.write_text(_yaml(tiny, extra=extra, grid=grid))
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 failed" in printed.replace("trials finished, 1 failed", "1 failed") and "/no/such/model" in printed
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_kind = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    assert len(by_kind["train"]) == 5 and sum(r["status"] == "failed" for r in by_kind["train"]) == 1
    assert len(by_kind["topk"]) == 2 and all(r["status"] == "ok" for r in by_kind["topk"])  # one per lambda = 0 model
    gated = [r for r in by_kind["train"] if r["settings"].get("budget") == 0.3][0]
    removed = gated["compact"]["removed"]
    assert removed["heads"] + removed["neurons"] > 0  # closed gates became removable structure
    assert gated["dense_flops"] < gated["dense_flops_before"]
    posthoc = by_kind["posthoc"][0]
    assert posthoc["status"] == "ok" and posthoc["settings"]["matches"] == gated["id"]
    assert posthoc["dense_flops"] == pytest.approx(gated["dense_flops"], rel=0.02)  # same units removed
    for r in by_kind["train"]:
        if r["status"] == "ok":
            assert r["dense_flops"] > 0 and r["effective_flops_per_token"] > 0 and r["latency_ms"] > 0
    pareto = json.loads((out / "pareto.json").read_text())
    problem = pareto["dense_flops"]["problems"][0]
    assert problem["task"] == "sst2" and "incentive" in problem["methods"]
    # Rerun: finished trials are skipped, the failed one is tried again (and fails again).
    before = {
        r["id"]: (out / "trials" / r["id"] / "result.json").stat().st_mtime for r in results if r["status"] == "ok"
    }
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    after = {i: (out / "trials" / i / "result.json").stat().st_mtime for i in before}
    assert before == after
    # The report renders every section.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "Ablation" in page and "Failed trials" in page
    assert "<td>flops gates (both)</td>" in page and "<td>budget 0.3</td>" in page  # a controller's price is its budget
    # With a market.json in the folder (here the shadow-price check of this sweep), the report adds its section.
    assert "The market" not in page
    assert main(["market", "--sweep", str(out), "--out", str(out / "market")]) == 0
    assert main(["report", str(out)]) == 0
    assert "<h2>The market (market)</h2>" in (out / "report.html").read_text()


def test_ray_missing_says_how_to_install(tiny, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = tmp_path / "s.yaml"
    path.write_text(_yaml(tiny, grid="  lam: [0]\n"))
    code = main(["sweep", str(path), "--out", str(tmp_path / "o"), "--ray", "local"])
    assert code == 2 and "pip install 'econlm[ray]'" in capsys.readouterr().err


def test_two_sweep_files_sharing_a_folder_keep_each_others_results(tiny, tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(_yaml(tiny, grid="  lam: [0]\n  cost: [[ffn_l1]]\n"))
    second.write_text(_yaml(tiny, grid="  lam: [0.05]\n  cost: [[ffn_l1]]\n").replace("name: t", "name: t2"))
    out = tmp_path / "out"
    assert main(["sweep", str(first), "--out", str(out)]) == 0
    assert main(["sweep", str(second), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["settings"]["lam"] for r in lines) == [0.0, 0.05]
    assert lines[0]["settings"]["lam"] == 0.05  # the latest sweep's own trials first
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["config"]["name"] == "t2" and set(sweep["configs"]) == {"t", "t2"}
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["dense_flops"]["problems"]  # built from both sweeps' trials
    # rerunning the first file skips its finished trial and still keeps the second's
    assert main(["sweep", str(first), "--out", str(out)]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def _base(tiny, **extra) -> dict:
    """The base settings of the in-code sweeps: a tiny model on a tiny SST-2, one quick epoch."""
    base = {"model": str(tiny["model"]), "task": "sst2", "epochs": 1, "lr": 1e-3, "batch_size": 16}
    return {**base, "max_length": 32, "data_dir": str(tiny["data"]), **extra}


def test_results_jsonl_keeps_trials_another_sweep_finished_while_this_one_ran(tiny, tmp_path, monkeypatch):
    import econlm.sweep as sweep_module
    from econlm.sweep import SweepConfig, run_sweep

    out = tmp_path / "shared"
    seen = []  # the index a reader would find while each of this sweep's trials runs

    def fake_trial(spec, trial_dir, context):
        index = out / "results.jsonl"
        seen.append({json.loads(line)["id"] for line in index.read_text().splitlines()} if index.exists() else set())
        if len(seen) == 1:  # another sweep file on the folder finishes a trial of its own meanwhile
            other = out / "trials" / "other-sweep-trial"
            other.mkdir(parents=True)
            (other / "result.json").write_text(json.dumps({"id": "other-sweep-trial", "kind": "train",
                                                           "settings": {"task": "stsb"}, "status": "ok"}))
        return {"id": spec["id"], "kind": spec["kind"], "settings": spec["settings"], "status": "ok", "model_dir": trial_dir}

    monkeypatch.setattr(sweep_module, "run_trial", fake_trial)
    run_sweep(SweepConfig(name="t", base=_base(tiny), grid={"lam": [0.0, 0.1]}), out, progress=False)
    assert "other-sweep-trial" in seen[1]  # written with this sweep's first result, not only at its end


def test_a_sweep_built_in_code_is_validated_like_a_file_and_runs(tiny, tmp_path):
    from econlm.sweep import SweepConfig, run_sweep, sweep_config

    base = _base(tiny)
    with pytest.raises(UserError, match=r"sweep config \[grid.lam.0\]: 'lam' must be a number, not 'abc'"):
        run_sweep({"base": base, "grid": {"lam": ["abc"]}}, tmp_path / "bad")
    with pytest.raises(UserError, match="defines no trial"):
        run_sweep(SweepConfig(base=base), tmp_path / "bad")
    with pytest.raises(UserError, match=r"unknown key 'gird'.*Did you mean 'grid'"):
        sweep_config({"base": base, "gird": {"lam": [0]}})
    assert not (tmp_path / "bad").exists()
    # YAML's strings for numbers become numbers here too, and the ids match a file's.
    in_code = sweep_config({"name": "t", "base": base, "grid": {"lam": ["1e-3"]}})
    path = tmp_path / "s.yaml"
    path.write_text(_yaml(tiny, grid="  lam: [1e-3]\n"))
    assert [s["id"] for s in expand(in_code)] == [s["id"] for s in expand(load_sweep(path))]
    results = run_sweep(SweepConfig(name="code", base=base, grid={"lam": [0.0]}), tmp_path / "run", progress=False)
    assert [r["status"] for r in results] == ["ok"]


def test_distill_trials_train_against_the_plain_fine_tune_of_the_same_seed(tiny, tmp_path):
    from econlm.sweep import run_sweep

    base = _base(tiny, seed=3)
    sweep = {"base": base, "trials": [{"lam": 0.1, "cost": ["ffn_l1"], "distill": True}], "grid": {"lam": [0]}}
    results = {r["id"]: r for r in run_sweep(sweep, tmp_path / "run", progress=False)}
    assert all(r["status"] == "ok" for r in results.values()) and len(results) == 2
    student = next(r for r in results.values() if r["settings"].get("distill"))
    teacher = next(r for r in results.values() if not r["settings"].get("distill"))
    metrics = json.loads((tmp_path / "run" / "trials" / student["id"] / "model" / "metrics.json").read_text())
    # The grid's lambda = 0 trial is the teacher: trained once, shared, not made up a second time.
    assert metrics["distillation"]["teacher"] == str(tmp_path / "run" / "trials" / teacher["id"] / "model")
    assert len(list((tmp_path / "run" / "trials").iterdir())) == 2
    with pytest.raises(UserError, match="'distill' must be true or false"):
        run_sweep({"base": base, "trials": [{"distill": "yes"}]}, tmp_path / "bad")


def test_a_student_can_start_from_its_teacher_whose_steps_count_once(tiny, tmp_path):
    from econlm.sweep import run_sweep

    base = _base(tiny, seed=4)
    students = [
        {"lam": 0.1, "cost": ["ffn_l1"], "distill": True, "start_from_teacher": True},  # teacher and start
        {"lam": 0.1, "cost": ["ffn_l1"], "start_from_teacher": True},  # start only: no distillation
    ]
    results = run_sweep({"base": base, "trials": students, "grid": {"lam": [0]}}, tmp_path / "run", progress=False)
    assert [r["status"] for r in results] == ["ok"] * 3
    teacher = next(r for r in results if not r["settings"].get("start_from_teacher"))
    teacher_dir = str(tmp_path / "run" / "trials" / teacher["id"] / "model")
    own = teacher["training"]["steps"]  # 1 epoch of the tiny SST-2 in batches of 16, the same for every run
    for student in (r for r in results if r["settings"].get("start_from_teacher")):
        model_dir = tmp_path / "run" / "trials" / student["id"] / "model"
        assert json.loads((model_dir / "train_config.json").read_text())["model"] == teacher_dir
        distilled = json.loads((model_dir / "metrics.json").read_text())["distillation"]
        assert (distilled or {}).get("teacher") == (teacher_dir if student["settings"].get("distill") else None)
        # Its own epoch plus the teacher's, once, whether the teacher also taught it or not.
        assert student["training"]["steps"] == 2 * own
        assert student["training"]["counted"] == ["own", teacher_dir]
    with pytest.raises(UserError, match="'start_from_teacher' must be true or false"):
        run_sweep({"base": base, "trials": [{"start_from_teacher": 1}]}, tmp_path / "bad")


def test_a_missing_teacher_is_trained_first():
    from econlm.sweep import teacher_settings

    student = {
        "model": "m",
        "task": "sst2",
        "seed": 2,
        "lam": 0.5,
        "cost": ["flops"],
        "budget": 0.5,
        "distill": True,
        "lr": 1e-3,
    }
    teacher_id, teacher = teacher_settings(student)
    assert teacher == {"model": "m", "task": "sst2", "seed": 2, "lr": 1e-3, "lam": 0.0, "cost": ["ffn_l1"]}
    assert teacher_id.startswith("train-sst2-ffn_l1-lam0-s2-")
    # How the student starts (its gates, its weights) is not the teacher's business: the same teacher.
    assert teacher_settings({**student, "gate_init": "fisher", "start_from_teacher": True}) == (teacher_id, teacher)


def test_posthoc_rivals_fisher_rescaled_matched_and_untrained_report_their_training(tiny, tmp_path):
    from econlm.sweep import run_sweep

    base = _base(tiny, seed=5, epochs=4)
    sweep = {
        "base": base,
        "trials": [
            {"lam": 0.0, "cost": ["ffn_l1"]},
            {
                "lam": 0.0,
                "cost": ["flops"],
                "budget": 0.3,
                "price_lr": 50.0,
                "gate_lr": 2.0,
                "budget_warmup": 0.2,
                "distill": True,
                "distill_hidden_weight": 0.5,
                "distill_temperature": 3.0,
            },
        ],
        "compact": {"eps": 1e-9, "calib_examples": 16},
        "baselines": {
            "posthoc": {
                "importance": ["fisher"],
                "rescale": [False, True],
                "finetune_epochs": [0, "matched"],
                "distill": True,
            }
        },
    }
    results = run_sweep(sweep, tmp_path / "run", progress=False)
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    incentive = next(r for r in results if r["kind"] == "train" and r["settings"].get("distill"))
    plain = next(r for r in results if r["kind"] == "train" and not r["settings"].get("distill"))
    rivals = [r for r in results if r["kind"] == "posthoc"]
    assert len(rivals) == 4 and {
        (r["settings"].get("rescale", False), r["settings"]["finetune_epochs"]) for r in rivals
    } == {(False, 0), (True, 0), (False, 4.0), (True, 4.0)}
    # 48 examples in batches of 16 for 4 epochs: 12 steps a run. The distilled incentive run counts its
    # teacher's 12 too; each rival counts the 12 of the model it was pruned from, plus its own 12 or none.
    assert plain["training"]["steps"] == 12 and incentive["training"]["steps"] == 24
    assert len(incentive["training"]["counted"]) == 2
    for rival in rivals:
        assert rival["training"]["steps"] == (12 if rival["settings"]["finetune_epochs"] == 0 else 24)
        assert rival["settings"].get("distill", False) == (rival["settings"]["finetune_epochs"] > 0)
        # A retrained rival learns with the student's own distillation loss: hidden states at the same weight.
        metrics = json.loads((tmp_path / "run" / "trials" / rival["id"] / "model" / "metrics.json").read_text())
        if rival["settings"]["finetune_epochs"]:
            assert metrics["distillation"] == {
                "teacher": plain["model_dir"], "prediction_weight": 1.0, "hidden_weight": 0.5, "temperature": 3.0
            }
        else:
            assert metrics["distillation"] is None
    with pytest.raises(UserError, match="unknown importance 'fishr'.*Did you mean 'fisher'"):
        run_sweep({**sweep, "baselines": {"posthoc": {"importance": ["fishr"]}}}, tmp_path / "bad")
    with pytest.raises(UserError, match="'matched'"):
        run_sweep({**sweep, "baselines": {"posthoc": {"finetune_epochs": "lots"}}}, tmp_path / "bad")
    # Kwon et al.'s own setting: Fisher spends the incentive model's blocks' MACs where it sees fit, in the
    # same folder (every finished trial is reused).
    from econlm.analysis import method_of

    spent = {"importance": ["fisher"], "finetune_epochs": [0], "allocation": ["global"]}
    again = run_sweep({**sweep, "baselines": {"posthoc": spent}}, tmp_path / "run", progress=False)
    (rival,) = [r for r in again if r["kind"] == "posthoc" and r["settings"].get("allocation") == "global"]
    assert rival["status"] == "ok" and "remove_heads" not in rival["settings"]
    assert method_of(rival) == "posthoc-fisher-global-untrained"
    assert rival["dense_flops"] <= incentive["dense_flops"]  # the task head is the same in both
    assert rival["dense_flops"] == pytest.approx(incentive["dense_flops"], rel=0.05)  # within a unit or two
    with pytest.raises(UserError, match="'everywhere' is not an allocation; valid: matched, global"):
        run_sweep({**sweep, "baselines": {"posthoc": {**spent, "allocation": "everywhere"}}}, tmp_path / "bad")
    # The layer-by-layer repair is a rival of its own, next to the others in the same folder.
    layerwise = {"importance": ["fisher"], "finetune_epochs": [0], "rescale": ["layerwise"]}
    again = run_sweep({**sweep, "baselines": {"posthoc": layerwise}}, tmp_path / "run", progress=False)
    (rival,) = [r for r in again if r["kind"] == "posthoc" and r["settings"].get("rescale") == "layerwise"]
    assert rival["status"] == "ok" and method_of(rival) == "posthoc-fisher-layerwise-rescaled-untrained"
    assert "repair_stopped" in rival  # None, or where a scale passed its bound
    assert rival["id"] not in {r["id"] for r in rivals}
    with pytest.raises(UserError, match="'rescale' must be true .*, false or layerwise"):
        run_sweep({**sweep, "baselines": {"posthoc": {**layerwise, "rescale": "sometimes"}}}, tmp_path / "bad")
    with pytest.raises(UserError, match="needs importance on one scale in every layer: add fisher"):
        run_sweep({**sweep, "baselines": {"posthoc": {**spent, "importance": ["activation"]}}}, tmp_path / "bad")
    # A market's Shapley values as the rival's importance: the market of the lambda = 0 model is a trial of
    # its own (both unit kinds, 16-neuron blocks), estimated once; the global rival is the market clearing.
    valued = {
        "importance": ["shapley"],
        "finetune_epochs": [0],
        "allocation": ["matched", "global"],
        "market": {"block": 16, "examples": 16, "tol": 0.5, "pairs": 2, "minutes": 1},
    }
    again = run_sweep({**sweep, "baselines": {"posthoc": valued}}, tmp_path / "run", progress=False)
    (market_trial,) = [r for r in again if r["kind"] == "market"]
    assert market_trial["status"] == "ok", market_trial.get("error")
    assert market_trial["settings"]["source_model"] == plain["model_dir"]
    assert market_trial["market"]["units"] == 2 * (4 + 64 // 16) and market_trial["market"]["pairs"] == 2
    rivals = {r["settings"].get("allocation", "matched"): r for r in again if r["settings"].get("importance") == "shapley"}
    assert all(r["status"] == "ok" for r in rivals.values()), [r.get("error") for r in rivals.values()]
    assert all(r["settings"]["market"] == market_trial["id"] for r in rivals.values())
    from pathlib import Path

    from econlm.report import market_files

    assert market_files(tmp_path / "run") == [Path(market_trial["market"]["path"])]  # the report shows it
    assert method_of(rivals["global"]) == "posthoc-shapley-global-untrained" and method_of(market_trial) == "market"
    assert rivals["matched"]["dense_flops"] == incentive["dense_flops"]  # the same counts per layer
    # The greedy stops at the first unit that brings the blocks under the incentive model's MACs, so it may
    # overshoot by one unit: here at most one K/V group (the dearest unit, 7% of this tiny model's MACs).
    from econlm.flops import Structure, unit_macs_per_token
    from econlm.models import load_model

    dense = Structure.of_model(load_model(plain["model_dir"]).model)
    group_flops = 2 * base["max_length"] * unit_macs_per_token(dense, 0, base["max_length"])["kv_group"]
    assert 0 <= incentive["dense_flops"] - rivals["global"]["dense_flops"] <= group_flops
    with pytest.raises(UserError, match="market settings serve 'shapley' importance"):
        run_sweep({**sweep, "baselines": {"posthoc": {**spent, "market": {"block": 16}}}}, tmp_path / "bad")
    with pytest.raises(UserError, match="unknown market setting 'blocks'"):
        run_sweep({**sweep, "baselines": {"posthoc": {**valued, "market": {"blocks": 16}}}}, tmp_path / "bad")
    with pytest.raises(UserError, match="examples 4 is too few for tol 0.1"):
        run_sweep({**sweep, "baselines": {"posthoc": {**valued, "market": {"examples": 4, "tol": 0.1}}}}, tmp_path / "bad")


def test_token_budgets_are_methods_of_their_own_alone_on_units_and_learned(tiny, tmp_path):
    from econlm.analysis import method_of
    from econlm.data import load_examples
    from econlm.flops import Structure, dense_macs
    from econlm.models import load_model
    from econlm.sweep import run_sweep

    base = _base(tiny, seed=7, epochs=4)
    sweep = {
        "base": base,
        "trials": [
            {"lam": 0.0, "cost": ["ffn_l1"]},
            {"lam": 0.0, "cost": ["flops"], "budget": 0.3, "price_lr": 50.0, "gate_lr": 2.0, "budget_warmup": 0.2},
            # Thresholds fast enough for 12 steps: on a random model every token's value is near 1, far above
            # their start (-0.5), where the soft mask is saturated and the tax's gradient small.
            {"lam": 0.0, "cost": ["tokens"], "budget": 0.6, "price_lr": 50.0, "token_lr": 1.0},
        ],
        "compact": {"eps": 1e-9, "calib_examples": 16},
        "baselines": {"tokens": {"budgets": [0.5, "0.75,0.75"], "on": ["dense", "units"]}},
    }
    results = run_sweep(sweep, tmp_path / "run", progress=False)
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    by_method = {}
    for r in results:
        by_method.setdefault(method_of(r), []).append(r)
    # Two budgets on the lambda = 0 model, two on the compacted flops-gated one; the learned-token run drops
    # tokens by its own thresholds and gets no second budget.
    assert sorted(by_method) == ["incentive", "learned-tokens", "tokens", "units+tokens"]
    assert len(by_method["tokens"]) == 2 and len(by_method["units+tokens"]) == 2
    plain = next(r for r in by_method["incentive"] if r["settings"]["cost"] == ["ffn_l1"])
    gated = next(r for r in by_method["incentive"] if r["settings"]["cost"] == ["flops"])
    assert all(r["settings"]["source_model"] == plain["model_dir"] for r in by_method["tokens"])
    assert all(r["settings"]["source_model"] == gated["final_model"] for r in by_method["units+tokens"])
    assert {r["token_budget"] for r in by_method["tokens"]} == {"0.5", "0.75,0.75"}
    for r in by_method["tokens"] + by_method["units+tokens"]:
        # The blocks' MACs scale by the share the budget left on the real dev tokens; the head does not.
        structure = Structure.of_model(load_model(r["settings"]["source_model"]).model)
        full = dense_macs(structure, 32, include_head=True)
        assert 0 < r["token_macs_ratio"] < 1
        assert r["dense_flops_all_tokens"] == full["flops"]
        assert r["dense_flops"] == pytest.approx(full["flops"] - 2 * sum(full["by_layer"]) * (1 - r["token_macs_ratio"]))
        assert r["latency_ms"] > 0 and r["score"] is not None
    learned = by_method["learned-tokens"][0]
    # The price alone cleared the token budget: the blocks ran on 0.6 of their MACs on the dev tokens.
    assert learned["lambda_final"] > 0 and learned["token_macs_ratio"] == pytest.approx(0.6, abs=0.05)
    assert learned["dense_flops"] < learned["dense_flops_all_tokens"]
    # Latency on real dev batches (dynamic padding, each method's token rule in force), the latency_dev axis.
    dev = len(load_examples(base["task"], "dev", base["data_dir"]))
    for r in results:
        assert r["latency_dev_ms"] > 0 and r["latency_dev_examples"] == min(dev, 256), r["id"]
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert {"tokens", "units+tokens", "learned-tokens"} <= set(pareto["dense_flops"]["problems"][0]["methods"])
    assert {"tokens", "units+tokens", "learned-tokens"} <= set(pareto["latency_dev"]["problems"][0]["methods"])
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert "units+tokens" in page and "learned-tokens" in page
    for bad, message in [
        ({"budgets": [0]}, r"baselines.tokens.budgets.*must lie in \(0, 1\]"),
        ({"budgets": [0.5], "on": ["gpu"]}, "unknown target 'gpu'; valid: dense, units"),
        ({"on": ["dense"]}, "needs budgets"),
    ]:
        with pytest.raises(UserError, match=message):
            run_sweep({**sweep, "baselines": {"tokens": bad}}, tmp_path / "bad")


def test_the_quick_start_sweep_file_is_valid_and_prices_compute():
    from pathlib import Path

    config = load_sweep(Path(__file__).resolve().parents[2] / "examples" / "demo_sweep.yaml")
    specs = expand(config)
    budgets = sorted(s["settings"].get("budget") or 1.0 for s in specs)
    assert budgets == [0.5, 0.7, 1.0] and config.compact is not None  # a plain run and two gated budgets
    assert all("flops" in s["settings"]["cost"] for s in specs if s["settings"].get("budget"))


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name for p in (__import__("pathlib").Path(__file__).resolve().parents[2] / "bench" / "sweeps").glob("*.yaml")
    ),
)
def test_every_benchmark_sweep_file_is_valid(name):
    from pathlib import Path

    config = load_sweep(Path(__file__).resolve().parents[2] / "bench" / "sweeps" / name)
    assert expand(config)


def test_a_student_must_learn_as_its_posthoc_rivals_do(tmp_path):
    """A post-hoc rival trains with its lambda = 0 trial's optimiser settings; a student that sets its own would be
    paired with a rival that learned otherwise, so the sweep refuses it before anything runs."""
    base = "name: t\nbase: {task: sst2, epochs: 2, lr: 1.0e-4}\n"
    rivals = "baselines:\n  posthoc: {importance: [fisher], finetune_epochs: [matched]}\n"
    path = tmp_path / "s.yaml"
    path.write_text(base + "trials:\n  - {lam: 0.0}\n  - {lam: 0.0, cost: [flops], budget: 0.5, lr: 3.0e-4}\n" + rivals)
    with pytest.raises(UserError, match=r"sets lr to 0.0003, its lambda = 0 trial to 0.0001; post-hoc rivals learn"):
        load_sweep(path)
    # the same change on the lambda = 0 trial of the same identity, or without rivals, is fine
    path.write_text(base + "trials:\n  - {lam: 0.0, lr: 3.0e-4}\n  - {lam: 0.0, cost: [flops], budget: 0.5, lr: 3.0e-4}\n" + rivals)
    load_sweep(path)
    path.write_text(base + "trials:\n  - {lam: 0.0}\n  - {lam: 0.0, cost: [flops], budget: 0.5, lr: 3.0e-4}\n")
    load_sweep(path)
    # a student of another seed has no lambda = 0 trial to learn from here: nothing to compare
    path.write_text(base + "trials:\n  - {lam: 0.0}\n  - {seed: 3, lam: 0.0, cost: [flops], budget: 0.5, lr: 3.0e-4}\n" + rivals)
    load_sweep(path)
