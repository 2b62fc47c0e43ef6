"""One LLM Surgeon shot per family on a small random model of one width, against the Llama of that width.

Each family's model is built from its config (the same hidden size, FFN width, heads and depth), then a
child process runs one 50% unstructured shot (or, with ``--granularity structured``, 30% structured) on
random calibration ids and reports the shot's seconds and its own peak RSS (``wait4``); the table gives
both relative to Llama. A family that costs far more than Llama says why in the notes (wider fused
layers, extra layers per block...).

    python benchmarks/family_costs.py --samples 16 --seqlen 128
    python benchmarks/family_costs.py --granularity structured --families llama,mixtral,qwen3_moe,granitemoe
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

WIDTH = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
EXTRA = {"qwen3": {"head_dim": 32}, "gemma": {"head_dim": 32}, "gemma2": {"head_dim": 32},
         "gemma3_text": {"head_dim": 32}, "opt": {"ffn_dim": 512, "word_embed_proj_dim": 256},
         # mixture of experts: 4 experts of the dense FFN width, 2 per token
         "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
         "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 512, "head_dim": 32},
         "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
         "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 512,
                       "shared_expert_intermediate_size": 512},
         "granitemoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
         "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 32},
         "granitemoeshared": {"num_local_experts": 4, "num_experts_per_tok": 2, "shared_intermediate_size": 512},
         # Llama 4: every block MoE here, top-1 routing plus a shared expert, as Llama 4 Scout
         "llama4_text": {"num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size_mlp": 512,
                         "head_dim": 32, "interleave_moe_layer_step": 1},
         # DeepSeek-V3: latent attention (query rank 128, key/value rank 128), first block dense, then experts
         "deepseek_v3": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
                         "moe_intermediate_size": 512, "first_k_dense_replace": 1, "q_lora_rank": 128,
                         "kv_lora_rank": 128, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32,
                         "n_group": 1, "topk_group": 1}}
NO_GQA = {"opt", "gpt_neox", "phi"}
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "cohere", "granite", "olmo2",
            "stablelm", "phi3", "gpt_neox", "opt", "phi", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe",
            "gpt_oss", "deepseek_v3", "granitemoeshared", "llama4_text"]


def child(family: str, samples: int, seqlen: int, granularity: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm_surgeon import PruneConfig, prune
    from llm_surgeon.models.adapters import get_adapter

    torch.set_num_threads(1)
    common = {k: v for k, v in WIDTH.items() if not (family in NO_GQA and k == "num_key_value_heads")}
    config = AutoConfig.for_model(family, **common, **EXTRA.get(family, {}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = get_adapter(model)
    ids = torch.randint(0, WIDTH["vocab_size"], (samples, seqlen), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    sparsity = 0.3 if granularity == "structured" else 0.5
    result = prune(model, ids, PruneConfig(sparsity=sparsity, shots=1, batch_size=4, update_iterations=5,
                                           granularity=granularity),
                   progress=False, adapter=adapter)
    shot = result.shots[-1]
    experts = None
    if adapter.experts_path:
        from llm_surgeon.models.experts import expert_summary

        summary = expert_summary(adapter.prunable_linears(model), result.routed_rows, adapter.experts_path)
        experts = {key.split(".layers.")[-1]: {"tokens": e["tokens"], "sparsity": round(e["sparsity"], 3)}
                   for key, e in summary["per_expert"].items()}
    print(json.dumps({"experts": experts,
                      "family": family, "adapter": adapter.family, "seconds": round(time.perf_counter() - start, 2),
                      "curvature_s": round(shot.seconds_curvature, 2), "costs_s": round(shot.seconds_costs, 2),
                      "update_s": round(shot.seconds_update, 2),
                      "prunable_weights": sum(lin.weight.numel() for lin in adapter.prunable_linears(model).values()),
                      "achieved": round(shot.achieved_sparsity, 4)}))


def measure(family: str, args: argparse.Namespace) -> dict:
    import os

    proc = subprocess.Popen([sys.executable, __file__, "--child", family, "--samples", str(args.samples),
                             "--seqlen", str(args.seqlen), "--granularity", args.granularity],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        return {"family": family, "error": f"exit {status}"}
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mb": round(usage.ru_maxrss / 1024)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--granularity", default="unstructured", choices=["unstructured", "structured"],
                        help="structured: 30%% of the parameters removed as whole structures (families with a "
                             "structure description)")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated model types (llama first is the reference; it is added if missing)")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples, args.seqlen, args.granularity)
        return 0
    chosen = args.families.split(",")
    rows = [measure(family, args) for family in (["llama"] if chosen[0] != "llama" else []) + chosen]
    base = rows[0]
    print("| model_type | adapter | prunable weights | shot s | vs Llama | curvature / costs / update s | "
          "peak RSS MB | vs Llama |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['family']} | {r['error']} |  |  |  |  |  |  |")
            continue
        print(f"| {r['family']} | {r['adapter']} | {r['prunable_weights']:,} | {r['seconds']} | "
              f"{r['seconds'] / base['seconds']:.2f} | {r['curvature_s']} / {r['costs_s']} / {r['update_s']} | "
              f"{r['peak_mb']} | {r['peak_mb'] / base['peak_mb']:.2f} |")
    for r in rows:
        if r.get("experts"):
            print(f"\n{r['family']}: per expert (block.mlp.experts.e): routed token rows and sparsity")
            print("| expert | tokens | sparsity |\n|---|---|---|")
            for key, e in r["experts"].items():
                print(f"| {key} | {e['tokens']} | {e['sparsity']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
