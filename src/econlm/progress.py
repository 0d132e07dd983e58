"""Progress bars (tqdm, on stderr); ``ECONLM_NO_PROGRESS=1`` switches them off."""

from __future__ import annotations

import os


def bar(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True, enabled: bool = True):
    from tqdm.auto import tqdm

    disabled = not enabled or os.environ.get("ECONLM_NO_PROGRESS", "").lower() in ("1", "true", "yes")
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=disabled, dynamic_ncols=True)
