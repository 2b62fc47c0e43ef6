"""Calibration windows and evaluation tokens from a text set (:mod:`llm_surgeon.data.textsets`).

The data folder is ``--data-dir`` or ``$LLM_SURGEON_DATA``; without one, WikiText-2 comes from the
Hugging Face hub through ``datasets`` when it is installed and online.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_surgeon.data.textsets import WIKITEXT2, TextSet, calibration_text, evaluation_text
from llm_surgeon.errors import DataError

DATA_ENV = "LLM_SURGEON_DATA"
HELD_OUT_SHARE = 8
"""Training text drawn as windows keeps one window in this many more, held out, to measure on."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The explicit folder, else ``$LLM_SURGEON_DATA``, else ``None`` (use the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if chosen is None or chosen == "":
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder does not exist: {path}")
    return path


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text, as one 1-D tensor (tokenized once, as the protocol asks)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return ids.reshape(-1)


def evaluation_tokens(tokenizer, data_dir: Path | None, text_set: TextSet = WIKITEXT2) -> torch.Tensor:
    """The set's evaluation text, joined as its protocol says and tokenized once."""
    return tokenize_text(tokenizer, evaluation_text(text_set, data_dir))


@dataclass(frozen=True)
class CalibrationSpec:
    dataset: str
    split: str
    samples: int
    seqlen: int
    seed: int


def calibration_windows(
    tokenizer, samples: int, seqlen: int, seed: int, data_dir: Path | None, text_set: TextSet = WIKITEXT2
) -> tuple[torch.Tensor, CalibrationSpec]:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets of the set's calibration text."""
    text, split = calibration_text(text_set, data_dir, samples * seqlen, seed)
    tokens = tokenize_text(tokenizer, text)
    return sample_windows(tokens, samples, seqlen, seed, text_set.name), CalibrationSpec(
        text_set.name, split, samples, seqlen, seed
    )


def sample_windows(tokens: torch.Tensor, samples: int, seqlen: int, seed: int,
                   name: str = "calibration") -> torch.Tensor:
    """(samples, seqlen) windows at seeded random offsets; a clear error if the text is too short."""
    if samples < 1 or seqlen < 2:
        raise DataError(f"need at least 1 calibration sample of 2 tokens, got {samples} x {seqlen}")
    if tokens.numel() < max(samples * seqlen, seqlen + 1):
        raise DataError(
            f"{name} calibration text has {tokens.numel()} tokens, fewer than the {samples} x {seqlen} requested"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (samples,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def training_window_counts(tokens: int, seqlen: int) -> tuple[int, int]:
    """Windows of ``seqlen`` to train on for a budget of ``tokens`` (rounded up to whole windows), and how
    many more are held out (:data:`HELD_OUT_SHARE`, at least one)."""
    train = math.ceil(tokens / seqlen)
    return train, max(1, math.ceil(train / HELD_OUT_SHARE))
