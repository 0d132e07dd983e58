"""econlm: computational economics of transformer language models.

The public API is re-exported lazily, so ``import econlm`` (and ``econlm --help``) does not pull in torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "econlm.attention",
    "budgeted_attention": "econlm.attention",
    "AttentionStats": "econlm.attention",
    "load_model": "econlm.models",
    "load": "econlm.models",
    "run_compact": "econlm.compact",
    "TrainConfig": "econlm.train",
    "train": "econlm.train",
    "ProbeConfig": "econlm.probe",
    "run_probe": "econlm.probe",
    "save_probe": "econlm.probe",
    "get_task": "econlm.data",
    "load_examples": "econlm.data",
    "load_text": "econlm.data",
    "UserError": "econlm.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'econlm' has no attribute {name!r}")
