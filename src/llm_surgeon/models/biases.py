"""Biases that a pruning step gives to layers that had none, and the config flags that keep them on reload.

FLAP puts the mean output of what it removed back as a bias of ``o_proj`` / ``down_proj``. A Llama-style
config builds those layers without a bias unless a flag says otherwise (``attention_bias`` gives every
attention projection one, ``mlp_bias`` every MLP projection), so a saved folder would silently drop the
compensation. Which flag gives which layer a bias is read from the family's own classes (a model built
on the meta device), never assumed from its name.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llm_surgeon.errors import ConfigError
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.models.discovery import meta_model

BIAS_FLAGS = ("attention_bias", "mlp_bias")
"""Config flags that transformers' decoder families read to build their projections with biases."""


def _biased(config) -> set[str]:
    """Names of the Linear layers that ``config``'s causal LM builds with a bias."""
    return {name for name, module in meta_model(config).named_modules()
            if isinstance(module, nn.Linear) and module.bias is not None}


def flags_for_biases(config, names: set[str]) -> dict[str, bool]:
    """The flags to switch on so that every layer in ``names`` is built with a bias; raises ConfigError
    naming a layer that no flag gives one."""
    built, needed, chosen = _biased(config), set(names), {}
    needed -= built
    for flag in BIAS_FLAGS:
        if not needed:
            break
        if getattr(config, flag, None) is not False:
            continue
        trial = copy.deepcopy(config)
        setattr(trial, flag, True)
        gained = _biased(trial) - built
        if gained & needed:
            chosen[flag], config, built = True, trial, built | gained
            needed -= gained
    if needed:
        raise ConfigError(f"the {config.model_type} config cannot give {sorted(needed)[0]} a bias (no "
                          f"{' / '.join(BIAS_FLAGS)} flag builds one), so a bias-compensated prune could not be "
                          "saved; use another method")
    return chosen


def output_projection_names(model: nn.Module, adapter: ArchitectureAdapter) -> set[str]:
    """Every block's attention and FFN output projections (where structures leave a block)."""
    spec = adapter.structure
    if spec is None or spec.experts is not None:
        raise ConfigError(f"bias compensation needs a dense MLP with a structure description; {adapter.family} "
                          "has " + ("fused experts" if spec is not None else "none"))
    rels = {member.module for member in spec.columns()["q"]} | {out.module for _, out in spec.ffn_parts()}
    return {adapter.module_name(b, rel) for b in range(len(adapter.blocks(model))) for rel in rels}


def prepare_output_biases(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, bool]:
    """Give the output projections (and every layer the same config flags bias) zero biases now, before
    any selection, so that the parameter budget counts what the saved model will hold; raises ConfigError
    if the family cannot hold a bias there. The model computes the same function. Returns the flags set."""
    return declare_biases(model, output_projection_names(model, adapter))


def add_to_bias(linear: nn.Linear, shift: torch.Tensor) -> None:
    """``bias += shift``, giving the layer a zero bias first if it has none."""
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device))
    with torch.no_grad():
        linear.bias.add_(shift.to(linear.bias.dtype))


def declare_biases(model: nn.Module, also: set[str] = frozenset()) -> dict[str, bool]:
    """Switch on the config flags under which every biased Linear of ``model`` (and every layer in ``also``)
    is built with a bias, and give the layers those flags bias a zero one where they have none, so the saved
    model reloads with the same function. Returns the flags set."""
    have = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)
            and module.bias is not None}
    flags = flags_for_biases(model.config, have | set(also))
    for flag, value in flags.items():
        setattr(model.config, flag, value)
    for name in _biased(model.config) - have:
        linear = model.get_submodule(name)
        add_to_bias(linear, torch.zeros(linear.out_features))
    return flags
