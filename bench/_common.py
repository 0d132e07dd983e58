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


# docs/frontier.md and docs/compaction.md open with a block that bench/summarize_fair.py writes (issue #10's
# verdicts); bench/summarize.py writes the rest of them, and keeps the block when it writes them again.
INDEX_BEGIN = "<!-- written by bench/summarize_fair.py; edits here are lost -->"
INDEX_END = "<!-- end of bench/summarize_fair.py's part -->"


def with_index(markdown: str, block: str | None) -> str:
    """``markdown`` with ``block`` (INDEX_BEGIN ... INDEX_END) in place of its own, or below its title."""
    if block is None:
        return markdown
    if INDEX_BEGIN in markdown and INDEX_END in markdown.split(INDEX_BEGIN, 1)[1]:
        head, rest = markdown.split(INDEX_BEGIN, 1)
        return head + block + rest.split(INDEX_END, 1)[1]
    title, _, rest = markdown.partition("\n")
    return f"{title}\n\n{block}\n{rest}"


def _index_of(path: Path) -> str | None:
    """The block summarize_fair.py wrote at the top of an existing doc, if any."""
    if not path.exists() or INDEX_BEGIN not in (text := path.read_text()) or INDEX_END not in text:
        return None
    return INDEX_BEGIN + text.split(INDEX_BEGIN, 1)[1].split(INDEX_END, 1)[0] + INDEX_END


def save(name: str, payload: dict, markdown: str) -> None:
    """Write ``bench/results/<name>.json`` (with machine info and the command) and ``docs/<name>.md``."""
    from econlm.runinfo import atomic_write_text, run_metadata, write_json

    meta = run_metadata()
    argv = [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]
    meta["command"] = "python " + shlex.join(argv)
    meta["argv"] = argv
    write_json(RESULTS / f"{name}.json", {"meta": meta, **payload})
    doc = DOCS / f"{name}.md"
    atomic_write_text(doc, with_index(markdown.rstrip(), _index_of(doc)) + footer(name, meta))


def footer(name: str, meta: dict) -> str:
    """The doc's last line: the command, machine, versions and time its numbers were measured with."""
    argv = meta.get("argv") or shlex.split(meta["command"])[1:]
    # A long argument (a paragraph of timing conditions) is shown by reference: the raw JSON keeps it whole.
    shown = "python " + shlex.join(a if len(a) <= 60 else "TEXT" for a in argv)
    note = " (TEXT: in the raw numbers' command)" if shown != meta["command"] else ""
    return (
        f"\n\nMeasured with `{shown}`{note} on {meta['machine']['processor']} "
        f"({meta['machine']['cpu_count']} CPUs, {meta['machine']['torch_threads']} torch threads), "
        f"torch {meta['versions'].get('torch')}, transformers {meta['versions'].get('transformers')}, "
        f"git {meta['git']}, {meta['time_utc']}. Raw numbers: `bench/results/{name}.json`.\n"
    )


def rerender(name: str, markdown: str, meta: dict) -> None:
    """Write ``docs/<name>.md`` again from numbers already in ``bench/results/<name>.json`` (new wording, the
    same measurements): the footer keeps the command and time they were measured with."""
    from econlm.runinfo import atomic_write_text

    doc = DOCS / f"{name}.md"
    atomic_write_text(doc, with_index(markdown.rstrip(), _index_of(doc)) + footer(name, meta))


from econlm.verdicts import markdown_table  # noqa: E402,F401 - one table writer for docs and verdicts
