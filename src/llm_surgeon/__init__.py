"""llm-surgeon: prune Hugging Face causal LMs with LLM Surgeon (van der Ouderaa et al., ICLR 2024)."""

from llm_surgeon._version import __version__
from llm_surgeon.api import RunOptions, evaluate, prune, run_eval, run_prune  # noqa: E402
from llm_surgeon.compaction import load_pruned  # noqa: E402
from llm_surgeon.config import PruneConfig  # noqa: E402
from llm_surgeon.models.loading import load_model_and_tokenizer  # noqa: E402
from llm_surgeon.pruner import PruneResult  # noqa: E402

__all__ = [
    "__version__",
    "PruneConfig",
    "PruneResult",
    "RunOptions",
    "prune",
    "run_prune",
    "run_eval",
    "evaluate",
    "load_model_and_tokenizer",
    "load_pruned",
]
