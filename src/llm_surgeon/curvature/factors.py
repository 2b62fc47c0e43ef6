"""From a shot's raw factor sums to what a method's costs read: damped factors and their inverses.

Plumbing around :mod:`llm_surgeon.math.kfac`: layers are damped and inverted one at a time when
the costs or the update ask for them, an ``A`` shared by consecutive layers (q/k/v, gate/up) is
inverted once for them, and a factor that cannot be inverted is retried once with ten times the
damping before the run stops with the layer's name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch

from llm_surgeon.curvature.collectors import KroneckerFactors
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.math.kfac import DampedFactors, NonFiniteCurvatureError, damped_with_inverse
from llm_surgeon.math.symmetric import unpack_upper


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

    Only the raw sums of every layer persist through a shot (in memory, or waiting on disk a group of
    blocks at a time: ``raw`` is any mapping); a layer's damped ``G``, ``A`` and inverses exist while
    the caller holds them, on ``device_of(name)`` (the layer's device, wherever the sums live). The last
    inverted ``A`` is kept, because layers fed the same input (q/k/v, gate/up) come one after another
    and share it; it is recognised by the raw tensor itself, which the cache holds, never by an ``id``
    that a freed tensor could pass on.
    """

    def __init__(self, raw: Mapping[str, KroneckerFactors], damp_g: float, damp_a: float,
                 device_of: Callable[[str], torch.device] | None = None):
        self.raw, self.damp_g, self.damp_a = raw, damp_g, damp_a
        self.device_of = device_of
        self._last_A: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _matrix(self, name: str, factor: torch.Tensor, packed: bool) -> torch.Tensor:
        """The raw factor as a matrix beside layer ``name``."""
        if self.device_of is not None:
            factor = factor.to(self.device_of(name))
        return unpack_upper(factor) if packed else factor

    def get(self, name: str) -> DampedFactors | None:
        """The layer's damped factors, or ``None`` for a layer the shot collected no curvature for."""
        if name not in self.raw:
            return None
        f = self.raw[name]
        if self._last_A is None or self._last_A[0] is not f.A:
            self._last_A = None  # free the previous layer's A before making the next
            self._last_A = (f.A, *damped_or_raise(name, self._matrix(name, f.A, f.packed), self.damp_a))
        _, A, A_inv = self._last_A
        G, G_inv = damped_or_raise(name, self._matrix(name, f.G, f.packed), self.damp_g)
        return DampedFactors(G=G, A=A, G_inv=G_inv, A_inv=A_inv)

    def release(self) -> None:
        """Drop the cached ``A`` (the raw sums stay with their owner)."""
        self._last_A = None


class RawFactorsOnDevice:
    """The raw factors of methods that read them undamped (K-OBD, L-OBD), moved beside each layer when asked for."""

    def __init__(self, raw: Mapping[str, KroneckerFactors], device_of: Callable[[str], torch.device]):
        self.raw, self.device_of = raw, device_of

    def get(self, name: str) -> KroneckerFactors | None:
        f = self.raw.get(name)
        if f is None:
            return None
        device = self.device_of(name)
        moved = KroneckerFactors(A=f.A.to(device), G=None if f.G is None else f.G.to(device), tokens=f.tokens,
                                 packed=f.packed, mean=None if f.mean is None else f.mean.to(device))
        return moved.unpacked()
