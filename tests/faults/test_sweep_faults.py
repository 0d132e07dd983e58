"""Fault tests of `econlm sweep` (issue #15): damaged files it reads back, holes in the sweep schema, SIGTERM
and Ctrl-C, and two sweeps sharing one --out folder. Tiny random models on tiny data, as in test_sweep.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from econlm.cli import main
from econlm.sweep import expand, load_sweep
from tests.conftest import save_tiny_checkpoint, write_tiny_glue


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_faults")
    return {"model": save_tiny_checkpoint(root / "bert"), "data": write_tiny_glue(root / "data")}


def _yaml(tiny, grid="  lam: [0]\n", base="", epochs=1):
    return (
        f"name: t\nbase:\n  model: {tiny['model']}\n  task: sst2\n  epochs: {epochs}\n  lr: 0.001\n  batch_size: 16\n"
        f"  max_length: 32\n  data_dir: {tiny['data']}\n{base}grid:\n{grid}"
    )


def _sweep_file(tiny, folder: Path, **kwargs) -> Path:
    path = folder / "s.yaml"
    path.write_text(_yaml(tiny, **kwargs))
    return path


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("econlm: error: ")
    return err


# ---------------------------------------------------------------------------------------------------------
# 1. Damaged files the sweep reads back


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished one-trial sweep; each test damages its own copy."""
    folder = tmp_path_factory.mktemp("finished")
    path = _sweep_file(tiny, folder)
    assert main(["sweep", str(path), "--out", str(folder / "out")]) == 0
    (result,) = _results(folder / "out")
    return {"yaml": path, "out": folder / "out", "result": result}


def _copy(finished, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    return out


def _truncate(path: Path) -> bytes:
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


def _garbage(path: Path) -> bytes:
    path.write_bytes(b"\x00\xff\xfe not json at all \x80")
    return path.read_bytes()


def _not_a_result(path: Path) -> bytes:
    path.write_text("[1, 2, 3]\n")  # valid JSON, but no trial result
    return path.read_bytes()


@pytest.mark.parametrize("damage", [_truncate, _garbage, _not_a_result])
def test_damaged_trial_result_is_set_aside_and_the_trial_rerun(finished, tmp_path, capsys, damage):
    out = _copy(finished, tmp_path)
    path = out / "trials" / finished["result"]["id"] / "result.json"
    damaged = damage(path)
    capsys.readouterr()
    assert main(["sweep", str(finished["yaml"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(path) in warnings[0] and "Traceback" not in err
    (aside,) = path.parent.glob("result.json.corrupt-*")
    assert aside.read_bytes() == damaged  # kept, not deleted
    rerun = json.loads(path.read_text())
    assert rerun["status"] == "ok" and rerun["score"] == finished["result"]["score"]
    assert [r["id"] for r in _results(out)] == [finished["result"]["id"]]


def test_damaged_metrics_json_retrains_the_trial(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    trial = out / "trials" / finished["result"]["id"]
    (trial / "result.json").unlink()  # as if the sweep had been killed after training, before recording
    _truncate(trial / "model" / "metrics.json")
    assert main(["sweep", str(finished["yaml"]), "--out", str(out)]) == 0
    assert "metrics.json is damaged" in capsys.readouterr().err
    assert list((trial / "model").glob("metrics.json.corrupt-*"))
    assert json.loads((trial / "result.json").read_text())["score"] == finished["result"]["score"]


def test_damaged_sweep_json_and_results_jsonl_are_rebuilt(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    _truncate(out / "sweep.json")
    _truncate(out / "results.jsonl")
    assert main(["sweep", str(finished["yaml"]), "--out", str(out)]) == 0
    assert "sweep.json is damaged" in capsys.readouterr().err
    assert list(out.glob("sweep.json.corrupt-*"))
    assert json.loads((out / "sweep.json").read_text())["config"]["name"] == "t"
    assert [r["id"] for r in _results(out)] == [finished["result"]["id"]]  # rebuilt from the trial results


def test_report_on_a_damaged_results_jsonl_says_how_to_rebuild_it(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    _truncate(out / "results.jsonl")
    assert main(["report", str(out)]) == 2
    assert "results.jsonl:1: damaged line; rebuild the file by rerunning `econlm sweep" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------------------
# 2. Holes in the sweep schema


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid:\n  lam: [abc]\n", r"s.yaml:2: 'lam' must be a number, not 'abc'"),
        ("grid:\n  lam:\n    - 0\n    - [1]\n", r"s.yaml:4: 'lam' must be a number, not \[1\]"),
        ("base:\n  lam: abc\ngrid:\n  seed: [1, 2]\n", r"s.yaml:2: 'lam' must be a number, not 'abc'"),
        ("grid:\n  seed: [1.5]\n", r"s.yaml:2: 'seed' must be a whole number, not 1.5"),
        ("trials:\n  - {lam: 0, batch_size: many}\n", r"s.yaml:2: 'batch_size' must be a whole number, not 'many'"),
        ("", r"s.yaml: the sweep defines no trial"),
        ("base:\n  task: sst2\n  lam: 0.1\n", r"s.yaml: the sweep defines no trial"),
        ("grid: {}\ntrials: []\n", r"s.yaml: the sweep defines no trial"),
        ("- lam\n- seed\n", r"s.yaml:1: the config must be a mapping"),
        ("grid:\n  lam: [0,\n", r"s.yaml:3: not valid YAML"),
        ("grid: {lam: [0]}\nresources: 5\n", r"s.yaml:2: 'resources' must be a mapping"),
        ("grid: {lam: [0]}\nbaselines: [topk]\n", r"s.yaml:2: 'baselines' must be a mapping"),
        ("grid: {lam: [0]}\ncompact: {eps: small}\n", r"s.yaml:2: 'eps' must be a number, not 'small'"),
    ],
)
def test_schema_holes_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert re.search(message, _one_line_error(capsys))
    assert not (tmp_path / "out").exists()


def test_binary_sweep_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\x00\x01\xff\xfe garbage")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "s.yaml" in _one_line_error(capsys)


def test_numbers_yaml_reads_as_strings_become_numbers(tiny, tmp_path):
    path = _sweep_file(tiny, tmp_path, grid="  lam: [0, 1e-3]\n", base="  weight_decay: 1e-2\n")
    specs = expand(load_sweep(path))  # YAML reads 1e-3 (no dot) as the string '1e-3'
    assert [s["settings"]["lam"] for s in specs] == [0, 0.001]
    assert all(s["settings"]["weight_decay"] == 0.01 for s in specs)


# ---------------------------------------------------------------------------------------------------------
# 3. SIGTERM and Ctrl-C

# Runs the CLI with every training step slowed down (so a signal lands mid-training) and every call of
# train() logged to $TRAIN_LOG (trial folder and whether it resumed).
CLI_WITH_SLOW_STEPS = textwrap.dedent(
    """
    import os, sys, time
    import econlm.training as t

    real = t.train

    def logged(config, **kwargs):
        with open(os.environ["TRAIN_LOG"], "a") as log:
            log.write(f"{config.out} {kwargs.get('resume')}\\n")
        return real(config, on_step=lambda step, model: time.sleep(float(os.environ["STEP_SLEEP"])), **kwargs)

    t.train = logged
    from econlm.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


def _start_cli(tmp_path: Path, args: list[str], step_sleep: float, name: str) -> subprocess.Popen:
    script = tmp_path / "slow_cli.py"
    script.write_text(CLI_WITH_SLOW_STEPS)
    env = {
        **os.environ,
        "TRAIN_LOG": str(tmp_path / "train.log"),
        "STEP_SLEEP": str(step_sleep),
        "OMP_NUM_THREADS": "1",
        "ECONLM_NO_PROGRESS": "1",
    }
    with open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.DEVNULL, stderr=err)


def _wait_for(predicate, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_stops_a_sweep_cleanly_and_a_rerun_resumes_the_trial(tiny, tmp_path, monkeypatch):
    # 2 epochs of 3 steps, a checkpoint after every step
    path = _sweep_file(tiny, tmp_path, base="  save_every: 1\n", epochs=2)
    out = tmp_path / "out"
    (spec,) = expand(load_sweep(path))
    checkpoint = out / "trials" / spec["id"] / "model" / "checkpoint" / "state.pt"
    process = _start_cli(tmp_path, ["sweep", str(path), "--out", str(out)], step_sleep=0.5, name="sweep")
    try:
        _wait_for(lambda: checkpoint.exists() or process.poll() is not None)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        process.kill()  # no stray process when an assertion above fails; a no-op once it has exited
    err = (tmp_path / "sweep.err").read_text()
    assert code == 143 and "Traceback" not in err, err
    assert f"sweep stopped by SIGTERM during trial {spec['id']}" in err
    assert f"Continue with: econlm sweep {path} --out {out}" in err
    assert checkpoint.exists()  # saved at the step boundary
    assert not (out / "trials" / spec["id"] / "result.json").exists()  # neither finished nor failed
    assert not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text()

    # Rerunning the same command resumes the trial from its checkpoint, to the score of an uninterrupted run.
    import econlm.training

    real, calls = econlm.training.train, []
    monkeypatch.setattr(econlm.training, "train", lambda config, **kw: calls.append(kw) or real(config, **kw))
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert [c["resume"] for c in calls] == [True]
    (resumed,) = _results(out)
    assert main(["sweep", str(path), "--out", str(tmp_path / "uninterrupted")]) == 0
    (reference,) = _results(tmp_path / "uninterrupted")
    assert resumed["status"] == "ok" and resumed["score"] == pytest.approx(reference["score"], abs=1e-6)


def test_ctrl_c_in_training_exits_130_and_records_nothing(tiny, tmp_path, capsys, monkeypatch):
    import econlm.training

    path = _sweep_file(tiny, tmp_path, base="  save_every: 100\n")
    out = tmp_path / "out"
    real = econlm.training.train

    def interrupted_at_step_1(config, **kwargs):
        def press_ctrl_c(step, model):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)

        return real(config, on_step=press_ctrl_c, **kwargs)

    monkeypatch.setattr(econlm.training, "train", interrupted_at_step_1)
    assert main(["sweep", str(path), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "sweep stopped by SIGINT during trial" in err and "Traceback" not in err
    assert not list(out.glob("trials/*/result.json"))
    assert list(out.glob("trials/*/model/checkpoint/state.pt"))  # saved although save_every is not reached


def test_sigterm_outside_training_stops_too(tiny, tmp_path, capsys, monkeypatch):
    import econlm.sweep

    path = _sweep_file(tiny, tmp_path)
    out = tmp_path / "out"
    measure = econlm.sweep._final_measurements

    def terminated_while_measuring(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return measure(*args)

    monkeypatch.setattr(econlm.sweep, "_final_measurements", terminated_while_measuring)

    def escaped(signum, frame):  # reached only when the sweep has no handler of its own
        raise AssertionError("SIGTERM went past the sweep")

    previous = signal.signal(signal.SIGTERM, escaped)
    try:
        assert main(["sweep", str(path), "--out", str(out)]) == 143
        assert signal.getsignal(signal.SIGTERM) is escaped  # the sweep gives the handlers back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "sweep stopped by SIGTERM" in capsys.readouterr().err
    assert not list(out.glob("trials/*/result.json"))
    monkeypatch.undo()
    assert main(["sweep", str(path), "--out", str(out)]) == 0  # the finished training is reused
    assert _results(out)[0]["status"] == "ok"


# ---------------------------------------------------------------------------------------------------------
# 4. Two sweeps on one folder


def _hold_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_a_trial_locked_by_a_live_process_is_skipped_and_a_dead_ones_lock_is_not(tiny, tmp_path, capsys):
    path = _sweep_file(tiny, tmp_path, grid="  lam: [0, 0.1]\n")
    out = tmp_path / "out"
    busy, stale = [s["id"] for s in expand(load_sweep(path))]
    (out / "trials" / stale).mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print(flush=True); time.sleep(60)", str(out / "trials" / stale / ".lock")],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    holder.stdout.readline()  # it holds the lock now
    holder.kill()
    holder.wait()
    lock = _hold_lock(out / "trials" / busy / ".lock")  # a different open file: conflicts like another process
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert f"econlm: trial {busy} is running in another process; skipped" in capsys.readouterr().err
    assert [r["id"] for r in _results(out)] == [stale]
    lock.close()
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert [r["id"] for r in _results(out)] == [busy, stale]


def test_two_concurrent_sweeps_train_each_trial_once(tiny, tmp_path):
    path = _sweep_file(tiny, tmp_path, grid="  lam: [0, 0.1]\n")
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out)]
    processes = [_start_cli(tmp_path, args, step_sleep=0.3, name=f"sweep{i}") for i in range(2)]
    try:
        codes = [p.wait(timeout=120) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert codes == [0, 0], [(tmp_path / f"sweep{i}.err").read_text() for i in range(2)]
    trained = (tmp_path / "train.log").read_text().splitlines()
    ids = [s["id"] for s in expand(load_sweep(path))]
    assert sorted(line.split()[0] for line in trained) == sorted(str(out / "trials" / i / "model") for i in ids)
    assert {r["id"]: r["status"] for r in _results(out)} == dict.fromkeys(ids, "ok")
