"""The model-family seam: adapters registered from outside, transformed logits, fused projections."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.artifacts.compaction import apply_shapes, compact
from llm_surgeon.engine.pruner import sparsity_stats
from llm_surgeon.models import adapters
from llm_surgeon.models.adapters import LLAMA, ArchitectureAdapter, get_adapter, register_adapter
from tests.conftest import collect_factors, true_loss_G


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the adapter registry, so a test's registrations do not leak."""
    monkeypatch.setattr(adapters, "_ADAPTERS", dict(adapters._ADAPTERS))


def _renamed_neox():
    """A GPT-NeoX model under a model type llm-surgeon has never heard of: blocks at ``gpt_neox.layers``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    class RenamedConfig(GPTNeoXConfig):
        model_type = "renamed-neox-test"

    torch.manual_seed(0)
    config = RenamedConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=64)
    return GPTNeoXForCausalLM(config).eval()


def test_an_adapter_registered_from_outside_prunes_its_model(registry, calibration):
    model = _renamed_neox()
    assert get_adapter(model).family == "generic:renamed-neox-test"  # until a family adapter is registered
    register_adapter("renamed-neox-test", ArchitectureAdapter(
        family="renamed-neox-test", blocks_path="gpt_neox.layers", body_path="gpt_neox",
        linear_names=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ))
    assert get_adapter(model).family == "renamed-neox-test"
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("renamed-neox-test", LLAMA)
    result = prune(model, calibration, PruneConfig(sparsity=0.5, shots=2), progress=False)
    achieved, per_layer = sparsity_stats(get_adapter(model).prunable_linears(model))
    assert abs(achieved - 0.5) < 0.01 and len(per_layer) == 8
    assert result.shots[-1].update_iterations_mean > 0  # the correlated update ran on its factors


def _tiny_gemma2(cap: float | None):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                          final_logit_softcapping=cap, attn_implementation="eager")
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # large logits, so that soft-capping changes the gradients a lot
    return model


def test_softcapped_logits_give_the_factors_of_the_true_loss(calibration):
    model = _tiny_gemma2(cap=5.0)
    adapter = get_adapter(model)
    assert adapter.family == "gemma2"
    linears = adapter.prunable_linears(model)
    ids = calibration[:4]
    reference = true_loss_G(model, linears, ids)
    got = collect_factors(model, linears, ids, batch_size=4)
    for name in linears:
        torch.testing.assert_close(got[name].G.double(), reference[name], rtol=1e-3, atol=1e-9)
    # The plain LM head (what nll.py did before adapters owned the logits) gets them wrong.
    from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector

    plain = LocalCollector(batch_size=4, progress=False).collect(model, LLAMA, linears, ids, CurvatureRequest(), 0)
    name = next(iter(linears))
    assert not torch.allclose(plain[name].unpacked().G.double(), reference[name], rtol=1e-2, atol=1e-9)


def _tiny_phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(2)
    config = Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2)
    return Phi3ForCausalLM(config).eval()


@pytest.mark.parametrize("method", ["surgeon", "magnitude"])
def test_fused_projections_prune_structurally_through_slices(method, calibration):
    model = _tiny_phi3()
    result = prune(model, calibration, PruneConfig(method=method, granularity="structured", sparsity=0.4, shots=2),
                   progress=False)
    assert 0.4 <= result.structure["removed_fraction"] < 0.6
    ids = calibration[:2]
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    shapes = compact(model, result.masks)
    with torch.no_grad():
        compacted = model(input_ids=ids).logits
    torch.testing.assert_close(compacted, masked, rtol=1e-4, atol=1e-5)
    for shape, block in zip(shapes.blocks, model.model.layers, strict=True):
        head_dim = 8
        assert block.self_attn.qkv_proj.out_features == (shape.heads + 2 * shape.kv_heads) * head_dim
        assert block.mlp.gate_up_proj.out_features == 2 * shape.ffn_width
        assert shape.heads == 2 * shape.kv_heads
    rebuilt = _tiny_phi3()
    apply_shapes(rebuilt, shapes)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, compacted)
