"""The output folder of a prune: what it already holds, and writing a model into it that is never half-complete."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from llm_surgeon.artifacts.checkpoints import CHECKPOINT_DIR, config_differences, list_checkpoints
from llm_surgeon.artifacts.formats import SaveRequest, format_for_run
from llm_surgeon.artifacts.structured_layout import StructuredLayout
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
    that differ) unless ``overwrite``; so is a non-empty folder that holds no run of ours. A run stopped
    before its first checkpoint may have left only its checkpoint folder (healing's stored predictions):
    that starts afresh, reading them back when they fit.
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
    elif any(not p.name.startswith(".") and p.name != CHECKPOINT_DIR for p in out.iterdir()):
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


def save_model_files(model, tokenizer, out: Path, layout: StructuredLayout | None = None, save_format: str = "dense",
                     sparsity: tuple[float, str] = (0.0, "unstructured"), source: str | None = None) -> int:
    """Write the model in ``save_format`` so that the folder is never half-complete; return the weights' bytes.

    A compacted model (``layout``, its per-block widths) is written in the ``structured`` format unless the
    format asked holds such widths itself (:func:`~llm_surgeon.artifacts.formats.format_for_run`);
    ``sparsity`` = (fraction, pattern) is for the formats that record it, ``source`` (the model the run
    loaded) for those that copy from it. Files are written to a hidden
    staging folder inside ``out`` and moved in one by one; ``report.json`` is removed first (the caller
    writes it last), so its presence means "complete".
    """
    fmt = format_for_run(save_format, "structured" if layout is not None else sparsity[1])
    restore_own_modules(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        fmt.save(model, staging, SaveRequest(tokenizer, layout, *sparsity, source=source))
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


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / REPORT_NAME).read_text())
