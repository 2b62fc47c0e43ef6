"""What healing learns from: windows of healing text and the dense model's top-k predictions on them.

The teacher is the dense model itself, before the first shot; its predictions are computed once, ahead of
time, and kept as ``k`` token indices and log-probabilities per position (:mod:`llm_surgeon.math.distill`),
so healing never holds a second model and its memory does not grow with the vocabulary; with
``--heal-block-weight``, the outputs of a few blocks too (bfloat16). They are written beside the checkpoints,
so a resumed run reads them instead of running the dense model again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.data.calibration import sample_windows, tokenize_text, training_window_counts
from llm_surgeon.data.textsets import calibration_text, parse_text_set
from llm_surgeon.errors import ConfigError, DataError
from llm_surgeon.healing.blocks import block_outputs, stacked
from llm_surgeon.math.distill import evenly_spaced_blocks, top_k_log_probs
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.models.nll import LOGIT_CHUNK_TOKENS

TARGETS_FILE = "heal-teacher.safetensors"


@dataclass
class HealWindows:
    """Token windows to train on, and held-out ones (the text's end, never trained on) to measure the KL."""

    train: torch.Tensor
    held_out: torch.Tensor
    source: str
    split: str


@dataclass
class TeacherTargets:
    """Per window and position, the teacher's ``k`` likeliest tokens (int32) and their log-probabilities."""

    indices: torch.Tensor
    log_probs: torch.Tensor
    hidden: torch.Tensor | None = None
    """The outputs of the matched blocks (windows, positions, blocks, width; bfloat16), or None."""

    def rows(self, windows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The targets of a batch of windows, flattened to one row per position."""
        k = self.indices.shape[-1]
        return self.indices[windows].reshape(-1, k), self.log_probs[windows].reshape(-1, k)

    def picked(self, windows: slice | torch.Tensor) -> TeacherTargets:
        """The targets of some windows (a slice or indices), block outputs included."""
        hidden = None if self.hidden is None else self.hidden[windows]
        return TeacherTargets(self.indices[windows], self.log_probs[windows], hidden)


def matched_blocks(config, blocks: int) -> tuple[int, ...]:
    """The blocks whose outputs healing matches (none without ``--heal-block-weight``); refused in one line
    when the model has fewer blocks than ``--heal-blocks``."""
    if config.heal_block_weight == 0:
        return ()
    if config.heal_blocks > blocks:
        raise ConfigError(f"--heal-blocks {config.heal_blocks} is more than the model's {blocks} blocks")
    return tuple(evenly_spaced_blocks(config.heal_blocks, blocks))


def heal_windows(tokenizer, config, data_dir: Path | None) -> HealWindows:
    """``ceil(heal_tokens / calib_seqlen)`` training windows at seeded offsets of the healing text, and an
    eighth more, contiguous, from the text's end, held out; one line when the text is too short."""
    text_set = parse_text_set(config.heal_data or config.calib_data, config.text_field)
    seqlen = config.calib_seqlen
    train_count, held_count = training_window_counts(config.heal_tokens, seqlen)
    text, split = calibration_text(text_set, data_dir, (train_count + held_count) * seqlen, config.seed)
    tokens = tokenize_text(tokenizer, text)
    held = held_count * seqlen
    if tokens.numel() - held < train_count * seqlen:
        raise DataError(f"the healing text ({text_set.name}, {split}) has {tokens.numel()} tokens, fewer than "
                        f"--heal-tokens {config.heal_tokens} and {held} held out; lower --heal-tokens or give "
                        "more text with --heal-data")
    train = sample_windows(tokens[:-held], train_count, seqlen, config.seed, text_set.name)
    return HealWindows(train, tokens[-held:].reshape(held_count, seqlen), text_set.name, split)


@torch.no_grad()
def teacher_targets(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor, k: int, batch: int,
                    progress: bool = True, chunk_tokens: int = LOGIT_CHUNK_TOKENS, blocks: Sequence[int] = ()
                    ) -> TeacherTargets:
    """The model's top-``k`` next-token log-probabilities at every position of ``windows``, and the outputs of
    ``blocks`` (if any) in bfloat16; logits are made ``chunk_tokens`` positions at a time, so at most that
    many rows of them exist."""
    device = model.get_input_embeddings().weight.device
    indices, log_probs, outputs = [], [], []
    for ids in tqdm(windows.split(batch), desc="healing: the dense model's predictions", disable=not progress):
        with block_outputs(model, adapter, blocks) as captured:
            hidden = adapter.body(model)(input_ids=ids.to(device), use_cache=False).last_hidden_state
        if blocks:
            outputs.append(stacked(captured, blocks).to("cpu", torch.bfloat16))
        hidden = hidden.reshape(-1, hidden.shape[-1])
        for start in range(0, hidden.shape[0], chunk_tokens):
            top = top_k_log_probs(adapter.logits(model, hidden[start:start + chunk_tokens]), k)
            indices.append(top[0].cpu())
            log_probs.append(top[1].cpu())
    shape = (*windows.shape, -1)
    return TeacherTargets(torch.cat(indices).reshape(shape), torch.cat(log_probs).reshape(shape),
                          torch.cat(outputs) if blocks else None)


def targets_key(model_name: str, windows: HealWindows, k: int, blocks: Sequence[int] = ()) -> str:
    """What the stored targets were computed from: the model, the exact windows, ``k`` and the blocks."""
    digest = hashlib.sha256(model_name.encode())
    for part in (windows.train, windows.held_out):
        digest.update(part.to(torch.int64).numpy().tobytes())
    digest.update(str(k).encode())
    if blocks:  # without blocks, the key of a run stored before block outputs existed
        digest.update(("blocks" + ",".join(map(str, blocks))).encode())
    return digest.hexdigest()


def save_targets(path: Path, key: str, train: TeacherTargets, held_out: TeacherTargets) -> None:
    """Written under a temporary name and renamed: the file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    tensors = {"train_indices": train.indices, "train_log_probs": train.log_probs,
               "held_indices": held_out.indices, "held_log_probs": held_out.log_probs}
    if train.hidden is not None:
        tensors |= {"train_hidden": train.hidden, "held_hidden": held_out.hidden}
    save_file(tensors, str(staging), metadata={"key": key})
    os.replace(staging, path)


def load_targets(path: Path, key: str) -> tuple[TeacherTargets, TeacherTargets] | None:
    """The stored targets when ``path`` holds those of ``key``, else None (absent, other windows, unreadable)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
        tensors = load_file(str(path))
    except Exception:  # a damaged file is recomputed, never trusted
        return None
    return (TeacherTargets(tensors["train_indices"], tensors["train_log_probs"], tensors.get("train_hidden")),
            TeacherTargets(tensors["held_indices"], tensors["held_log_probs"], tensors.get("held_hidden")))


@dataclass
class HealInputs:
    """Everything healing needs from before the first shot."""

    windows: HealWindows
    train: TeacherTargets
    held_out: TeacherTargets
    seconds_teacher: float
    """Spent computing the dense model's predictions (0 when they were read back from a stopped run)."""
    blocks: tuple[int, ...] = ()
    """The blocks whose outputs healing matches (``--heal-block-weight``), their outputs in the targets."""


def prepare_heal_inputs(model: nn.Module, adapter: ArchitectureAdapter, tokenizer, config, data_dir: Path | None,
                        model_name: str, store: Path | None, progress: bool = True) -> HealInputs:
    """The healing windows and the still-dense model's predictions on them: read from ``store`` when a
    stopped run of the same windows left them there, else computed now and written there (atomically)."""
    blocks = matched_blocks(config, len(adapter.blocks(model)))
    windows = heal_windows(tokenizer, config, data_dir)
    key = targets_key(model_name, windows, config.heal_topk, blocks)
    stored = load_targets(store, key) if store is not None else None
    if stored is not None:
        return HealInputs(windows, *stored, seconds_teacher=0.0, blocks=blocks)
    t0 = time.perf_counter()
    train = teacher_targets(model, adapter, windows.train, config.heal_topk, config.batch_size, progress,
                            blocks=blocks)
    held_out = teacher_targets(model, adapter, windows.held_out, config.heal_topk, config.batch_size, False,
                               blocks=blocks)
    if store is not None:
        save_targets(store, key, train, held_out)
    return HealInputs(windows, train, held_out, time.perf_counter() - t0, blocks)


def share_of(inputs: HealInputs, part: int, parts: int) -> tuple[torch.Tensor, TeacherTargets]:
    """The ``part``-th (from 0) of ``parts`` near-equal contiguous shares of the training windows and their
    targets (``--heal-each-shot``: one share after each shot, so the shots together train on the budget once)."""
    bounds = [round(i * len(inputs.windows.train) / parts) for i in range(parts + 1)]
    picked = slice(bounds[part], bounds[part + 1])
    return inputs.windows.train[picked], inputs.train.picked(picked)
