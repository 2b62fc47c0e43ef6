"""One speed measurement in a fresh process: ``python speed_worker.py '<json spec>'``.

Each measurement runs alone in its own process so that neither engine inherits the other's threads
(torch and llama.cpp each bring an OpenMP runtime whose idle threads spin) or memory, and so that the
peak memory is that process's own: the peak resident set (``VmHWM``) minus the resident set after
the imports, just before the model is loaded. The result is one JSON line on stdout.

The file is run by path and imports nothing from llm_surgeon (whose package imports torch), so a
llama.cpp measurement runs in a process that holds only llama.cpp.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

WARMUP_TOKENS = 16


def memory_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_memory() -> None:
    """Restart the peak resident set at the current one (Linux ``clear_refs`` 5), where permitted."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _llama_cpp_run(spec: dict) -> tuple[float, float]:
    """Seconds for the prompt and for the greedy decode in llama.cpp (last-token logits only)."""
    import llama_cpp
    import numpy as np
    from llama_buffers import extra_buffers  # this file runs by path: its folder is on sys.path

    prompt, new, threads = spec["prompt"], spec["new_tokens"], spec["threads"]
    with extra_buffers(llama_cpp, spec["extra_buffers"]):
        llm = llama_cpp.Llama(model_path=spec["path"], n_ctx=len(prompt) + new + 1, n_batch=len(prompt),
                              n_ubatch=min(len(prompt), 512), n_threads=threads, n_threads_batch=threads,
                              n_gpu_layers=0, verbose=False)

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(np.argmax(logits))

    llm.eval(prompt[:WARMUP_TOKENS])
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = next_token()
    prompt_done = time.perf_counter()
    for _ in range(new):
        llm.eval([token])
        token = next_token()
    return prompt_done - start, time.perf_counter() - prompt_done


def _transformers_run(spec: dict) -> tuple[float, float]:
    """Seconds for the prompt and for the greedy decode in transformers (KV cache, last-token logits)."""
    import torch

    torch.set_num_threads(spec["threads"])
    model = torch.load(spec["path"], weights_only=False, map_location="cpu").eval()
    ids = torch.tensor([spec["prompt"]])
    with torch.inference_mode():
        model(ids[:, :WARMUP_TOKENS], use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        prompt_done = time.perf_counter()
        for _ in range(spec["new_tokens"]):
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return prompt_done - start, time.perf_counter() - prompt_done


def measure(spec: dict) -> dict:
    """Load and time one model as ``spec`` says; tokens per second and peak memory over the imports."""
    if spec["engine"] == "llama.cpp":
        import llama_cpp  # noqa: F401  (imported before the baseline: the engine's own memory is not counted)

        run = _llama_cpp_run
    else:
        import importlib

        import torch  # noqa: F401

        importlib.import_module(spec["module"])  # the model's class, so unpickling imports nothing more
        run = _transformers_run
    baseline = memory_kib("VmRSS")
    reset_peak_memory()
    prompt_s, decode_s = run(spec)
    found = {
        "prompt_tokens_per_s": len(spec["prompt"]) / prompt_s,
        "decode_tokens_per_s": spec["new_tokens"] / decode_s,
        "peak_rss_delta_bytes": (memory_kib("VmHWM") - baseline) * 1024,
    }
    if spec["engine"] == "llama.cpp":
        found["llama_extra_buffers"] = spec["extra_buffers"]  # AMX/repacked weights, or the plain kernels
    return found


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
