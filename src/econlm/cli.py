"""The ``econlm`` command: a thin layer that parses flags, builds a config and calls one library function.

Heavy libraries (torch, transformers) are imported inside the commands, so ``econlm --help`` is instant.
User mistakes print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from econlm.errors import UserError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _add_probe(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="score a model under shrinking attention budgets (the scarcity probe)",
        description="Score a model under top-k attention budgets and record the Gini coefficient and entropy "
        "of its attention rows per layer and head. Writes probe.json, probe.csv and probe.png to --out.",
    )
    p.add_argument("--model", default="minilm", help="minilm, smollm2, a local checkpoint directory or a hub id")
    p.add_argument("--task", default="stsb", help="sst2 stsb cola mrpc rte qnli mnli qqp wikitext103 wikitext2")
    p.add_argument(
        "--budgets",
        default="full,32,16,8,4,2,1",
        help="comma-separated: 'full', keys per query (8) or a fraction of the allowed keys (0.25)",
    )
    p.add_argument("--split", default="dev", help="train, dev or test (default dev)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples (tokens for LM tasks)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (the window for LM tasks)")
    p.add_argument(
        "--stride", type=int, default=None, help="LM tasks: new tokens scored per window (default max-length/2)"
    )
    p.add_argument("--data-dir", default=None, help="local data folder (default $ECONLM_DATA, else the HF hub)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    from econlm.probe import ProbeConfig, format_table, run_probe, save_probe

    config = ProbeConfig(
        model=args.model,
        task=args.task,
        budgets=tuple(args.budgets.split(",")),
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        max_length=args.max_length,
        stride=args.stride,
        data_dir=args.data_dir,
        seed=args.seed,
    )
    result = run_probe(config)
    paths = save_probe(result, args.out)
    meta = result.meta
    print(f"\n{meta['model']} on {meta['task']} {meta['split']}: {meta['examples_scored']} {meta['unit_of_examples']}")
    print(format_table(result.rows))
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return 0


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list model aliases and tasks")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args) -> int:
    from econlm.data import TASKS
    from econlm.models import ALIAS_DESCRIPTIONS

    print("model aliases (also: any local checkpoint directory or Hugging Face hub id):")
    for name, text in ALIAS_DESCRIPTIONS.items():
        print(f"  {name:<10} {text}")
    print("tasks:")
    for task in TASKS.values():
        print(f"  {task.name:<12} {task.kind:<15} metrics: {', '.join(task.metrics)}")
    return 0


COMMANDS: list[Callable] = [_add_probe, _add_list]


def build_parser() -> argparse.ArgumentParser:
    from econlm import __version__

    parser = _Parser(prog="econlm", description="Computational economics of transformer language models.")
    parser.add_argument("--version", action="version", version=f"econlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as error:
        print(f"econlm: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("econlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
