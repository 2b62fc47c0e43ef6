"""llm-surgeon: prune Hugging Face causal LMs with LLM Surgeon (van der Ouderaa et al., ICLR 2024)."""

from llm_surgeon._version import __version__
from llm_surgeon.api import RunOptions, evaluate, load_calibration, prune, prune_job, run_eval, run_prune
from llm_surgeon.artifacts.loading import load_model_and_tokenizer, load_pruned
from llm_surgeon.config import PruneConfig
from llm_surgeon.engine.pruner import PruneResult

__all__ = [
    "__version__",
    "PruneConfig",
    "PruneResult",
    "RunOptions",
    "prune",
    "run_prune",
    "run_eval",
    "evaluate",
    "load_calibration",
    "prune_job",
    "load_model_and_tokenizer",
    "load_pruned",
]
