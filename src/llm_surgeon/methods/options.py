"""Settings as dataclass fields that carry their own command-line flag.

A method owns its settings: one small dataclass next to the method (``SurgeonOptions`` beside
``SurgeonPruning``), each field written once with its default and its help through :func:`option`,
and a ``check`` that refuses what does not fit the run. :class:`~llm_surgeon.config.PruneConfig`
is composed of these dataclasses (so ``PruneConfig(update_iterations=5)`` stays one flat call and a
report one flat dict), and the command line generates each flag from the field: adding a setting to a
method is one field and, where it needs one, one line of its ``check``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import Field, dataclass, field, fields
from typing import Any

from llm_surgeon.errors import ConfigError

FLAG_KEY = "llm_surgeon_flag"

GROUPS = {
    "basics": "what to prune and how much",
    "calibration": "calibration text",
    "method": "method settings",
    "evaluation": "evaluation",
    "memory": "memory and devices",
    "output": "output",
    "healing": "healing after pruning (distillation from the dense model)",
    "research": "research settings (alternatives to the defaults measured in BENCHMARKS.md)",
}
"""The command line's argument groups that settings fall in, in the order ``--help`` shows them."""


@dataclass(frozen=True)
class FlagSpec:
    """How a setting appears on the command line (the flag is the field's name with dashes)."""

    help: str
    group: str = "method"
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    type: type | None = None
    """The flag's value type when the default does not say it (a ``None`` default)."""


def option(default: Any, help: str, *, group: str = "method", choices: Iterable[str] | None = None,
           metavar: str | None = None, type: type | None = None) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with its flag: the default is written here and nowhere else."""
    if group not in GROUPS:
        raise ValueError(f"unknown flag group {group!r}")
    spec = FlagSpec(help, group, tuple(choices) if choices is not None else None, metavar, type)
    return field(default=default, metadata={FLAG_KEY: spec})


def flag_spec(f: Field) -> FlagSpec | None:
    """The flag of a dataclass field, or ``None`` for a setting the command line does not show."""
    return f.metadata.get(FLAG_KEY)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def flagged_fields(cls: type) -> list[Field]:
    """The fields of a settings dataclass that have a flag, in declaration order."""
    return [f for f in fields(cls) if flag_spec(f) is not None]


def nearest(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a mistyped ``value``, or ``""``."""
    match = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    """One line naming the choices (and the nearest one) when ``value`` is not among them."""
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}{nearest(value, choices)}")


def refuse_changed(config, owner: type, names: Iterable[str], reason: str) -> None:
    """Refuse every setting in ``names`` that ``config`` moved away from ``owner``'s default: ``reason`` says
    which runs it acts on, and the flag is named."""
    defaults = {f.name: f.default for f in fields(owner)}
    for name in names:
        if getattr(config, name) != defaults[name]:
            raise ConfigError(f"{flag_name(name)} {reason}")


@dataclass
class MethodOptions:
    """Base of a method's settings; ``check`` sees the whole run's config (method, granularity, the rest)."""

    @classmethod
    def check(cls, config) -> None:
        """Refuse settings that are invalid or act on nothing in this run; the default accepts all."""


FISHER_TYPES = ("empirical", "true")


@dataclass
class CurvatureOptions(MethodOptions):
    """Settings of the Kronecker curvature that LLM Surgeon and K-OBD read (their methods' kind collects ``G``)."""

    damp_g: float = option(0.1, "damping of G, relative to its mean diagonal")
    damp_a: float = option(0.1, "damping of A, relative to its mean diagonal")
    fisher: str = option(FISHER_TYPES[0], "labels of the curvature pass: the data's (empirical) or sampled from the "
                         "model (true)", group="research", choices=FISHER_TYPES)

    @classmethod
    def check(cls, config) -> None:
        check_choice(config.fisher, FISHER_TYPES, "fisher")
        if config.damp_g <= 0 or config.damp_a <= 0:
            raise ConfigError("damping must be positive")
