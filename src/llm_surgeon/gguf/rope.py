"""Rotary position settings of a transformers config, in the form llama.cpp reads them.

transformers 4.x keeps ``rope_theta``/``rope_scaling`` on the config, 5.x a ``rope_parameters``
dict; both are read here. Only the schemes llama.cpp reproduces exactly are accepted: plain RoPE,
linear position scaling and Llama 3's per-frequency scaling (written as a ``rope_freqs`` tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EXACT_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeSettings:
    """What goes into the GGUF: the base, an optional linear factor, optional per-frequency divisors."""

    theta: float
    linear_factor: float | None
    freq_factors: np.ndarray | None


def rope_parameters(config) -> dict:
    """The rope settings as one dict (``rope_type``, ``rope_theta``, ``factor``...), for either layout."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return dict(params)
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    scaling.setdefault("rope_type", scaling.get("type", "default"))
    scaling["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return scaling


def rope_problem(config) -> str | None:
    """Why llama.cpp could not reproduce this model's rotary embedding, or None when it can."""
    params = rope_parameters(config)
    kind = params.get("rope_type", "default")
    if kind not in EXACT_ROPE_TYPES:
        return f"rope scaling {kind!r} (exported exactly: {', '.join(EXACT_ROPE_TYPES)})"
    if float(getattr(config, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        return "partial rotary embeddings (llama.cpp's llama/deci rotate the whole head)"
    return None


def _llama3_freq_factors(config, head_dim: int, theta: float) -> np.ndarray:
    """Per-frequency divisors: the plain inverse frequencies over Llama 3's scaled ones."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    return (plain / scaled.to(torch.float64)).to(torch.float32).numpy()


def rope_settings(config, head_dim: int) -> RopeSettings:
    """The settings to write; call :func:`rope_problem` first (this assumes an exact scheme)."""
    params = rope_parameters(config)
    theta = float(params["rope_theta"])
    kind = params.get("rope_type", "default")
    if kind == "linear":
        return RopeSettings(theta, float(params["factor"]), None)
    if kind == "llama3":
        return RopeSettings(theta, None, _llama3_freq_factors(config, head_dim, theta))
    return RopeSettings(theta, None, None)
