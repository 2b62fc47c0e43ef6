"""What a save format is: one object that says which runs it takes, writes a model folder, and reads it back.

Every format answers the same five questions, so the output folder (:mod:`llm_surgeon.artifacts.output_dir`),
the loader (:mod:`llm_surgeon.artifacts.loading`), the run's checks and the CLI choices need no branch per
format: a new one is a subclass and one :func:`~llm_surgeon.artifacts.formats.registry.register_format` call.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from llm_surgeon.artifacts.structured_layout import StructuredLayout
from llm_surgeon.models.spec import ArchitectureAdapter

MODELING_FILE = "modeling_llm_surgeon.py"
"""The remote-code file a folder that plain ``from_pretrained`` cannot read gets (named in ``auto_map``)."""


@dataclass(frozen=True)
class SaveRequest:
    """What a format may need beside the model; each reads only its part."""

    tokenizer: object | None = None
    layout: StructuredLayout | None = None
    """The per-block widths of a compacted (structured) model."""
    sparsity: float = 0.0
    """The fraction of pruned weights, recorded by formats that describe their sparsity."""
    pattern: str = "unstructured"
    """``unstructured`` or ``N:M``: how the zeros are arranged."""
    source: str | None = None
    """The model the run loaded (name, folder or GGUF file), for formats that copy from it (a tokenizer)."""


class SaveFormat(ABC):
    """One way of writing a pruned model to a folder, and of reading such a folder back."""

    name: ClassVar[str]
    help: ClassVar[str]
    """One line for ``--help`` (``name: help``)."""
    selectable: ClassVar[bool] = True
    """Offered by ``--save-format``; False for a format a run gets by its granularity (structured)."""
    holds_block_widths: ClassVar[bool] = False
    """Whether the format can hold blocks of different widths; a structured run that asks for one that
    cannot (and does not refuse it) is saved in the ``structured`` format instead."""

    def refuse(self, granularity: str, adapter: ArchitectureAdapter | None = None) -> str | None:
        """Why a run of ``granularity`` (on a model of ``adapter``, once loaded) cannot be saved so, in one
        line, or None. Asked before the model is loaded (``adapter`` None) and again before pruning starts,
        so that no run prunes for hours to fail at the end."""
        return None

    def refuse_model(self, model: nn.Module) -> str | None:
        """Why this loaded (not yet pruned) model cannot be saved so, in one line, or None; for formats whose
        limits are features of the model (a GGUF file's architecture), asked before pruning starts."""
        return None

    @abstractmethod
    def save(self, model: nn.Module, folder: Path, request: SaveRequest) -> None:
        """Write ``model`` (and ``request.tokenizer``) into the empty ``folder``."""

    def detect(self, folder: Path) -> bool:
        """Whether ``folder`` holds this format and needs :meth:`load` (False: the plain loader reads it)."""
        return False

    @abstractmethod
    def load(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        """The model in ``folder`` as a standard ``PreTrainedModel`` in ``dtype``, in eval mode."""


def write_pretrained(model: nn.Module, folder: Path, tokenizer: object | None, native_names: bool) -> None:
    """``save_pretrained`` of the model and its tokenizer.

    ``native_names``: keep the in-memory weight names (fused experts) instead of the family's original
    checkpoint names that transformers 5 converts back to; folders that are read back by state dict (our
    loaders and remote code) need the former."""
    native = {"save_original_format": False} if native_names else {}
    if "save_original_format" not in inspect.signature(model.save_pretrained).parameters:
        native = {}  # transformers 4 converts no names
    model.save_pretrained(folder, **native)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def auto_map(class_name: str) -> dict[str, str]:
    """``config.json``'s ``auto_map``: ``AutoModelForCausalLM`` builds ``class_name`` of :data:`MODELING_FILE`."""
    return {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{class_name}"}
