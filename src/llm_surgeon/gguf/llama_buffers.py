"""Whether llama.cpp may move weights into its extra CPU buffer types, and loading a model without them.

llama.cpp re-packs some weights at load time into "extra" buffer types: Intel AMX tiles for Q4_0/Q4_1/
Q8_0/K-quants where the CPU reports AMX, interleaved layouts (``CPU_REPACK``) elsewhere. On AMX machines
its AMX matrix product crashes the process (a segfault, no Python traceback) on some hosts, virtualized
Sapphire/Granite Rapids among them (ggml-org/llama.cpp#20824, reproduced here on Q4_0 and Q8_0 files of
every size; the same files run with the extra buffers off). A crash that takes the user's process down is
worse than the speed AMX might give, so on a CPU that reports ``amx_int8`` the extra buffers stay off
unless ``LLM_SURGEON_LLAMA_EXTRA_BUFFERS=1`` asks for them (``=0`` turns them off everywhere).

This module imports nothing outside the standard library: ``speed_worker.py``, which runs by path in a
process that must hold only llama.cpp, imports it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXTRA_BUFFERS_ENV = "LLM_SURGEON_LLAMA_EXTRA_BUFFERS"
AMX_FLAG = "amx_int8"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags (empty where ``/proc/cpuinfo`` cannot be read: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def extra_buffers_wanted(flags: set[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """True where llama.cpp may use its extra buffer types: the environment's choice where it makes one,
    otherwise everywhere but on CPUs with AMX."""
    choice = (os.environ if environ is None else environ).get(EXTRA_BUFFERS_ENV, "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    return AMX_FLAG not in (cpu_flags() if flags is None else flags)


@contextlib.contextmanager
def extra_buffers(llama_cpp: Any, enabled: bool) -> Iterator[None]:
    """Models loaded inside get ``use_extra_bufts = enabled``.

    ``llama_cpp.Llama`` takes no argument for it and loads the model in its constructor from
    ``llama_model_default_params()``, so the defaults are swapped for the constructor's duration.
    """
    low_level = llama_cpp.llama_cpp
    defaults = low_level.llama_model_default_params

    def chosen() -> Any:
        params = defaults()
        params.use_extra_bufts = enabled
        return params

    low_level.llama_model_default_params = chosen
    try:
        yield
    finally:
        low_level.llama_model_default_params = defaults
