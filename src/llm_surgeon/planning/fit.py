"""One memory fit of a shot, shared by ``plan`` (a model on the meta device) and ``prune`` (the loaded model).

Both ask :func:`fit_shot` the same question, what one shot needs and which block groups and micro-batch make it
fit the room, so a plan that says "fits" and the prune that follows choose the same settings for the same room.
They differ only in how the room is known: ``plan`` predicts it (the device's memory less the predicted weights),
``prune`` reads it (the budget less what the process holds, and the free memory).

A stated share of the device (:data:`SAFETY_MARGIN`) is kept free by both: the estimate counts tensors, while
the allocator's fragmentation, the CUDA context and the kernels' workspaces are not tensors of ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llm_surgeon.config import PruneConfig
from llm_surgeon.data.calibration import training_window_counts
from llm_surgeon.engine.pruner import RunParts
from llm_surgeon.healing.targets import matched_blocks
from llm_surgeon.methods import LayerwiseMethod, MethodBase
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.planning.memory import HealNeeds, ShotMemory, fewest_block_groups, layerwise_bytes, shot_memory

SAFETY_MARGIN = 0.05
"""Share of the device's memory (of ``--max-memory`` when given) that a fitting shot leaves free: allocator
fragmentation, the CUDA context and kernel workspaces, none of which the estimate counts."""


def margin_bytes(device_bytes: int | None) -> int:
    """The bytes kept free on a device of ``device_bytes`` (0 when its size is unknown: nothing is checked)."""
    return 0 if device_bytes is None else int(SAFETY_MARGIN * device_bytes)


def collects_gradients(method: MethodBase) -> bool:
    """Whether a shot's curvature pass runs a backward, and so keeps every block's activations and a chunk of
    logits alive: only when the method's curvature kind collects output gradients (``G``: ``KFAC``,
    ``KFAC_INVERSE``).

    The methods of input statistics (``inputs``: wanda, sparsegpt, lobd, ziplm, flap) run the blocks alone
    under ``no_grad`` and never make logits, whatever ``--fisher`` says (the labels are drawn only for a
    backward); magnitude runs no pass. This is the engine's rule (the ``with_gradients`` of the
    ``CurvatureRequest`` a shot makes); a low-rank correction's own backward is priced apart
    (:attr:`ShotMemory.correction`)."""
    return method.curvature.gradients


def batch_fixed_by(config: PruneConfig, method: MethodBase) -> str | None:
    """Why the micro-batch may not be lowered to fit (None: it may).

    The curvature sums run over every window whatever the batch, so a smaller batch gives the same factors
    (to float rounding) in more passes. Not so for a low-rank correction: it takes one Adam step per batch of
    the mean loss, so its batch is a training setting. True-Fisher labels are drawn chunk by chunk from one
    generator; on CPU smaller batches draw the same labels, but CUDA's sampler is not known to, so the batch of
    a true-Fisher pass is kept too."""
    if config.corrects:
        return "--lora-rank: the correction takes one Adam step per batch, so the batch changes its result"
    if config.heal:
        return "--heal: healing takes one Adam step per batch, so the batch changes its result"
    if config.fisher == "true" and collects_gradients(method):
        return "--fisher true: the sampled labels are drawn batch by batch"
    return None


@dataclass(frozen=True)
class ShotFit:
    """The settings a shot runs with and what it is predicted to need with them."""

    block_groups: int
    batch_size: int
    """Windows per micro-batch of the passes: the requested batch (at most the windows), or a smaller one."""
    memory: ShotMemory
    requested_batch: int
    room: int | None
    """What the shot may take once the margin is off (None: unknown; nothing was checked)."""
    margin: int
    """Bytes kept free (:data:`SAFETY_MARGIN` of the device)."""
    backward: bool
    """Whether the passes keep activations for a backward (:func:`collects_gradients`)."""
    batch_fixed: str | None = None
    """Why the batch could not be lowered (:func:`batch_fixed_by`), else None."""

    @property
    def fits(self) -> bool | None:
        return None if self.room is None else self.memory.total <= self.room

    @property
    def batch_lowered(self) -> bool:
        """The batch is smaller than the requested one (beyond the windows there are)."""
        return self.batch_size < self.requested_batch


def shot_needs(model: nn.Module, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig,
               dtype_bytes: int, groups: int, batch: int, devices: int = 1) -> ShotMemory:
    """The estimate of one shot of ``config`` with ``groups`` block groups and micro-batches of ``batch``."""
    method = parts.method
    layerwise = layerwise_bytes(model, adapter, config.calib_samples, config.calib_seqlen, dtype_bytes) \
        if isinstance(method, LayerwiseMethod) else 0
    return shot_memory(model, parts.linears, len(adapter.blocks(model)), batch, config.calib_seqlen,
                       full_factors=method.holds_full_factors(), backward=collects_gradients(method),
                       input_widths=adapter.distinct_input_widths(model), dtype_bytes=dtype_bytes,
                       block_groups=groups, devices=devices, curvature=parts.selector.curvature_layers(method),
                       correction_rank=config.lora_rank, heal=heal_needs(config, model, adapter), layerwise=layerwise)


def heal_needs(config: PruneConfig, model: nn.Module, adapter: ArchitectureAdapter) -> HealNeeds | None:
    """What sizes healing's memory in ``config`` (None without ``--heal``); more ``--heal-blocks`` than the
    model has are refused here, as in the run."""
    if not config.heal:
        return None
    train, held = training_window_counts(config.heal_tokens, config.calib_seqlen)
    blocks = matched_blocks(config, len(adapter.blocks(model)))
    width = model.get_input_embeddings().embedding_dim
    return HealNeeds(config.heal_rank, (train + held) * config.calib_seqlen, config.heal_topk, len(blocks) * width)


def first_batch(config: PruneConfig) -> int:
    """The batch the passes use as asked: ``--batch-size`` windows, or every window when there are fewer."""
    return min(config.batch_size, config.calib_samples)


def fit_shot(model: nn.Module, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig,
             dtype_bytes: int, room: int | None, margin: int = 0, devices: int = 1) -> ShotFit:
    """The fewest block groups at the requested batch that fit ``room`` less ``margin``; else, when the batch
    may change (:func:`batch_fixed_by`), the largest batch (halving) that fits with up to the most groups; when
    nothing fits, the leanest settings tried (``fits`` is False). More groups cost passes, a smaller batch
    only speed; neither changes the result."""
    usable = None if room is None else room - margin
    most = max(1, len(adapter.blocks(model)) // devices) if parts.method.holds_full_factors() else 1
    fixed = batch_fixed_by(config, parts.method)
    batch = first_batch(config)
    while True:
        chosen = fewest_block_groups(
            lambda g, b=batch: shot_needs(model, adapter, parts, config, dtype_bytes, g, b, devices), usable, most)
        if chosen is not None or batch == 1 or fixed:
            groups = most if chosen is None else chosen[0]
            memory = chosen[1] if chosen else shot_needs(model, adapter, parts, config, dtype_bytes, most, batch,
                                                         devices)
            return ShotFit(groups, batch, memory, first_batch(config), usable, margin,
                           collects_gradients(parts.method), fixed)
        batch = max(1, batch // 2)
