"""Model plumbing: loading checkpoints and per-architecture adapters."""

from llm_surgeon.models.adapters import ArchitectureAdapter, get_adapter, supported_model_types
from llm_surgeon.models.loading import load_model_and_tokenizer, resolve_model_source

__all__ = [
    "ArchitectureAdapter",
    "get_adapter",
    "supported_model_types",
    "load_model_and_tokenizer",
    "resolve_model_source",
]
