"""Reading a folder by state dict: the shared half of the loaders of formats that ``from_pretrained`` cannot read.

Such a folder is read in three steps: a model built from its config (:func:`empty_model`), reshaped or not
by the format, then filled with the folder's weights (:func:`read_weights`, :func:`fill`), with one clear
error when the weights and the model disagree.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llm_surgeon.errors import ModelLoadError


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file in ``folder``."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no safetensors weights in {folder}")
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    return state


def empty_model(folder: Path, dtype: torch.dtype) -> nn.Module:
    """The family's model built from ``folder``'s config, its weights still random (to be filled)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dense once read
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def fill(model: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> nn.Module:
    """Load ``state`` into ``model`` (a tied LM head may be absent), tie the weights; the model in eval mode."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ModelLoadError(f"weights in {folder} do not match its config: "
                             f"missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    model.eval()
    return model
