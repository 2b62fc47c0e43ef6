"""The jobs that take a model to where people run it: GGUF export, llama.cpp perplexity, and speed.

``export`` writes any model llm-surgeon loads (a pruned output folder, a hub model, a GGUF file, an alias)
as a GGUF file for llama.cpp (:mod:`llm_surgeon.gguf`); ``eval --engine llama.cpp`` scores such a file from
llama.cpp's own logits under the same protocol and windows as ``eval``; ``speed`` measures prompt and
decode throughput of a model against another, alternating them over rounds.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from llm_surgeon.artifacts.loading import load_model_and_tokenizer
from llm_surgeon.data.calibration import evaluation_tokens, resolve_data_dir
from llm_surgeon.data.textsets import check_evaluation_files, parse_text_sets
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.evaluation.perplexity import short_text_error
from llm_surgeon.gguf import export_gguf
from llm_surgeon.gguf.encode import OUT_TYPES
from llm_surgeon.gguf.llama_engine import import_llama_cpp
from llm_surgeon.gguf.perplexity import llama_cpp_perplexity, split_windows
from llm_surgeon.gguf.sources import SOURCE_KEY, source_name, tokenizer_source
from llm_surgeon.gguf.speed import compare_speed
from llm_surgeon.models.loading import resolve_model_source
from llm_surgeon.runtime.devices import check_positive

ENGINES = ("transformers", "llama.cpp")


def run_export(model_name: str, out: str, out_type: str = "f16", dtype: str = "float32") -> dict:
    """Write ``model_name`` to ``out`` as GGUF; every refusal is one line before any file is written."""
    if out_type not in OUT_TYPES:
        raise ConfigError(f"--type must be one of {', '.join(OUT_TYPES)}, got {out_type!r}")
    if not out.endswith(".gguf"):
        raise ConfigError(f"--out names the GGUF file to write and ends in .gguf, got {out!r}")
    model, tokenizer, _ = load_model_and_tokenizer(model_name, getattr(torch, dtype))
    report = export_gguf(model, tokenizer_source(model_name, tokenizer), out, out_type,
                         extra={SOURCE_KEY: source_name(model_name)})
    return asdict(report)


def _read_source(gguf_path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get(SOURCE_KEY)
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def gguf_tokenizer(gguf_path: Path, tokenizer_name: str | None):
    """The Hugging Face tokenizer that tokenizes text for ``gguf_path`` as ``eval`` does: ``--tokenizer``, else
    the one of the model the file was exported from, else the file's own (a GGUF transformers reads)."""
    from transformers import AutoTokenizer

    name = tokenizer_name or _read_source(gguf_path)
    try:
        if name is None:
            return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        source = resolve_model_source(name)
        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        return AutoTokenizer.from_pretrained(source.path_or_id, **kwargs)
    except LLMSurgeonError:
        raise
    except Exception as exc:  # transformers and the hub raise their own types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise ConfigError(f"cannot read a tokenizer for {gguf_path} from {name or 'the file itself'} ({first}); "
                          "name the model it came from with --tokenizer MODEL") from exc


def run_llama_eval(gguf: str, data_dir: str | None, seqlen: int, max_windows: int | None,
                   datasets: list[str], text_field: str, threads: int | None = None,
                   tokenizer_name: str | None = None) -> dict[str, dict]:
    """Perplexity of a GGUF file in llama.cpp on each set: the windows ``eval`` scores, llama.cpp's logits."""
    path = Path(gguf)
    if path.suffix != ".gguf" or not path.is_file():
        raise ConfigError(f"--engine llama.cpp evaluates a .gguf file; {gguf} is not one")
    check_positive("--seqlen", seqlen, 2)
    check_positive("--max-windows", max_windows)
    import_llama_cpp()  # the binding's absence is one line, before any tokenizing
    resolved = resolve_data_dir(data_dir)
    text_sets = parse_text_sets(",".join(datasets), text_field)
    for text_set in text_sets:
        check_evaluation_files(text_set, resolved)
    tokenizer = gguf_tokenizer(path, tokenizer_name)
    threads = threads or os.cpu_count() or 1
    results = {}
    for text_set in text_sets:
        tokens = evaluation_tokens(tokenizer, resolved, text_set).tolist()
        windows = split_windows(tokens, seqlen, text_set.window_limit(max_windows))
        if not windows:
            raise short_text_error(len(tokens), seqlen)
        result = llama_cpp_perplexity(path, windows, threads)
        results[text_set.name] = {"ppl": result.perplexity, "windows": result.windows, "seqlen": seqlen,
                                  "tokens": result.tokens, "engine": "llama.cpp", "threads": threads}
    return results


def _speed_target(model_name: str, engine: str, out_type: str, workdir: Path, label: str):
    """A GGUF path for llama.cpp (a model exported first when it is not one), or a loaded model."""
    if engine == "llama.cpp":
        if model_name.endswith(".gguf") and Path(model_name).is_file():
            return model_name, None  # a GGUF runs as it is
        path = workdir / f"{label}.gguf"
        run_export(model_name, str(path), out_type)
        return str(path), None
    model, tokenizer, _ = load_model_and_tokenizer(model_name)
    return model, tokenizer


def run_speed(model_name: str, against: str, engine: str = "llama.cpp", prompt: int = 512, generate: int = 128,
              threads: int | None = None, rounds: int = 3, out_type: str = "f16") -> dict:
    """Prompt and decode tokens/s, peak memory and size of ``model_name`` against ``against`` in one engine,
    alternated over ``rounds`` rounds; medians and ``model / against`` ratios."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for flag, value in (("--prompt", prompt), ("--generate", generate), ("--rounds", rounds)):
        check_positive(flag, value, 1)
    if engine == "llama.cpp":
        import_llama_cpp()
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="llm-surgeon-speed-") as workdir:
        model, tokenizer = _speed_target(model_name, engine, out_type, Path(workdir), "model")
        dense, _ = _speed_target(against, engine, out_type, Path(workdir), "against")
        vocab = len(tokenizer) if tokenizer is not None else _vocab(model)
        result = compare_speed(model, dense, vocab, prompt, generate, threads, rounds, labels=("model", "against"))
    summary = result.to_dict()
    summary.update(engine=engine, model=model_name, against=against, machine=_machine(),
                   prompt_ratio=result.ratios["prompt_tokens_per_s"], decode_ratio=result.ratios["decode_tokens_per_s"])
    return summary


def _vocab(gguf_path: str) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    field = reader.fields["tokenizer.ggml.tokens"]
    return len(field.data)


def _machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"
