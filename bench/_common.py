"""Helpers shared by the benchmark scripts: where results go and how they are labelled."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
DATA = os.environ.get("ECONLM_DATA") or str(ROOT.parent / "shared" / "data")


def save(name: str, payload: dict, markdown: str) -> None:
    """Write ``bench/results/<name>.json`` (with machine info and the command) and ``docs/<name>.md``."""
    from econlm.runinfo import atomic_write_text, run_metadata, write_json

    meta = run_metadata()
    argv = [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]
    meta["command"] = "python " + shlex.join(argv)
    write_json(RESULTS / f"{name}.json", {"meta": meta, **payload})
    # A long argument (a paragraph of timing conditions) is shown by reference: the raw JSON keeps it whole.
    shown = "python " + shlex.join(a if len(a) <= 60 else "TEXT" for a in argv)
    note = " (TEXT: in the raw numbers' command)" if shown != meta["command"] else ""
    footer = (
        f"\n\nMeasured with `{shown}`{note} on {meta['machine']['processor']} "
        f"({meta['machine']['cpu_count']} CPUs, {meta['machine']['torch_threads']} torch threads), "
        f"torch {meta['versions'].get('torch')}, transformers {meta['versions'].get('transformers')}, "
        f"git {meta['git']}, {meta['time_utc']}. Raw numbers: `bench/results/{name}.json`.\n"
    )
    atomic_write_text(DOCS / f"{name}.md", markdown.rstrip() + footer)


from econlm.verdicts import markdown_table  # noqa: E402,F401 - one table writer for docs and verdicts
