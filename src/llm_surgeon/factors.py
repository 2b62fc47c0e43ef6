"""From a shot's raw factor sums to what a method's costs read: damped factors and their inverses.

Plumbing around :mod:`llm_surgeon.math.kfac`: layers are damped and inverted one at a time when
the costs or the update ask for them, an ``A`` shared by consecutive layers (q/k/v, gate/up) is
inverted once for them, and a factor that cannot be inverted is retried once with ten times the
damping before the run stops with the layer's name.
"""

from __future__ import annotations

import warnings

import torch

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


class LazyDampedFactors:
    """A shot's damped factors and inverses, made one layer at a time when asked for, never all at once.

    Only the raw sums of every layer persist through a shot; a layer's damped ``G``, ``A`` and
    inverses exist while the caller holds them. The last inverted ``A`` is kept, because layers
    fed the same input (q/k/v, gate/up) come one after another and share it.
    """

    def __init__(self, raw: dict[str, KroneckerFactors], damp_g: float, damp_a: float):
        self.raw, self.damp_g, self.damp_a = raw, damp_g, damp_a
        self._last_A: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def get(self, name: str) -> DampedFactors:
        f = self.raw[name]
        if self._last_A is None or self._last_A[0] != id(f.A):
            self._last_A = (id(f.A), *damped_or_raise(name, f.A, self.damp_a))
        _, A, A_inv = self._last_A
        G, G_inv = damped_or_raise(name, f.G, self.damp_g)
        return DampedFactors(G=G, A=A, G_inv=G_inv, A_inv=A_inv)

    def release(self) -> None:
        """Drop the cached ``A`` (the raw sums stay with their owner)."""
        self._last_A = None
