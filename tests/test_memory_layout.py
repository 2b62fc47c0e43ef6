"""Where a shot keeps its curvature changes memory and time, never the result.

Block groups collected in separate passes (their sums waiting on disk), sums kept in host memory, and
the leaner input-statistics cache all give the factors, masks and weights of one pass over all blocks.
"""

from __future__ import annotations

import pytest
import torch

from llm_surgeon import PruneConfig
from llm_surgeon.curvature.block_groups import block_ranges, collect_in_groups
from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
from llm_surgeon.curvature.layout import MemoryLayout
from llm_surgeon.engine.pruner import prune_model, setup
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.planning.fit import SAFETY_MARGIN
from llm_surgeon.planning.memory import parse_bytes, shot_memory
from tests.conftest import tiny_llama, tiny_opt
from tests.test_pinned import CASES, _key, _run_case, assert_matches_pinned, pinned  # noqa: F401  (a fixture)


def test_block_ranges_cover_every_block_once_in_order():
    for blocks in range(1, 9):
        for groups in range(1, blocks + 1):
            ranges = block_ranges(blocks, groups)
            assert [b for r in ranges for b in r] == list(range(blocks))
            assert len(ranges) <= groups and max(map(len, ranges)) == -(-blocks // groups)
    with pytest.raises(ValueError):
        block_ranges(3, 4)


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
@pytest.mark.parametrize("fisher", ["empirical", "true"])
@pytest.mark.parametrize("groups", [2, 3])
def test_block_group_collection_equals_one_pass(make, fisher, groups, calibration, tmp_path):
    model = make(num_hidden_layers=3)
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    collector = LocalCollector(batch_size=3, fisher=fisher, progress=False)
    whole = collector.collect(model, adapter, linears, calibration, CurvatureRequest(), seed=5)
    spilled = collect_in_groups(collector, model, adapter, linears, calibration, CurvatureRequest(), 5,
                                block_ranges(3, groups), tmp_path)
    assert list(spilled) == list(whole) and len(list(tmp_path.glob("group-*.pt"))) == groups
    for name, f in whole.items():
        torch.testing.assert_close(spilled[name].A, f.A, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(spilled[name].G, f.G, rtol=1e-6, atol=1e-7, msg=name)
        assert spilled[name].tokens == f.tokens
    q, k = (adapter.module_name(2, rel) for rel in adapter.linear_names[:2])
    assert spilled[q].A is spilled[k].A  # a shared input stays shared when read back


def test_a_later_group_keeps_no_activations_of_earlier_blocks(calibration):
    """The backward of a later group's pass stops at its first block: no gradient reaches an earlier one."""
    model = tiny_llama(num_hidden_layers=3)
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    reached = []
    hook = adapter.blocks(model)[0].register_full_backward_hook(lambda *a: reached.append(0))
    collector = LocalCollector(batch_size=8, progress=False)
    late = {n: lin for n, lin in linears.items() if n.startswith("model.layers.2.")}
    collector.collect(model, adapter, late, calibration, CurvatureRequest(from_block=2), seed=0)
    assert reached == []
    collector.collect(model, adapter, late, calibration, CurvatureRequest(), seed=0)
    hook.remove()
    assert reached  # from the embeddings the backward does reach block 0


@pytest.mark.parametrize("case", CASES, ids=_key)
def test_block_groups_and_host_factors_give_the_pinned_results(case, pinned, tmp_path):  # noqa: F811
    """Every method x granularity: two block groups on disk and sums in host memory change nothing."""
    got = _run_case(*case, layout=MemoryLayout(factor_device="cpu", block_groups=2, scratch_dir=str(tmp_path)))
    assert_matches_pinned(case, got, pinned)
    assert list(tmp_path.iterdir()) == []  # each shot's scratch folder is gone


def test_grouped_factors_wait_on_disk_during_the_shot(calibration, tmp_path, monkeypatch):
    import llm_surgeon.curvature.block_groups as groups

    seen = []
    original = groups.SpilledFactors.add

    def spy(self, group, factors):
        original(self, group, factors)
        seen.append(sorted(p.name for p in self.folder.iterdir()))

    monkeypatch.setattr(groups.SpilledFactors, "add", spy)
    layout = MemoryLayout(block_groups=2, scratch_dir=str(tmp_path))
    prune_model(tiny_llama(), calibration, PruneConfig(shots=1), progress=False, layout=layout)
    assert seen == [["group-0000.pt"], ["group-0000.pt", "group-0001.pt"]]
    assert list(tmp_path.iterdir()) == []


def test_the_estimate_holds_the_largest_group_of_factor_sums():
    model = tiny_llama(num_hidden_layers=4)
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    widths = adapter.distinct_input_widths(model)

    def factors(groups: int) -> int:
        return shot_memory(model, linears, 4, 1, 16, True, True, input_widths=widths, block_groups=groups).factors

    from llm_surgeon.planning.memory import raw_factor_bytes

    raw = raw_factor_bytes(linears, widths)
    assert factors(1) - factors(2) == raw // 2 and factors(1) - factors(4) == raw - raw // 4
    assert factors(3) == factors(2)  # 4 blocks in 3 groups: the largest holds 2


def test_memory_sizes_parse_and_bad_ones_are_refused():
    assert parse_bytes("20GiB") == parse_bytes("20G") == 20 * 2**30
    assert parse_bytes("20GB") == 20 * 10**9 and parse_bytes("500mb") == 500 * 10**6
    assert parse_bytes("1.5e9") == 1_500_000_000
    for bad in ("lots", "0GB", "-1GB", "G", "12XB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
def test_bfloat16_weights_prune_with_float32_statistics(make, calibration):
    """bf16 passes, float32 factor sums and update math, the result cast back and close to the fp32 run."""
    config = PruneConfig(shots=2, sparsity=0.5)
    full = make()
    low = make().to(torch.bfloat16)
    adapter = get_adapter(low)
    factors = LocalCollector(batch_size=4, progress=False).collect(
        low, adapter, adapter.prunable_linears(low), calibration, CurvatureRequest(), seed=0)
    assert all(f.A.dtype == f.G.dtype == torch.float32 for f in factors.values())
    reference = prune_model(full, calibration, config, progress=False)
    result = prune_model(low, calibration, config, progress=False)
    for name, lin in adapter.prunable_linears(low).items():
        assert lin.weight.dtype == torch.bfloat16 and torch.isfinite(lin.weight).all()
        assert torch.equal(lin.weight == 0, result.masks[name]), name
        agreement = (result.masks[name] == reference.masks[name]).float().mean()
        assert agreement > 0.8, (name, float(agreement))
    sparsity = sum(int(m.sum()) for m in result.masks.values()) / sum(m.numel() for m in result.masks.values())
    assert sparsity == pytest.approx(0.5, abs=1e-3)


def test_max_memory_picks_block_groups_records_them_and_changes_nothing(tmp_path, monkeypatch):
    import json

    from llm_surgeon import api
    from tests.conftest import write_fake_wikitext, write_tiny_checkpoint

    model = write_tiny_checkpoint(tmp_path / "model")
    data = str(write_fake_wikitext(tmp_path / "data"))
    config = PruneConfig(shots=2, calib_samples=4, calib_seqlen=32)
    monkeypatch.setattr(api, "in_use_bytes", lambda device: 0)
    monkeypatch.setattr(api, "available_bytes", lambda device: None)
    loaded = tiny_llama()
    adapter = get_adapter(loaded)
    parts = setup(loaded, config, adapter)
    needs = [api._shot_needs(loaded, adapter, parts, config, g).total for g in (1, 2)]
    assert needs[1] < needs[0]
    just_under = int(needs[0] / (1 - SAFETY_MARGIN)) - 100  # one pass misses by 100 bytes once the margin is off
    reports = {}
    for label, budget in (("one pass", None), ("two groups", f"{just_under}B")):
        out = tmp_path / label.replace(" ", "-")
        api.run_prune(str(model), config, api.RunOptions(out=str(out), data_dir=data, progress=False,
                                                         max_memory=budget))
        reports[label] = json.loads((out / "report.json").read_text())
        assert not [p for p in out.iterdir() if p.name.startswith(".llm-surgeon-factors-")]
    assert reports["one pass"]["memory_estimate"]["block_groups"] == 1
    assert reports["two groups"]["memory_estimate"]["block_groups"] == 2
    assert reports["two groups"]["memory_estimate"]["max_memory_mb"] == pytest.approx(just_under / 2**20)
    assert reports["two groups"]["memory_estimate"]["batch_size"] == 4  # every window: groups came first
    from safetensors.torch import load_file

    one, two = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("one-pass", "two-groups"))
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6, msg=key)
