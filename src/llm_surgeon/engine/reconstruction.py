"""Reconstruction after a shot: every pruned Linear re-fitted to the dense model's outputs, masks kept.

Block by block, the calibration windows run through a copy of the block holding the dense weights (fed
the dense model's own block inputs) and through the pruned block (fed the pruned model's, i.e. the
outputs of the blocks already re-fitted). Each prunable Linear of the block then solves the masked least
squares ``min Σ_t ||W x_t + b − (W̄ x̄_t + b̄)||² + λ ||W − W̄||²`` (x: its input in the pruned model, x̄ in
the dense one, W̄/b̄ the dense weights, λ a small fraction of ``Σ x xᵀ``'s mean diagonal: the ridge pulls
toward the dense weights, not toward zero), its removed weights held at zero
(:func:`~llm_surgeon.math.least_squares.masked_least_squares`), so the pattern of every granularity is
kept. Inside a block the layers are fitted in stages (q/k/v, then o on the re-fitted attention, then
gate/up, then down), so each is fitted to the inputs it will see. An expert's tokens differ between the
two models (routing moves), so an expert is fitted on its own inputs: ``x̄ = x``. The record gives each
block's relative output error before and after its fit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.engine.layerwise import capture_block_inputs, run_block
from llm_surgeon.math.least_squares import masked_least_squares
from llm_surgeon.models.adapters import ArchitectureAdapter

DenseWeights = dict[str, tuple[torch.Tensor, torch.Tensor | None]]
"""Per prunable layer, its dense weight and bias (host copies taken before the first shot)."""


def snapshot_dense(linears: dict[str, nn.Linear]) -> DenseWeights:
    """Host copies of every prunable layer's weight and bias, the targets of every later reconstruction."""
    return {name: (lin.weight.detach().to("cpu", copy=True),
                   None if lin.bias is None else lin.bias.detach().to("cpu", copy=True))
            for name, lin in linears.items()}


@dataclass
class ReconstructionRecord:
    seconds: float
    mean_iterations: float
    block_error_before: list[float] = field(default_factory=list)
    """Per block, ``Σ ||out − dense out||² / Σ ||dense out||²`` of its output before its fit (inputs already
    from the re-fitted blocks before it)."""
    block_error_after: list[float] = field(default_factory=list)


@dataclass
class _LayerSums:
    """``H = Σ x xᵀ``, ``D = Σ x̄ xᵀ`` and ``s = Σ x`` of one layer over the calibration tokens."""

    H: torch.Tensor
    D: torch.Tensor | None
    s: torch.Tensor

    def add(self, x: torch.Tensor, x_dense: torch.Tensor | None) -> None:
        self.H.addmm_(x.T, x)
        if self.D is not None:
            self.D.addmm_(x_dense.T, x)
        self.s.add_(x.sum(0))


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1, tensor.shape[-1]).float()


def _dense_block(block: nn.Module, rels: tuple[str, ...], dense: DenseWeights, names: dict[str, str]) -> nn.Module:
    """A copy of ``block`` holding the dense weights of its prunable layers."""
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for rel in rels:
            lin, (weight, bias) = twin.get_submodule(rel), dense[names[rel]]
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)
    return twin


def _collect(block: nn.Module, twin: nn.Module, rels: tuple[str, ...], same_input: Callable[[str], bool],
             inputs: list, dense_inputs: list) -> tuple[dict[str, _LayerSums], list, list, float]:
    """Run both blocks batch by batch; the sums of every layer, both blocks' outputs and the relative error."""
    sums: dict[str, _LayerSums] = {}
    seen: dict[str, torch.Tensor] = {}

    def dense_hook(rel):
        def hook(module, args, output):
            seen[rel] = _rows(args[0])
        return hook

    def pruned_hook(rel):
        def hook(module, args, output):
            x = _rows(args[0])
            if rel not in sums:
                width = x.shape[1]
                cross = None if same_input(rel) else x.new_zeros(width, width)
                sums[rel] = _LayerSums(x.new_zeros(width, width), cross, x.new_zeros(width))
            sums[rel].add(x, None if same_input(rel) else seen[rel])
        return hook

    handles = [twin.get_submodule(rel).register_forward_hook(dense_hook(rel)) for rel in rels]
    handles += [block.get_submodule(rel).register_forward_hook(pruned_hook(rel)) for rel in rels]
    outputs, dense_outputs, error, norm = [], [], 0.0, 0.0
    try:
        for (hidden, kwargs), (dense_hidden, _) in zip(inputs, dense_inputs, strict=True):
            seen.clear()
            dense_out = run_block(twin, [(dense_hidden, kwargs)])[0]
            out = run_block(block, [(hidden, kwargs)])[0]
            error += float((out.float() - dense_out.float()).pow(2).sum())
            norm += float(dense_out.float().pow(2).sum())
            outputs.append(out)
            dense_outputs.append(dense_out)
    finally:
        for handle in handles:
            handle.remove()
    return sums, outputs, dense_outputs, error / max(norm, 1e-30)


def _fit(lin: nn.Linear, sums: _LayerSums, dense: tuple[torch.Tensor, torch.Tensor | None], keep: torch.Tensor,
         damp: float, iterations: int) -> int:
    """Re-fit one layer in place; returns the conjugate-gradient steps taken."""
    device = lin.weight.device
    H = sums.H.to(device)
    weight, bias = (t if t is None else t.to(device, torch.float32) for t in dense)
    D = H if sums.D is None else sums.D.to(device)
    B = weight @ D  # rows: Σ_t (W̄ x̄_t)_i x_tᵀ
    if bias is not None:  # the dense bias minus the layer's own, times Σ x
        B += (bias - lin.bias.detach().float())[:, None] * sums.s.to(device)[None, :]
    ridge = damp * H.diagonal().mean().clamp_min(1e-12)  # pulls the kept weights toward the dense ones, not 0
    H = H + ridge * torch.eye(H.shape[0], device=device, dtype=H.dtype)
    B += ridge * weight
    W, steps = masked_least_squares(lin.weight.detach(), H, B, keep.to(device), iterations)
    with torch.no_grad():
        lin.weight.copy_(W.to(lin.weight.dtype))
    return steps


def fit_stages(block: nn.Module, rels: tuple[str, ...], probe: tuple[torch.Tensor, dict]) -> list[list[str]]:
    """The block's layers in the order their inputs become final: a layer's stage is one more than the
    deepest stage among the layers its input depends on (found by autograd on one batch, each layer's output
    shifted by a zero that requires grad). Llama: q/k/v, o, gate/up, down; an expert's ``down`` after its
    ``gate_up``. A layer the probe batch does not reach (an expert no token of it was routed to) goes last."""
    order, inputs, markers = [], {}, {}

    def pre(rel):
        def hook(module, args):
            order.append(rel)
            inputs[rel] = args[0]
        return hook

    def post(rel):
        def hook(module, args, output):
            markers[rel] = torch.zeros_like(output, requires_grad=True)
            return output + markers[rel]
        return hook

    handles = [block.get_submodule(rel).register_forward_pre_hook(pre(rel)) for rel in rels]
    handles += [block.get_submodule(rel).register_forward_hook(post(rel)) for rel in rels]
    depth: dict[str, int] = {}
    try:
        with torch.enable_grad():
            run_block(block, [probe])
            for index, rel in enumerate(order):
                earlier = order[:index]
                grads = torch.autograd.grad(inputs[rel].sum(), [markers[e] for e in earlier], retain_graph=True,
                                            allow_unused=True) if earlier and inputs[rel].requires_grad else []
                depth[rel] = 1 + max((depth[e] for e, g in zip(earlier, grads, strict=True) if g is not None),
                                     default=-1)
    finally:
        for handle in handles:
            handle.remove()
    last = max(depth.values(), default=-1) + 1
    stages: dict[int, list[str]] = {}
    for rel in rels:
        stages.setdefault(depth.get(rel, last), []).append(rel)
    return [stages[level] for level in sorted(stages)]


def reconstruct(model: nn.Module, adapter: ArchitectureAdapter, masks: dict[str, torch.Tensor], dense: DenseWeights,
                windows: torch.Tensor, batch_size: int, iterations: int = 30, damp: float = 0.01,
                progress: bool = True) -> ReconstructionRecord:
    """Re-fit every prunable layer, block by block and stage by stage inside a block (:func:`fit_stages`), to
    the dense model's outputs (``masks``: removed weights)."""
    t0 = time.perf_counter()
    inputs = capture_block_inputs(model, adapter, windows, batch_size)  # embeddings are never pruned
    dense_inputs = [(hidden.clone(), kwargs) for hidden, kwargs in inputs]
    record, steps = ReconstructionRecord(seconds=0.0, mean_iterations=0.0), []
    with torch.no_grad():
        for index, block in enumerate(tqdm(adapter.blocks(model), desc="reconstruction", disable=not progress)):
            rels = adapter.block_linear_names(block)
            names = {rel: adapter.module_name(index, rel) for rel in rels}
            twin = _dense_block(block, rels, dense, names)
            errors = []
            for stage in fit_stages(block, rels, inputs[0]):
                sums, _, dense_outputs, error = _collect(block, twin, tuple(stage), adapter.is_expert_layer,
                                                         inputs, dense_inputs)
                errors.append(error)
                for rel, layer_sums in sums.items():  # an expert no token reached has no sums: left as it is
                    steps.append(_fit(block.get_submodule(rel), layer_sums, dense[names[rel]], ~masks[names[rel]],
                                      damp, iterations))
                del sums
            del twin
            outputs = run_block(block, inputs)
            record.block_error_before.append(errors[0])
            record.block_error_after.append(_relative_error(outputs, dense_outputs))
            inputs = [(out, kwargs) for out, (_, kwargs) in zip(outputs, inputs, strict=True)]
            dense_inputs = [(out, kwargs) for out, (_, kwargs) in zip(dense_outputs, dense_inputs, strict=True)]
    record.seconds = time.perf_counter() - t0
    record.mean_iterations = sum(steps) / len(steps) if steps else 0.0
    return record


def _relative_error(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    error = sum(float((o.float() - t.float()).pow(2).sum()) for o, t in zip(outputs, targets, strict=True))
    return error / max(sum(float(t.float().pow(2).sum()) for t in targets), 1e-30)
