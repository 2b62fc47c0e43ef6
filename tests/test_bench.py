"""The bench command on a tiny model: every record, the tables, the plot, and resume."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import write_fake_wikitext, write_tiny_checkpoint


def test_bench_grid_writes_results_tables_plot_and_resumes(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "llm_surgeon.cli", "bench", str(model), "--out", str(out),
           "--methods", "magnitude,wanda,surgeon", "--granularities", "unstructured,2:4", "--sparsities", "0.3,0.5",
           "--shots", "2", "--calib-samples", "4", "--calib-seqlen", "32", "--eval-seqlen", "32",
           "--eval-max-windows", "2", "--data-dir", str(data)]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert len(runs) == 1 + 3 * 2 + 3  # dense + 3 methods x 2 sparsities + 3 methods x 2:4
    assert results["protocol"]["calib_samples"] == 4 and results["protocol"]["eval_seqlen"] == 32
    for key, record in runs.items():
        if key == "dense":
            continue
        # Wanda compares within rows, so its count is quantised to whole weights per row (32 inputs here).
        tolerance = 1 / 32 if record["method"] == "wanda" else 0.005
        assert abs(record["achieved_sparsity"] - record["target_sparsity"]) <= tolerance, key
        assert record["ppl"] > 1 and record["peak_rss_mb"] > 0 and record["prune_seconds"] >= 0
        if record["granularity"] == "2:4":
            assert record["nm_validation"]["valid"]
    table = (out / "results.md").read_text()
    assert "### unstructured: WikiText-2 perplexity by size kept" in table and "### 2:4" in table
    assert "| method | 70% | 50% |" in table and "| dense |" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    logs = sorted(path.name for path in (out / "runs").glob("*.log"))
    assert len(logs) == len(runs) and "magnitude_unstructured_0.3.log" in logs

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0
    assert again.stderr.count("[skip]") == len(runs) and "[run]" not in again.stderr

    # A later call into the same folder adds the structured runs and reuses the dense reference.
    # It times the structured model against dense afterwards (--speed), each in its own process.
    structured = cmd[:cmd.index("--methods")] + ["--methods", "surgeon", "--granularities", "structured",
                                                 "--sparsities", "0.3", "--speed", "transformers", "--speed-prompt",
                                                 "16", "--speed-generate", "4"] + cmd[cmd.index("--shots"):]
    third = subprocess.run(structured, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert "[skip] dense" in third.stderr and third.stderr.count("[run]") == 1
    assert third.stderr.count("[speed]") == 1  # only the structured run is timed
    record = json.loads((out / "results.json").read_text())["runs"]["surgeon|structured|0.3"]
    footprint = record["footprint"]
    assert footprint["pruned"]["parameters"] < footprint["dense"]["parameters"]
    table = (out / "results.md").read_text()
    assert "### Structured: size and speed of the compact model" in table
    assert f"| surgeon | 70% | {record['ppl']:.2f} | {footprint['pruned']['parameters']:,} |" in table
    speed = record["speed"]
    assert speed["engine"] == "transformers" and speed["prompt_tokens"] == 16 and speed["new_tokens"] == 4
    assert speed["decode_ratio"] > 0 and speed["prompt_ratio"] > 0
    assert f"**{speed['decode_ratio']:.2f}x** |" in table and "Speed: `llm-surgeon speed` in transformers" in table

    from llm_surgeon.bench import reproduce_commands

    commands = reproduce_commands(json.loads((out / "results.json").read_text()), "DIR")
    protocol = " --shots 2 --calib-samples 4 --calib-seqlen 32 --seed 0 --eval-seqlen 32 --eval-max-windows 2 "
    start = f"llm-surgeon bench {model} --out DIR"
    assert commands[0].startswith(f"{start} --methods magnitude,wanda,surgeon --granularities unstructured "
                                  f"--sparsities 0.3,0.5{protocol}")
    assert commands[1].startswith(f"{start} --methods magnitude,wanda,surgeon --granularities 2:4{protocol}")
    assert commands[2].startswith(f"{start} --methods surgeon --granularities structured --sparsities 0.3{protocol}")
    assert len(commands) == 3


def test_grid_leaves_out_unsupported_structured_methods_and_rejects_bad_settings():
    import pytest

    from llm_surgeon.bench import grid
    from llm_surgeon.errors import ConfigError

    notes = []
    specs = grid(["magnitude", "wanda", "surgeon"], ["structured", "2:4"], [0.2, 0.3], log=notes.append)
    keys = [s.key for s in specs]
    assert keys == ["magnitude|structured|0.2", "magnitude|structured|0.3", "surgeon|structured|0.2",
                    "surgeon|structured|0.3", "magnitude|2:4|0.5", "wanda|2:4|0.5", "surgeon|2:4|0.5"]
    assert len(notes) == 1 and "wanda" in notes[0]
    with pytest.raises(ConfigError):
        grid(["surgeon"], ["unstructured"], [1.5])


def test_a_run_stopped_part_way_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """A bench killed mid-run must not throw away finished shots (on a CPU a run takes most of an hour),
    and a run whose report was written just before the bench stopped is recorded, not redone."""
    from llm_surgeon import api, cli
    from llm_surgeon.bench import Protocol, RunSpec, prune_command, run_bench

    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    protocol = Protocol(model=str(model), data_dir=str(data), calib_samples=4, calib_seqlen=32, seed=0,
                        eval_seqlen=32, eval_max_windows=2, shots=3)
    spec = RunSpec("surgeon", "unstructured", 0.5)
    out = tmp_path / "bench"
    folder = out / "runs" / spec.folder
    assert "--overwrite" in prune_command(protocol, spec, folder)  # nothing to keep yet

    save = api.save_checkpoint

    def save_then_stop(out_dir, name, result, linears, **kwargs):
        save(out_dir, name, result, linears, **kwargs)
        raise KeyboardInterrupt  # the machine went away after the first shot

    monkeypatch.setattr(api, "save_checkpoint", save_then_stop)
    assert cli.main(prune_command(protocol, spec, folder)[3:]) == 130
    monkeypatch.undo()
    assert (folder / "checkpoints" / "shot-1").is_dir()

    logs: list[str] = []
    record = run_bench(protocol, [spec], out, log=logs.append)["runs"][spec.key]
    command = next(line for line in logs if line.startswith(f"[run] {spec.key}"))
    assert "--overwrite" not in command
    assert record["resumed_from_shot"] == 1 and len(record["shot_records"]) == 3
    assert abs(record["achieved_sparsity"] - 0.5) <= 0.005

    # The report exists but the record was lost: the bench records it without pruning again.
    weights = folder / "model.safetensors"
    written = weights.stat().st_mtime_ns
    results = json.loads((out / "results.json").read_text())
    del results["runs"][spec.key]
    (out / "results.json").write_text(json.dumps(results))
    again = run_bench(protocol, [spec], out, log=logs.append)["runs"][spec.key]
    assert weights.stat().st_mtime_ns == written
    assert again["ppl"] == record["ppl"] and again["prune_seconds"] == record["prune_seconds"]
