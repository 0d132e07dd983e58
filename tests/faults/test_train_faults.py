"""Fault tests of ``econlm train`` (issue #15): stop signals, untrusted or damaged checkpoints, a full disk,
empty config files, the --max-length rule, finished runs and the empty --out folders failed runs left."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from econlm.cli import main
from econlm.errors import UserError
from econlm.training import Interrupted, TrainConfig, train
from tests.conftest import save_tiny_checkpoint, write_tiny_glue

# 10 epochs of 6 steps: long enough that a signal sent after the first checkpoint lands mid-run.
SETTINGS = dict(
    task="sst2",
    lam=1e-2,
    cost=("flops", "attn_logits_l1"),  # gates sample noise: resume must restore every RNG
    epochs=10,
    lr=1e-3,
    batch_size=8,
    max_length=32,
    seed=7,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"bert": save_tiny_checkpoint(root / "bert"), "data": write_tiny_glue(root / "data")}


def _config(tiny, out, **overrides) -> TrainConfig:
    settings = {**SETTINGS, "model": str(tiny["bert"]), "data_dir": str(tiny["data"]), "out": str(out)}
    return TrainConfig(**{**settings, **overrides})


def _flags(tiny, out, **overrides) -> list[str]:
    """``econlm train`` flags for the same run as :func:`_config`."""
    settings = {**SETTINGS, "model": tiny["bert"], "data_dir": tiny["data"], "out": out, **overrides}
    flags = ["train"]
    for name, value in settings.items():
        flags += ["--" + name.replace("_", "-"), ",".join(value) if isinstance(value, tuple) else str(value)]
    return flags


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("econlm: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The uninterrupted run every resumed run must match."""
    return train(_config(tiny, tmp_path_factory.mktemp("ref") / "run", save_every=1000), progress=False)


@pytest.fixture(scope="module")
def checkpointed(tiny, tmp_path_factory):
    """An unfinished run stopped in-process by SIGTERM after step 1 (what a sweep sees)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def sigterm(step, model):
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match=r"interrupted \(SIGTERM\) at step 1/60") as stop:
        train(_config(tiny, out, epochs=10, save_every=1000), progress=False, on_step=sigterm)
    assert stop.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    return out


# ---------------------------------------------------------------------------------------------------------
# 1. SIGTERM and SIGINT checkpoint, exit 143 / 130, and the run resumes to the uninterrupted result


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
    tiny, reference, tmp_path, capsys, signum, code
):
    out = tmp_path / "run"
    # The same thread count as this process: float sums then agree bit for bit with the in-process reference.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "ECONLM_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "econlm", *_flags(tiny, out, save_every=5)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"econlm: interrupted ({name}) at step ") and "/60;" in last
    assert last.endswith(f"Continue with: econlm train --out {out} --resume")
    assert not list(out.glob(".checkpoint-*"))

    assert main(["train", "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["score"] == reference["score"]
    assert resumed["cost_terms_dev"] == reference["cost_terms_dev"]
    assert resumed["lambda_history"] == reference["lambda_history"]
    assert resumed["train"]["steps"] == 60


# ---------------------------------------------------------------------------------------------------------
# 2. Checkpoints hold plain data, and anything else is refused without running it


def test_checkpoint_loads_with_weights_only(checkpointed):
    state = torch.load(checkpointed / "checkpoint" / "state.pt", weights_only=True)
    assert state["state"]["global_step"] == 1 and state["config"]["seed"] == 7


class _Payload:
    """Unpickling this runs code: it makes a folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _tamper(kind: str, path: Path, marker: Path) -> None:
    if kind == "pickled code":
        torch.save({"config": {}, "model": _Payload(marker)}, path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 16)
    elif kind == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("kind", ["pickled code", "truncated", "garbage", "not a checkpoint"])
def test_untrusted_or_damaged_checkpoint_is_refused_in_one_line(checkpointed, tiny, tmp_path, capsys, kind):
    out = tmp_path / "run"
    shutil.copytree(checkpointed, out)
    path = out / "checkpoint" / "state.pt"
    marker = tmp_path / "code-ran"
    _tamper(kind, path, marker)
    expected = f"{path} is not an econlm checkpoint or is damaged; delete {path.parent} to start over"
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert expected in _one_line_error(capsys)
    with pytest.raises(UserError, match="is not an econlm checkpoint"):  # the library path, past the CLI
        train(_config(tiny, out, epochs=10, save_every=1000), resume=True, progress=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# 3. A full disk: one line, no half-written checkpoint or model, the last good checkpoint kept


def _disk_full_message(err: str, out: Path) -> float:
    prefix = "econlm: error: the disk is full: could not write "
    assert err.startswith(prefix) and err.endswith(f" MB to {out}; free space or choose another --out"), err
    return float(err[len(prefix) :].split(" MB")[0])


def test_full_disk_while_checkpointing(tiny, tmp_path, capsys, monkeypatch):
    def no_space(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    out = tmp_path / "run"
    assert main(_flags(tiny, out, save_every=1)) == 2
    needed = _disk_full_message(_one_line_error(capsys), out)
    assert 8 < needed < 20  # model (~4 MB) and two AdamW moments
    assert not list(out.glob(".checkpoint-*")) and not (out / "checkpoint").exists()


def test_full_disk_while_saving_the_model_keeps_the_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    from econlm import compact

    def no_space(model, tokenizer, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        # what safetensors raises: its own error type, the OS error only in the text
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(compact, "save_model", no_space)
        assert main(_flags(tiny, out, epochs=1, save_every=6)) == 2
    assert _disk_full_message(_one_line_error(capsys), out) > 3
    assert not list(out.glob(".final-*")) and not (out / "model.safetensors").exists()
    assert not (out / "metrics.json").exists() and (out / "checkpoint" / "state.pt").exists()
    # Space freed: the run finishes from its checkpoint.
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert (out / "metrics.json").exists() and (out / "model.safetensors").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_on_a_real_3mb_filesystem(tiny, small_tmpfs, capsys):
    out = small_tmpfs / "run"
    assert main(_flags(tiny, out, save_every=1)) == 2
    _disk_full_message(_one_line_error(capsys), out)
    assert not list(out.glob(".checkpoint-*")) and not (out / "checkpoint").exists()


# ---------------------------------------------------------------------------------------------------------
# 4. A config file that sets nothing, or is not YAML, stops before anything runs


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"# all settings commented out\n",
        b"{}\n",
        b"- lam\n- 0.1\n",
        b'model: minilm\ntask: "sst',
        bytes(range(256)),
    ],
    ids=["empty", "comments only", "empty mapping", "a list", "truncated", "binary garbage"],
)
def test_config_file_that_sets_nothing_or_is_not_yaml_is_refused(tmp_path, capsys, content):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 2
    assert str(path) in _one_line_error(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# 5. One --max-length rule for train and probe


@pytest.mark.parametrize("max_length", [1, 0, -4])
def test_train_and_probe_refuse_the_same_max_length_with_the_same_message(tiny, tmp_path, max_length):
    from econlm.probing import ProbeConfig

    with pytest.raises(UserError) as by_train:
        _config(tiny, tmp_path / "run", max_length=max_length)
    with pytest.raises(UserError) as by_probe:
        ProbeConfig(max_length=max_length)
    assert str(by_train.value) == str(by_probe.value) == f"--max-length must be at least 2, not {max_length}"
    assert _config(tiny, tmp_path / "run", max_length=2).max_length == ProbeConfig(max_length=2).max_length


# ---------------------------------------------------------------------------------------------------------
# 6. --resume on a finished run says what is true


def test_resume_of_a_finished_run_says_to_choose_another_out(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(tiny, out, epochs=0.2), progress=False)
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert f"the run in {out} is finished (metrics.json)" in err and "choose another --out" in err
    assert "without --resume" not in err
    with pytest.raises(UserError, match="is finished.*choose another --out"):
        train(_config(tiny, out, epochs=0.2), resume=True, progress=False)


# ---------------------------------------------------------------------------------------------------------
# 7. A failed run removes the empty --out it created, and nothing else


def test_failed_run_removes_the_empty_out_folders_it_created(tiny, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    flags = _flags(tiny, out, task="wikitext2")  # an encoder cannot do language modelling: fails at model load
    assert main(flags) == 2
    assert "is an encoder" in _one_line_error(capsys)
    assert not (tmp_path / "new").exists()

    existing = tmp_path / "mine"
    existing.mkdir()
    assert main(_flags(tiny, existing, task="wikitext2")) == 2
    assert existing.is_dir()  # the user made it


def test_failed_run_keeps_an_out_folder_that_holds_files(tiny, tmp_path):
    def crash(step, model):
        raise RuntimeError("a bug")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="a bug"):
        train(_config(tiny, out, epochs=1), progress=False, on_step=crash)
    assert (out / "train_config.json").exists()


def test_created_dir_removes_only_empty_folders_it_created(tmp_path):
    from econlm.runinfo import created_dir

    with pytest.raises(KeyError):
        with created_dir(tmp_path / "a" / "b") as path:
            path.mkdir(parents=True)
            raise KeyError
    assert not (tmp_path / "a").exists()

    with pytest.raises(KeyError):
        with created_dir(tmp_path / "c" / "d") as path:
            path.mkdir(parents=True)
            (tmp_path / "c" / "keep.txt").write_text("x")
            raise KeyError
    assert (tmp_path / "c" / "keep.txt").exists() and not (tmp_path / "c" / "d").exists()

    with created_dir(tmp_path / "e") as path:
        path.mkdir()
    assert (tmp_path / "e").is_dir()  # success keeps it, empty or not
