"""The outputs of chosen decoder blocks, captured by forward hooks during one forward of the model.

Healing's optional second loss (``--heal-block-weight``) compares them with the dense model's. Hooks on the
blocks, not ``output_hidden_states``: what that tuple holds differs between families and versions (some
put the final norm's output in the last place), a block's own output does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from llm_surgeon.models.adapters import ArchitectureAdapter


@contextlib.contextmanager
def block_outputs(model: nn.Module, adapter: ArchitectureAdapter, indices: Sequence[int]
                  ) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, each forward of ``model`` fills the dict with the output hidden states of the blocks
    at ``indices`` (batch, positions, width), graph attached; nothing is hooked when ``indices`` is empty."""
    captured: dict[int, torch.Tensor] = {}
    blocks = adapter.blocks(model)

    def hook_for(index: int):
        def keep(_module, _inputs, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
        return keep

    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in indices]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stacked(captured: dict[int, torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
    """The captured outputs in the order of ``indices``, stacked on a new third axis (batch, positions,
    blocks, width): the layout the dense model's outputs are stored in. On the last block's device, where the
    blocks of a device map are spread over several."""
    device = captured[indices[-1]].device
    return torch.stack([captured[i].to(device) for i in indices], dim=2)
