"""Writing results safely and saying how they were made.

Every result file is written atomically (to a temporary file in the same folder, then renamed), so an
interrupted run never leaves a half-written file where a good one was. :func:`run_metadata` collects
what is needed to reproduce a number: command, seed, library versions, git hash, machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def created_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Run a block that may create the folder ``path``; if the block fails, remove the folders it created
    that are still empty (a failed run should not leave an empty --out behind). Folders that existed before,
    and any folder holding a file, are never removed."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]  # innermost first
    try:
        yield path
    except BaseException:
        for folder in missing:
            try:
                folder.rmdir()  # refuses a folder that is not empty
            except FileNotFoundError:
                continue  # the block did not get as far as this one
            except OSError:
                break  # holds something: so do the folders above it
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(value):
    """NaN and infinities become null: JSON has no such numbers and other readers choke on them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(data) -> str:
    return json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data) -> None:
    """Write sorted, indented JSON atomically; NaN becomes null."""
    atomic_write_text(path, to_json(data))


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def git_hash() -> str | None:
    """The commit of the econlm source tree, with ``-dirty`` when it has uncommitted changes; None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("econlm", "torch", "transformers", "accelerate", "numpy", "tokenizers", "datasets", "ray"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def cpu_model() -> str | None:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) ..."): ``platform.processor()`` says only the
    architecture on Linux, and two machines of one architecture can time very differently."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_metadata(seed: int | None = None, config: Mapping | None = None) -> dict:
    """What reproduces a result: command line, seed, config, versions, git hash, machine and time."""
    return {
        "command": " ".join(sys.argv),
        "seed": seed,
        "config": dict(config) if config is not None else None,
        "versions": versions(),
        "git": git_hash(),
        "machine": machine(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
