"""What llm-surgeon needs to know about an architecture, in one small object per family.

An adapter says where the decoder blocks are and which Linear layers inside a block are
prunable. The family is read from ``config.model_type`` — never guessed from a name — and
adding an architecture means adding one entry to ``_ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llm_surgeon.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class StructureSpec:
    """Which matrices share a removable dimension inside a block (structured pruning).

    An FFN neuron is a row of every ``ffn_in`` matrix (and its bias) plus a column of
    ``ffn_out``; an attention unit is one key/value head with all the query heads that
    share it: rows of ``q``, ``k``, ``v`` and the matching columns of ``o``.
    """

    attention: str
    q: str
    k: str
    v: str
    o: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    head_count_attrs: tuple[str, ...] = ()
    """Attributes of the attention module that hold its (query) head count and must follow compaction."""


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Locations of the decoder blocks and their prunable Linear layers."""

    family: str
    blocks_path: str
    """Dotted attribute path from the ``*ForCausalLM`` model to its list of decoder blocks."""
    linear_names: tuple[str, ...]
    """Prunable Linear layers, as paths relative to a decoder block."""
    structure: StructureSpec | None = None
    body_path: str = "model"
    """The module whose ``last_hidden_state`` the LM head (``get_output_embeddings()``) maps to
    logits with nothing in between; the loss is computed from it in chunks (:mod:`llm_surgeon.nll`)."""

    def body(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.body_path)

    def head_layout(self, config) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dim) from a model config."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return heads, kv_heads, head_dim

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for part in self.blocks_path.split("."):
            obj = getattr(obj, part)
        return obj

    def module_name(self, block: int, rel: str) -> str:
        """Full module name of ``rel`` (a path inside a decoder block) in block number ``block``."""
        return f"{self.blocks_path}.{block}.{rel}"

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Ordered map from full module name to Linear, block by block."""
        out: dict[str, nn.Linear] = {}
        for index, block in enumerate(self.blocks(model)):
            for rel in self.linear_names:
                module = block.get_submodule(rel)
                if not isinstance(module, nn.Linear):
                    raise UnsupportedArchitectureError(
                        f"{self.family} adapter expected nn.Linear at {rel}, found {type(module).__name__}"
                    )
                out[self.module_name(index, rel)] = module
        return out


LLAMA = ArchitectureAdapter(
    family="llama",
    blocks_path="model.layers",
    linear_names=(
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ),
    structure=StructureSpec(
        attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
        o="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
    ),
)

OPT = ArchitectureAdapter(
    family="opt",
    blocks_path="model.decoder.layers",
    linear_names=(
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "fc1",
        "fc2",
    ),
    structure=StructureSpec(
        attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
        o="self_attn.out_proj", ffn_in=("fc1",), ffn_out="fc2", head_count_attrs=("num_heads",),
    ),
)

_ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "opt": OPT,
}


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model.config.model_type``, or a clear error naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported model types: "
            + ", ".join(supported_model_types())
        )
    return _ADAPTERS[model_type]
