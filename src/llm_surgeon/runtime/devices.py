"""Checking a ``--device`` before anything is loaded, so a wrong one costs a second, not a model load."""

from __future__ import annotations

import torch

from llm_surgeon.errors import ConfigError


def check_device(name: str) -> torch.device:
    """The torch device ``name`` names, or a one-line error saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__}); "
                              "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ConfigError(f"device type {device.type!r} is not supported; use cpu, cuda or cuda:N")
    return device


def check_positive(flag: str, value: int | None, minimum: int = 1) -> None:
    """A clear error for a count or length flag below its minimum (``None`` means "not set")."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {value}")
