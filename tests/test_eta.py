"""The run-level progress lines: durations, the plan's estimate before a shot, the measured mean after."""

from __future__ import annotations

import json

import pytest

from llm_surgeon.planning.eta import RunClock, format_duration
from tests.conftest import run_cli, write_fake_wikitext, write_tiny_checkpoint


def test_durations_read_as_a_person_reads_them():
    assert format_duration(42.4) == "42 s"
    assert format_duration(190) == "3 min 10 s"
    assert format_duration(3900) == "1 h 05 min"
    assert format_duration(-3) == "0 s"


def test_the_estimate_is_the_plan_first_then_the_measured_mean():
    clock = RunClock(shots=4, predicted_shot_seconds=100.0)
    assert clock.left_seconds(0) == 400.0
    assert "4 shots; plan: about 1 min 40 s a shot, 6 min 40 s to go" in clock.opening_line(0)
    line = clock.shot_line(1, 60.0)
    assert line.startswith("llm-surgeon: shot 1/4 done in 1 min 00 s;") and "about 3 min 00 s left" in line
    clock.shot_line(2, 120.0)
    assert clock.left_seconds(2) == 180.0  # the mean of 60 and 120, twice
    assert "left" not in clock.shot_line(4, 90.0)  # the last shot: nothing left to estimate


def test_a_resumed_run_counts_the_earlier_time_and_says_where_it_resumes():
    clock = RunClock(shots=5, predicted_shot_seconds=None, earlier_seconds=600.0)
    assert clock.elapsed() >= 600.0
    line = clock.opening_line(2)
    assert "resuming at shot 3 (10 min 00 s spent before)" in line and "plan" not in line
    assert clock.left_seconds(2) is None


def test_a_run_with_progress_reports_the_plans_time_beside_its_measured_shots(tmp_path):
    model, data = write_tiny_checkpoint(tmp_path / "model"), write_fake_wikitext(tmp_path / "data")
    flags = ["--shots", "2", "--calib-samples", "4", "--calib-seqlen", "32", "--data-dir", str(data)]
    shown = run_cli("prune", str(model), "--out", str(tmp_path / "a"), *flags)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    estimate = report["time_estimate"]
    shots = [sum(v for k, v in record.items() if k.startswith("seconds_")) for record in report["shot_records"]]
    assert estimate["measured_seconds_per_shot"] == pytest.approx(sum(shots) / 2, rel=1e-6)
    assert estimate["plan_seconds_per_shot"] > 0 and estimate["tflops"] > 0
    assert "matmuls" in estimate["throughput_source"]
    assert f"a shot (plan predicted {estimate['plan_seconds_per_shot']:.0f} s" in shown.stdout
    run_cli("prune", str(model), "--out", str(tmp_path / "b"), *flags, "--no-progress")  # no plan is made
    assert "time_estimate" not in json.loads((tmp_path / "b" / "report.json").read_text())
