"""Every supported decoder family, built tiny from its config: each granularity it supports reaches its
target and pattern, and the result saves, reloads and generates; the curvature of families with transformed
logits or fused projections matches gradients of the model's own loss; what the generic adapter cannot take
is refused in one line."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon import PruneConfig, load_model_and_tokenizer, prune
from llm_surgeon.artifacts.compaction import compact
from llm_surgeon.artifacts.output_dir import save_model_files
from llm_surgeon.engine.pruner import sparsity_stats
from llm_surgeon.errors import UnsupportedArchitectureError
from llm_surgeon.math.selection import nm_violations
from llm_surgeon.models.adapters import check_family, get_adapter
from tests.conftest import collect_factors, tiny_tokenizer, true_loss_G

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {"head_dim": 8}, "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "final_logit_softcapping": 5.0}, "gemma3_text": {"head_dim": 8,
                                                                             "final_logit_softcapping": 5.0},
    "cohere": {"logit_scale": 0.5}, "granite": {"logits_scaling": 4.0}, "olmo2": {}, "stablelm": {},
    "phi3": {}, "gpt_neox": {}, "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "phi": {},  # no family adapter: the generic one
    "mixtral": {"num_local_experts": 4}, "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "moe_intermediate_size": 16, "num_experts_per_tok": 2, "head_dim": 8},
    "qwen2_moe": {"num_experts": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32,
                  "num_experts_per_tok": 2},
    "deepseek_v3": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 16,
                    "first_k_dense_replace": 1, "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 4,
                    "qk_nope_head_dim": 4, "v_head_dim": 8, "n_group": 1, "topk_group": 1},
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8, "sliding_window": 16},
    "granitemoe": {"num_local_experts": 4, "num_experts_per_tok": 2, "logits_scaling": 4.0},
    "llama4_text": {"num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size_mlp": 48, "head_dim": 8,
                    "interleave_moe_layer_step": 2, "num_hidden_layers": 4},
    "granitemoeshared": {"num_local_experts": 4, "num_experts_per_tok": 2, "logits_scaling": 4.0,
                         "shared_intermediate_size": 32},
}
NO_GQA = {"opt", "gpt_neox", "phi"}


def tiny(model_type: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    common = {k: v for k, v in COMMON.items() if not (model_type in NO_GQA and k == "num_key_value_heads")}
    config = AutoConfig.for_model(model_type, **{**common, **FAMILIES[model_type]})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _granularities(model_type: str) -> list[str]:
    structured = get_adapter(tiny(model_type)).structure is not None
    return ["unstructured", "2:4"] + (["structured"] if structured else [])


CASES = [(family, granularity) for family in FAMILIES for granularity in _granularities(family)]


@pytest.mark.parametrize(("family", "granularity"), CASES, ids=[f"{f}-{g}" for f, g in CASES])
def test_each_family_reaches_its_target_then_saves_reloads_and_generates(family, granularity, calibration, tmp_path):
    model = tiny(family)
    adapter = get_adapter(model)
    sparsity = 0.3 if granularity == "structured" else 0.5
    result = prune(model, calibration, PruneConfig(granularity=granularity, sparsity=sparsity, shots=2),
                   progress=False, adapter=adapter)
    linears = adapter.prunable_linears(model)
    achieved, _ = sparsity_stats(linears)
    if granularity == "structured":
        assert sparsity - 0.05 <= result.structure["removed_fraction"] < sparsity + 0.2
    else:
        assert achieved == pytest.approx(0.5, abs=2e-3)
    if granularity == "2:4":
        assert all(nm_violations(lin.weight.detach(), 2, 4) == 0 for lin in linears.values())
    ids = calibration[:1, :6]
    shapes = compact(model, result.masks, adapter) if granularity == "structured" else None
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_model_files(model, tiny_tokenizer(), tmp_path, shapes)
    reloaded, _, _ = load_model_and_tokenizer(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    generated = reloaded.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 9)


@pytest.mark.parametrize("family", ["granite", "gemma3_text", "gpt_neox", "phi3", "phi", "llama4_text"])
def test_factors_match_the_gradients_of_the_models_own_loss(family, calibration):
    model = tiny(family, seed=1)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)  # large logits: a scale or soft-cap changes gradients
    linears = get_adapter(model).prunable_linears(model)
    ids = calibration[:4]
    reference = true_loss_G(model, linears, ids)
    got = collect_factors(model, linears, ids, batch_size=4)
    for name in linears:
        torch.testing.assert_close(got[name].G.double(), reference[name], rtol=1e-3, atol=1e-9, msg=name)


def test_the_generic_adapter_says_so_and_refuses_what_it_cannot_take(capsys, monkeypatch):
    from transformers import AutoConfig

    from llm_surgeon.models import adapters

    monkeypatch.setattr(adapters, "_NOTIFIED", set())  # the notice is printed once per process
    adapter = get_adapter(tiny("phi"))
    assert adapter.family == "generic:phi" and adapter.structure is None
    assert "using a generic one" in capsys.readouterr().err
    moe = AutoConfig.for_model("glm4_moe", **COMMON, n_routed_experts=4, first_k_dense_replace=0)  # no MoE adapter
    with pytest.raises(UnsupportedArchitectureError, match="'glm4_moe' is not supported: .*3-D expert weights"):
        check_family(moe)
    t5 = AutoConfig.for_model("t5", vocab_size=128, d_model=32, num_layers=1, num_heads=2, d_ff=64)
    with pytest.raises(UnsupportedArchitectureError, match="'t5' is not supported"):
        check_family(t5)


def test_the_generic_adapter_refuses_a_model_whose_logits_it_would_get_wrong(monkeypatch):
    from llm_surgeon.models import adapters

    monkeypatch.setattr(adapters, "_ADAPTERS", {k: v for k, v in adapters._ADAPTERS.items() if k != "granite"})
    with pytest.raises(UnsupportedArchitectureError, match="transforms its logits"):
        get_adapter(tiny("granite"))


def test_the_readme_table_of_families_is_the_registry():
    from llm_surgeon.models.table import END, START, family_table
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    assert readme[readme.index(START) + len(START):readme.index(END)].strip() == family_table()
