"""The README's commands and paths stay true to the code: every `econlm ...` line of its bash blocks parses
with the real CLI parser (nothing runs), every flag of an inline `econlm <command> ...` span exists in that
command, and every repository path it names exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from econlm.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _block_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("econlm "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_readme_has_commands_to_check():
    # Guards the extraction itself: a README reformatted so that nothing matches would pass vacuously.
    assert len(_block_commands()) >= 20
    assert len(re.findall(r"`econlm [a-z-]+ [^`]*--[^`]*`", README)) >= 5


@pytest.mark.parametrize("argv", _block_commands(), ids=" ".join)
def test_every_readme_command_parses(argv):
    args = build_parser().parse_args(argv)  # a wrong flag, choice or missing argument raises UserError
    assert args.command == argv[0]
    # argparse accepts a unique prefix of a flag; the README spells each one out in full.
    flags = {w.split("=")[0] for w in argv[1:] if w.startswith("--")}
    assert flags <= set(_subcommands()[argv[0]]._option_string_actions)


def test_every_inline_flag_exists_in_its_command():
    subcommands = _subcommands()
    wrong = []
    for span in re.findall(r"`(econlm [a-z-]+[^`]*)`", README):
        words = shlex.split(span)
        command = subcommands.get(words[1])
        if command is None:
            if not words[1].startswith("-"):
                wrong.append(f"no command {words[1]!r}: {span}")
            continue
        flags = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        wrong += [f"{flag} in {span}" for flag in sorted(flags - set(command._option_string_actions))]
    assert wrong == []


def test_every_named_repository_path_exists():
    named = set(re.findall(r"\b((?:docs|bench|src|tests|examples)/[A-Za-z0-9_./-]*[A-Za-z0-9_])", README))
    named = {p for p in named if "*" not in p and "<" not in p}
    assert len(named) >= 20
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
