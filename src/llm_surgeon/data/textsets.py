"""Where calibration and evaluation text comes from: a named set in the data folder, or the user's own file.

Named sets are found in the data folder (``--data-dir`` or ``$LLM_SURGEON_DATA``) by file name, and are
joined and windowed as the pruning papers' protocols do (SparseGPT, Wanda, LLM Surgeon):

``wikitext2``
    ``wikitext-2-raw/wiki.{train,valid,test}.raw``, one dataset row per line. Evaluation: the test rows
    joined with "\\n\\n". Calibration: the train rows (else valid) joined with " ". Without a data folder
    the rows come from the Hugging Face hub when ``datasets`` is installed.
``ptb``
    ``ptb/ptb.{train,valid,test}.txt``, one sentence per line (the ``ptb_text_only`` files). Sentences
    stripped and joined with " ", for evaluation (test) and calibration (train, else valid).
``c4``
    ``c4/c4-validation.00000-of-00008.json[.gz]`` and ``c4/c4-train.00000-of-01024.json[.gz]``, the first
    shards of allenai/c4 "en" (JSON lines with a "text" field). Evaluation: the first 1,100 validation
    documents joined with "\\n\\n", at most 256 windows. Calibration: train documents (else validation)
    drawn at random with the seed and joined with "\\n\\n" until there is enough text for the windows.

A file is read by its suffix (optionally ``.gz``): ``.txt``/``.raw`` as one text; ``.jsonl``/``.json`` as
JSON lines (or one JSON list) of records whose ``text_field`` is joined with "\\n\\n"; ``.parquet``
the same from a column (needs ``pyarrow``). The same text serves calibration and evaluation: pass
different files for the two.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_surgeon.errors import DataError

NAMED_SETS = ("wikitext2", "ptb", "c4")
FILE_SUFFIXES = (".txt", ".raw", ".jsonl", ".json", ".parquet")
C4_EVAL_DOCUMENTS = 1100
C4_EVAL_WINDOWS = 256
CHARS_PER_TOKEN = 4
"""A generous guess of text characters per token, to draw enough C4 documents for the windows."""


@dataclass(frozen=True)
class TextSet:
    """One source of text: ``name`` is a named set or the file's name (the key in reports)."""

    name: str
    path: Path | None = None
    text_field: str = "text"

    @property
    def window_cap(self) -> int | None:
        """Windows the protocol scores at most (C4: 256, as SparseGPT); None: every window."""
        return C4_EVAL_WINDOWS if self.name == "c4" and self.path is None else None

    def window_limit(self, max_windows: int | None) -> int | None:
        """The windows an evaluation scores at most: ``--max-windows``, within the set's own cap."""
        cap = self.window_cap
        return cap if max_windows is None else min(max_windows, cap or max_windows)


WIKITEXT2 = TextSet("wikitext2")
LABELS = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}


def label(name: str) -> str:
    """How tables and summaries name a set: the paper's name of a named set, else the file's name."""
    return LABELS.get(name, name)


def parse_text_set(spec: str, text_field: str = "text") -> TextSet:
    """``"wikitext2"`` / ``"ptb"`` / ``"c4"`` or a file path; a clear error for anything else."""
    if spec in NAMED_SETS:
        return TextSet(spec, None, text_field)
    path = Path(spec).expanduser()
    if path.is_file():
        if _suffix(path) not in FILE_SUFFIXES:
            raise DataError(f"{path}: unknown text file type {_suffix(path)!r}; use one of "
                            f"{', '.join(FILE_SUFFIXES)} (optionally .gz)")
        return TextSet(path.name, path, text_field)
    if path.suffix or "/" in spec:
        raise DataError(f"text file not found: {path}")
    raise DataError(f"unknown dataset {spec!r}: name one of {', '.join(NAMED_SETS)} or give a text file")


def parse_text_sets(specs: str, text_field: str = "text") -> list[TextSet]:
    """Comma-separated sets, each once, in order."""
    chosen = [parse_text_set(s.strip(), text_field) for s in specs.split(",") if s.strip()]
    if not chosen:
        raise DataError("no dataset given")
    names = [s.name for s in chosen]
    if len(set(names)) != len(names):
        raise DataError(f"a dataset is named twice in {specs!r}")
    return chosen


def evaluation_text(text_set: TextSet, data_dir: Path | None) -> str:
    """The whole evaluation text, joined as the set's protocol says (tokenized once by the caller)."""
    if text_set.path is not None:
        return _file_text(text_set)
    if text_set.name == "wikitext2":
        return "\n\n".join(wikitext2_rows("test", data_dir))
    if text_set.name == "ptb":
        return " ".join(_ptb_sentences(_named_file(data_dir, "ptb", _split_files("ptb", "test"))))
    documents = _records(_named_file(data_dir, "c4", _split_files("c4", "validation")), "text")
    return "\n\n".join(doc for _, doc in zip(range(C4_EVAL_DOCUMENTS), documents, strict=False))


def evaluation_files(text_set: TextSet, data_dir: Path | None) -> list[Path]:
    """The files the set's evaluation text is read from (those that exist), e.g. to fingerprint it."""
    if text_set.path is not None:
        return [text_set.path]
    relative = _split_files(text_set.name, EVALUATION_SPLIT[text_set.name])
    return [data_dir / r for r in relative if data_dir is not None and (data_dir / r).is_file()]


def check_evaluation_files(text_set: TextSet, data_dir: Path | None) -> None:
    """Refuse, before any model is loaded, a named set whose evaluation file is not in the data folder (with
    no folder, WikiText-2 is fetched from the hub now, so that an offline machine hears so before loading)."""
    if text_set.path is None and data_dir is None and text_set.name == "wikitext2":
        _rows_from_hub(EVALUATION_SPLIT["wikitext2"])
        return
    if text_set.path is None and not evaluation_files(text_set, data_dir):
        wanted = " or ".join(_split_files(text_set.name, EVALUATION_SPLIT[text_set.name]))
        raise DataError(f"{text_set.name} evaluation text not found: expected {wanted} in {_where(data_dir)}")


def check_calibration_files(text_set: TextSet, data_dir: Path | None) -> None:
    """Refuse, before any model is loaded, a named set with no calibration split in the data folder."""
    if text_set.path is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback is announced when the text is read
            split = _calibration_split(text_set.name, data_dir)
        if data_dir is None and text_set.name == "wikitext2":
            _rows_from_hub(split)  # fetched now: an offline machine hears so before the model loads


def _calibration_split(name: str, data_dir: Path | None) -> str:
    return _first_split(data_dir, name, {split: _split_files(name, split) for split in CALIBRATION_SPLITS[name]})


def calibration_text(text_set: TextSet, data_dir: Path | None, needed_tokens: int, seed: int) -> tuple[str, str]:
    """Text to draw calibration windows from, and the split it came from (never a test split of a named set)."""
    if text_set.path is not None:
        return _file_text(text_set), "file"
    split = _calibration_split(text_set.name, data_dir)
    if text_set.name == "wikitext2":
        return " ".join(wikitext2_rows(split, data_dir)), split
    if text_set.name == "ptb":
        return " ".join(_ptb_sentences(_named_file(data_dir, "ptb", _split_files("ptb", split)))), split
    path = _named_file(data_dir, "c4", _split_files("c4", split))
    return "\n\n".join(_sampled_documents(path, needed_tokens * CHARS_PER_TOKEN * 2, seed)), split


EVALUATION_SPLIT = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
CALIBRATION_SPLITS = {"wikitext2": ("train", "valid"), "ptb": ("train", "valid"), "c4": ("train", "validation")}
"""A named set's splits: calibration tries them in order (the training split when the folder has it)."""


def _split_files(name: str, split: str) -> list[str]:
    """The candidate files of one split of a named set, relative to the data folder: the one table of where
    each set lives, read by evaluation, calibration and their checks."""
    if name == "wikitext2":
        return [f"wikitext-2-raw/wiki.{split}.raw"]
    if name == "ptb":
        return [f"ptb/ptb.{split}.txt"]
    shard = "00000-of-01024" if split == "train" else "00000-of-00008"
    return [f"c4/c4-{split}.{shard}.json.gz", f"c4/c4-{split}.{shard}.json"]


def _first_split(data_dir: Path | None, name: str, candidates: dict[str, list[str]]) -> str:
    """The first split whose file exists (the training split), with a warning when it falls back."""
    if data_dir is None and name == "wikitext2":
        return "train"  # the hub has every split
    for i, (split, files) in enumerate(candidates.items()):
        if data_dir is not None and any((data_dir / f).is_file() for f in files):
            if i > 0:
                warnings.warn(f"{name} train split not found; calibrating on the {split} split instead", stacklevel=3)
            return split
    wanted = " or ".join(f for files in candidates.values() for f in files)
    raise DataError(f"{name} calibration text not found: expected {wanted} in {_where(data_dir)}")


def _named_file(data_dir: Path | None, name: str, candidates: list[str]) -> Path:
    for relative in candidates:
        if data_dir is not None and (data_dir / relative).is_file():
            return data_dir / relative
    raise DataError(f"{name} not found: expected {' or '.join(candidates)} in {_where(data_dir)}")


def _where(data_dir: Path | None) -> str:
    return str(data_dir) if data_dir is not None else "the data folder (give --data-dir or $LLM_SURGEON_DATA)"


# --- WikiText-2 and PTB ------------------------------------------------------------------------------------------

def wikitext2_rows(split: str, data_dir: Path | None) -> list[str]:
    """The rows of one WikiText-2 raw split, as the Hugging Face dataset gives them."""
    if data_dir is None:
        return _rows_from_hub(split)
    path = data_dir / _split_files("wikitext2", split)[0]
    if not path.is_file():
        raise DataError(f"WikiText-2 {split} split not found: {path}")
    with open(path, encoding="utf-8") as handle:  # whitespace-only lines are "", others keep their newline
        return ["" if line.strip() == "" else line for line in handle]


POINT_AT_DATA = ("give a folder holding wikitext-2-raw/ with --data-dir DIR or LLM_SURGEON_DATA=DIR "
                 "(see the README's data section)")


def _rows_from_hub(split: str) -> list[str]:
    """The split from the Hugging Face hub (kept for the process, so checking it before the model loads costs
    no second download)."""
    if split not in _HUB_ROWS:
        try:
            from datasets import load_dataset
        except ImportError as exc:
            raise DataError(f"no data folder given and the `datasets` package that fetches WikiText-2 from the "
                            f"hub is not installed: {POINT_AT_DATA}") from exc
        try:
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split={"valid": "validation"}.get(split, split))
        except Exception as exc:  # network, hub or cache failures all mean "no data"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise DataError(f"no data folder given and WikiText-2 {split} could not be fetched from the Hugging "
                            f"Face hub ({first}): {POINT_AT_DATA}") from exc
        _HUB_ROWS[split] = list(rows["text"])
    return _HUB_ROWS[split]


_HUB_ROWS: dict[str, list[str]] = {}


def _ptb_sentences(path: Path) -> list[str]:
    with _open_text(path) as handle:
        sentences = [line.strip() for line in handle if line.strip()]
    if not sentences:
        raise DataError(f"{path} holds no sentences")
    return sentences


# --- files -------------------------------------------------------------------------------------------------------

def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 (returned to a with-statement)


def _file_text(text_set: TextSet) -> str:
    """A file's text: plain text as is, records' fields joined with "\\n\\n"; refuses an empty one."""
    path = text_set.path
    assert path is not None
    try:
        if _suffix(path) in (".txt", ".raw"):
            with _open_text(path) as handle:
                text = handle.read()
        else:
            text = "\n\n".join(_records(path, text_set.text_field))
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not text.strip():
        raise DataError(f"{path} holds no text")
    return text


def _records(path: Path, field: str) -> Iterator[str]:
    """The ``field`` of every record of a JSON-lines, JSON-list or Parquet file, in order."""
    if _suffix(path) == ".parquet":
        yield from _parquet_column(path, field)
        return
    with _open_text(path) as handle:
        first = handle.read(1)
        while first.isspace():
            first = handle.read(1)
        if first == "[":
            for number, record in enumerate(json.loads(first + handle.read()), 1):
                yield _field(record, field, path, number)
            return
        for number, line in enumerate(_prefixed(first, handle), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {number} is not JSON: {exc.msg}") from exc
                yield _field(record, field, path, number)


def _prefixed(first: str, handle: io.TextIOBase) -> Iterator[str]:
    """The lines of ``handle`` with the character already read put back in front of the first."""
    yield first + handle.readline()
    yield from handle


def _field(record, field: str, path: Path, number: int) -> str:
    if not isinstance(record, dict) or field not in record:
        present = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{path} record {number} has no field {field!r} (it has: {present}); choose --text-field")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{path} record {number}: field {field!r} is {type(value).__name__}, not text")
    return value


def _parquet_column(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"reading {path} needs pyarrow: pip install 'llm-surgeon[data]'") from exc
    table = pq.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise DataError(f"{path} has no column {field!r} (it has: {', '.join(table.schema_arrow.names)}); "
                        "choose --text-field")
    for batch in table.iter_batches(columns=[field]):
        for number, value in enumerate(batch.column(0).to_pylist(), 1):
            if not isinstance(value, str):
                raise DataError(f"{path} row {number}: column {field!r} is {type(value).__name__}, not text")
            yield value


def _sampled_documents(path: Path, needed_chars: int, seed: int) -> list[str]:
    """Documents drawn at random (seeded) from a JSON-lines file until they hold ``needed_chars``.

    Two streaming passes (count and measure, then collect the drawn lines), so that a shard of hundreds
    of thousands of documents is never held in memory."""
    count, chars = 0, 0
    for doc in _records(path, "text"):
        count, chars = count + 1, chars + len(doc)
    if count == 0:
        raise DataError(f"{path} holds no documents")
    wanted = min(count, max(1, math.ceil(needed_chars / max(chars / count, 1))))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:wanted].tolist()
    chosen = set(order)
    drawn = {i: doc for i, doc in enumerate(_records(path, "text")) if i in chosen}
    return [drawn[i] for i in order]
