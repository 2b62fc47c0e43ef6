"""WikiText-2 text, calibration windows and evaluation tokens.

Files are read from ``--data-dir`` or ``$LLM_SURGEON_DATA`` (``wikitext-2-raw/wiki.{split}.raw``),
else from the Hugging Face hub through ``datasets`` when it is installed and online.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_surgeon.errors import DataError

DATA_ENV = "LLM_SURGEON_DATA"
SPLITS = ("train", "valid", "test")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The explicit folder, else ``$LLM_SURGEON_DATA``, else ``None`` (use the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if chosen is None or chosen == "":
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder does not exist: {path}")
    return path


def _rows_from_file(path: Path) -> list[str]:
    """Rows as the HF dataset gives them: whitespace-only lines become "", others keep their newline."""
    with open(path, encoding="utf-8") as handle:
        return ["" if line.strip() == "" else line for line in handle]


def _rows_from_hub(split: str) -> list[str]:
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DataError(
            f"no data folder given (--data-dir or ${DATA_ENV}) and the `datasets` package is not installed"
        ) from exc
    hub_split = {"valid": "validation"}.get(split, split)
    try:
        return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=hub_split)["text"])
    except Exception as exc:  # network, hub or cache failures all mean "no data"
        raise DataError(f"cannot fetch WikiText-2 {split} from the hub: {exc}") from exc


def has_split(data_dir: Path | None, split: str) -> bool:
    return data_dir is None or (data_dir / "wikitext-2-raw" / f"wiki.{split}.raw").is_file()


def wikitext2_rows(split: str, data_dir: Path | None) -> list[str]:
    """The rows of one WikiText-2 raw split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if data_dir is None:
        return _rows_from_hub(split)
    path = data_dir / "wikitext-2-raw" / f"wiki.{split}.raw"
    if not path.is_file():
        raise DataError(f"WikiText-2 {split} split not found: {path}")
    return _rows_from_file(path)


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text, as one 1-D tensor (tokenized once, as the protocol asks)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return ids.reshape(-1)


def evaluation_tokens(tokenizer, data_dir: Path | None, split: str = "test") -> torch.Tensor:
    """Test rows joined with "\\n\\n" and tokenized once: the standard perplexity protocol."""
    return tokenize_text(tokenizer, "\n\n".join(wikitext2_rows(split, data_dir)))


@dataclass(frozen=True)
class CalibrationSpec:
    dataset: str
    split: str
    samples: int
    seqlen: int
    seed: int


def calibration_split(data_dir: Path | None) -> str:
    """``train`` where available; else ``valid`` with a warning (never the test split)."""
    if has_split(data_dir, "train"):
        return "train"
    warnings.warn(
        "WikiText-2 train split not found; calibrating on the valid split instead", stacklevel=2
    )
    return "valid"


def calibration_windows(
    tokenizer, samples: int, seqlen: int, seed: int, data_dir: Path | None
) -> tuple[torch.Tensor, CalibrationSpec]:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets of the calibration split."""
    split = calibration_split(data_dir)
    tokens = tokenize_text(tokenizer, " ".join(wikitext2_rows(split, data_dir)))
    return sample_windows(tokens, samples, seqlen, seed), CalibrationSpec(
        "wikitext2", split, samples, seqlen, seed
    )


def sample_windows(tokens: torch.Tensor, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """(samples, seqlen) windows at seeded random offsets; a clear error if the text is too short."""
    if samples < 1 or seqlen < 2:
        raise DataError(f"need at least 1 calibration sample of 2 tokens, got {samples} x {seqlen}")
    if tokens.numel() < max(samples * seqlen, seqlen + 1):
        raise DataError(
            f"calibration text has {tokens.numel()} tokens, fewer than the {samples} x {seqlen} requested"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (samples,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])
