"""Checkpoint/resume, interruption, determinism and clear answers to bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_surgeon import PruneConfig, api
from llm_surgeon.errors import LLMSurgeonError
from tests.conftest import tiny_llama, tiny_tokenizer, write_fake_wikitext, write_tiny_checkpoint

CLI = [sys.executable, "-m", "llm_surgeon.cli"]


def prune_args(model: Path, out: Path, data: Path, *extra: str, shots: int = 4) -> list[str]:
    return [*CLI, "prune", str(model), "--out", str(out), "--shots", str(shots), "--sparsity", "0.6",
            "--calib-samples", "16", "--calib-seqlen", "64", "--data-dir", str(data), "--no-progress",
            "--update-iterations", "30", *extra]


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A model big enough that a shot takes a noticeable fraction of a second."""
    root = tmp_path_factory.mktemp("medium")
    model = tiny_llama(seed=5, hidden_size=128, intermediate_size=384, num_hidden_layers=3)
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    return root / "model", write_fake_wikitext(root / "data", lines=800)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(medium, tmp_path):
    model, data = medium
    reference = tmp_path / "reference"
    subprocess.run(prune_args(model, reference, data), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(prune_args(model, out, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "shot-2").is_dir():
        assert proc.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()  # never looks complete

    resumed = subprocess.run(prune_args(model, out, data), capture_output=True, text=True, check=True)
    assert "resuming from" in resumed.stderr
    report = json.loads((out / "report.json").read_text())
    resumed_at = int(resumed.stderr.split("(shot ")[1].split(" ")[0])
    assert 2 <= resumed_at < 4 and report["resumed_from_shot"] == resumed_at
    expected, got = final_weights(reference), final_weights(out)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert not (out / "checkpoints").exists()


def test_same_seed_gives_identical_masks_and_weights_and_another_seed_does_not(medium, tmp_path):
    model, data = medium
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        subprocess.run(prune_args(model, tmp_path / name, data, "--seed", seed, shots=2), check=True,
                       capture_output=True)
    a, b, c = (final_weights(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k] == 0, c[k] == 0) for k in a)  # the seed drives the calibration draw
    assert json.loads((tmp_path / "c" / "report.json").read_text())["seed"] == 4


def test_sigterm_keeps_last_checkpoint_and_says_how_to_resume(medium, tmp_path):
    model, data = medium
    out = tmp_path / "out"
    proc = subprocess.Popen(prune_args(model, out, data, shots=6), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not (out / "checkpoints" / "shot-1").is_dir():
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert "last complete checkpoint" in stderr and "--resume" in stderr
    assert (out / "checkpoints").is_dir() and not (out / "report.json").exists()

    changed = [a if a != "0.6" else "0.7" for a in prune_args(model, out, data, shots=6)]
    refused = subprocess.run(changed, capture_output=True, text=True)
    assert refused.returncode == 2 and "differs in: sparsity" in refused.stderr
    assert (out / "checkpoints").is_dir()


def test_truncated_checkpoint_is_detected(medium, tmp_path):
    model, data = medium
    out = tmp_path / "out"
    proc = subprocess.Popen(prune_args(model, out, data, shots=6), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (out / "checkpoints" / "shot-1").is_dir():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = sorted((out / "checkpoints").glob("shot-*"))[-1] / "state.safetensors"
    with open(latest, "r+b") as handle:
        handle.truncate(latest.stat().st_size // 2)
    result = subprocess.run(prune_args(model, out, data, shots=6), capture_output=True, text=True)
    assert result.returncode == 2
    assert "truncated or corrupted" in result.stderr and "Traceback" not in result.stderr


def test_truncated_model_file_in_output_is_reported(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "model")
    weights = model_dir / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 3)
    result = subprocess.run([*CLI, "eval", str(model_dir), "--data-dir", str(write_fake_wikitext(tmp_path / "d")),
                             "--seqlen", "32", "--max-windows", "1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "cannot load model" in result.stderr and "Traceback" not in result.stderr


def _gpt2_checkpoint(folder: Path, truncate: bool = False) -> Path:
    """A GPT-2 folder; with ``truncate`` its weights cannot be read, so only a config-first check names the family."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    if truncate:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    return folder


BAD_INPUTS = {
    "missing model path": (lambda t: ["./no/such/model"], "model path does not exist"),
    "unsupported architecture": (lambda t: [str(_gpt2_checkpoint(t / "gpt2"))],
                                 "'gpt2' is not supported: its decoder blocks hold no nn.Linear layers"),
    "sparsity above range": (lambda t: ["MODEL", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    "negative sparsity": (lambda t: ["MODEL", "--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    "impossible N:M": (lambda t: ["MODEL", "--granularity", "4:4"], "impossible"),
    "N:M not dividing widths": (lambda t: ["MODEL", "--granularity", "1:5"], "divisible by 5"),
    "data folder without split": (lambda t: ["MODEL", "--data-dir", str(_empty(t / "empty"))],
                                  "wikitext2 calibration text not found"),
    "missing data folder": (lambda t: ["MODEL", "--data-dir", str(t / "nowhere")], "data folder does not exist"),
    "calibration text too short": (lambda t: ["MODEL", "--calib-samples", "5000", "--calib-seqlen", "64"],
                                   "fewer than the 5000 x 64 requested"),
    "output holds a different run": (lambda t: ["MODEL", "--out", str(_other_run(t))], "holds a different run"),
    "output holds other files": (lambda t: ["MODEL", "--out", str(_foreign(t))], "already holds other files"),
    "unknown device": (lambda t: ["./no/such/model", "--device", "gpu"], "unknown device 'gpu'"),
    "evaluation window of 0 tokens": (lambda t: ["MODEL", "--eval", "--eval-seqlen", "0"],
                                      "--eval-seqlen must be at least 2"),
    "evaluation of 0 windows": (lambda t: ["MODEL", "--eval", "--eval-max-windows", "0"],
                                "--eval-max-windows must be at least 1"),
    "unknown method": (lambda t: ["MODEL", "--method", "foo"], "invalid choice: 'foo'"),
    "unknown dtype": (lambda t: ["MODEL", "--dtype", "int8"], "invalid choice: 'int8'"),
    "empty text file as the model": (lambda t: [str(_empty_text(t))], "is a file, not a model folder"),
    "offline hub id not in the cache": (lambda t: ["no-such-org-xyz/no-such-model-xyz"], "not in the local cache"),
    "unsupported family with unreadable weights": (lambda t: [str(_gpt2_checkpoint(t / "gpt2", truncate=True))],
                                                   "'gpt2' is not supported: its decoder blocks hold no nn.Linear"),
    "a shot that cannot fit the memory budget": (lambda t: ["MODEL", "--max-memory", "1MB"],
                                                 "not enough memory for one shot even in 2 block groups"),
    "a memory budget that is not a size": (lambda t: ["MODEL", "--max-memory", "lots"], "not a memory size"),
    "factor device that does not exist": (lambda t: ["MODEL", "--factor-device", "gpu"], "unknown device 'gpu'"),
}
if not torch.cuda.is_available():
    BAD_INPUTS["cuda on a machine without it"] = (lambda t: ["MODEL", "--device", "cuda"], "no CUDA GPU is usable")


def _empty_text(t: Path) -> Path:
    (t / "model.txt").write_text("")
    return t / "model.txt"


def _empty(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _foreign(t: Path) -> Path:
    folder = _empty(t / "foreign")
    (folder / "notes.txt").write_text("keep me")
    return folder


def _other_run(t: Path) -> Path:
    folder = _empty(t / "other")
    (folder / "report.json").write_text(json.dumps({"model": "x", "config": {"method": "magnitude"}}))
    return folder


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_clear_line(case, tmp_path):
    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    make_args, expected = BAD_INPUTS[case]
    args = [str(model) if a == "MODEL" else a for a in make_args(tmp_path)]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if "--data-dir" not in args:
        args += ["--data-dir", str(data)]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = subprocess.run([*CLI, "prune", *args, "--calib-samples", "4", "--calib-seqlen", "32", "--no-progress"]
                            if "--calib-samples" not in args else [*CLI, "prune", *args, "--no-progress"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("llm-surgeon: error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr
    assert "usage:" not in result.stderr
    after = {p: p.read_bytes() for p in before}
    assert before == after  # existing files untouched
    assert not (tmp_path / "out").exists()  # no empty output folder left behind


def test_a_shot_that_cannot_fit_is_refused_up_front(monkeypatch, tmp_path):
    model = write_tiny_checkpoint(tmp_path / "model")
    monkeypatch.setattr(api, "available_bytes", lambda device: 1024)
    expected = (r"not enough memory for one shot even in 2 block groups: about .* GiB needed \(factors .*"
                r"activations of one batch .*batches of 1 x 32 tokens.*already one window per batch")
    with pytest.raises(LLMSurgeonError, match=expected):
        api.run_prune(str(model), PruneConfig(shots=1, calib_samples=4, calib_seqlen=32),
                      api.RunOptions(out=str(tmp_path / "out"), data_dir=str(write_fake_wikitext(tmp_path / "d")),
                                     progress=False))
    assert not (tmp_path / "out").exists()


def test_nan_activations_stop_with_a_message_naming_the_layer(calibration):
    from llm_surgeon.engine.pruner import prune_model

    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    expected = r"NaN or Inf in the input activations of layer model\.layers\.1\.mlp\.down_proj"
    with pytest.raises(LLMSurgeonError, match=expected):
        prune_model(model, calibration, PruneConfig(shots=1), progress=False)


def test_rerunning_a_finished_run_returns_its_report(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    args = [*CLI, "prune", str(model), "--out", str(tmp_path / "out"), "--shots", "1", "--calib-samples", "4",
            "--calib-seqlen", "32", "--data-dir", str(data), "--no-progress"]
    subprocess.run(args, check=True, capture_output=True)
    stamp = (tmp_path / "out" / "model.safetensors").stat().st_mtime_ns
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0
    assert "already finished, nothing to do (use --overwrite" in again.stderr and again.stdout == ""
    assert (tmp_path / "out" / "model.safetensors").stat().st_mtime_ns == stamp


def test_failed_overwrite_leaves_the_previous_run_intact(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    base = [*CLI, "prune", str(model), "--out", str(tmp_path / "out"), "--shots", "1", "--calib-seqlen", "32",
            "--data-dir", str(data), "--no-progress"]
    subprocess.run([*base, "--calib-samples", "4"], check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    failed = subprocess.run([*base, "--calib-samples", "5000", "--overwrite"], capture_output=True, text=True)
    assert failed.returncode == 2 and "requested" in failed.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()} == before


@pytest.mark.parametrize("command", ["prune", "eval"])
def test_no_data_folder_offline_is_said_before_the_model_loads_with_how_to_point_at_one(command, tmp_path,
                                                                                          monkeypatch, capsys):
    import types

    from llm_surgeon import cli
    from llm_surgeon.data import textsets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.delenv("LLM_SURGEON_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    monkeypatch.setattr(textsets, "_HUB_ROWS", {})
    monkeypatch.setattr(api, "load_model_and_tokenizer", no_loading)
    model = write_tiny_checkpoint(tmp_path / "model")
    capsys.readouterr()  # the checkpoint's own writing bars
    args = ["prune", str(model), "--out", str(tmp_path / "out")] if command == "prune" else ["eval", str(model)]
    assert cli.main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-dir" in err[0] and "LLM_SURGEON_DATA" in err[0] and "Couldn't reach" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_stopped_before_writing_leaves_no_empty_folder_it_created(existed, tmp_path, monkeypatch):
    def interrupted(run):
        assert run.out.is_dir()  # claimed by the run, nothing in it yet
        raise KeyboardInterrupt

    model, data = write_tiny_checkpoint(tmp_path / "model"), write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    if existed:
        out.mkdir()
    monkeypatch.setattr(api, "execute_run", interrupted)
    options = api.RunOptions(out=str(out), data_dir=str(data), progress=False)
    config = PruneConfig(method="magnitude", sparsity=0.3, shots=1)
    with pytest.raises(KeyboardInterrupt):
        api.prune_job(str(model), config, options)
    assert out.is_dir() == existed  # the user's own folder stays
