"""Benchmark (issue: scarcity probe): the probe table for minilm on STS-B dev and smollm2 on WikiText-103.

    python bench/probe_table.py [--lm-tokens 16384] [--reuse]

--reuse builds the table from probe.json files already in bench/results/probe_*/ when they were made
with exactly the same probe config (for instance after an interrupted run), and probes the rest.

minilm: all 1,500 STS-B dev pairs, zero-shot mean-pooled cosine (Spearman). smollm2: the first
--lm-tokens tokens of WikiText-103 validation, 512-token windows with stride 256 (perplexity).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, markdown_table, save  # noqa: E402

from econlm.probing import DEFAULT_BUDGETS, ProbeConfig, ProbeResult, run_probe, save_probe  # noqa: E402


def _reused(folder: Path, config: ProbeConfig) -> ProbeResult | None:
    """The probe saved in ``folder`` when it was run with exactly ``config``; else None."""
    path = folder / "probe.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("config") != json.loads(json.dumps(asdict(config), default=str)):
        return None
    rows = saved.pop("rows")
    print(f"reusing {path} (made at git {saved.get('git')}, {saved.get('time_utc')})")
    return ProbeResult(config=config, rows=rows, meta=saved)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lm-tokens", type=int, default=16384)
    parser.add_argument("--reuse", action="store_true", help="reuse probe.json files made with the same config")
    args = parser.parse_args()
    runs = {
        "minilm_stsb": ProbeConfig(model="minilm", task="stsb", budgets=DEFAULT_BUDGETS, data_dir=DATA),
        "smollm2_wikitext103": ProbeConfig(
            model="smollm2",
            task="wikitext103",
            budgets=DEFAULT_BUDGETS,
            limit=args.lm_tokens,
            max_length=512,
            stride=256,
            batch_size=4,
            data_dir=DATA,
        ),
    }
    payload, sections = {}, []
    for name, config in runs.items():
        folder = Path("bench/results") / f"probe_{name}"
        result = _reused(folder, config) if args.reuse else None
        if result is None:
            result = run_probe(config)
            save_probe(result, folder)
        payload[name] = {
            "scoring": result.meta["scoring"],
            "examples": result.meta["examples_scored"],
            "rows": [{k: v for k, v in r.items() if k != "per_layer"} for r in result.rows],
        }
        table = markdown_table(
            ["budget (keys/query)", result.rows[0]["metric"], "mean Gini", "mean entropy (nats)"],
            [[r["budget"], r["score"], r["gini"], r["entropy"]] for r in result.rows],
        )
        unit = result.meta["unit_of_examples"]
        sections.append(
            f"## {config.model} on {config.task} {config.split} ({result.meta['examples_scored']} {unit})\n\n"
            f"Scoring: `{result.meta['scoring']}`. Probed at git {result.meta.get('git')}, "
            f"{result.meta.get('time_utc')}, {result.meta['seconds']:.0f} s.\n\n{table}\n\n![probe](../bench/results/probe_{name}/probe.png)\n"
        )
    save(
        "probe_table",
        payload,
        "# Scarcity probe: score, Gini and entropy under attention budgets\n\n"
        "Gini and entropy are means over layers, heads and real query rows, over the keys the masks allow "
        "(keys dropped by the budget count as zeros).\n\n" + "\n".join(sections),
    )


if __name__ == "__main__":
    main()
