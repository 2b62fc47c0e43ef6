"""Memory one shot needs, estimated before any work starts, and the memory a device has free.

The estimate counts what a shot of the current loop holds at its peak: the raw curvature
sums of every layer with one layer's damped factors and inverses (the loop makes them one layer
at a time), the masks, the activations that one micro-batch keeps for its backward pass, and one
chunk of logits. The activation term is calibrated, not guessed: the process's peak RSS over a curvature
pass grows by 1.12 MB per token on smollm2-135m (batch 2 vs 8 windows of 512 tokens,
``benchmarks/curvature_pass_memory.py``), which is 0.92 times the sum of every prunable Linear's
input and output widths per block, in float32, over its 30 blocks; 1.0 times that sum is used. Inputs
shared by several layers (q/k/v) are counted once per layer, an upper bound, as for the factors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.models.nll import LOGIT_CHUNK_TOKENS

ACTIVATION_FACTOR = 1.0
"""Peak RSS per token per block over (Σ Linear input + output widths) × dtype bytes (0.92 measured)."""
LOGIT_COPIES = 3
"""Logits, their softmax and their gradient are alive at once for one chunk."""


@dataclass(frozen=True)
class ShotMemory:
    """Bytes a shot needs beyond the loaded model, by part."""

    factors: int
    activations: int
    logits: int
    correction: int = 0
    """The low-rank correction after the shot (``--lora-rank``; :func:`correction_bytes`). It trains once the
    shot's factors are freed, so the shot's peak is the larger of the two phases, not their sum."""
    heal: int = 0
    """Healing after the last shot (``--heal``; :func:`heal_bytes`), its own phase like the correction."""
    heal_targets: int = 0
    """The dense model's stored predictions healing learns from, held from before the first shot to the end."""
    layerwise: int = 0
    """A layer-by-layer method's pruning (SparseGPT, Wanda; :func:`layerwise_bytes`): no factors, no backward."""

    @property
    def total(self) -> int:
        passes = self.factors + self.activations + self.logits + self.layerwise
        return self.heal_targets + max(passes, self.correction, self.heal)

    def describe(self) -> str:
        gib = 2**30
        text = (f"factors {self.factors / gib:.1f} GiB, activations of one batch {self.activations / gib:.1f} GiB, "
                f"logits {self.logits / gib:.1f} GiB")
        text += f"; the correction after it {self.correction / gib:.1f} GiB" if self.correction else ""
        text += f"; layer-by-layer pruning {self.layerwise / gib:.2f} GiB" if self.layerwise else ""
        return text + (f"; healing {(self.heal + self.heal_targets) / gib:.1f} GiB" if self.heal else "")


@dataclass(frozen=True)
class HealNeeds:
    """What sizes healing's memory: its kind (``rank`` 0: every weight trains) and the predictions it stores."""

    rank: int
    positions: int
    """Token positions whose top-k predictions are stored (training and held-out windows)."""
    topk: int
    block_values: int = 0
    """Block-output values stored per position (``--heal-block-weight``: matched blocks x width), bfloat16."""


def raw_factor_bytes(linears: dict[str, nn.Linear], input_widths: list[int] | None = None) -> int:
    """float32 bytes of every layer's raw ``G`` sum plus every distinct ``A`` sum (``input_widths``; by
    default one per layer, an upper bound where layers share their input), each kept as its packed upper
    triangle of ``n(n+1)/2`` numbers."""
    _, widths = held_curvature(linears, input_widths)
    triangle = lambda n: n * (n + 1) // 2  # noqa: E731
    return 4 * (sum(triangle(lin.out_features) for lin in linears.values()) + sum(triangle(w) for w in widths))


def held_curvature(linears: dict[str, nn.Linear], input_widths: list[int] | None = None,
                   curvature: dict[str, nn.Linear] | None = None) -> tuple[dict[str, nn.Linear], list[int]]:
    """The layers whose factor sums a shot holds, and the widths of their ``A`` sums: the one rule that memory,
    work and communication estimates share.

    Every layer (``curvature`` None or all of ``linears``): one ``A`` per distinct input (``input_widths``; layers
    fed one input share it), or one per layer without them. Some layers only (structured costs priced by output
    columns): one ``A`` per layer held, since those layers need not share an input."""
    if curvature is None or curvature.keys() == linears.keys():
        widths = input_widths if input_widths is not None else [lin.in_features for lin in linears.values()]
        return linears, widths
    return curvature, [lin.in_features for lin in curvature.values()]


def largest_group_share(blocks: int, groups: int) -> float:
    """The largest group's share of the blocks when ``blocks`` are split into ``groups`` (see
    :func:`llm_surgeon.curvature.block_groups.block_ranges`: groups of ``ceil(blocks / groups)``)."""
    return -(-blocks // groups) / blocks


def factor_bytes(linears: dict[str, nn.Linear], diagonal_only: bool = False,
                 input_widths: list[int] | None = None, group_share: float = 1.0, layer_share: float = 1.0,
                 masked: dict[str, nn.Linear] | None = None) -> int:
    """Bytes of a shot's curvature state at its peak.

    Only the raw float32 sums persist (:func:`raw_factor_bytes`): of every layer, or with block groups
    of the largest group (``group_share`` of them; blocks of one family are alike); the damped factors
    and inverses of one layer at a time, the float64 inversion work of the widest factor, the cost
    temporaries of the largest layer (float32 costs and int64 sort keys) and two boolean masks per
    weight (the shot's old and new masks) of the device's ``layer_share`` of the layers come on top.
    ``linears`` are the layers whose curvature a shot collects, ``masked`` every prunable layer (by
    default the same).
    """
    weights = int(sum(lin.weight.numel() for lin in (masked or linears).values()) * layer_share)
    if diagonal_only:
        return 4 * 2 * sum(lin.out_features + lin.in_features for lin in linears.values()) + 2 * weights
    raw = int(raw_factor_bytes(linears, input_widths) * group_share)
    one_layer = max(4 * 2 * (lin.out_features**2 + lin.in_features**2) for lin in linears.values())
    widest = max(max(lin.out_features, lin.in_features) for lin in linears.values())
    largest = max(lin.weight.numel() for lin in linears.values())
    return raw + one_layer + 3 * 8 * widest**2 + 20 * largest + 2 * weights


def activation_bytes(linears: dict[str, nn.Linear], blocks: int, tokens: int, dtype_bytes: int,
                     eager_attention: tuple[int, int] | None = None) -> int:
    """What one micro-batch of ``tokens`` keeps for its backward pass through ``blocks`` blocks.

    ``eager_attention`` = (heads, seqlen) adds the attention probabilities an eager kernel keeps.
    """
    per_block = sum(lin.out_features + lin.in_features for lin in linears.values()) / max(blocks, 1)
    total = ACTIVATION_FACTOR * per_block * tokens * blocks * dtype_bytes
    if eager_attention is not None:
        heads, seqlen = eager_attention
        total += heads * seqlen * tokens * blocks * dtype_bytes
    return int(total)


def correction_bytes(linears: dict[str, nn.Linear], blocks: int, tokens: int, dtype_bytes: int, rank: int,
                     input_widths: list[int] | None = None, eager_attention: tuple[int, int] | None = None
                     ) -> dict[str, int]:
    """What the low-rank correction (:mod:`llm_surgeon.engine.correction`) holds at its peak, by part, for one batch
    of ``tokens`` (the logits' chunk comes on top, as in a pass).

    Its backward keeps what a curvature pass keeps (``backward``: :func:`activation_bytes`) and, because the
    weights now train, every prunable layer's input (``layer_inputs``: one per distinct input,
    ``input_widths``) and the weight each parametrization builds (``built_weights``: ``W + keep ⊙ (B A)`` in
    the model's dtype). Each layer's keep mask is float32 (``keep_masks``), the shot's masks boolean
    (``masks``), and the rank-``rank`` factors come four times (``factors``: values, gradients, Adam's two
    moments). On smollm2-135m (8 x 512 tokens, rank 16) this predicts 8.6 GB with the loaded model against
    7.58 GB measured for the correction alone and 8.02-8.09 GB after a shot of LLM Surgeon."""
    weights = sum(lin.weight.numel() for lin in linears.values())
    _, widths = held_curvature(linears, input_widths)
    return {"backward": activation_bytes(linears, blocks, tokens, dtype_bytes, eager_attention),
            "layer_inputs": sum(widths) * tokens * dtype_bytes,
            "built_weights": weights * dtype_bytes,
            "keep_masks": 4 * weights,
            "masks": weights,
            "factors": 4 * 4 * rank * sum(lin.out_features + lin.in_features for lin in linears.values())}




def heal_bytes(linears: dict[str, nn.Linear], blocks: int, tokens: int, dtype_bytes: int, needs: HealNeeds,
               input_widths: list[int] | None = None, eager_attention: tuple[int, int] | None = None
               ) -> dict[str, int]:
    """What healing (:mod:`llm_surgeon.healing.train`) holds at its peak for one batch of ``tokens``, by part
    (the logits' chunk comes on top, as in a pass): the backward and every layer's input, as for the low-rank
    correction; with every weight training, a gradient and Adam's two moments per weight in the weights'
    dtype and a boolean keep mask; with ``rank`` > 0, the correction's own parts (:func:`correction_bytes`).
    ``targets``: the stored predictions, ``k`` int32 indices and float32 log-probabilities per position, and
    the matched blocks' outputs in bfloat16; ``block_loss``: a batch of them in float32 with the difference."""
    weights = sum(lin.weight.numel() for lin in linears.values())
    parts = {"targets": (8 * needs.topk + 2 * needs.block_values) * needs.positions,
             "block_loss": 8 * needs.block_values * tokens}
    if needs.rank > 0:
        return {**parts, **correction_bytes(linears, blocks, tokens, dtype_bytes, needs.rank, input_widths,
                                            eager_attention)}
    _, widths = held_curvature(linears, input_widths)
    return {**parts, "backward": activation_bytes(linears, blocks, tokens, dtype_bytes, eager_attention),
            "layer_inputs": sum(widths) * tokens * dtype_bytes, "gradients": weights * dtype_bytes,
            "adam": 2 * weights * dtype_bytes, "keep_masks": weights}


def shot_memory(model: nn.Module, linears: dict[str, nn.Linear], blocks: int, batch_windows: int, seqlen: int,
                full_factors: bool, backward: bool, chunk_tokens: int = LOGIT_CHUNK_TOKENS,
                input_widths: list[int] | None = None, dtype_bytes: int | None = None,
                block_groups: int = 1, devices: int = 1, curvature: dict[str, nn.Linear] | None = None,
                correction_rank: int = 0, heal: HealNeeds | None = None, layerwise: int = 0) -> ShotMemory:
    """The estimate for one shot of ``model`` with micro-batches of ``batch_windows`` x ``seqlen`` tokens.

    With ``block_groups`` the factor sums of the largest group are held at once; the activations are
    those of the first group's pass, which runs through every block. With ``devices`` the blocks are
    split evenly over that many devices (as ``device_map`` does) and the estimate is the busiest one's:
    its blocks' sums, masks and activations, and the logits. ``curvature`` are the layers whose factors the
    shot collects when not all of them (structured costs priced by output columns; see
    :func:`held_curvature`). ``correction_rank`` > 0 adds the low-rank correction after the shot, on batches of
    the same size (:func:`correction_bytes`); ``heal`` adds healing after the last shot (:func:`heal_bytes`);
    ``layerwise`` is what a layer-by-layer method holds (:func:`layerwise_bytes`), carried as given."""
    config = model.config
    dtype_bytes = dtype_bytes or next(model.parameters()).element_size()
    eager = None
    if getattr(config, "_attn_implementation", None) == "eager":
        eager = (config.num_attention_heads, seqlen)
    on_device = largest_group_share(blocks, devices)
    tokens = batch_windows * seqlen
    activations = activation_bytes(linears, blocks, tokens, dtype_bytes, eager) if backward else 0
    activations = int(activations * on_device)
    vocab = model.get_output_embeddings().weight.shape[0]
    chunk_logits = LOGIT_COPIES * 4 * min(chunk_tokens, tokens) * vocab
    logits = chunk_logits if backward else 0
    share = largest_group_share(blocks, min(blocks, devices * block_groups))
    held, widths = held_curvature(linears, input_widths, curvature)
    factors = factor_bytes(held, input_widths=widths, group_share=share, layer_share=on_device,
                           masked=linears) if full_factors else 0
    correction = 0
    if correction_rank > 0:
        parts = correction_bytes(linears, blocks, tokens, dtype_bytes, correction_rank, input_widths, eager)
        correction = int(sum(parts.values()) * on_device) + chunk_logits
    heal_parts = {} if heal is None else heal_bytes(linears, blocks, tokens, dtype_bytes, heal, input_widths, eager)
    heal_targets = heal_parts.pop("targets", 0)
    healing = int(sum(heal_parts.values()) * on_device) + chunk_logits if heal is not None else 0
    return ShotMemory(factors=factors, activations=activations, logits=logits, correction=correction, heal=healing,
                      heal_targets=heal_targets, layerwise=layerwise)


def layerwise_bytes(model: nn.Module, adapter, windows: int, seqlen: int, dtype_bytes: int) -> int:
    """What a layer-by-layer method (SparseGPT, Wanda) holds beyond the model while it prunes a block: every
    calibration window's block inputs and the block's outputs (two hidden-state tensors), the block's float32
    ``H = Σ x xᵀ`` of every layer at once, and the widest layer's float64 solve (``H``, its Cholesky factor
    and the inverse's, as SparseGPT makes them; Wanda's diagonal reads are within it)."""
    width = model.get_input_embeddings().embedding_dim
    states = 2 * windows * seqlen * width * dtype_bytes
    hessians, widest = 0, 0
    for block in adapter.blocks(model):
        widths = [block.get_submodule(rel).in_features for rel in adapter.block_linear_names(block)]
        hessians = max(hessians, sum(w * w * 4 for w in widths))
        widest = max([widest, *widths])
    return states + hessians + 3 * widest * widest * 8


def reconstruction_bytes(model: nn.Module, adapter, linears: dict[str, nn.Linear], windows: int, seqlen: int,
                         dtype_bytes: int) -> dict[str, int]:
    """What ``--reconstruct`` holds, by part: the dense copy of the prunable weights (host, for the whole run),
    and during the re-fit the block states (pruned and dense block inputs and outputs of every calibration
    window: four hidden-state tensors), the float32 sums ``Σ x xᵀ`` and ``Σ x̄ xᵀ`` of the largest stage of
    layers fed one input, and one block's dense twin."""
    blocks = adapter.blocks(model)
    return {"dense_copy": sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
                              for lin in linears.values()) * dtype_bytes,
            "block_states": 4 * windows * seqlen * model.config.hidden_size * dtype_bytes,
            "stage_sums": max(_stage_sum_bytes(adapter, block) for block in blocks),
            "dense_block": max(sum(p.numel() for p in block.parameters()) for block in blocks) * dtype_bytes}


def _stage_sum_bytes(adapter, block: nn.Module) -> int:
    """The largest stage of a block's re-fit: layers fed one input (q/k/v, gate/up) or all experts' gate_up
    (or down) at once, each with ``Σ x xᵀ``, ``Σ x̄ xᵀ`` (not for experts) and ``Σ x`` in float32."""
    linear = {rel: block.get_submodule(rel) for rel in adapter.block_linear_names(block)}
    experts = [rel for rel in linear if adapter.is_expert_layer(rel)]

    def size(rels: list[str], cross: bool = True) -> int:
        width = linear[rels[0]].in_features
        return len(rels) * ((2 if cross else 1) * width * width + width) * 4

    grouped = {rel for group in adapter.input_groups for rel in group}
    stages = [[rel for rel in group if rel in linear] for group in adapter.input_groups]
    stages += [[rel] for rel in linear if rel not in grouped and rel not in experts]
    sizes = [size(stage) for stage in stages if stage]
    for part in ("gate_up", "down"):
        rels = [rel for rel in experts if f".{part}." in rel]
        if rels:
            sizes.append(size(rels, cross=False))
    return max(sizes)


def fewest_block_groups(needs: Callable[[int], ShotMemory], room: int | None, max_groups: int
                        ) -> tuple[int, ShotMemory] | None:
    """The fewest block groups (1..``max_groups``) whose shot fits ``room`` bytes, with its estimate; None if
    none does. Fewer groups mean fewer passes, so the first that fits is the fastest."""
    for groups in range(1, max_groups + 1):
        needed = needs(groups)
        if room is None or needed.total <= room:
            return groups, needed
    return None


def _meminfo_bytes(field: str) -> int | None:
    """One field of the OS's /proc/meminfo (Linux), in bytes; None elsewhere."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def available_bytes(device: str | torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free memory, else the OS's MemAvailable (Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return _meminfo_bytes("MemAvailable")


def total_bytes(device: str | torch.device) -> int | None:
    """The whole memory of ``device`` (CUDA's total, else the OS's MemTotal): what the safety margin is a share
    of when no ``--max-memory`` is given."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return _meminfo_bytes("MemTotal")


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 10**3, "KIB": 2**10, "M": 2**20, "MB": 10**6, "MIB": 2**20,
          "G": 2**30, "GB": 10**9, "GIB": 2**30, "T": 2**40, "TB": 10**12, "TIB": 2**40}

_SIZE = re.compile(r"^(\d+(?:\.\d*)?(?:E[+-]?\d+)?)([KMGT]?I?B?)$")


def parse_bytes(text: str) -> int:
    """``"20GiB"``, ``"20GB"``, ``"20G"`` (binary), ``"1.5e10"`` -> bytes; ``ValueError`` on anything else."""
    match = _SIZE.match(text.strip().upper().replace(" ", ""))
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (examples: 20GiB, 500MB, 8G)")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not value > 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


def in_use_bytes(device: str | torch.device) -> int:
    """What this process holds now: CUDA's allocated memory, else the resident set (Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
