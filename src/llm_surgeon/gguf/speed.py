"""Speed and memory of two models (GGUF in llama.cpp, or transformers), measured alternately.

Each round runs model A then model B, each in a fresh process (see ``speed_worker.py``), so slow
drifts of the machine (other jobs, heat) hit both alike; medians over the rounds are reported, with
A/B ratios. Prompt speed is the prompt's tokens over the time to process it in one batch; decode speed
is greedily generated tokens over their time, one token per step with the KV cache. Both engines
compute only the last position's logits, use the same thread count and the same random prompt.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.gguf.llama_buffers import extra_buffers_wanted

MEMORY_METHOD = ("peak resident set (VmHWM) of a fresh process that loads and runs the model, minus its "
                 "resident set after importing the engine; llama.cpp's memory-mapped weights count once touched")
SIZE_METHOD = "GGUF: file size; transformers: bytes of the parameters in their dtype (tied weights once)"


@dataclass(frozen=True)
class SpeedTarget:
    """A model ready to be measured: its engine and the file a worker process loads."""

    label: str
    engine: str
    path: str
    size_bytes: int
    module: str = ""


@dataclass
class EngineSpeed:
    """Medians over the rounds for one model, with every round's sample."""

    label: str
    engine: str
    size_bytes: int
    prompt_tokens_per_s: float
    decode_tokens_per_s: float
    peak_rss_delta_bytes: int
    samples: list[dict] = field(default_factory=list)


@dataclass
class SpeedComparison:
    """Model A against model B: both results and the A/B ratios of every median."""

    a: EngineSpeed
    b: EngineSpeed
    prompt_tokens: int
    new_tokens: int
    threads: int
    rounds: int
    ratios: dict[str, float]
    memory_method: str = MEMORY_METHOD
    size_method: str = SIZE_METHOD

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters (``parameters()`` lists a tied weight once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prepare_target(model: nn.Module | str | Path, workdir: Path, label: str) -> SpeedTarget:
    """A GGUF path is measured in llama.cpp; an in-memory model is pickled for a transformers worker."""
    if isinstance(model, str | Path):
        return SpeedTarget(label, "llama.cpp", str(model), Path(model).stat().st_size)
    path = workdir / f"{label}.pt"
    torch.save(model, path)
    return SpeedTarget(label, "transformers", str(path), parameter_bytes(model), type(model).__module__)


def _worker_env(threads: int) -> dict[str, str]:
    """The worker's environment: the thread count fixed for every runtime."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run_worker(target: SpeedTarget, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """One measurement of ``target`` in a fresh process."""
    spec = {"engine": target.engine, "path": target.path, "module": target.module, "prompt": prompt,
            "new_tokens": new_tokens, "threads": threads, "extra_buffers": extra_buffers_wanted()}
    worker = Path(__file__).with_name("speed_worker.py")
    proc = subprocess.run([sys.executable, str(worker), json.dumps(spec)], capture_output=True, text=True,
                          env=_worker_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"speed worker for {target.label} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(target: SpeedTarget, samples: list[dict]) -> EngineSpeed:
    def median(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    return EngineSpeed(target.label, target.engine, target.size_bytes, median("prompt_tokens_per_s"),
                       median("decode_tokens_per_s"), int(median("peak_rss_delta_bytes")), samples)


def _ratios(a: EngineSpeed, b: EngineSpeed) -> dict[str, float]:
    keys = ("prompt_tokens_per_s", "decode_tokens_per_s", "peak_rss_delta_bytes", "size_bytes")
    return {key: getattr(a, key) / getattr(b, key) if getattr(b, key) else float("nan") for key in keys}


def compare_speed(model_a: nn.Module | str | Path, model_b: nn.Module | str | Path, vocab_size: int,
                  prompt_tokens: int = 256, new_tokens: int = 64, threads: int = 1, rounds: int = 3,
                  labels: tuple[str, str] = ("A", "B"), seed: int = 0) -> SpeedComparison:
    """Measure A and B alternately for ``rounds`` rounds; medians and A/B ratios.

    Each model is a GGUF path (run in llama.cpp) or a transformers model (run with torch). The prompt
    is ``prompt_tokens`` random ids below ``vocab_size``, the same for both; ``new_tokens`` are then
    generated greedily.
    """
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (prompt_tokens,), generator=generator).tolist()
    with tempfile.TemporaryDirectory(prefix="llm-surgeon-speed-") as workdir:
        targets = [prepare_target(m, Path(workdir), label) for m, label in zip((model_a, model_b), labels,
                                                                               strict=True)]
        samples: list[list[dict]] = [[], []]
        for _ in range(rounds):
            for target, found in zip(targets, samples, strict=True):
                found.append(run_worker(target, prompt, new_tokens, threads))
    a, b = (_summary(t, s) for t, s in zip(targets, samples, strict=True))
    return SpeedComparison(a, b, prompt_tokens, new_tokens, threads, rounds, _ratios(a, b))
