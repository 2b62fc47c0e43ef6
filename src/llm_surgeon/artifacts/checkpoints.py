"""Per-shot checkpoints of a prune, written atomically and verified on resume.

Layout: ``OUT/checkpoints/shot-<k>/{state.safetensors, meta.json}``, and ``OUT/checkpoints/healed/`` once
healing after the last shot is done (its meta carries the ``heal`` record). A checkpoint is
written under a temporary name, fsynced and renamed, so a folder named ``shot-<k>`` is
always complete; ``meta.json`` carries the SHA-256 of the state file so that a truncated
or corrupted file is detected instead of resumed from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm_surgeon.config import PruneConfig
from llm_surgeon.engine.pruner import PruneResult, ShotRecord
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.runtime.files import atomic_write_json, fsync_tree

CHECKPOINT_DIR = "checkpoints"
HEALED = "healed"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"


class CheckpointError(LLMSurgeonError):
    pass


@dataclass
class CheckpointInfo:
    shot: int
    path: Path
    meta: dict


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def config_differences(a: dict, b: dict) -> list[str]:
    """Names of the fields whose values differ between two config dicts; a field that an older run did not
    record counts as its default."""
    defaults = PruneConfig().to_dict()
    return sorted(k for k in set(a) | set(b) if a.get(k, defaults.get(k)) != b.get(k, defaults.get(k)))


def save_checkpoint(out: Path, model_name: str, result: PruneResult, linears: dict[str, nn.Linear],
                    keep: int = 2, wall_seconds: float | None = None) -> Path:
    """Write the state after the last recorded shot; keep only the newest ``keep`` checkpoints. ``wall_seconds``
    (the job's time so far) lets a resumed run count the time spent before it. A result that carries its
    ``heal`` record is written as the ``healed`` checkpoint, which sorts after every shot."""
    shot = len(result.shots)
    name = HEALED if result.heal is not None else f"shot-{shot}"
    root = out / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tensors = {f"weight:{name}": lin.weight.detach().contiguous() for name, lin in linears.items()}
    tensors.update({f"mask:{name}": mask.contiguous() for name, mask in result.masks.items()})
    tensors["rng:torch"] = torch.get_rng_state()
    save_file(tensors, str(staging / STATE_FILE))
    meta = {
        "shot": shot,
        "model": model_name,
        "config": result.config.to_dict(),
        "shot_records": [asdict(s) for s in result.shots],
        "state_sha256": sha256_of(staging / STATE_FILE),
        "state_bytes": (staging / STATE_FILE).stat().st_size,
        "wall_seconds": wall_seconds,
        "heal": result.heal,
    }
    atomic_write_json(staging / META_FILE, meta)
    fsync_tree(staging)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[CheckpointInfo]:
    """Complete checkpoints (a ``shot-<k>`` folder with its meta.json), oldest first."""
    root = out / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for path in [*root.glob("shot-*"), root / HEALED]:
            meta_path = path / META_FILE
            if not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"checkpoint {path} is corrupted: unreadable {META_FILE}") from exc
            found.append(CheckpointInfo(int(meta["shot"]), path, meta))
    return sorted(found, key=lambda c: (c.shot, c.meta.get("heal") is not None))


def load_checkpoint(info: CheckpointInfo, config: PruneConfig, linears: dict[str, nn.Linear]) -> PruneResult:
    """Restore weights, masks and RNG from a verified checkpoint into ``linears``."""
    state = info.path / STATE_FILE
    if not state.is_file():
        raise CheckpointError(f"checkpoint {info.path} is incomplete: {STATE_FILE} is missing")
    size = state.stat().st_size
    if size != info.meta["state_bytes"] or sha256_of(state) != info.meta["state_sha256"]:
        raise CheckpointError(
            f"checkpoint {state} is truncated or corrupted ({size} bytes, expected {info.meta['state_bytes']}); "
            "delete that checkpoint folder to resume from an older one, or pass --overwrite to start again"
        )
    try:
        tensors = load_file(str(state))
    except Exception as exc:  # safetensors raises its own error type
        raise CheckpointError(f"checkpoint {state} cannot be read: {exc}") from exc
    masks = {}
    with torch.no_grad():
        for name, lin in linears.items():
            key = f"weight:{name}"
            if key not in tensors or tensors[key].shape != lin.weight.shape:
                raise CheckpointError(f"checkpoint {state} does not match the model (layer {name})")
            lin.weight.copy_(tensors[key])
            masks[name] = tensors[f"mask:{name}"].to(lin.weight.device)
    torch.set_rng_state(tensors["rng:torch"])
    shots = [ShotRecord(**record) for record in info.meta["shot_records"]]
    return PruneResult(config=config, masks=masks, shots=shots, heal=info.meta.get("heal"))


def remove_checkpoints(out: Path) -> None:
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
