"""Mixture of experts: per-expert factors from the tokens routed to each expert, checked against a loop over
experts written out here; the view shares the fused storage; experts no token reached are left dense, refused
for N:M, or pruned by magnitude on request; the report gives per-expert tokens and sparsity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.pruner import prune_model, sparsity_stats
from llm_surgeon.errors import ConfigError
from llm_surgeon.math.selection import nm_violations
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.models.experts import ExpertView, expert_summary
from tests.conftest import collect_factors

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_mixtral(seed: int = 0, experts: int = 4, top_k: int = 2):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mixtral", **COMMON, num_local_experts=experts, num_experts_per_tok=top_k)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _hand_written_expert_factors(model, ids) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, G) of every expert matrix from a forward that loops over the experts itself, on the fused weights:
    A = Σ_routed x xᵀ / n_e, G = Σ_routed g gᵀ / N (N: all tokens of the batch)."""
    kept: dict[str, list] = {}

    def looped(experts, name):
        def forward(hidden, top_k_index, top_k_weights):
            out = torch.zeros_like(hidden)
            for e in range(experts.gate_up_proj.shape[0]):
                position, token = torch.where((top_k_index == e).T)
                if token.numel() == 0:
                    continue
                x = hidden[token]
                pre = F.linear(x, experts.gate_up_proj[e])
                gate, up = pre.chunk(2, dim=-1)
                mid = F.silu(gate) * up
                post = F.linear(mid, experts.down_proj[e])
                pre.retain_grad()
                post.retain_grad()
                kept[f"{name}.gate_up.{e}"] = [x, pre]
                kept[f"{name}.down.{e}"] = [mid, post]
                out.index_add_(0, token, post * top_k_weights[token, position, None])
            return out
        return forward

    for index, layer in enumerate(model.model.layers):
        layer.mlp.experts.forward = looped(layer.mlp.experts, f"model.layers.{index}.mlp.experts")
    logits = model(input_ids=ids).logits[:, :-1]
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").backward()
    factors = {}
    for name, (x, out) in kept.items():
        x, g = x.detach().double(), out.grad.double()
        factors[name] = (x.T @ x / x.shape[0], g.T @ g / ids.numel())
    return factors


def test_expert_factors_equal_a_hand_written_loop_over_experts(calibration):
    ids = calibration[:4]
    reference = _hand_written_expert_factors(tiny_mixtral(seed=1), ids)
    model = tiny_mixtral(seed=1)
    linears = get_adapter(model).prunable_linears(model)
    got = collect_factors(model, linears, ids, batch_size=4)
    assert reference and set(reference) <= set(got)
    for name, (A, G) in reference.items():
        torch.testing.assert_close(got[name].A.double(), A, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(got[name].G.double(), G, rtol=1e-3, atol=1e-9, msg=name)


def tiny_llama4(seed: int = 0):
    """Blocks 1 and 3 hold 4 routed experts (top 1) and a shared expert; blocks 0 and 2 a dense MLP."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama4_text", **{**COMMON, "num_hidden_layers": 4}, num_local_experts=4,
                                  num_experts_per_tok=1, intermediate_size_mlp=64, head_dim=8,
                                  interleave_moe_layer_step=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _hand_written_llama4_expert_factors(model, ids) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, G) of every Llama 4 expert matrix from an MoE forward written out here: the routed tokens of
    expert e are those the router's top-k picked, its input is the token times its sigmoid score."""
    kept: dict[str, list] = {}

    def looped(moe, name):
        def forward(hidden):
            flat = hidden.reshape(-1, hidden.shape[-1])
            logits = F.linear(flat, moe.router.weight)
            top_value, top_index = torch.topk(logits, moe.top_k, dim=1)
            out = moe.shared_expert(flat)
            for e in range(moe.num_experts):
                token, position = torch.where(top_index == e)
                if token.numel() == 0:
                    continue
                x = flat[token] * torch.sigmoid(top_value[token, position])[:, None]
                pre = x @ moe.experts.gate_up_proj[e]
                gate, up = pre.chunk(2, dim=-1)
                mid = F.silu(gate) * up
                post = mid @ moe.experts.down_proj[e]
                pre.retain_grad()
                post.retain_grad()
                kept[f"{name}.gate_up.{e}"] = [x, pre]
                kept[f"{name}.down.{e}"] = [mid, post]
                out = out.index_add(0, token, post)
            return out, logits
        return forward

    for index, layer in enumerate(model.model.layers):
        if layer.is_moe_layer:
            layer.feed_forward.forward = looped(layer.feed_forward, f"model.layers.{index}.feed_forward.experts")
    logits = model(input_ids=ids).logits[:, :-1]
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").backward()
    return {name: (x.detach().double().T @ x.detach().double() / x.shape[0],
                   out.grad.double().T @ out.grad.double() / ids.numel()) for name, (x, out) in kept.items()}


def test_llama4_expert_factors_equal_a_hand_written_moe_forward(calibration):
    ids = calibration[:4]
    reference = _hand_written_llama4_expert_factors(tiny_llama4(seed=1), ids)
    model = tiny_llama4(seed=1)
    linears = get_adapter(model).prunable_linears(model)
    assert "model.layers.0.feed_forward.gate_proj" in linears and "model.layers.1.feed_forward.router" not in linears
    got = collect_factors(model, linears, ids, batch_size=4)
    assert len(reference) >= 8 and set(reference) <= set(got)
    for name, (A, G) in reference.items():
        torch.testing.assert_close(got[name].A.double(), A, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(got[name].G.double(), G, rtol=1e-3, atol=1e-9, msg=name)


def test_the_view_shares_the_fused_storage_and_is_put_back():
    model = tiny_mixtral()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    view = model.model.layers[1].mlp.experts
    assert isinstance(view, ExpertView)
    with torch.no_grad():
        linears["model.layers.1.mlp.experts.down.2"].weight[0, 0] = 123.0
    adapter.restore(model)
    fused = model.model.layers[1].mlp.experts
    assert not isinstance(fused, ExpertView) and float(fused.down_proj.detach()[2, 0, 0]) == 123.0
    assert not any("gate_up." in name for name, _ in model.named_parameters())


def _with_two_unrouted_experts():
    """Top-1 routing over 4 experts whose router rows are u, -u, 0, 0: experts 2 and 3 never win."""
    model = tiny_mixtral(seed=2, top_k=1)
    with torch.no_grad():
        for layer in model.model.layers:
            router = layer.mlp.gate.weight
            router[1] = -router[0]
            router[2:] = 0
    return model


def test_unrouted_experts_are_left_dense_and_reported(calibration):
    model = _with_two_unrouted_experts()
    adapter = get_adapter(model)
    result = prune_model(model, calibration, PruneConfig(sparsity=0.5, shots=2, batch_size=4), progress=False)
    linears = adapter.prunable_linears(model)
    achieved, per_layer = sparsity_stats(linears)
    assert achieved == pytest.approx(0.5, abs=1e-3)
    unrouted = result.shots[-1].unrouted
    assert sorted(unrouted) == sorted(f"model.layers.{b}.mlp.experts.{p}.{e}" for b in (0, 1) for e in (2, 3)
                                      for p in ("gate_up", "down"))
    assert all(per_layer[name] == 0 for name in unrouted)
    summary = expert_summary(linears, result.routed_rows, adapter.experts_path)
    assert sorted(summary["unrouted"]) == [f"model.layers.{b}.mlp.experts.{e}" for b in (0, 1) for e in (2, 3)]
    routed = [e for key, e in summary["per_expert"].items() if key not in summary["unrouted"]]
    assert sum(e["tokens"] for e in routed) == 2 * calibration.numel() and all(e["sparsity"] > 0.5 for e in routed)


def test_unrouted_experts_refuse_n_m_unless_pruned_by_magnitude(calibration):
    with pytest.raises(ConfigError, match="received no calibration token"):
        prune_model(_with_two_unrouted_experts(), calibration, PruneConfig(granularity="2:4", shots=1),
                    progress=False)
    model = _with_two_unrouted_experts()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    prune(model, calibration, PruneConfig(granularity="2:4", shots=2, prune_unrouted=True), progress=False)
    for b in (0, 1):
        fused = model.model.layers[b].mlp.experts
        for e in (2, 3):
            for part in ("gate_up_proj", "down_proj"):
                weight = getattr(fused, part)[e]
                assert nm_violations(weight, 2, 4) == 0
                before = dense[f"model.layers.{b}.mlp.experts.{part}"][e]
                kept = weight != 0  # magnitude, no update: the two largest of every four, unchanged
                torch.testing.assert_close(weight[kept], before[kept])
                largest = before.abs().reshape(-1, 4).sort(-1).values[:, 2:]
                assert torch.equal(largest, weight.detach().abs().reshape(-1, 4).sort(-1).values[:, 2:])


def test_structured_experts_drop_their_own_neurons_at_one_width_and_compact_exactly(calibration):
    from llm_surgeon.artifacts.compaction import EXPERT_WIDTH_ALIGNMENT, compact

    model = tiny_mixtral(seed=3)
    adapter = get_adapter(model)
    result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.4, shots=2),
                   progress=False, adapter=adapter)
    linears = adapter.prunable_linears(model)
    ids = calibration[:2, :8]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    differ, kept = False, []
    for b in range(2):
        removed = torch.stack([result.masks[f"model.layers.{b}.mlp.experts.down.{e}"].all(0) for e in range(4)])
        counts = removed.sum(1)
        assert bool((counts == counts[0]).all()) and 0 < int(counts[0]) < 48
        differ |= not bool((removed == removed[0]).all())  # each expert its own neurons
        kept.append(48 - int(counts[0]))
        for e in range(4):
            gate_up = linears[f"model.layers.{b}.mlp.experts.gate_up.{e}"].weight
            assert bool((gate_up[torch.cat([removed[e], removed[e]])] == 0).all())
    assert differ
    assert [layer["ffn_width_kept"] for layer in result.structure["layers"]] == kept
    assert all(layer["experts"] == 4 for layer in result.structure["layers"])
    shapes = compact(model, result.masks, adapter)
    for b, shape in enumerate(shapes.blocks):
        fused = model.model.layers[b].mlp.experts
        width = shape.ffn_width
        assert width % EXPERT_WIDTH_ALIGNMENT == 0 or width == 48
        assert fused.gate_up_proj.shape == (4, 2 * width, 32) and fused.down_proj.shape == (4, 32, width)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
