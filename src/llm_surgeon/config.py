"""The one object that describes a pruning run; recorded in every report and checkpoint."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from llm_surgeon.data.textsets import parse_text_set
from llm_surgeon.errors import ConfigError
from llm_surgeon.methods import (
    NM,
    NM_COSTS,
    STRUCTURE_COSTS,
    STRUCTURED,
    UNSTRUCTURED,
    UPDATE_SOLVERS,
    UPDATE_STARTS,
    LayerwiseMethod,
    method_class,
    method_names,
)

FISHER_TYPES = ("empirical", "true")
MAGNITUDE_SCOPES = ("global", "layer")
_NM = re.compile(r"^(\d+):(\d+)$")


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``None`` for non-N:M granularities."""
    match = _NM.match(granularity)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class PruneConfig:
    """Everything that decides the outcome of a prune, so that a report reproduces it."""

    method: str = "surgeon"
    granularity: str = "unstructured"
    sparsity: float = 0.5
    """Target fraction of zeros over the prunable weights (ignored for N:M: it is N/M)."""
    shots: int = 5
    calib_samples: int = 128
    calib_seqlen: int = 2048
    seed: int = 0
    calib_data: str = "wikitext2"
    """Calibration text: a named set in the data folder (wikitext2, ptb, c4) or a .txt/.jsonl/.json/.parquet file."""
    text_field: str = "text"
    """The field of a JSON-lines or Parquet calibration file that holds the text."""
    damp_g: float = 0.1
    damp_a: float = 0.1
    fisher: str = "empirical"
    magnitude_scope: str = "global"
    update_iterations: int = 20
    """Maximum PCG iterations of the Kronecker OBS update per layer and shot."""
    update_tolerance: float = 1e-3
    update_start: str = UPDATE_STARTS[0]
    """Where the correlated update's PCG starts: ``"independent"`` (the sum of every removed weight's
    single-weight OBS update, :func:`llm_surgeon.math.obs.independent_obs_start`; the default, from
    BENCHMARKS.md: worth about 20 PCG steps) or ``"zeroed"`` (the removed weights zeroed, nothing else
    moved: the paper's and this project's first start)."""
    update_solver: str = UPDATE_SOLVERS[0]
    """How the correlated update is solved: ``"kept"`` (PCG on the kept weights, four matmuls a step) or
    ``"removed"`` (CG on the removed weights' multipliers from the independent start, two matmuls a step;
    BENCHMARKS.md: faster to the optimum at 50% in every layer, but worse in a real one-shot run: 30.86
    against 28.75)."""
    nm_costs: str = NM_COSTS[0]
    """N:M LLM Surgeon: a group's cost is the N weights' joint OBS cost with their inputs' correlation
    (``"joint"``, the default from BENCHMARKS.md: 59.68 against 62.35 at 2:4 in 5 shots), each group losing its
    jointly cheapest N, or the sum of its N cheapest single-weight costs (``"independent"``, the paper's).
    Other methods and granularities ignore the default and refuse ``"independent"``."""
    batch_size: int = 8
    """Calibration windows per forward/backward pass."""
    sparsegpt_damp: float = 0.01
    """SparseGPT's dampening, a fraction of the mean diagonal of ``X Xᵀ``."""
    lora_rank: int = 0
    """Rank of the first-order low-rank correction trained after every shot; 0 turns it off."""
    lora_lr: float = 1e-3
    """Adam learning rate of the low-rank correction."""
    lora_epochs: int = 1
    """Passes over the calibration windows per correction."""
    reconstruct: bool = False
    """After every shot, re-fit each pruned layer's kept weights to the dense model's outputs by least squares
    on the calibration windows (:mod:`llm_surgeon.engine.reconstruction`), masks kept."""
    reconstruct_iterations: int = 30
    """Conjugate-gradient steps of each layer's masked least squares."""
    reconstruct_damp: float = 0.01
    """Damping of ``Σ x xᵀ`` in the reconstruction, relative to its mean diagonal."""
    structure_costs: str = STRUCTURE_COSTS[0]
    """Structured LLM Surgeon: ``"outputs"`` prices a structure by its output projection's columns alone
    (with their correlated update), the q/k/v and gate/up rows that fed them zeroed as they are: once the
    columns are gone those rows reach nothing, so their costs and their compensation of the other rows are
    beside the point. ``"all"`` (the paper-style coupling) prices and updates every member (rows of q/k/v
    and gate/up, columns of o/down). The default from BENCHMARKS.md: 30.12 against 43.89 at 80% kept."""
    width_multiple: int = 1
    """Structured: every block keeps a multiple of this many FFN neurons (e.g. 64, for GEMM-friendly shapes),
    chosen inside the global selection; 1 leaves the widths as the costs fall."""
    max_layer_sparsity: float = 1.0
    """Unstructured pruning by one global threshold: no layer loses more than this fraction of its weights (the
    cheapest entries of the full layers give way to the next cheapest elsewhere); 1.0: no cap, the paper's
    allocation, where one layer may lose almost all its weights."""
    prune_unrouted: bool = False
    """Mixture of experts: an expert that received no calibration token has no curvature (its Fisher is
    zero). By default it is left dense (unstructured; N:M then refuses); with this it is pruned by
    magnitude to the shot's fraction, no update."""

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.granularity)

    @property
    def granularity_kind(self) -> str:
        """``"unstructured"``, ``"nm"`` or ``"structured"`` (what a method declares it supports)."""
        return NM if self.nm is not None else self.granularity

    @property
    def effective_shots(self) -> int:
        return self.shots if method_class(self.method).multi_shot else 1

    @property
    def corrects(self) -> bool:
        """Whether a low-rank correction follows every shot."""
        return self.lora_rank > 0

    @property
    def needs_dense_weights(self) -> bool:
        """Whether the run keeps a copy of the dense weights (the reconstruction's targets)."""
        return self.reconstruct

    @property
    def target_sparsity(self) -> float:
        nm = self.nm
        return nm[0] / nm[1] if nm else self.sparsity

    def _refuse_update_flag_without_its_update(self, flag: str, what: str) -> None:
        """``--update-start`` and ``--update-solver`` act on LLM Surgeon's unstructured / N:M update alone."""
        if self.method != "surgeon" or self.granularity == STRUCTURED:
            raise ConfigError(f"{flag} chooses {what} LLM Surgeon's unstructured / N:M update; use --method surgeon "
                              "without structured granularity, or drop it")

    def _validate_update_solver(self) -> None:
        if self.update_solver not in UPDATE_SOLVERS:
            raise ConfigError(f"update solver must be one of {', '.join(UPDATE_SOLVERS)}")
        if self.update_solver == UPDATE_SOLVERS[0]:
            return
        self._refuse_update_flag_without_its_update("--update-solver", "how to solve")
        if self.update_start != "independent":
            raise ConfigError("--update-solver removed always starts from the independent updates; drop "
                              "--update-start zeroed")

    def _validate_layer_cap(self) -> None:
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise ConfigError(f"max layer sparsity must be in (0, 1], got {self.max_layer_sparsity}")
        if self.max_layer_sparsity == 1.0:
            return
        if self.granularity != UNSTRUCTURED:
            raise ConfigError("--max-layer-sparsity caps the global threshold of unstructured pruning; use "
                              "--granularity unstructured or drop it")
        if issubclass(method_class(self.method), LayerwiseMethod) or (
                self.method == "magnitude" and self.magnitude_scope == "layer"):
            raise ConfigError(f"--max-layer-sparsity caps a global threshold; {self.method} here prunes every "
                              "layer to the same fraction already: drop it")
        if self.max_layer_sparsity < self.sparsity:
            raise ConfigError(f"--max-layer-sparsity {self.max_layer_sparsity} is below the target sparsity "
                              f"{self.sparsity}: no layer could reach it")

    def validate(self) -> PruneConfig:
        method = method_class(self.method)
        nm = self.nm
        if nm is not None:
            n, m = nm
            if not 0 < n < m:
                raise ConfigError(f"N:M pattern {self.granularity} is impossible: need 0 < N < M")
        elif self.granularity not in (UNSTRUCTURED, STRUCTURED):
            raise ConfigError(
                f"unknown granularity {self.granularity!r}; use 'unstructured', 'structured' or an N:M pattern "
                "such as 2:4"
            )
        if not method.supports(self.granularity_kind):
            able = [name for name in method_names() if method_class(name).supports(self.granularity_kind)]
            raise ConfigError(f"{self.granularity} pruning supports the {', '.join(able)} methods, not {self.method}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.shots < 1:
            raise ConfigError(f"shots must be at least 1, got {self.shots}")
        if self.calib_samples < 1 or self.calib_seqlen < 2:
            raise ConfigError("calibration needs at least 1 sample of at least 2 tokens")
        parse_text_set(self.calib_data, self.text_field)  # a missing file or unknown name, before any loading
        if self.fisher not in FISHER_TYPES:
            raise ConfigError(f"fisher must be one of {', '.join(FISHER_TYPES)}")
        if self.magnitude_scope not in MAGNITUDE_SCOPES:
            raise ConfigError(f"magnitude scope must be one of {', '.join(MAGNITUDE_SCOPES)}")
        if self.damp_g <= 0 or self.damp_a <= 0:
            raise ConfigError("damping must be positive")
        if self.batch_size < 1 or self.update_iterations < 0:
            raise ConfigError("batch size must be >= 1 and update iterations >= 0")
        if self.update_start not in UPDATE_STARTS:
            raise ConfigError(f"update start must be one of {', '.join(UPDATE_STARTS)}")
        if self.update_start != UPDATE_STARTS[0]:
            self._refuse_update_flag_without_its_update("--update-start", "where to start")
        self._validate_update_solver()
        if self.structure_costs not in STRUCTURE_COSTS:
            raise ConfigError(f"structure costs must be one of {', '.join(STRUCTURE_COSTS)}")
        if self.structure_costs != STRUCTURE_COSTS[0] and self.granularity != STRUCTURED:
            raise ConfigError("--structure-costs chooses how structured pruning prices a structure; use "
                              "--granularity structured or drop it")
        if self.width_multiple < 1:
            raise ConfigError(f"width multiple must be at least 1, got {self.width_multiple}")
        if self.width_multiple > 1 and self.granularity != STRUCTURED:
            raise ConfigError("--width-multiple rounds the FFN widths of structured pruning; use --granularity "
                              "structured or drop it")
        self._validate_layer_cap()
        if self.nm_costs not in NM_COSTS:
            raise ConfigError(f"N:M costs must be one of {', '.join(NM_COSTS)}")
        if self.nm_costs != NM_COSTS[0] and (self.method != "surgeon" or nm is None):
            raise ConfigError("--nm-costs chooses how LLM Surgeon prices an N:M group; use --method surgeon with "
                              "an N:M granularity such as 2:4, or drop it")
        if self.reconstruct_iterations < 1 or not self.reconstruct_damp > 0:
            raise ConfigError("reconstruction needs at least 1 iteration and a positive damping")
        if self.lora_rank < 0 or self.lora_epochs < 1 or not self.lora_lr > 0:
            raise ConfigError("low-rank correction needs rank >= 0 (0 = off), epochs >= 1 and a positive learning rate")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PruneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
