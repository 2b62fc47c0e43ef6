"""Collecting Kronecker factors with hooks during full-model forward/backward passes.

Hooks only gather statistics; the math on them lives in :mod:`llm_surgeon.math`. Layers
fed the same input tensor (q/k/v, gate/up) share one ``A`` computation per batch, which
roughly halves the cost of the input statistics in a Llama block. Methods whose costs read
only the diagonals (K-OBD, L-OBD) collect just those: O(d) per token instead of O(d²).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.nll import backward_next_token_nll


class NonFiniteActivationError(LLMSurgeonError):
    """NaN/Inf in the activations or gradients seen by a layer."""


@dataclass
class KroneckerFactors:
    """Raw (undamped) ``A = E[a aᵀ]`` and ``G = E[g gᵀ]`` of one Linear layer, per token."""

    A: torch.Tensor
    G: torch.Tensor | None
    """``None`` when only input statistics were collected (forward passes only). Collected
    diagonal-only, ``A`` and ``G`` are vectors of the diagonals."""
    tokens: int


class _FactorAccumulator:
    """Forward and output-gradient hooks that sum ``aᵀa`` and ``gᵀg`` (or their diagonals) in float32."""

    def __init__(self, linears: dict[str, nn.Linear], diagonal_only: bool = False):
        self.linears = linears
        self.diagonal_only = diagonal_only
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self.tokens = 0
        # Keyed by storage address; the input tensor is kept alive in the value so that
        # its address cannot be reused by another tensor within the same batch.
        self._shared_inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []
        self._leader_of: dict[tuple, str] = {}

    def new_batch(self) -> None:
        self._shared_inputs.clear()
        self._leader_of.clear()

    def _input_stat(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.data_ptr(), tuple(x.shape), x.stride())
        if key not in self._shared_inputs:
            self._shared_inputs[key] = (x, self._second_moment(x))
        return self._shared_inputs[key][1]

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            key = (x.data_ptr(), tuple(x.shape), x.stride())
            fresh = key not in self._shared_inputs
            stat = self._input_stat(x)
            if name not in self.A:
                # Layers fed the same tensor (q/k/v, gate/up) share one A accumulator.
                leader = self._leader_of.setdefault(key, name)
                self.A[name] = self.A[leader] if leader != name else stat.clone()
            elif fresh:
                self.A[name] += stat
            if output.requires_grad:
                output.register_hook(self._grad_hook(name))

        return hook

    def _second_moment(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        return flat.pow(2).sum(0) if self.diagonal_only else flat.T @ flat

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            stat = self._second_moment(grad)
            if name in self.G:
                self.G[name] += stat
            else:
                self.G[name] = stat

        return hook

    @contextmanager
    def attached(self) -> Iterator[_FactorAccumulator]:
        try:
            for name, module in self.linears.items():
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._shared_inputs.clear()


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` stops requiring grad inside the block; each gets its flag back after."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def _activation_gradients_only(model: nn.Module) -> Iterator[None]:
    """Backward through activations without computing any weight gradient.

    Parameters are frozen; the embedding output is made a leaf that requires grad, so the
    backward pass reaches every block while allocating no parameter gradients.
    """
    handle = model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: output.detach().requires_grad_(True)
    )
    try:
        with frozen_parameters(model):
            yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class CurvatureRequest:
    """What a method's costs need from one pass: output gradients or inputs only, full or diagonal."""

    with_gradients: bool = True
    diagonal_only: bool = False


def input_device(model: nn.Module) -> torch.device:
    """Where token ids must go: the device of the input embeddings (not of whichever parameter is first)."""
    return model.get_input_embeddings().weight.device


class CurvatureCollector(ABC):
    """Turns calibration windows into per-layer Kronecker factors for one shot.

    The shot loop is handed a collector and does not know how the passes are batched, on which
    devices they run, or how partial sums are reduced; this process-local one is the default.
    """

    @abstractmethod
    def collect(self, model: nn.Module, adapter: ArchitectureAdapter, linears: dict[str, nn.Linear],
                windows: torch.Tensor, request: CurvatureRequest, seed: int, label: str = ""
                ) -> dict[str, KroneckerFactors]:
        """Factors of every layer in ``linears``, normalised per token; ``seed`` drives label sampling."""


class LocalCollector(CurvatureCollector):
    """One process: micro-batches of ``batch_size`` windows through the whole model, sums in float32.

    ``fisher="empirical"`` back-propagates the NLL of the data's own next tokens;
    ``fisher="true"`` samples the labels from the model's predictive distribution. Token NLLs
    are summed (not averaged) so each backward gives per-token gradients.
    """

    def __init__(self, batch_size: int = 8, fisher: str = "empirical", progress: bool = True):
        if fisher not in ("empirical", "true"):
            raise ValueError(f"fisher must be 'empirical' or 'true', got {fisher!r}")
        self.batch_size = batch_size
        self.fisher = fisher
        self.progress = progress

    def collect(self, model, adapter, linears, windows, request, seed, label=""):
        accumulator = _FactorAccumulator(linears, request.diagonal_only)
        self.accumulate(model, adapter, accumulator, windows, request.with_gradients, seed, label)
        return _normalised(accumulator, linears, request.with_gradients)

    def accumulate(self, model: nn.Module, adapter: ArchitectureAdapter, accumulator: _FactorAccumulator,
                   windows: torch.Tensor, with_gradients: bool, seed: int, label: str) -> None:
        """Add the statistics of ``windows`` to ``accumulator`` (raw sums, not yet normalised)."""
        device = input_device(model)
        generator = torch.Generator(device=device).manual_seed(seed)
        sample = generator if self.fisher == "true" else None
        was_training = model.training
        model.eval()
        prefix = f"{label}: " if label else ""
        try:
            if not with_gradients:
                with torch.no_grad(), accumulator.attached():
                    for batch in tqdm(windows.split(self.batch_size), desc=f"{prefix}input statistics (forward)",
                                      disable=not self.progress):
                        accumulator.new_batch()
                        model(input_ids=batch.to(device), use_cache=False)
                        accumulator.tokens += batch.numel()
                return
            with _activation_gradients_only(model), accumulator.attached():
                for batch in tqdm(windows.split(self.batch_size), desc=f"{prefix}curvature (forward+backward)",
                                  disable=not self.progress):
                    accumulator.new_batch()
                    ids = batch.to(device)
                    backward_next_token_nll(model, adapter, ids, mean=False, sample_labels=sample)
                    accumulator.tokens += ids.numel()
        finally:
            model.train(was_training)


def _normalised(accumulator: _FactorAccumulator, linears: dict[str, nn.Linear], with_gradients: bool
                ) -> dict[str, KroneckerFactors]:
    """Sums divided by the token count; A factors shared between layers stay shared."""
    factors: dict[str, KroneckerFactors] = {}
    normalised: dict[int, torch.Tensor] = {}
    for name in linears:
        if with_gradients and name not in accumulator.G:
            raise NonFiniteActivationError(f"no gradient reached layer {name}")
        raw_A = accumulator.A[name]
        if id(raw_A) not in normalised:
            normalised[id(raw_A)] = raw_A / accumulator.tokens
        G = accumulator.G[name] / accumulator.tokens if with_gradients else None
        factors[name] = KroneckerFactors(A=normalised[id(raw_A)], G=G, tokens=accumulator.tokens)
    _raise_on_non_finite(factors)
    return factors


def _raise_on_non_finite(factors: dict[str, KroneckerFactors]) -> None:
    """Name the layer closest to the source: the first with non-finite inputs in forward order,
    else the last with non-finite output gradients (backward runs from the top)."""
    for name, f in factors.items():
        if not torch.isfinite(f.A).all():
            raise NonFiniteActivationError(f"NaN or Inf in the input activations of layer {name}")
    for name, f in reversed(factors.items()):
        if f.G is not None and not torch.isfinite(f.G).all():
            raise NonFiniteActivationError(f"NaN or Inf in the output gradients of layer {name}")
