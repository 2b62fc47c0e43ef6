"""The output folder of a prune: what it already holds, and writing a model into it that is never half-complete."""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llm_surgeon.artifacts.checkpoints import config_differences, list_checkpoints
from llm_surgeon.artifacts.compaction import save_architecture
from llm_surgeon.artifacts.compressed import compress_state, quantization_config
from llm_surgeon.artifacts.remote_code import (
    MODELING_FILE,
    SPARSE_CLASS_NAME,
    attach_remote_code,
    sparse_modeling_source,
)
from llm_surgeon.config import PruneConfig
from llm_surgeon.errors import ConfigError, UnsupportedArchitectureError
from llm_surgeon.evaluation.footprint import folder_bytes
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.runtime.files import REPORT_NAME, apply_default_modes, fsync_tree


def restore_own_modules(model) -> None:
    """The model's own modules again before it is saved (fused experts instead of per-expert views)."""
    with contextlib.suppress(UnsupportedArchitectureError):  # no adapter: nothing was replaced
        get_adapter(model).restore(model)


def inspect_output(out: Path, model_name: str, config: PruneConfig, overwrite: bool) -> str:
    """What to do with ``out``: ``"fresh"``, ``"replace"``, ``"resume"`` or ``"done"``; refuse to clobber
    another run.

    A folder holding a run with a different model or config is refused (naming the fields
    that differ) unless ``overwrite``; so is a non-empty folder that holds no run of ours.
    """
    if not out.exists():
        return "fresh"
    if not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    if overwrite:
        return "replace"  # the old run is removed only once the new one is ready to start
    recorded = None
    if (out / REPORT_NAME).is_file():
        try:
            report = json.loads((out / REPORT_NAME).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{out / REPORT_NAME} is corrupted; pass --overwrite to replace the run") from exc
        recorded, state = {"model": report.get("model"), **report.get("config", {})}, "done"
    elif checkpoints := list_checkpoints(out):
        meta = checkpoints[-1].meta
        recorded, state = {"model": meta.get("model"), **meta.get("config", {})}, "resume"
    elif any(not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"output folder {out} already holds other files; pass --overwrite to replace them")
    else:
        return "fresh"
    differing = config_differences(recorded, {"model": model_name, **config.to_dict()})
    if differing:
        raise ConfigError(
            f"output folder {out} holds a different run (differs in: {', '.join(differing)}); "
            "pass --overwrite to replace it or choose another --out"
        )
    return state


def save_model_files(model, tokenizer, out: Path, shapes: list[dict] | None = None, save_format: str = "dense",
                     sparsity: tuple[float, str] = (0.0, "unstructured")) -> int:
    """Write a ``save_pretrained`` checkpoint so that it is never half-complete; return the weights' bytes.

    A structurally pruned model (``shapes``) also gets a modeling file that plain transformers loads with
    ``trust_remote_code=True`` (:mod:`llm_surgeon.artifacts.remote_code`); ``save_format="compressed"`` stores the
    pruned matrices as bitmask and values (:mod:`llm_surgeon.artifacts.compressed`; ``sparsity`` = (fraction,
    pattern) for the config), with a modeling file that reads them. Files are written to a hidden staging
    folder inside ``out`` and moved in one by one; ``report.json`` is removed first (the caller writes it
    last), so its presence means "complete".
    """
    restore_own_modules(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        modeling = attach_remote_code(model, get_adapter(model)) if shapes is not None else None
        # folders read back by state dict (structured widths, bitmask files) keep the in-memory names (fused
        # experts), not the family's original checkpoint names that save_pretrained converts back to
        native = {"save_original_format": False} if shapes is not None or save_format == "compressed" else {}
        if "save_original_format" not in inspect.signature(model.save_pretrained).parameters:
            native = {}  # transformers 4 converts no names
        model.save_pretrained(staging, **native)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if shapes is not None:
            save_architecture(staging, shapes)
            (staging / MODELING_FILE).write_text(modeling)
        if save_format == "compressed":
            compress_folder(staging, _linear_weight_names(model), type(model).__name__, sparsity)
        fsync_tree(staging)
        apply_default_modes(staging)
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder_bytes(out)




def _linear_weight_names(model) -> set[str]:
    """The weights of every Linear layer but the LM head (the matrices pruning leaves sparse)."""
    head = model.get_output_embeddings()
    return {f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def compress_folder(folder: Path, names: set[str], family_class: str, sparsity: tuple[float, str]) -> None:
    """Rewrite a ``save_pretrained`` folder's weights in ``names`` as bitmask + values, record the format in
    ``config.json`` and add the modeling file that reads it back."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    for file in sorted(folder.glob("*.safetensors")):
        state = load_file(str(file))
        compressed = compress_state(state, names & set(state))
        save_file(compressed, str(file), metadata={"format": "pt"})
        if index is not None:
            for key in set(compressed) - set(state):
                index["weight_map"][key] = file.name
            for key in set(state) - set(compressed):
                index["weight_map"].pop(key, None)
    if index is not None:
        index_path.write_text(json.dumps(index, indent=2))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = quantization_config(*sparsity)
    config["auto_map"] = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{SPARSE_CLASS_NAME}"}
    config_path.write_text(json.dumps(config, indent=2))
    (folder / MODELING_FILE).write_text(sparse_modeling_source(family_class))


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / REPORT_NAME).read_text())
