"""Atomic writes: a reader never sees a half-written file or model folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPORT_NAME = "report.json"
"""Written last into an output folder: its presence means the run is complete."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_default_modes(root: Path) -> None:
    """Give ``root`` and what is under it the modes a plain ``open()``/``mkdir()`` would (0666/0777 less the
    umask): temporary files and folders are created 0600/0700, and a renamed one keeps that."""
    mask = _umask()
    root.chmod(0o777 & ~mask) if root.is_dir() else root.chmod(0o666 & ~mask)
    if root.is_dir():
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                (Path(folder) / name).chmod(0o777 & ~mask)
            for name in files:
                (Path(folder) / name).chmod(0o666 & ~mask)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        apply_default_modes(Path(tmp))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
