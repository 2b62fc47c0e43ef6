"""Healing after pruning: the coarse KL against explicit references, and that training keeps every pattern."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llm_surgeon import PruneConfig, prune
from llm_surgeon.data.calibration import tokenize_text
from llm_surgeon.data.textsets import WIKITEXT2, calibration_text
from llm_surgeon.errors import ConfigError, DataError
from llm_surgeon.healing.targets import (
    HealWindows,
    heal_windows,
    load_targets,
    save_targets,
    targets_key,
    teacher_targets,
)
from llm_surgeon.healing.train import HealSettings, heal_model, held_out_scores
from llm_surgeon.math.distill import coarse_kl, learning_rate_factor, top_k_log_probs
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import run_cli, tiny_llama, tiny_tokenizer, write_fake_wikitext, write_tiny_checkpoint


def _explicit_coarse_kl(student: torch.Tensor, teacher: torch.Tensor, k: int) -> float:
    """KL between the two distributions with everything outside the teacher's top k merged, in float64."""
    total = 0.0
    for s_row, t_row in zip(student.double().softmax(-1), teacher.double().softmax(-1), strict=True):
        top = torch.topk(t_row, k).indices
        rest = torch.ones_like(t_row, dtype=torch.bool)
        rest[top] = False
        p = torch.cat([t_row[top], t_row[rest].sum()[None]])
        q = torch.cat([s_row[top], s_row[rest].sum()[None]])
        total += float(sum(pi * (pi / qi).log() for pi, qi in zip(p, q, strict=True) if pi > 0))
    return total


def test_coarse_kl_is_the_kl_of_the_merged_distributions():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 40, generator=generator) * 3
    student = teacher + torch.randn(5, 40, generator=generator)
    for k in (1, 3, 10, 39):
        indices, log_probs = top_k_log_probs(teacher, k)
        assert float(coarse_kl(student, indices, log_probs)) == pytest.approx(
            _explicit_coarse_kl(student, teacher, k), rel=1e-4)


def test_coarse_kl_with_the_whole_vocabulary_is_the_full_kl_and_never_exceeds_it():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(6, 30, generator=generator) * 2
    student = torch.randn(6, 30, generator=generator) * 2
    full = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="sum")
    indices, log_probs = top_k_log_probs(teacher, 30)
    assert float(coarse_kl(student, indices, log_probs)) == pytest.approx(float(full), rel=1e-4)
    for k in (1, 5, 15):
        assert float(coarse_kl(student, *top_k_log_probs(teacher, k))) <= float(full) + 1e-5


def test_coarse_kl_is_zero_with_a_zero_gradient_at_the_teacher_and_finite_when_the_tail_is_empty():
    logits = torch.randn(4, 12, generator=torch.Generator().manual_seed(2))
    student = logits.clone().requires_grad_(True)
    loss = coarse_kl(student, *top_k_log_probs(logits, 5))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max() < 1e-6
    peaked = torch.full((2, 12), -80.0)
    peaked[:, 0] = 80.0  # the top-1 holds all the mass: an empty tail
    student = torch.randn(2, 12).requires_grad_(True)
    loss = coarse_kl(student, *top_k_log_probs(peaked, 1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert float(loss.detach()) == pytest.approx(float(-student.detach().log_softmax(-1)[:, 0].sum()), rel=1e-5)


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [learning_rate_factor(s, 20, 4) for s in range(20)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))
    assert learning_rate_factor(20, 20, 4) == pytest.approx(0.0)


def _windows(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (64, 32), generator=generator), torch.randint(0, 128, (8, 32), generator=generator)


@pytest.mark.parametrize(("granularity", "rank"), [("unstructured", 0), ("2:4", 0), ("structured", 0),
                                                   ("unstructured", 4), ("structured", 4)])
def test_healing_lowers_the_held_out_kl_and_keeps_every_removed_weight_zero(granularity, rank):
    train, held = _windows()
    model = tiny_llama()
    adapter = get_adapter(model)
    train_targets = teacher_targets(model, adapter, train, 16, 8, progress=False)
    held_targets = teacher_targets(model, adapter, held, 16, 8, progress=False)
    result = prune(model, train[:8], PruneConfig(method="magnitude", granularity=granularity, sparsity=0.5, shots=1),
                   progress=False)
    linears = adapter.prunable_linears(model)
    others = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith("proj.weight")}
    pruned = {n: lin.weight.detach().clone() for n, lin in linears.items()}
    record = heal_model(model, adapter, linears, result.masks, train, train_targets, held, held_targets,
                        HealSettings(rank=rank, lr=1e-2 if rank else 1e-3, batch=8, seed=0, progress=False))
    assert record.kl_after < 0.9 * record.kl_before
    kl_before, _ = held_out_scores(tiny_pruned_copy(result, granularity), adapter, held, held_targets, 8)
    assert record.kl_before == pytest.approx(kl_before, rel=1e-5)
    assert record.steps == 8 and record.tokens == train.numel() and len(record.losses) == 8
    for name, lin in linears.items():
        assert torch.all(lin.weight[result.masks[name]] == 0), name
        assert lin.weight.grad is None  # no weight-sized buffer left behind
    assert any(not torch.equal(pruned[n], lin.weight) for n, lin in linears.items())
    for name, value in model.named_parameters():
        if name in others:
            assert torch.equal(value, others[name]), name  # embeddings and norms do not train
    if granularity == "2:4":
        for lin in linears.values():
            groups = (lin.weight != 0).reshape(lin.out_features, -1, 4).sum(-1)
            assert groups.max() <= 2


def tiny_pruned_copy(result, granularity: str):
    """The same tiny model pruned the same way again (magnitude is deterministic): healing's starting point."""
    model = tiny_llama()
    train, _ = _windows()
    prune(model, train[:8], PruneConfig(method="magnitude", granularity=granularity, sparsity=0.5, shots=1),
          progress=False)
    return model


def test_healing_windows_hold_out_the_text_end_and_refuse_too_little_text(tmp_path):
    data = write_fake_wikitext(tmp_path / "data")
    tokenizer = tiny_tokenizer()
    config = PruneConfig(calib_seqlen=32, heal=True, heal_tokens=320)
    with pytest.warns(UserWarning, match="valid split"):
        windows = heal_windows(tokenizer, config, data)
    assert windows.train.shape == (10, 32) and windows.held_out.shape == (2, 32)
    with pytest.warns(UserWarning):
        text, _ = calibration_text(WIKITEXT2, data, 0, 0)
    tokens = tokenize_text(tokenizer, text)
    assert torch.equal(windows.held_out.reshape(-1), tokens[-64:])  # the text's end, contiguous
    starts = [int((tokens.unfold(0, 32, 1) == w).all(-1).nonzero()[0]) for w in windows.train]
    assert max(starts) + 32 <= tokens.numel() - 64  # no training window reaches the held-out end
    with pytest.raises(DataError, match="--heal-tokens"), pytest.warns(UserWarning):
        heal_windows(tokenizer, PruneConfig(calib_seqlen=32, heal=True, heal_tokens=10**7), data)


def test_stored_targets_are_read_back_only_for_the_same_windows(tmp_path):
    train, held = _windows()
    model = tiny_llama()
    targets = teacher_targets(model, get_adapter(model), train[:4], 8, 2, progress=False)
    held_targets = teacher_targets(model, get_adapter(model), held[:2], 8, 2, progress=False)
    windows = HealWindows(train[:4], held[:2], "wikitext2", "valid")
    key = targets_key("m", windows, 8)
    path = tmp_path / "t.safetensors"
    save_targets(path, key, targets, held_targets)
    loaded, loaded_held = load_targets(path, key)
    assert torch.equal(loaded.indices, targets.indices) and torch.equal(loaded_held.log_probs, held_targets.log_probs)
    other = HealWindows(train[1:5], held[:2], "wikitext2", "valid")
    assert load_targets(path, targets_key("m", other, 8)) is None
    assert load_targets(path, targets_key("m", windows, 16)) is None
    path.write_bytes(b"damaged")
    assert load_targets(path, key) is None


def test_heal_settings_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="--heal-tokens .*add --heal"):
        PruneConfig(heal_tokens=4096).validate()
    with pytest.raises(ConfigError, match="less than one window"):
        PruneConfig(heal=True, heal_tokens=100, calib_seqlen=512).validate()
    with pytest.raises(ConfigError, match="--heal-topk"):
        PruneConfig(heal=True, heal_topk=0).validate()
    with pytest.raises(DataError, match="no-such-file"):
        PruneConfig(heal=True, heal_data="no-such-file.txt").validate()
    assert PruneConfig(heal=True).heal_learning_rate == 1e-3  # a fraction of each layer's weight RMS
    assert PruneConfig(heal=True).heal_rate_scale == "weight-rms"
    assert PruneConfig(heal=True, heal_lr_scale="absolute").heal_learning_rate == 2e-4
    assert PruneConfig(heal=True, heal_rank=8).heal_learning_rate == 1e-3
    assert PruneConfig(heal=True, heal_rank=8).heal_rate_scale == "absolute"  # its factors start at zero


def test_prune_with_heal_reports_it_and_a_rerun_after_healing_does_not_heal_again(tmp_path, monkeypatch):
    from llm_surgeon import api
    from llm_surgeon.api import RunOptions, run_prune

    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    config = PruneConfig(method="magnitude", granularity="structured", sparsity=0.3, shots=2, calib_samples=4,
                         calib_seqlen=32, batch_size=4, heal=True, heal_tokens=512, heal_lr=1e-3)
    options = RunOptions(out=str(out), data_dir=str(data), eval=True, eval_seqlen=64, progress=False)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "finish_run", stop)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        run_prune(str(model_dir), config, options)
    assert (out / "checkpoints" / "healed" / "meta.json").is_file()
    assert (out / "checkpoints" / "heal-teacher.safetensors").is_file()
    monkeypatch.undo()
    healed = []
    monkeypatch.setattr(api, "heal_model", lambda *a, **k: healed.append(1))
    with pytest.warns(UserWarning):
        report = run_prune(str(model_dir), config, options)
    assert not healed  # resumed from the healed checkpoint
    heal = report["heal"]
    assert heal["kl_after"] < heal["kl_before"] and heal["steps"] == 4 and heal["tokens"] == 512
    assert heal["data"] == {"text": "wikitext2", "split": "valid", "windows": 16, "held_out_windows": 2,
                            "seqlen": 32}
    assert heal["ppl_before"]["wikitext2"] > 0 and report["ppl"]["wikitext2"] > 0
    assert heal["seconds_teacher"] > 0 and report["seconds"]["heal"] >= heal["seconds"]
    assert not (out / "checkpoints").exists()


def test_cli_heal_flags_and_refusals(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("prune", str(model_dir), "--out", str(out), "--method", "wanda", "--sparsity", "0.5",
            "--calib-samples", "4", "--calib-seqlen", "32", "--heal", "--heal-tokens", "256", "--heal-rank", "2",
            "--data-dir", str(data), "--no-progress")
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["heal"] and report["heal"]["rank"] == 2 and report["heal"]["lr"] == 1e-3
    assert report["heal"]["ppl_before"] is None  # not evaluated: nothing to compare
    estimate = report["memory_estimate"]
    assert estimate["heal_mb"] > 0 and estimate["heal_targets_mb"] > 0
    assert estimate["predicted_peak_mb"] >= estimate["loaded_mb"] + estimate["heal_mb"] + estimate["heal_targets_mb"]
    proc = run_cli("prune", str(model_dir), "--out", str(tmp_path / "o2"), "--heal-rank", "4", check=False)
    assert proc.returncode != 0 and "--heal-rank sets up healing; add --heal" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("prune", str(model_dir), "--out", str(tmp_path / "o3"), "--heal", "--dtype", "bfloat16",
                   check=False)
    assert proc.returncode != 0 and "add --heal-rank R" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o3").exists()


def test_plan_prices_healing_in_memory_and_time(tmp_path):
    from llm_surgeon.planning.memory import heal_bytes
    from llm_surgeon.planning.plan import plan_shot

    config_json = tmp_path / "config.json"
    config_json.write_text(tiny_llama(hidden_size=64, intermediate_size=256).config.to_json_string())
    base = dict(method="wanda", granularity="unstructured", sparsity=0.5, calib_samples=16, calib_seqlen=64,
                batch_size=4)
    rate = 1.0  # a given throughput: this machine's, measured per call, varies with its load
    plain = plan_shot(str(config_json), PruneConfig(**base), tflops=rate)
    healed = plan_shot(str(config_json), PruneConfig(**base, heal=True, heal_tokens=4096), tflops=rate)
    longer = plan_shot(str(config_json), PruneConfig(**base, heal=True, heal_tokens=8192), tflops=rate)
    low_rank = plan_shot(str(config_json), PruneConfig(**base, heal=True, heal_tokens=4096, heal_rank=2), tflops=rate)
    assert plain.heal_bytes == 0 and plain.heal_seconds == 0
    assert healed.heal_bytes > 0 and healed.peak_bytes >= plain.peak_bytes
    assert healed.seconds_total == pytest.approx(healed.seconds_per_shot + healed.heal_seconds)
    assert longer.heal_seconds == pytest.approx(2 * healed.heal_seconds, rel=0.1)
    model = tiny_llama(hidden_size=64, intermediate_size=256)
    linears = get_adapter(model).prunable_linears(model)
    weights = sum(lin.weight.numel() for lin in linears.values())
    from llm_surgeon.planning.memory import HealNeeds

    full = heal_bytes(linears, 2, 256, 4, HealNeeds(0, 72 * 64, 64))
    assert full["gradients"] + full["adam"] == 3 * 4 * weights and full["targets"] == 8 * 64 * 72 * 64
    assert healed.heal_bytes - low_rank.heal_bytes > 0  # Adam's moments of every weight against small factors


def test_the_summary_says_what_healing_did():
    from llm_surgeon.artifacts.summary import _heal_lines

    heal = {"tokens": 131072, "steps": 64, "rank": 0, "lr": 5e-5, "seconds": 900.0, "seconds_teacher": 100.0,
            "kl_before": 0.31234, "kl_after": 0.12345, "held_out_tokens": 16384, "ppl_before": {"wikitext2": 30.12}}
    lines = _heal_lines(heal)
    assert "131,072 tokens, 64 steps (every kept weight, lr 5e-05) in 1000 s" in lines[0]
    assert "0.3123 -> 0.1235 on 16,384 held-out tokens" in lines[0]
    assert lines[1].endswith("perplexity WikiText-2 30.12")
    assert "rank-8 correction" in _heal_lines({**heal, "rank": 8, "ppl_before": None})[0]
    each = _heal_lines({**heal, "each_shot": True, "tokens": 26214, "steps": 13, "tokens_all_shots": 131072,
                        "seconds_all_shots": 1000.0})[0]
    assert "after each shot, 131,072 tokens in all (every kept weight, lr 5e-05) in 1100 s" in each
    assert "the last 26,214 tokens, 13 steps: KL to the dense model 0.3123 -> 0.1235" in each
    assert _heal_lines(None) == []


@pytest.mark.parametrize("blocks", [{}, {"heal_block_weight": 1.0, "heal_blocks": 1}])
def test_a_run_stopped_in_its_first_shot_starts_again_with_the_stored_predictions(tmp_path, monkeypatch, blocks):
    """With ``blocks``, the stored dense block outputs come back too, and the report and summary name them."""
    from llm_surgeon import api
    from llm_surgeon.api import RunOptions, run_prune
    from llm_surgeon.artifacts.summary import human_summary

    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    config = PruneConfig(method="magnitude", sparsity=0.5, shots=1, calib_samples=4, calib_seqlen=32, batch_size=4,
                         heal=True, heal_tokens=256, heal_lr=1e-3, **blocks)
    options = RunOptions(out=str(out), data_dir=str(data), progress=False)

    def stop(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "execute_run", stop)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        run_prune(str(model_dir), config, options)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["heal-teacher.safetensors"]
    monkeypatch.undo()
    with pytest.warns(UserWarning):
        report = run_prune(str(model_dir), config, options)
    heal = report["heal"]
    assert heal["seconds_teacher"] == 0.0  # read back, not computed again
    assert heal["kl_after"] < heal["kl_before"]
    if blocks:
        assert heal["blocks"] == [1] and heal["block_weight"] == 1.0
        assert heal["block_error_after"] < heal["block_error_before"]
        assert "outputs of blocks 1 (weight 1)" in human_summary(report, str(out))
    else:
        assert heal["blocks"] == [] and heal["block_error_before"] is None


def test_heal_each_shot_shares_the_windows_once_among_the_shots():
    from llm_surgeon.healing.targets import HealInputs, TeacherTargets, share_of

    train = torch.arange(7 * 4).reshape(7, 4)
    targets = TeacherTargets(train[..., None].repeat(1, 1, 2).int(), train[..., None].float().repeat(1, 1, 2))
    inputs = HealInputs(HealWindows(train, train[:1], "wikitext2", "valid"), targets, targets, 0.0)
    shares = [share_of(inputs, part, 3) for part in range(3)]
    assert torch.equal(torch.cat([windows for windows, _ in shares]), train)
    assert [len(windows) for windows, _ in shares] == [2, 3, 2]
    for windows, share in shares:  # each share's targets are its own windows'
        assert torch.equal(share.indices[..., 0], windows.int()) and torch.equal(share.log_probs[..., 1],
                                                                                   windows.float())


def test_heal_each_shot_heals_after_every_shot_on_the_same_budget(tmp_path, monkeypatch):
    from llm_surgeon import api
    from llm_surgeon.api import RunOptions, run_prune

    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    config = PruneConfig(method="magnitude", granularity="structured", sparsity=0.6, shots=3, calib_samples=4,
                         calib_seqlen=32, batch_size=4, heal=True, heal_tokens=768, heal_lr=3e-4,
                         heal_each_shot=True)
    shares = []
    real = api.heal_model

    def counted(model, adapter, linears, removed, train, *rest):
        shares.append(len(train))
        return real(model, adapter, linears, removed, train, *rest)

    monkeypatch.setattr(api, "heal_model", counted)
    with pytest.warns(UserWarning):
        report = run_prune(str(model_dir), config, RunOptions(out=str(tmp_path / "out"), data_dir=str(data),
                                                              progress=False))
    assert shares == [8, 8, 8]  # 768 tokens = 24 windows of 32, a third after each shot
    between = [record["heal"] for record in report["shot_records"]]
    assert between[2] is None and [h["tokens"] for h in between[:2]] == [256, 256]
    heal = report["heal"]  # the first shot (20%) barely moves this random model: its KL is too small to fall
    assert between[1]["kl_after"] < between[1]["kl_before"] and heal["kl_after"] < heal["kl_before"]
    assert heal["each_shot"] and heal["tokens"] == 256 and heal["tokens_all_shots"] == 768
    assert heal["data"]["windows"] == 8
    assert report["seconds"]["heal"] == pytest.approx(heal["seconds_teacher"] + heal["seconds"]
                                                      + sum(h["seconds"] for h in between[:2]))
    with pytest.raises(ConfigError, match="--heal-each-shot .* add --heal"):
        PruneConfig(heal_each_shot=True).validate()
    with pytest.raises(ConfigError, match="among 5 shots: raise --heal-tokens to at least 2560"):
        PruneConfig(heal=True, heal_each_shot=True, heal_tokens=2048, calib_seqlen=512, shots=5).validate()


def test_kept_rms_leaves_the_removed_zeros_out_so_a_masked_layer_and_its_smaller_copy_agree():
    from llm_surgeon.healing.train import kept_rms

    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    removed = torch.zeros(6, 5, dtype=torch.bool)
    removed[[1, 4]] = True  # two rows gone, as structured pruning removes them
    masked = weight.masked_fill(removed, 0.0)
    smaller = weight[[0, 2, 3, 5]]
    assert kept_rms(masked, removed) == pytest.approx(float(smaller.double().pow(2).mean().sqrt()), rel=1e-12)
    assert kept_rms(smaller, None) == pytest.approx(kept_rms(masked, removed), rel=1e-12)
    assert kept_rms(masked, torch.ones(6, 5, dtype=torch.bool)) == 0.0


@pytest.mark.parametrize("lr_scale", ["absolute", "weight-rms"])
def test_the_first_adam_step_moves_each_layer_by_its_rate_absolute_or_relative_to_its_weights(lr_scale):
    """Adam's first step is its rate times the gradient's sign: absolute, every layer moves by the same amount
    however large its weights; with ``weight-rms`` each moves by the same fraction of its kept weights' RMS."""
    from llm_surgeon.healing.train import kept_rms

    train, held = _windows()
    model = tiny_llama()
    adapter = get_adapter(model)
    with torch.no_grad():  # teacher and student differ, so every gradient is far from zero
        teacher = tiny_llama(seed=1)
    targets = teacher_targets(teacher, adapter, train[:8], 16, 8, progress=False)
    held_targets = teacher_targets(teacher, adapter, held, 16, 8, progress=False)
    linears = adapter.prunable_linears(model)
    with torch.no_grad():
        linears["model.layers.0.mlp.down_proj"].weight.mul_(10.0)  # one layer's weights 10x larger
    removed = {name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()}
    before = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    rate = 1e-3
    heal_model(model, adapter, linears, removed, train[:8], targets, held, held_targets,
               HealSettings(rank=0, lr=rate, batch=8, seed=0, progress=False, lr_scale=lr_scale))
    for name, lin in linears.items():
        step = (lin.weight.detach() - before[name]).abs().max().item()
        expected = rate * kept_rms(before[name], None) if lr_scale == "weight-rms" else rate
        assert step == pytest.approx(expected, rel=0.03), name  # short of it by Adam's eps over |g| (~1e-6 here)


def test_the_relative_rate_has_its_own_default_and_refuses_a_low_rank_correction():
    from llm_surgeon.config import RELATIVE_LR

    assert PruneConfig(heal=True, heal_lr_scale="weight-rms").heal_learning_rate == RELATIVE_LR == 1e-3
    assert PruneConfig(heal=True, heal_lr_scale="weight-rms", heal_lr=5e-4).heal_learning_rate == 5e-4
    with pytest.raises(ConfigError, match="--heal-lr-scale weight-rms .*--heal-rank"):
        PruneConfig(heal=True, heal_lr_scale="weight-rms", heal_rank=4).validate()
    with pytest.raises(ConfigError, match="--heal-lr-scale .*add --heal"):
        PruneConfig(heal_lr_scale="weight-rms").validate()


def test_the_settings_a_config_resolves_to_are_the_ones_prune_and_a_folder_healed_later_both_use():
    """``HealSettings.from_config`` holds the resolution once: ``auto`` is relative to the weights with its own
    rate for full-parameter healing, absolute with the low-rank rate for a correction, and an explicit rate and
    block loss pass through."""
    from llm_surgeon.config import LOW_RANK_LR, RELATIVE_LR

    full = HealSettings.from_config(PruneConfig(heal=True, seed=3), batch=4, progress=False)
    assert (full.rank, full.lr, full.lr_scale, full.batch, full.seed) == (0, RELATIVE_LR, "weight-rms", 4, 3)
    low_rank = HealSettings.from_config(PruneConfig(heal=True, heal_rank=8), batch=2, progress=False)
    assert (low_rank.rank, low_rank.lr, low_rank.lr_scale) == (8, LOW_RANK_LR, "absolute")
    blocks = HealSettings.from_config(PruneConfig(heal=True, heal_lr=5e-4, heal_block_weight=0.5), batch=4,
                                      progress=False, blocks=(1, 3))
    assert (blocks.lr, blocks.block_weight, blocks.matched) == (5e-4, 0.5, (1, 3))
