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
    "compact_model": "econlm.compact",
    "CompactReport": "econlm.compact",
    "TrainConfig": "econlm.training",
    "train": "econlm.training",
    "ProbeConfig": "econlm.probing",
    "ProbeResult": "econlm.probing",
    "probe": "econlm.probing",
    "run_probe": "econlm.probing",
    "save_probe": "econlm.probing",
    "get_task": "econlm.data",
    "load_examples": "econlm.data",
    "load_text": "econlm.data",
    "UserError": "econlm.errors",
    "TaxConfig": "econlm.incentive",
    "Incentive": "econlm.incentive",
    "attach_tax": "econlm.incentive",
    "export_onnx": "econlm.export",
    "load_latency_table": "econlm.latency_table",
    "token_budget": "econlm.tokens",
    "TokenSchedule": "econlm.tokens",
    "threshold_budget": "econlm.tokens",
    "attach_schedule": "econlm.tokens",
    "MarketConfig": "econlm.market_run",
    "run_market": "econlm.market_run",
    "save_market": "econlm.market_run",
    "shadow_prices": "econlm.shadow",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


_ALIASES = {"load_latency_table": "load_table"}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))
        # Bind it: later look-ups skip this function. No export shares its name with a submodule (the
        # training loop lives in econlm.training), so an import of a submodule never rebinds an export.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'econlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
