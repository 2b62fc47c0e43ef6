"""Model plumbing: per-architecture adapters (loading lives in :mod:`llm_surgeon.models.loading`)."""

from llm_surgeon.models.adapters import (
    ArchitectureAdapter,
    BlockLayout,
    Member,
    StructureSpec,
    get_adapter,
    register_adapter,
    supported_model_types,
)

__all__ = ["ArchitectureAdapter", "BlockLayout", "Member", "StructureSpec", "get_adapter", "register_adapter",
           "supported_model_types"]
