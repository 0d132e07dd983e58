"""What econlm prints while it works: progress bars (tqdm, on stderr; ``ECONLM_NO_PROGRESS=1`` switches them
off), and transformers' loading chatter and the ONNX exporter's, silenced."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_BAR_CLASS = None


def _bar_class():
    """tqdm's class with an exit that erases the bar when an error leaves its block; built once (tqdm keeps a
    monitor thread per class, so a class per bar would leave a thread per bar)."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm.auto import tqdm

        class Bar(tqdm):
            def __exit__(self, exc_type, exc_value, traceback):
                if exc_type is not None:
                    self.leave = False  # close() then clears the bar's line instead of ending it
                return super().__exit__(exc_type, exc_value, traceback)

        _BAR_CLASS = Bar
    return _BAR_CLASS


def bar(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True, enabled: bool = True):
    """A tqdm bar on stderr. Used as a context manager, it erases itself when an error (or Ctrl-C) leaves the
    block, so that a user's mistake found after the bar started still reads as the one line of its message."""
    disabled = not enabled or os.environ.get("ECONLM_NO_PROGRESS", "").lower() in ("1", "true", "yes")
    return _bar_class()(total=total, desc=desc, unit=unit, leave=leave, disable=disabled, dynamic_ncols=True)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading chatter (progress bars, 'newly initialized' notes) for one block."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's progress lines and its warnings about optional packages (torchvision)."""
    import contextlib
    import io
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
