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

from llm_surgeon.curvature.placement import EVERY_LAYER_HERE, LayerPlacement
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.math.symmetric import pack_upper, unpack_upper
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.models.nll import backward_next_token_nll


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
    """The token rows the layer's inputs held (all tokens; for an expert, those routed to it)."""
    packed: bool = False
    """``A`` and ``G`` hold only their upper triangles (:mod:`llm_surgeon.math.symmetric`): how a
    collector keeps them; :meth:`unpacked` gives the matrices."""
    mean: torch.Tensor | None = None
    """``E[a]``, the mean input, when the method asked for it (FLAP's fluctuation and bias compensation)."""

    def to(self, dtype: torch.dtype) -> KroneckerFactors:
        """The factors in ``dtype`` (as matrices)."""
        f = self.unpacked()
        return KroneckerFactors(A=f.A.to(dtype), G=None if f.G is None else f.G.to(dtype), tokens=f.tokens,
                                mean=None if f.mean is None else f.mean.to(dtype))

    def unpacked(self) -> KroneckerFactors:
        """The factors as matrices (themselves when they are not packed)."""
        if not self.packed:
            return self
        return KroneckerFactors(A=unpack_upper(self.A), G=None if self.G is None else unpack_upper(self.G),
                                tokens=self.tokens, mean=self.mean)


class FactorAccumulator:
    """Forward and output-gradient hooks that sum ``aᵀa`` and ``gᵀg`` (or their diagonals) in float32."""

    def __init__(self, linears: dict[str, nn.Linear], diagonal_only: bool = False,
                 factor_device: torch.device | str | None = None, input_means: bool = False):
        self.linears = linears
        self.diagonal_only = diagonal_only
        self.input_means = input_means
        self.M: dict[str, torch.Tensor] = {}
        """Per layer, the sum of its input rows (only when ``input_means``): d numbers, one per layer."""
        self.factor_device = None if factor_device is None else torch.device(factor_device)
        """Where the sums live (None: where the layer computes): host memory when the device has no room."""
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self.tokens = 0
        self.rows: dict[str, int] = {}
        """Per layer, the token rows its inputs held: every token for a dense layer, the routed ones for an
        expert (whose ``A`` is the mean over those)."""
        # The statistic of the latest input only, keyed by storage address, shape and strides; the input
        # is kept alive beside it so that its address cannot be reused while the key is in use. Layers
        # fed one tensor (q/k/v, gate/up) run one after another, so one entry is enough to share it.
        self._latest: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self._latest_leader: tuple[tuple, str] | None = None
        self._added: dict[int, tuple] = {}
        """Per A accumulator (by id), the input key it last took this batch: a shared one adds once."""
        self._handles: list = []

    def new_batch(self) -> None:
        self._latest = None
        self._latest_leader = None
        self._added.clear()

    def _input_stat(self, x: torch.Tensor, key: tuple) -> torch.Tensor:
        if self._latest is None or self._latest[0] != key:
            self._latest = None  # free the previous statistic before computing the next
            self._latest = (key, x, self._second_moment(x))
        return self._latest[2]

    def _leader(self, key: tuple, name: str) -> str:
        """First batch: the layer whose A accumulator ``name`` shares (itself unless the input repeats)."""
        if self._latest_leader is None or self._latest_leader[0] != key:
            self._latest_leader = (key, name)
        return self._latest_leader[1]

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            self.rows[name] = self.rows.get(name, 0) + x.numel() // x.shape[-1]
            key = (x.data_ptr(), tuple(x.shape), x.stride())
            stat = self._input_stat(x, key)
            if name not in self.A:
                leader = self._leader(key, name)
                self.A[name] = self.A[leader] if leader != name else self._stored(stat, copy=True)
            elif self._added.get(id(self.A[name])) != key:
                self.A[name] += self._stored(stat)
            self._added[id(self.A[name])] = key
            if self.input_means:
                row_sum = self._stored(x.detach().reshape(-1, x.shape[-1]).float().sum(0))
                self.M[name] = self.M[name] + row_sum if name in self.M else row_sum
            if output.requires_grad:
                output.register_hook(self._grad_hook(name))

        return hook

    def _stored(self, stat: torch.Tensor, copy: bool = False) -> torch.Tensor:
        """A batch statistic on the device the sums live on."""
        if self.factor_device is None:
            return stat.clone() if copy else stat
        return stat.to(self.factor_device, copy=copy)

    def _second_moment(self, x: torch.Tensor) -> torch.Tensor:
        """``xᵀx`` over the tokens in float32: its diagonal, or its upper triangle (the sums stay packed)."""
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        return flat.pow(2).sum(0) if self.diagonal_only else pack_upper(flat.T @ flat)

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            stat = self._stored(self._second_moment(grad))
            if name in self.G:
                self.G[name] += stat
            else:
                self.G[name] = stat

        return hook

    @contextmanager
    def attached(self) -> Iterator[FactorAccumulator]:
        try:
            for name, module in self.linears.items():
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self.new_batch()


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


def _leaf_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: a block's hidden states become a leaf that requires grad (the backward stops here)."""
    if args:
        return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_(True)}


@contextmanager
def _activation_gradients_only(model: nn.Module, adapter: ArchitectureAdapter, from_block: int = 0
                               ) -> Iterator[None]:
    """Backward through activations without computing any weight gradient.

    Parameters are frozen; the input of block ``from_block`` (the embedding output for block 0) is
    made a leaf that requires grad, so the backward reaches every block from there on while
    allocating no parameter gradients, and the blocks before it keep no activations at all.
    """
    if from_block == 0:
        handle = model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output.detach().requires_grad_(True)
        )
    else:
        handle = adapter.blocks(model)[from_block].register_forward_pre_hook(_leaf_input, with_kwargs=True)
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
    from_block: int = 0
    """The first block whose layers are collected: the backward pass stops at its input."""
    input_means: bool = False
    """Also the mean input of every layer (``KroneckerFactors.mean``)."""


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
        """Factors of every layer in ``linears`` placed here (:meth:`placement`), normalised per token;
        ``seed`` drives label sampling."""

    def placement(self) -> LayerPlacement:
        """Which layers' factors :meth:`collect` returned here (all of them unless layers have owners)."""
        return EVERY_LAYER_HERE

    def routed_rows(self) -> dict[str, int]:
        """Per layer collected so far, the token rows its inputs held over all processes (0: an expert no
        token was routed to, which :meth:`collect` leaves out); empty when the collector does not count."""
        return {}


class LocalCollector(CurvatureCollector):
    """One process: micro-batches of ``batch_size`` windows through the whole model, sums in float32.

    ``fisher="empirical"`` back-propagates the NLL of the data's own next tokens;
    ``fisher="true"`` samples the labels from the model's predictive distribution. Token NLLs
    are summed (not averaged) so each backward gives per-token gradients.
    """

    def __init__(self, batch_size: int = 8, fisher: str = "empirical", progress: bool = True,
                 factor_device: torch.device | str | None = None):
        if fisher not in ("empirical", "true"):
            raise ValueError(f"fisher must be 'empirical' or 'true', got {fisher!r}")
        self.batch_size = batch_size
        self.fisher = fisher
        self.progress = progress
        self.factor_device = factor_device
        """Where the sums accumulate (None: beside each layer)."""
        self._rows: dict[str, int] = {}

    def collect(self, model, adapter, linears, windows, request, seed, label=""):
        accumulator = FactorAccumulator(linears, request.diagonal_only, self.factor_device, request.input_means)
        self.accumulate(model, adapter, accumulator, self.windows_of(windows), request, self.seed_of(seed), label)
        self.reduce(accumulator)
        self._rows.update({name: accumulator.rows.get(name, 0) for name in linears})
        return _normalised(accumulator, self.kept(linears), request.with_gradients)

    def routed_rows(self) -> dict[str, int]:
        return dict(self._rows)

    def windows_of(self, windows: torch.Tensor) -> torch.Tensor:
        """The windows this process passes (all of them; a data-parallel collector takes its shard)."""
        return windows

    def seed_of(self, seed: int) -> int:
        """The label-sampling seed of this process."""
        return seed

    def reduce(self, accumulator: FactorAccumulator) -> None:
        """Combine this process's raw sums with other processes' (nothing to do alone)."""

    def kept(self, linears: dict[str, nn.Linear]) -> dict[str, nn.Linear]:
        """The layers whose reduced factors this process keeps (all of them alone)."""
        return linears

    def accumulate(self, model: nn.Module, adapter: ArchitectureAdapter, accumulator: FactorAccumulator,
                   windows: torch.Tensor, request: CurvatureRequest, seed: int, label: str) -> None:
        """Add the statistics of ``windows`` to ``accumulator`` (raw sums, not yet normalised)."""
        device = input_device(model)
        generator = torch.Generator(device=device).manual_seed(seed)
        sample = generator if self.fisher == "true" else None
        was_training = model.training
        model.eval()
        prefix = f"{label}: " if label else ""
        try:
            if not request.with_gradients:
                body = adapter.body(model)  # the blocks only: input statistics need no logits (49k wide)
                with torch.no_grad(), accumulator.attached():
                    for batch in tqdm(windows.split(self.batch_size), desc=f"{prefix}input statistics (forward)",
                                      disable=not self.progress):
                        accumulator.new_batch()
                        body(input_ids=batch.to(device), use_cache=False)
                        accumulator.tokens += batch.numel()
                return
            with _activation_gradients_only(model, adapter, request.from_block), accumulator.attached():
                for batch in tqdm(windows.split(self.batch_size), desc=f"{prefix}curvature (forward+backward)",
                                  disable=not self.progress):
                    accumulator.new_batch()
                    ids = batch.to(device)
                    backward_next_token_nll(model, adapter, ids, mean=False, sample_labels=sample)
                    accumulator.tokens += ids.numel()
        finally:
            model.train(was_training)


def _normalised(accumulator: FactorAccumulator, linears: dict[str, nn.Linear], with_gradients: bool
                ) -> dict[str, KroneckerFactors]:
    """Sums divided in place (no second copy of every sum): ``A`` by the rows the layer saw, ``G`` by all
    tokens. For a dense layer both are the token count. For an expert, ``A`` is the mean over its routed
    tokens and ``G`` the sum over them per token of the batch, so ``A ⊗ G`` is its share of the Fisher
    (``E_e[a aᵀ] ⊗ E_e[g gᵀ] · n_e / N``) and its costs compare with every other layer's in one threshold.
    A factors shared between layers stay shared; full factors stay packed upper triangles. A layer that
    saw no rows (an expert no token was routed to) is left out."""
    factors: dict[str, KroneckerFactors] = {}
    divided: set[int] = set()
    packed = not accumulator.diagonal_only
    for name in linears:
        if not accumulator.rows.get(name):
            continue
        if with_gradients and name not in accumulator.G:
            raise NonFiniteActivationError(f"no gradient reached layer {name}")
        A = accumulator.A[name]
        if id(A) not in divided:
            A.div_(accumulator.rows[name])
            divided.add(id(A))
        G = accumulator.G[name].div_(accumulator.tokens) if with_gradients else None
        mean = accumulator.M[name].div_(accumulator.rows[name]) if name in accumulator.M else None
        factors[name] = KroneckerFactors(A=A, G=G, tokens=accumulator.rows[name], packed=packed, mean=mean)
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
