"""The command line's option sets and defaults, held against a snapshot taken before the flags were generated
from the methods' option dataclasses (issue 34): generating them must change no flag, default or choice list.

Regenerate only for an intended change of the command line:
``LLM_SURGEON_RESNAP=1 python -m pytest tests/test_cli_options.py`` (and say why in the commit).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from llm_surgeon.cli import build_parser

SNAPSHOT = Path(__file__).parent / "data" / "cli_options.json"
HEAL_FLAGS = {"--heal", "--heal-data", "--heal-tokens", "--heal-lr", "--heal-lr-scale", "--heal-rank", "--heal-topk",
              "--heal-each-shot", "--heal-block-weight", "--heal-blocks"}
ADDED_SINCE = {"prune": {"--reconstruct-damp", "--save-dtype", *HEAL_FLAGS},
               "plan": {"--reconstruct-damp", *HEAL_FLAGS},
               "eval": {"--engine", "--tokenizer", "--threads"},
               "bench": {"--speed", "--speed-prompt", "--speed-generate"}}
"""Flags added on purpose since the snapshot: the reconstruction's damping had no flag (issue 34); eval scores
GGUF files in llama.cpp and bench times structured models with speed (issue 35); prune saves in the source's
dtype unless told (issue 36); healing after pruning, and plan pricing it (issue 37)."""
CHOICES_ADDED = {"prune": {"--save-format": ["gguf"]}}
"""Choices added on purpose since the snapshot, at the end of the list: a pruned model saved with its GGUF
file (issue 35)."""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_table(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """Every flag of ``parser``: its default, choices, type and whether it is a switch."""
    table = {}
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        default = action.default
        table[action.option_strings[-1]] = {
            "default": default if isinstance(default, int | float | str | bool | type(None)) else repr(default),
            "choices": list(action.choices) if action.choices else None,
            "type": getattr(action.type, "__name__", None),
            "switch": isinstance(action, argparse._StoreTrueAction),
            "required": action.required,
        }
    return table


def current_tables() -> dict[str, dict]:
    return {name: option_table(sub) for name, sub in sorted(_subparsers(build_parser()).items())}


@pytest.fixture(scope="module")
def snapshot() -> dict[str, dict]:
    if os.environ.get("LLM_SURGEON_RESNAP") == "1":
        SNAPSHOT.write_text(json.dumps(current_tables(), indent=1, sort_keys=True) + "\n")
    return json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("command", ["prune", "plan", "eval", "bench"])
def test_every_subcommand_keeps_its_flags_and_defaults(command, snapshot):
    expected = snapshot[command]
    got = current_tables()[command]
    added = ADDED_SINCE.get(command, set())
    assert set(got) - set(expected) == added, "flags added or removed"
    assert set(expected) <= set(got), "flags removed"
    for flag, spec in expected.items():
        new_choices = CHOICES_ADDED.get(command, {}).get(flag)
        if new_choices:
            spec = {**spec, "choices": spec["choices"] + new_choices}
        assert got[flag] == spec, flag
