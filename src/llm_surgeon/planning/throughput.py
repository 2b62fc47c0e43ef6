"""The matmul throughput a plan divides a shot's work by: measured robustly once per machine, then remembered.

One timing of a second varied by about 15% between identical plans on a shared 2-core machine (issue 36),
so two plans of one run disagreed. Now it is the median of :data:`REPEATS` timings (a burst of other work moves
one timing, not the median), and it is cached in ``$LLM_SURGEON_CACHE/throughput.json`` (default
``~/.cache/llm-surgeon``) under the machine, its processor, the threads, the torch version and the dtype: plans on
one machine agree, and another machine, a new torch or another thread count measures again. Delete the file to
measure again on purpose.

A timing taken while other work keeps the processors busy is used but not cached: a plan made beside a
running prune once cached a third of this machine's speed, and every later plan on it predicted 2x the time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from llm_surgeon.evaluation.dense_cache import CACHE_ENV
from llm_surgeon.runtime.files import atomic_write_json

CACHE_FILE = "throughput.json"
REPEATS = 9
SECONDS_PER_REPEAT = 0.15
SIZE = 1024
"""Square matmuls of this size: large enough for full speed, small enough for a quick plan."""
BUSY_SHARE = 0.5
"""A one-minute load average above this share of the CPUs counts as busy: the timing is not cached."""


@dataclass(frozen=True)
class Throughput:
    """TFLOP/s, and where they came from (printed beside the plan's time)."""

    tflops: float
    source: str


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-surgeon"
    return Path(root) / CACHE_FILE


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def processor() -> str:
    """The name of what computes: the CUDA device's, else the CPU's model name."""
    if _device() == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_key(dtype: torch.dtype) -> str:
    """What a cached throughput is valid for: this host, its processor and threads, this torch, the dtype."""
    return json.dumps([platform.node(), processor(), torch.get_num_threads(), torch.__version__,
                       str(dtype).removeprefix("torch.")])


def _one_timing(a: torch.Tensor, seconds: float) -> float:
    """TFLOP/s of ``a @ a`` repeated for about ``seconds``."""
    size = a.shape[0]
    if a.is_cuda:
        torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        runs += 1
    if a.is_cuda:
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e12


def timed_tflops(dtype: torch.dtype = torch.float32, repeats: int = REPEATS, seconds: float = SECONDS_PER_REPEAT,
                 size: int = SIZE) -> float:
    """The median of ``repeats`` timings of dense ``size``² matmuls on this machine's CPU (or CUDA device)."""
    a = torch.randn(size, size, dtype=dtype, device=_device())
    a @ a  # warm-up
    return statistics.median(_one_timing(a, seconds) for _ in range(repeats))


def _how() -> str:
    return f"median of {REPEATS} timings of {SECONDS_PER_REPEAT} s of {SIZE}x{SIZE} matmuls"


def busy_load() -> float | None:
    """The one-minute load average when it says the CPUs are busy with other work, else None (also where
    the system cannot say, or the throughput is a CUDA device's, which CPU load does not slow)."""
    if _device() == "cuda" or not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    return load if load > BUSY_SHARE * (os.cpu_count() or 1) else None


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def machine_tflops(dtype: torch.dtype = torch.float32) -> Throughput:
    """This machine's throughput in ``dtype``: from the cache, else measured (:func:`timed_tflops`) and cached;
    a cache that cannot be written is skipped, never fatal."""
    key = machine_key(dtype)
    machine = (f"{platform.node()} ({processor()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
               f"{str(dtype).removeprefix('torch.')})")
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and isinstance(cached.get("tflops"), float):
        return Throughput(cached["tflops"], f"{machine}: {_how()}, measured {cached.get('measured')}, cached in "
                                            f"{cache_path()}")
    load = busy_load()
    tflops = timed_tflops(dtype)
    if load is not None:
        return Throughput(tflops, f"{machine}: {_how()}, measured now while the CPUs were busy (load average "
                                  f"{load:.1f} on {os.cpu_count()}): not cached, so the next plan measures again")
    try:
        atomic_write_json(cache_path(), {**_read_cache(), key: {"tflops": tflops, "measured": str(date.today())}})
        where = f"now, cached in {cache_path()}"
    except OSError:
        where = "now (the cache could not be written)"
    return Throughput(tflops, f"{machine}: {_how()}, measured {where}")


def given_tflops(tflops: float) -> Throughput:
    return Throughput(tflops, "given with --tflops")
