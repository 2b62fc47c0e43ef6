"""Loading a causal LM and its tokenizer from a hub id, a folder, a GGUF file or an alias.

Folders that plain ``from_pretrained`` cannot read (the save formats of a pruned model) are a higher
layer's business: :func:`load_model_and_tokenizer` takes an optional ``read_folder`` for them, and the
public loader (:func:`llm_surgeon.artifacts.loading.load_model_and_tokenizer`) passes the save formats' one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from llm_surgeon.errors import ModelLoadError
from llm_surgeon.models.aliases import ALIASES


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: ``path_or_id`` for ``from_pretrained``, plus a GGUF file name."""

    path_or_id: str
    gguf_file: str | None = None

    def describe(self) -> str:
        return f"{self.path_or_id}/{self.gguf_file}" if self.gguf_file else self.path_or_id


def resolve_model_source(model: str) -> ModelSource:
    """Map the user's MODEL argument to a :class:`ModelSource`."""
    if model in ALIASES:
        found = ALIASES[model]()
        return ModelSource(str(found.folder), found.name)
    path = Path(model)
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {model}")
        return ModelSource(str(path.parent), path.name)
    if path.is_file():
        raise ModelLoadError(f"{model} is a file, not a model folder (with config.json) or a .gguf file")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{model} is not a model folder (no config.json)")
        return ModelSource(str(path))
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]
    if looks_like_path or model.count("/") > 1:
        raise ModelLoadError(f"model path does not exist: {model}")
    return ModelSource(model)


def _strip_gguf_quantization(model: torch.nn.Module) -> None:
    """A GGUF load leaves a ``quantization_config`` that would make the saved float model unloadable."""
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                delattr(model, attr)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection, unless ``HF_HUB_OFFLINE`` says not to try."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _local_only(source: ModelSource) -> bool:
    """For a hub id: load from the local cache only when the hub cannot be reached; a clear error when the
    model is not cached, instead of a minute of retries."""
    if Path(source.path_or_id).exists():
        return False
    if hub_reachable():
        return False
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source.path_or_id, "config.json"), str):
        raise ModelLoadError(f"cannot load model {source.path_or_id}: the Hugging Face hub cannot be reached "
                             "(offline, or HF_HUB_OFFLINE is set) and the model is not in the local cache")
    return True


def _load_kwargs(source: ModelSource) -> dict:
    """``from_pretrained`` keyword arguments: the GGUF file, and the local cache only when the hub is away."""
    kwargs: dict = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if _local_only(source):
        kwargs["local_files_only"] = True
    return kwargs


def load_config(model: str):
    """The model's config alone (no weights): enough to refuse an unsupported family in a second."""
    from transformers import AutoConfig

    source = resolve_model_source(model)
    kwargs = _load_kwargs(source)
    try:
        return AutoConfig.from_pretrained(source.path_or_id, local_files_only=_local_only(source), **kwargs)
    except Exception as exc:  # transformers and the hub raise their own types
        raise ModelLoadError(f"cannot load model {source.describe()}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


DEVICE_MAPS = ("auto", "balanced", "sequential")
"""``--device-map`` values: accelerate's placements of the blocks over the visible GPUs."""

FolderReader = Callable[[Path, torch.dtype], torch.nn.Module | None]
"""Reads a saved folder that plain ``from_pretrained`` cannot (built in host memory), or returns None when
the folder is not one of those."""


def load_model_and_tokenizer(
    model: str, dtype: torch.dtype = torch.float32, device: str = "cpu", device_map: str | None = None,
    read_folder: FolderReader | None = None,
) -> tuple[torch.nn.Module, object, ModelSource]:
    """Load a causal LM in ``dtype`` on ``device`` with its tokenizer; one clear error on failure.

    With ``device_map`` (one of :data:`DEVICE_MAPS`) accelerate spreads the blocks over the visible
    devices instead (on a machine without GPUs, everything stays in host memory); a placement that would
    offload weights to disk or keep them off their execution device is refused, since pruning rewrites
    every weight in place. ``read_folder`` reads the folders ``from_pretrained`` cannot (pruned ones);
    without it every folder is read by ``from_pretrained``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(model)
    kwargs = _load_kwargs(source)
    try:
        lm = read_folder(Path(source.path_or_id), dtype) if read_folder is not None else None
        pruned = lm is not None
        if not pruned:
            placement = {"device_map": device_map} if device_map else {}
            lm = AutoModelForCausalLM.from_pretrained(source.path_or_id, dtype=dtype, **kwargs, **placement)
        tokenizer = AutoTokenizer.from_pretrained(source.path_or_id, **kwargs)
    except Exception as exc:  # transformers, hub and safetensors each raise their own types
        raise ModelLoadError(f"cannot load model {source.describe()}: {_first_line(exc)}") from exc
    if source.gguf_file:
        _strip_gguf_quantization(lm)
    if device_map is None:
        lm.to(device)
    elif pruned:
        lm = _dispatched(lm)
    _refuse_offloaded(lm, device_map)
    lm.eval()
    return lm, tokenizer, source


def _dispatched(lm: torch.nn.Module) -> torch.nn.Module:
    """A model built in host memory, its blocks spread over the visible devices by accelerate."""
    from accelerate import dispatch_model, infer_auto_device_map

    no_split = list(getattr(lm, "_no_split_modules", None) or [])
    return dispatch_model(lm, infer_auto_device_map(lm, no_split_module_classes=no_split))


def _refuse_offloaded(lm: torch.nn.Module, device_map: str | None) -> None:
    """Every weight must live where it computes: accelerate's CPU/disk offload keeps some on ``meta``."""
    offloaded = [name for name, p in lm.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise ModelLoadError(f"--device-map {device_map} offloads {len(offloaded)} weights (first: {offloaded[0]}) "
                             "to host memory or disk because the visible GPUs are too small; pruning rewrites "
                             "every weight in place, so use more GPUs, a smaller --dtype, or --device cpu")
