"""The pruning paths on a CUDA GPU against the same runs in host memory (skipped without a GPU).

Layers, factors and costs then live on the GPU while the threshold's counts and the structured choice
are made on the host: these tests catch a tensor left on the wrong device. ``benchmarks/gpu_check.py``
runs them (``pytest -m cuda``) on a machine with a GPU.
"""

from __future__ import annotations

import pytest
import torch

from llm_surgeon import PruneConfig
from llm_surgeon.curvature.layout import MemoryLayout
from llm_surgeon.engine.pruner import prune_model
from llm_surgeon.math.streaming_threshold import streaming_select_cheapest
from tests.conftest import tiny_llama, tiny_opt

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _windows() -> torch.Tensor:
    return torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(1))


def _pruned(make, granularity: str, device: str, layout: MemoryLayout | None = None):
    model = make(seed=3).to(device)
    config = PruneConfig(granularity=granularity, sparsity=0.3 if granularity == "structured" else 0.5, shots=2,
                         batch_size=4)
    result = prune_model(model, _windows(), config, progress=False, layout=layout)
    return result, {n: p.detach().float().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
@pytest.mark.parametrize("granularity", ["unstructured", "2:4", "structured"])
def test_a_gpu_run_prunes_like_a_host_run(make, granularity):
    host, host_weights = _pruned(make, granularity, "cpu")
    gpu, gpu_weights = _pruned(make, granularity, "cuda")
    zeros = sum(int(m.sum()) for m in host.masks.values())
    differ = sum(int((m.cpu() != host.masks[n]).sum()) for n, m in gpu.masks.items())
    assert differ <= 0.01 * zeros, (differ, zeros)  # TF32/cuBLAS sums differ from the host's in the last bits
    assert gpu.shots[-1].achieved_sparsity == pytest.approx(host.shots[-1].achieved_sparsity, abs=1e-3)
    for name, weight in gpu_weights.items():
        relative = float((weight - host_weights[name]).norm() / host_weights[name].norm().clamp_min(1e-12))
        assert relative < 5e-2, (name, relative)


def test_factor_sums_in_host_memory_and_block_groups_give_the_gpu_result(tmp_path):
    plain, weights = _pruned(tiny_llama, "unstructured", "cuda")
    layout = MemoryLayout(factor_device="cpu", block_groups=2, scratch_dir=str(tmp_path))
    grouped, grouped_weights = _pruned(tiny_llama, "unstructured", "cuda", layout)
    for name, mask in plain.masks.items():
        assert torch.equal(mask, grouped.masks[name]), name
    for name, weight in weights.items():
        torch.testing.assert_close(grouped_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_bfloat16_on_the_gpu_reaches_the_target_with_exact_zeros():
    model = tiny_llama(seed=3).to("cuda", torch.bfloat16)
    result = prune_model(model, _windows(), PruneConfig(sparsity=0.5, shots=1, batch_size=4), progress=False)
    assert result.shots[-1].achieved_sparsity == pytest.approx(0.5, abs=1e-3)
    for name, mask in result.masks.items():
        weight = model.get_submodule(name).weight
        assert weight.dtype == torch.bfloat16 and bool((weight[mask] == 0).all()), name


def test_the_streaming_threshold_takes_costs_from_the_gpu():
    generator = torch.Generator().manual_seed(0)
    costs = [torch.randn(n, generator=generator) for n in (1000, 300, 4000)]
    host = streaming_select_cheapest(lambda i: costs[i], [c.numel() for c in costs], 2100)
    gpu = streaming_select_cheapest(lambda i: costs[i].cuda(), [c.numel() for c in costs], 2100)
    for h, g in zip(host, gpu, strict=True):
        assert torch.equal(h, g.cpu())
