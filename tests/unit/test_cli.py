"""The command line: one-line errors with exit code 2 before any model is loaded."""

import subprocess
import sys
import time

import pytest

from econlm.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize("budget", ["0", "-2", "abc", "full,0", "1.5"])
def test_bad_budget_is_one_line_exit_2(capsys, tmp_path, budget):
    started = time.perf_counter()
    code, err = _run(capsys, "probe", "--model", "minilm", "--budgets", budget, "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("econlm: error: budget") and "\n" not in err
    assert time.perf_counter() - started < 5  # rejected before any model is loaded
    assert not any(tmp_path.iterdir())


def test_unknown_task_suggests(capsys, tmp_path):
    code, err = _run(capsys, "probe", "--task", "sst", "--out", str(tmp_path))
    assert code == 2 and "unknown task 'sst'" in err and "Did you mean 'sst2'" in err


def test_unknown_model_alias_suggests(capsys, tmp_path):
    code, err = _run(capsys, "probe", "--model", "minlm", "--out", str(tmp_path))
    assert code == 2 and "unknown model alias 'minlm'" in err and "Did you mean 'minilm'" in err
    assert "smollm2" in err


def test_missing_data_file_names_paths(capsys, tmp_path):
    code, err = _run(capsys, "probe", "--task", "mrpc", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and str(tmp_path / "glue/MRPC/dev.tsv") in err and "\n" not in err


def test_malformed_tsv_names_file_and_line(capsys, tmp_path):
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B/dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t1.0\n1\ta\tb\n")
    code, err = _run(capsys, "probe", "--task", "stsb", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and f"{tmp_path / 'STS-B/dev.tsv'}:3: malformed row" in err


def test_missing_required_flag_is_one_line(capsys):
    code, err = _run(capsys, "probe")
    assert code == 2 and "--out" in err and "\n" not in err


def test_console_script_help_is_fast_and_has_no_traceback():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "econlm", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "probe" in result.stdout
    assert time.perf_counter() - started < 5
    bad = subprocess.run(
        [sys.executable, "-m", "econlm", "probe", "--budgets", "x", "--out", "o"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_a_progress_bar_erases_itself_when_an_error_leaves_it(capsys, monkeypatch):
    from econlm.progress import bar

    monkeypatch.setenv("ECONLM_NO_PROGRESS", "0")
    with pytest.raises(ValueError), bar(total=3, desc="work") as progress:
        progress.update(1)
        raise ValueError("a mistake found after the bar started")
    drawn = capsys.readouterr().err.split("\r")
    # The bar was drawn, then its line overwritten with blanks and the cursor put back: the error's one line
    # is all a terminal shows.
    assert any("work" in part for part in drawn) and drawn[-1] == "" and drawn[-2].strip() == ""
    with bar(total=2, desc="done") as progress:
        progress.update(2)
    assert capsys.readouterr().err.rstrip("\n").split("\r")[-1].startswith("done: 100%")  # a finished bar stays
    import threading

    def monitors() -> int:
        return sum(t.name == "tqdm_monitor" for t in threading.enumerate())

    before = monitors()
    for _ in range(5):  # one bar class, so one tqdm monitor thread however many bars a sweep starts
        with bar(total=1, enabled=False) as progress:
            progress.update(1)
    assert monitors() <= before + 1
