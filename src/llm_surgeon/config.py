"""The one object that describes a pruning run; recorded in every report and checkpoint.

:class:`PruneConfig` is flat (one keyword per setting, one dict in a report) but composed: the engine's own
settings are written here, each method's settings in the dataclass beside the method
(:mod:`llm_surgeon.methods.options`), and every field carries its command-line flag.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from llm_surgeon.data.calibration import training_window_counts
from llm_surgeon.data.textsets import parse_text_set
from llm_surgeon.errors import ConfigError
from llm_surgeon.methods import (
    NM,
    STRUCTURED,
    UNSTRUCTURED,
    CurvatureOptions,
    InputHessianOptions,
    MagnitudeOptions,
    MethodOptions,
    SurgeonOptions,
    get_method,
    method_class,
    method_names,
)
from llm_surgeon.methods.options import nearest, option, refuse_changed

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``None`` for non-N:M granularities."""
    match = _NM.match(granularity)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class EngineSettings:
    """What the shot loop itself reads, whatever the method."""

    method: str = option("surgeon", "pruning method", group="basics")
    granularity: str = option("unstructured", "unstructured, structured, or N:M such as 2:4", group="basics")
    sparsity: float = option(0.5, "target fraction of zeros (unstructured) or of prunable parameters removed "
                             "(structured); ignored for N:M, where it is N/M", group="basics")
    shots: int = option(5, "shots over which the sparsity rises", group="basics")
    calib_samples: int = option(128, "calibration windows", group="calibration")
    calib_seqlen: int = option(2048, "tokens per calibration window", group="calibration")
    seed: int = option(0, "seed of the calibration draw and of sampled labels", group="calibration")
    calib_data: str = option("wikitext2", "calibration text: wikitext2, ptb or c4 in --data-dir (train split, else "
                             "valid), or a .txt/.jsonl/.json/.parquet file (optionally .gz)", group="calibration",
                             metavar="SET_OR_FILE")
    text_field: str = option("text", "field of JSON-lines/Parquet records that holds the text", group="calibration")
    batch_size: int = option(8, "calibration windows per forward/backward pass (sets the activation memory, never "
                             "the result)", group="memory")
    lora_rank: int = option(0, "rank of a low-rank correction trained on the calibration text after every shot and "
                            "absorbed with the masks kept (0: off)")
    lora_lr: float = option(1e-3, "Adam learning rate of the correction")
    lora_epochs: int = option(1, "passes over the calibration windows per correction")
    reconstruct: bool = option(False, "after every shot, re-fit each pruned layer's kept weights to the dense "
                               "model's outputs (layer-wise least squares on the calibration windows, masks kept)",
                               group="research")
    reconstruct_iterations: int = option(30, "conjugate-gradient steps of each layer's reconstruction",
                                         group="research")
    reconstruct_damp: float = option(0.01, "damping of the reconstruction's sum of x xᵀ, relative to its mean "
                                     "diagonal", group="research")
    width_multiple: int = option(1, "structured: every block keeps a multiple of K FFN neurons (e.g. 64 for "
                                 "GEMM-friendly shapes), chosen inside the global selection (1: widths as the "
                                 "costs fall)", metavar="K")
    max_layer_sparsity: float = option(1.0, "global threshold: no layer loses more than this fraction of its weights "
                                       "(unstructured), no block more than this fraction of its FFN neurons or of "
                                       "its head groups (structured); 1.0: no cap, the paper's allocation",
                                       group="research",
                                       metavar="FRACTION")
    prune_unrouted: bool = option(False, "mixture of experts: prune experts that received no calibration token by "
                                  "magnitude (without it they stay dense; N:M then refuses)")


FULL_PARAMETER_LR = 2e-4
"""Healing's Adam rate when every kept weight trains at an absolute rate (``--heal-lr-scale absolute``): the best
of 5e-5, 2e-4 and 1e-3 in a sweep on SmolLM2 (structured, 80% kept, 16 steps; BENCHMARKS.md); too large for
Gemma-3-270M, whose weights are smaller (:data:`RELATIVE_LR`)."""
LOW_RANK_LR = 1e-3
"""Healing's Adam rate for low-rank factors, as the low-rank correction uses (they start at zero)."""
RELATIVE_LR = 1e-3
"""``--heal-lr-scale weight-rms`` (the default for full-parameter healing): each layer's Adam rate as a fraction
of its kept weights' RMS. SmolLM2's 2e-4 over the median RMS of its pruned layers (0.19), so that it trains
SmolLM2 as the absolute 2e-4 did; Gemma-3-270M's layers are 5-12x smaller (RMS 0.016-0.040), and an absolute
2e-4 moves them that much more (its dense model healed so got 15% worse; BENCHMARKS.md)."""


@dataclass
class HealOptions(MethodOptions):
    """Distillation from the dense model after the last shot (:mod:`llm_surgeon.healing.train`)."""

    heal: bool = option(False, "after the last shot, distil the dense model's next-token distributions into the "
                        "pruned one (KL on the logits); masks, N:M groups and structured shapes are kept",
                        group="healing")
    heal_data: str = option("", "healing text: anything --calib-data accepts (empty: the calibration text)",
                            group="healing", metavar="SET_OR_FILE")
    heal_tokens: int = option(131072, "tokens healing trains on, in one pass of --calib-seqlen windows (an eighth "
                              "more are held out to measure the KL before and after)", group="healing")
    heal_lr: float = option(0.0, f"Adam learning rate, warmed up then cosine-decayed (0: {RELATIVE_LR:g} x each "
                            f"layer's weight RMS full-parameter, {FULL_PARAMETER_LR:g} with --heal-lr-scale absolute, "
                            f"{LOW_RANK_LR:g} low-rank)", group="healing")
    heal_lr_scale: str = option("auto", "weight-rms: --heal-lr is a fraction of each layer's kept weights' RMS (the "
                                "same relative steps whatever the model's weight scale; 0: "
                                f"{RELATIVE_LR:g}; full-parameter healing only); absolute: every weight's rate; "
                                "auto: weight-rms, or absolute with --heal-rank", group="healing",
                                choices=("auto", "weight-rms", "absolute"))
    heal_rank: int = option(0, "0: train every kept weight of the pruned layers; r > 0: a rank-r correction of each, "
                            "merged back", group="healing")
    heal_topk: int = option(64, "the dense model's most likely tokens kept per position (the rest of the "
                            "vocabulary as one category)", group="healing")
    heal_each_shot: bool = option(False, "spread --heal-tokens over the shots: after each shot, distil on its "
                                  "share of the windows, so the next shot measures the healed model's curvature "
                                  "(the same budget)", group="healing")
    heal_block_weight: float = option(0.0, "weight of a second loss beside the KL: the squared error of the outputs "
                                      "of --heal-blocks blocks against the dense model's, relative to their size "
                                      "(0: the logits only)", group="healing")
    heal_blocks: int = option(4, "how many blocks' outputs --heal-block-weight matches, evenly spaced, the last one "
                              "included (their dense outputs are stored in bfloat16 beside the top-k)",
                              group="healing")

    @property
    def heal_rate_scale(self) -> str:
        """What ``--heal-lr`` is relative to: ``--heal-lr-scale``, or for ``auto`` each layer's weights when every
        kept weight trains and nothing for a low-rank correction (its factors start at zero)."""
        if self.heal_lr_scale != "auto":
            return self.heal_lr_scale
        return "absolute" if self.heal_rank > 0 else "weight-rms"

    @property
    def heal_learning_rate(self) -> float:
        """The rate healing runs with: ``--heal-lr``, or its default for the kind of training."""
        if self.heal_lr > 0:
            return self.heal_lr
        if self.heal_rate_scale == "weight-rms":
            return RELATIVE_LR
        return LOW_RANK_LR if self.heal_rank > 0 else FULL_PARAMETER_LR

    @classmethod
    def check(cls, config) -> None:
        if not config.heal:
            refuse_changed(config, cls, ("heal_data", "heal_tokens", "heal_lr", "heal_lr_scale", "heal_rank",
                                         "heal_topk", "heal_each_shot", "heal_block_weight", "heal_blocks"),
                           "sets up healing; add --heal or drop it")
            return
        if config.heal_tokens < config.calib_seqlen:
            raise ConfigError(f"--heal-tokens {config.heal_tokens} is less than one window of --calib-seqlen "
                              f"{config.calib_seqlen}")
        if config.heal_lr < 0 or config.heal_rank < 0 or config.heal_topk < 1:
            raise ConfigError("healing needs --heal-lr >= 0 (0: the default), --heal-rank >= 0 and --heal-topk >= 1")
        if config.heal_lr_scale == "weight-rms" and config.heal_rank > 0:
            raise ConfigError("--heal-lr-scale weight-rms scales each layer's weights' rate; a low-rank correction "
                              "(--heal-rank) starts at zero: use --heal-lr-scale absolute with it")
        if not config.heal_block_weight >= 0 or config.heal_blocks < 1:  # "not >=" refuses NaN too
            raise ConfigError("healing needs --heal-block-weight >= 0 (0: the logits only) and --heal-blocks >= 1")
        if config.heal_block_weight == 0:
            refuse_changed(config, cls, ("heal_blocks",), "chooses the blocks of --heal-block-weight; set it too")
        windows = training_window_counts(config.heal_tokens, config.calib_seqlen)[0]
        if config.heal_each_shot and windows < config.effective_shots:
            raise ConfigError(f"--heal-each-shot shares --heal-tokens {config.heal_tokens} ({windows} windows of "
                              f"{config.calib_seqlen}) among {config.effective_shots} shots: raise --heal-tokens to "
                              f"at least {config.effective_shots * config.calib_seqlen}")
        if config.heal_data:
            parse_text_set(config.heal_data, config.text_field)  # a missing file or unknown name, before loading


@dataclass
class PruneConfig(HealOptions, SurgeonOptions, MagnitudeOptions, InputHessianOptions, CurvatureOptions, EngineSettings):
    """Everything that decides the outcome of a prune, so that a report reproduces it: the engine's settings
    and every method's own (a method reads only its own; the others keep their defaults)."""

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

    def _validate_layer_cap(self) -> None:
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise ConfigError(f"max layer sparsity must be in (0, 1], got {self.max_layer_sparsity}")
        if self.max_layer_sparsity == 1.0:
            return
        if self.granularity not in (UNSTRUCTURED, STRUCTURED):
            raise ConfigError("--max-layer-sparsity caps the global threshold of unstructured or structured "
                              "pruning; an N:M pattern removes the same share of every layer already: drop it")
        if get_method(self.method, self).selection_scope() != "global":
            raise ConfigError(f"--max-layer-sparsity caps a global threshold; {self.method} here prunes every "
                              "layer to the same fraction already: drop it")
        if self.max_layer_sparsity < self.sparsity:
            raise ConfigError(f"--max-layer-sparsity {self.max_layer_sparsity} is below the target sparsity "
                              f"{self.sparsity}: no layer could reach it")

    def _validate_granularity(self) -> None:
        nm = self.nm
        if nm is not None:
            n, m = nm
            if not 0 < n < m:
                raise ConfigError(f"N:M pattern {self.granularity} is impossible: need 0 < N < M")
        elif self.granularity not in (UNSTRUCTURED, STRUCTURED):
            raise ConfigError(
                f"unknown granularity {self.granularity!r}; use 'unstructured', 'structured' or an N:M pattern "
                f"such as 2:4{nearest(self.granularity, (UNSTRUCTURED, STRUCTURED))}"
            )
        method = method_class(self.method)
        if not method.supports(self.granularity_kind):
            able = [name for name in method_names() if method_class(name).supports(self.granularity_kind)]
            raise ConfigError(f"{self.granularity} pruning supports the {', '.join(able)} methods, not {self.method}")

    def _validate_engine(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            hint = f"; did you mean {self.sparsity / 100:g}?" if 1.0 <= self.sparsity < 100.0 else ""
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity:g}{hint}")
        if self.shots < 1:
            raise ConfigError(f"shots must be at least 1, got {self.shots}")
        if self.calib_samples < 1 or self.calib_seqlen < 2:
            raise ConfigError("calibration needs at least 1 sample of at least 2 tokens")
        parse_text_set(self.calib_data, self.text_field)  # a missing file or unknown name, before any loading
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.width_multiple < 1:
            raise ConfigError(f"width multiple must be at least 1, got {self.width_multiple}")
        if self.width_multiple > 1 and self.granularity != STRUCTURED:
            raise ConfigError("--width-multiple rounds the FFN widths of structured pruning; use --granularity "
                              "structured or drop it")
        self._validate_layer_cap()
        if self.reconstruct_iterations < 1 or not self.reconstruct_damp > 0:
            raise ConfigError("reconstruction needs at least 1 iteration and a positive damping")
        if self.lora_rank < 0 or self.lora_epochs < 1 or not self.lora_lr > 0:
            raise ConfigError("low-rank correction needs rank >= 0 (0 = off), epochs >= 1 and a positive learning rate")

    def validate(self) -> PruneConfig:
        """One line for the first setting that is invalid or acts on nothing in this run: the method (with the
        nearest name for a typo), the granularity, the engine's settings, then each method's own settings."""
        method_class(self.method)
        self._validate_granularity()
        self._validate_engine()
        for options in type(self).__mro__:
            if issubclass(options, MethodOptions) and "check" in vars(options):
                options.check(self)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PruneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
