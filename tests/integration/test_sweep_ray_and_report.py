"""A small sweep through a local Ray cluster, and its report rendered in headless Chromium."""

import json
import shutil
import subprocess

import pytest

from econlm.cli import main
from tests.conftest import save_tiny_checkpoint, write_tiny_glue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory):
    pytest.importorskip("ray", reason="Ray is the optional extra econlm[ray]; `make test` installs it")
    root = tmp_path_factory.mktemp("raysweep")
    model = save_tiny_checkpoint(root / "bert")
    data = write_tiny_glue(root / "data")
    config = root / "sweep.yaml"
    config.write_text(
        f"name: ray-test\nbase:\n  model: {model}\n  task: stsb\n  epochs: 1\n  lr: 0.001\n  batch_size: 16\n"
        f"  max_length: 32\n  data_dir: {data}\n  save_every: 1000\ngrid:\n  lam: [0, 0.01, 0.1]\n"
        "  cost: [[ffn_l1, attn_entropy]]\n  seed: [1, 2]\nresources: {num_cpus: 1}\n"
    )
    out = root / "out"
    assert main(["sweep", str(config), "--out", str(out), "--ray", "local"]) == 0
    return out


def test_ray_sweep_finishes_every_trial_and_aggregates_seeds(ray_sweep):
    results = [json.loads(line) for line in (ray_sweep / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6 and all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    pareto = json.loads((ray_sweep / "pareto.json").read_text())
    points = pareto["dense_flops"]["problems"][0]["points"]
    assert len(points) == 3 and all(p["seeds"] == 2 for p in points)  # 3 lambdas, 2 seeds each


def test_report_shows_plots_in_headless_chromium(ray_sweep, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium here: .ci/run installs Debian's chromium package before make test")
    from PIL import Image

    assert main(["report", str(ray_sweep)]) == 0
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1280,2000",
            f"--screenshot={screenshot}",
            (ray_sweep / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2000)
    pixels = list(image.getdata())
    non_white = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    # matplotlib's tab:blue (31, 119, 180) markers and lines of the frontier plot are on screen
    blue = sum(1 for r, g, b in pixels if abs(r - 31) < 40 and abs(g - 119) < 40 and abs(b - 180) < 40)
    assert non_white > 0.02, f"the page looks empty ({non_white:.1%} non-white)"
    assert blue > 200, "no plot colours in the screenshot"
