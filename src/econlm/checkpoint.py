"""Training checkpoints: written atomically, read back safely.

A checkpoint holds model, optimizer, LR schedule, price, loop state and every RNG state, in types that
``torch.load(weights_only=True)`` reads (tensors, numbers, strings, lists and dicts), so resuming from a
folder someone else made cannot run their code. It is written to a fresh folder and swapped in by rename;
a full disk is a one-line error that leaves no half-written folder behind.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from econlm.errors import UserError

CHECKPOINT = "checkpoint"
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
REQUIRED_KEYS = {"model", "optimizer", "scheduler", "price", "state", "rng", "config"}


def rng_state() -> dict:
    """Every RNG state in types ``torch.load(weights_only=True)`` reads: lists, numbers, strings, tensors."""
    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, checkpoint: dict) -> None:
    """Write ``out/checkpoint`` atomically: to a fresh folder, then swapped in by rename. ``checkpoint`` holds
    the REQUIRED_KEYS (the RNG states are added here)."""
    import torch

    checkpoint = {**checkpoint, "rng": rng_state()}
    with staging_dir(out, ".checkpoint-", tensor_bytes(checkpoint)) as staging:
        # A Python file, not a path: torch then chains the OSError (a full disk) to its own RuntimeError.
        with open(staging / "state.pt", "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        target = out / CHECKPOINT
        old = out / ".checkpoint-old"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staging_dir(parent: Path, prefix: str, nbytes: int) -> Iterator[Path]:
    """A fresh folder in ``parent`` to write into before it is renamed into place. Removed when writing
    fails, so no half-written copy lingers; a full disk becomes a UserError saying how much was needed."""
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        yield staging
    except Exception as error:
        if disk_full(error):
            raise UserError(
                f"the disk is full: could not write {nbytes / 1e6:.1f} MB to {parent}; "
                "free space or choose another --out"
            ) from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or one it arose from, is a full disk or quota. torch and safetensors report it as
    their own exception, with the OSError as its context or its text in the message."""
    texts = [os.strerror(code) for code in DISK_FULL]
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        if any(text in str(error) for text in texts):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state dict: the size of what is about to be written."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def load_checkpoint(out: str | Path) -> dict:
    """The saved training state of ``out``. Read with ``weights_only=True``: the folder may come from
    someone else, and a full unpickler would run whatever code its file names."""
    import torch

    path = Path(out) / CHECKPOINT / "state.pt"
    damaged = UserError(
        f"{path} is not an econlm checkpoint or is damaged; delete {path.parent} to start over, or restore it"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's guesses about a damaged file; the error below says it
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    except Exception:  # a pickle that needs code, a truncated file, garbage: torch raises several kinds
        raise damaged from None
    if (
        not isinstance(checkpoint, dict)
        or not REQUIRED_KEYS <= checkpoint.keys()
        or not isinstance(checkpoint["config"], dict)
    ):
        raise damaged
    return checkpoint
