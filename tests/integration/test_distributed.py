"""`accelerate launch` runs the same training in several processes (gloo on the CPU here; NCCL on GPUs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import save_tiny_checkpoint, write_tiny_glue

pytestmark = pytest.mark.integration


def test_accelerate_launch_two_processes(tmp_path):
    model = save_tiny_checkpoint(tmp_path / "bert")
    data = write_tiny_glue(tmp_path / "data")
    out = tmp_path / "run"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "econlm",
        "train",
        "--model",
        str(model),
        "--task",
        "stsb",
        "--cost",
        "flops",
        "--budget",
        "0.6",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--device",
        "auto",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ECONLM_NO_PROGRESS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # 48 examples, 4 per process and step, 2 processes: 6 steps.
    assert metrics["train"]["steps"] == 6
    assert metrics["lambda_final"] > 0
