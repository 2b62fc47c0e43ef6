"""The save-format registry: the single list of formats, read by the CLI choices, the run's checks, the
output folder and the loader.

A format registers once (:func:`register_format`), from its own module; nothing else names it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from llm_surgeon.artifacts.formats.base import SaveFormat
from llm_surgeon.errors import ConfigError
from llm_surgeon.models.spec import ArchitectureAdapter

STRUCTURED_FORMAT = "structured"
"""The format of a structured run's compacted model (per-block widths), chosen by the granularity."""
STRUCTURED_GRANULARITY = "structured"

_FORMATS: dict[str, SaveFormat] = {}


def register_format(fmt: SaveFormat, replace: bool = False) -> SaveFormat:
    """Add ``fmt`` under ``fmt.name``; return it."""
    if fmt.name in _FORMATS and not replace:
        raise ValueError(f"a save format named {fmt.name!r} is already registered; pass replace=True")
    _FORMATS[fmt.name] = fmt
    return fmt


def format_names() -> list[str]:
    """Every registered format, in registration order."""
    return list(_FORMATS)


def save_format_names() -> list[str]:
    """The formats ``--save-format`` offers (the CLI's choices)."""
    return [name for name, fmt in _FORMATS.items() if fmt.selectable]


def save_formats_help() -> str:
    """``name: help`` for every format ``--save-format`` offers, for ``--help``."""
    return "; ".join(f"{name}: {_FORMATS[name].help}" for name in save_format_names())


def get_format(name: str) -> SaveFormat:
    if name not in _FORMATS:
        raise ConfigError(f"--save-format {name!r}: choose one of {', '.join(save_format_names())}")
    return _FORMATS[name]


def check_selectable(name: str) -> None:
    """Refuse a ``--save-format`` value the CLI would not offer, in one line."""
    if name not in save_format_names():
        raise ConfigError(f"--save-format {name!r}: choose one of {', '.join(save_format_names())}")


def format_for_run(name: str, granularity: str) -> SaveFormat:
    """The format a run that asked for ``name`` is saved in: that one, except that a structured run's
    compacted model goes to the ``structured`` format when the one asked cannot hold per-block widths."""
    asked = get_format(name)
    if granularity == STRUCTURED_GRANULARITY and not asked.holds_block_widths:
        return get_format(STRUCTURED_FORMAT)
    return asked


def refusal(name: str, granularity: str, adapter: ArchitectureAdapter | None = None,
            model: nn.Module | None = None) -> str | None:
    """Why a run of ``granularity`` asking for format ``name`` cannot be saved (one line), or None: the
    format asked is asked first, then the one the run would get (:func:`format_for_run`); with the loaded
    ``model``, each is also asked about the model itself."""
    asked = get_format(name)
    chosen = format_for_run(name, granularity)
    for fmt in dict.fromkeys((asked, chosen)):
        reason = fmt.refuse(granularity, adapter) or (fmt.refuse_model(model) if model is not None else None)
        if reason:
            return reason
    return None


def detect_format(folder: str | Path) -> SaveFormat | None:
    """The format that claims ``folder`` (its loader is needed), or None for a folder plain
    ``from_pretrained`` reads."""
    path = Path(folder)
    if not path.is_dir():
        return None
    return next((fmt for fmt in _FORMATS.values() if fmt.detect(path)), None)
