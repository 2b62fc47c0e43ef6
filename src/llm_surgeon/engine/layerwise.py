"""Layer-by-layer pruning on the inputs of the already-pruned preceding blocks (SparseGPT, Wanda).

The inputs of the first decoder block are captured once; each block is then run on them
to collect ``H = Σ x xᵀ`` for its Linear layers, pruned, and run again so that the next
block sees the outputs of the pruned one. The per-layer math is a plain function of
``(W, H)`` supplied by the method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.curvature.collectors import input_device
from llm_surgeon.models.adapters import ArchitectureAdapter


class _StopForwardError(Exception):
    """Raised by the capture hook to end the forward pass once the first block's inputs are known."""


def capture_block_inputs(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor, batch_size: int
                         ) -> list[tuple[torch.Tensor, dict]]:
    """(hidden states, keyword arguments) that the first block receives, per calibration batch."""
    captured: list[tuple[torch.Tensor, dict]] = []
    first = adapter.blocks(model)[0]

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForwardError

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    device = input_device(model)
    try:
        with torch.no_grad():
            for batch in windows.split(batch_size):
                with contextlib.suppress(_StopForwardError):
                    model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
    outs = []
    for hidden, kwargs in inputs:
        out = block(hidden, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def _hessian_hook(accumulator: torch.Tensor):
    def hook(module, args, output):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        accumulator.add_((x.T @ x).to(accumulator.device))

    return hook


LayerPruneFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(W, H) -> pruned W with exact zeros."""


def prune_layerwise(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor, prune_fn: LayerPruneFn,
                    batch_size: int = 8, progress: bool = True) -> None:
    """Prune every prunable Linear block by block, in place."""
    inputs = capture_block_inputs(model, adapter, windows, batch_size)
    blocks = adapter.blocks(model)
    with torch.no_grad():
        for block in tqdm(blocks, desc="layer-wise pruning", disable=not progress):
            linears = {rel: block.get_submodule(rel) for rel in adapter.block_linear_names(block)}
            hessians = {rel: torch.zeros(lin.in_features, lin.in_features) for rel, lin in linears.items()}
            handles = [lin.register_forward_hook(_hessian_hook(hessians[rel])) for rel, lin in linears.items()]
            try:
                run_block(block, inputs)
            finally:
                for handle in handles:
                    handle.remove()
            for rel, lin in linears.items():
                H = hessians[rel].to(lin.weight.device)
                lin.weight.copy_(prune_fn(lin.weight.detach(), H).to(lin.weight.dtype))
            outputs = run_block(block, inputs)
            inputs = [(out, kwargs) for out, (_, kwargs) in zip(outputs, inputs, strict=True)]
