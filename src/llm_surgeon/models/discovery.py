"""A generic adapter for a decoder-only model that no family adapter knows, read from its module tree.

The decoder blocks are the ``nn.ModuleList`` of ``config.num_hidden_layers`` modules; the prunable layers
are the ``nn.Linear`` modules inside a block (the same in every block); the body is the model's
``base_model_prefix`` module and the logits are its output embeddings applied to the body's last hidden
state — which is checked against the model's own forward on a few tokens, so a family that transforms its
logits after the head (soft-capping, a scale) is refused instead of getting wrong curvature. Structured
pruning needs a structure description, which a generic adapter does not have; mixture-of-experts blocks
(fused 3-D expert weights) need their own adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_surgeon.errors import UnsupportedArchitectureError
from llm_surgeon.models.spec import ArchitectureAdapter

GENERIC_PREFIX = "generic:"


def _block_list(model: nn.Module, layers: int) -> tuple[str, nn.ModuleList]:
    """The outermost module list of ``layers`` modules: the decoder blocks."""
    for name, module in model.named_modules():
        if name and isinstance(module, nn.ModuleList) and len(module) == layers:
            return name, module
    raise UnsupportedArchitectureError(f"no list of {layers} decoder blocks (config.num_hidden_layers) was found")


def meta_model(config) -> nn.Module:
    """The causal LM of ``config`` with its real shapes and no storage (plans, and checks before loading)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:  # transformers: no causal-LM class for this config
        raise UnsupportedArchitectureError("it is not a causal language model") from exc


def _linear_names(blocks: nn.ModuleList) -> tuple[str, ...]:
    names = tuple(name for name, module in blocks[0].named_modules() if isinstance(module, nn.Linear))
    for index, block in enumerate(blocks):
        here = tuple(name for name, module in block.named_modules() if isinstance(module, nn.Linear))
        if here != names:
            raise UnsupportedArchitectureError(f"decoder block {index} holds other Linear layers than block 0")
    return names


def discover_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The generic adapter of ``model``, or an error saying why it cannot have one (a reason only: the
    caller names the architecture)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError("it is not a decoder-only causal LM")
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise UnsupportedArchitectureError("its config has no num_hidden_layers")
    blocks_path, blocks = _block_list(model, layers)
    if any(p.dim() == 3 for p in blocks[0].parameters()):
        raise UnsupportedArchitectureError("it keeps fused 3-D expert weights (mixture of experts), which need an "
                                           "MoE adapter")
    linear_names = _linear_names(blocks)
    if not linear_names:
        raise UnsupportedArchitectureError("its decoder blocks hold no nn.Linear layers")
    body_path = getattr(model, "base_model_prefix", "") or ""
    if not body_path or not blocks_path.startswith(body_path + "."):
        raise UnsupportedArchitectureError("its decoder blocks are not inside the base model, whose hidden states "
                                           "the loss is computed from")
    adapter = ArchitectureAdapter(family=f"{GENERIC_PREFIX}{model_type}", blocks_path=blocks_path,
                                  linear_names=linear_names, body_path=body_path)
    _check_logits(model, adapter)
    return adapter


@torch.no_grad()
def _check_logits(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """The body's last hidden state through the output embeddings must give the model's own logits."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return  # a shapes-only model (plans): nothing to run
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(4, device=device).unsqueeze(0) % model.get_input_embeddings().num_embeddings
    was_training = model.training
    model.eval()
    try:
        expected = model(input_ids=ids, use_cache=False).logits.float()
        got = adapter.logits(model, adapter.body(model)(input_ids=ids, use_cache=False).last_hidden_state).float()
    finally:
        model.train(was_training)
    if got.shape != expected.shape or not torch.allclose(got, expected.to(got.device), rtol=1e-3,
                                                         atol=1e-3 * float(expected.abs().max().clamp_min(1))):
        raise UnsupportedArchitectureError("it transforms its logits after the LM head (a scale or soft-cap?), "
                                           "which the generic adapter would get wrong: it needs a family adapter")
