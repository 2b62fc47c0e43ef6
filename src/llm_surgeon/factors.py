"""From a shot's raw factor sums to what a method's costs read: damped factors and their inverses.

Plumbing around :mod:`llm_surgeon.math.kfac`: an ``A`` shared by several layers (q/k/v,
gate/up) is damped and inverted once, and a factor that cannot be inverted is retried once
with ten times the damping before the run stops with the layer's name.
"""

from __future__ import annotations

import warnings

import torch
from tqdm.auto import tqdm

from llm_surgeon.curvature import KroneckerFactors
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.math.kfac import DampedFactors, NonFiniteCurvatureError, damped_with_inverse


def damped_or_raise(name: str, factor: torch.Tensor, relative: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Damp and invert; on failure raise the damping once (x10) and warn, then give up naming the layer."""
    try:
        return damped_with_inverse(factor, relative)
    except NonFiniteCurvatureError:
        warnings.warn(f"curvature of {name} is not finite or not positive definite; retrying with 10x damping",
                      stacklevel=3)
        try:
            return damped_with_inverse(factor, 10 * relative)
        except NonFiniteCurvatureError as exc:
            raise LLMSurgeonError(f"non-finite or indefinite curvature in layer {name}: {exc}") from exc


def damped_shot_factors(factors: dict[str, KroneckerFactors], damp_g: float, damp_a: float, label: str = "",
                        progress: bool = False) -> dict[str, DampedFactors]:
    """Damped factors and inverses of every layer; an ``A`` shared by several layers is inverted once."""
    shared_A: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    out = {}
    desc = f"{label}: invert curvature" if label else "invert curvature"
    for name, f in tqdm(factors.items(), desc=desc, disable=not progress):
        if id(f.A) not in shared_A:
            shared_A[id(f.A)] = damped_or_raise(name, f.A, damp_a)
        A, A_inv = shared_A[id(f.A)]
        G, G_inv = damped_or_raise(name, f.G, damp_g)
        out[name] = DampedFactors(G=G, A=A, G_inv=G_inv, A_inv=A_inv)
    return out
