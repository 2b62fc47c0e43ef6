"""Healing's optional block-output loss (``--heal-block-weight``): its math against explicit references, the
hooks against the model's own hidden states, and that it trains, stores, prices and refuses (a run with it
resumed: tests/test_heal.py)."""

from __future__ import annotations

import json

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.errors import ConfigError
from llm_surgeon.healing.blocks import block_outputs, stacked
from llm_surgeon.healing.targets import (
    HealWindows,
    load_targets,
    matched_blocks,
    save_targets,
    targets_key,
    teacher_targets,
)
from llm_surgeon.healing.train import HealSettings, heal_model, held_out_scores
from llm_surgeon.math.distill import evenly_spaced_blocks, relative_squared_error, squared_error_sums
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import run_cli, tiny_llama, write_fake_wikitext, write_tiny_checkpoint


def test_relative_squared_error_is_the_explicit_ratio_zero_at_the_teacher_and_scale_free():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, 7, generator=generator), torch.randn(3, 5, 7, generator=generator)
    explicit = sum(float(s - t) ** 2 for s, t in zip(student.flatten(), teacher.flatten(), strict=True)) / \
        sum(float(t) ** 2 for t in teacher.flatten())
    assert float(relative_squared_error(student, teacher)) == pytest.approx(explicit, rel=1e-5)
    assert float(relative_squared_error(teacher, teacher)) == 0.0
    assert float(relative_squared_error(1e3 * student, 1e3 * teacher)) == pytest.approx(explicit, rel=1e-5)
    error, size = squared_error_sums(student, teacher.to(torch.bfloat16))
    assert float(size) == pytest.approx(float(teacher.to(torch.bfloat16).float().square().sum()))
    leaf = student.clone().requires_grad_(True)
    relative_squared_error(leaf, teacher).backward()
    assert torch.allclose(leaf.grad, 2 * (student - teacher) / teacher.square().sum())


def test_evenly_spaced_blocks_are_distinct_end_with_the_last_and_refuse_too_many():
    assert evenly_spaced_blocks(4, 30) == [6, 14, 21, 29]
    assert evenly_spaced_blocks(1, 18) == [17]
    assert evenly_spaced_blocks(5, 5) == [0, 1, 2, 3, 4]
    for count, blocks in [(3, 7), (6, 18), (7, 30)]:
        picked = evenly_spaced_blocks(count, blocks)
        assert len(set(picked)) == count and picked[-1] == blocks - 1 and picked == sorted(picked)
    with pytest.raises(ValueError):
        evenly_spaced_blocks(3, 2)
    with pytest.raises(ConfigError, match="--heal-blocks 3 is more than the model's 2 blocks"):
        matched_blocks(PruneConfig(heal=True, heal_block_weight=1.0, heal_blocks=3), 2)
    assert matched_blocks(PruneConfig(heal=True, heal_blocks=9), 2) == ()  # no weight: nothing matched


def test_hooks_capture_each_blocks_output_as_the_model_reports_it():
    model = tiny_llama(num_hidden_layers=3)
    adapter = get_adapter(model)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reported = model(input_ids=ids, output_hidden_states=True).hidden_states
    hooks = [len(block._forward_hooks) for block in adapter.blocks(model)]  # transformers may hook them too
    with torch.no_grad(), block_outputs(model, adapter, (0, 1)) as captured:
        model(input_ids=ids)
    assert torch.allclose(captured[0], reported[1]) and torch.allclose(captured[1], reported[2])
    assert stacked(captured, (1, 0)).shape == (2, 16, 2, 32)
    assert torch.equal(stacked(captured, (1, 0))[:, :, 0], captured[1])
    kept = captured[0]
    with torch.no_grad():
        model(input_ids=ids[:, :8])
    assert captured[0] is kept  # not refilled after the block
    assert [len(block._forward_hooks) for block in adapter.blocks(model)] == hooks


def _windows(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (64, 32), generator=generator), torch.randint(0, 128, (8, 32), generator=generator)


def test_healing_with_block_outputs_lowers_both_errors_and_keeps_the_structure():
    train, held = _windows()
    model = tiny_llama()
    adapter = get_adapter(model)
    blocks = (0, 1)
    train_targets = teacher_targets(model, adapter, train, 16, 8, progress=False, blocks=blocks)
    held_targets = teacher_targets(model, adapter, held, 16, 8, progress=False, blocks=blocks)
    assert train_targets.hidden.shape == (64, 32, 2, 32) and train_targets.hidden.dtype == torch.bfloat16
    assert held_out_scores(model, adapter, held, held_targets, 8, blocks)[1] < 1e-4  # dense: bfloat16 rounding
    result = prune(model, train[:8], PruneConfig(method="magnitude", granularity="structured", sparsity=0.5,
                                                 shots=1), progress=False)
    linears = adapter.prunable_linears(model)
    record = heal_model(model, adapter, linears, result.masks, train, train_targets, held, held_targets,
                        HealSettings(rank=0, lr=1e-3, batch=8, seed=0, progress=False, block_weight=1.0,
                                     blocks=blocks))
    assert record.kl_after < 0.9 * record.kl_before
    assert record.block_error_after < 0.9 * record.block_error_before
    assert record.blocks == [0, 1] and record.block_weight == 1.0
    for name, lin in linears.items():
        assert torch.all(lin.weight[result.masks[name]] == 0), name


def test_the_block_loss_changes_the_training_and_a_zero_weight_reads_no_blocks():
    train, held = _windows()
    runs = {}
    for weight in (0.0, 10.0):
        model = tiny_llama()
        adapter = get_adapter(model)
        targets = teacher_targets(model, adapter, train, 16, 8, progress=False, blocks=(1,))
        held_targets = teacher_targets(model, adapter, held, 16, 8, progress=False, blocks=(1,))
        result = prune(model, train[:8], PruneConfig(method="magnitude", sparsity=0.5, shots=1), progress=False)
        runs[weight] = heal_model(model, adapter, adapter.prunable_linears(model), result.masks, train, targets,
                                  held, held_targets, HealSettings(rank=0, lr=1e-3, batch=8, seed=0, progress=False,
                                                                   block_weight=weight, blocks=(1,)))
    assert runs[0.0].block_error_before is None and runs[0.0].blocks == []
    assert runs[10.0].losses != runs[0.0].losses  # the same seed and windows: only the loss differs


def test_stored_targets_keep_the_block_outputs_and_their_key_names_the_blocks(tmp_path):
    train, held = _windows()
    model = tiny_llama()
    adapter = get_adapter(model)
    targets = teacher_targets(model, adapter, train[:4], 8, 2, progress=False, blocks=(1,))
    held_targets = teacher_targets(model, adapter, held[:2], 8, 2, progress=False, blocks=(1,))
    windows = HealWindows(train[:4], held[:2], "wikitext2", "valid")
    key = targets_key("m", windows, 8, (1,))
    assert key != targets_key("m", windows, 8) and key != targets_key("m", windows, 8, (0, 1))
    path = tmp_path / "t.safetensors"
    save_targets(path, key, targets, held_targets)
    loaded, loaded_held = load_targets(path, key)
    assert torch.equal(loaded.hidden, targets.hidden) and torch.equal(loaded_held.hidden, held_targets.hidden)
    assert torch.equal(targets.picked(slice(1, 3)).hidden, targets.hidden[1:3])


def test_block_settings_are_refused_where_they_act_on_nothing():
    with pytest.raises(ConfigError, match="--heal-block-weight sets up healing; add --heal"):
        PruneConfig(heal_block_weight=1.0).validate()
    with pytest.raises(ConfigError, match="--heal-blocks chooses the blocks of --heal-block-weight"):
        PruneConfig(heal=True, heal_blocks=2).validate()
    for weight in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="--heal-block-weight >= 0"):
            PruneConfig(heal=True, heal_block_weight=weight).validate()
    with pytest.raises(ConfigError, match="--heal-blocks >= 1"):
        PruneConfig(heal=True, heal_block_weight=1.0, heal_blocks=0).validate()


def test_plan_prices_the_stored_block_outputs_and_refuses_too_many_blocks(tmp_path):
    from llm_surgeon.planning.plan import plan_shot

    config_json = tmp_path / "config.json"
    config_json.write_text(tiny_llama(hidden_size=64, intermediate_size=256).config.to_json_string())
    base = dict(method="wanda", sparsity=0.5, calib_samples=16, calib_seqlen=64, batch_size=4, heal=True,
                heal_tokens=4096)
    logits_only = plan_shot(str(config_json), PruneConfig(**base))
    with_blocks = plan_shot(str(config_json), PruneConfig(**base, heal_block_weight=1.0, heal_blocks=2))
    positions = (64 + 8) * 64  # 64 training windows of 64 and an eighth more held out
    stored = 2 * 2 * 64 * positions  # two blocks of width 64 in bfloat16
    batch_loss = 8 * 2 * 64 * 4 * 64  # a batch of 4 windows of them in float32, with the difference
    assert stored <= with_blocks.heal_bytes - logits_only.heal_bytes <= stored + batch_loss
    with pytest.raises(ConfigError, match="--heal-blocks 3 is more than the model's 2 blocks"):
        plan_shot(str(config_json), PruneConfig(**base, heal_block_weight=1.0, heal_blocks=3))


def test_cli_refuses_more_blocks_than_the_model_has_in_one_line(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    proc = run_cli("prune", str(model_dir), "--out", str(tmp_path / "o"), "--method", "magnitude", "--heal",
                   "--heal-block-weight", "1", "--heal-blocks", "5", "--calib-samples", "4", "--calib-seqlen", "32",
                   "--heal-tokens", "256", "--data-dir", str(data), "--no-progress", check=False)
    assert proc.returncode != 0 and "--heal-blocks 5 is more than the model's 2 blocks" in proc.stderr
    assert "Traceback" not in proc.stderr
    report = tmp_path / "o" / "report.json"
    assert not report.exists() or "heal" not in json.loads(report.read_text())
