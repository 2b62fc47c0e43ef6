"""File sizes of a pruned model saved dense (zeros stored) against ``--save-format compressed`` (bitmask +
nonzero values), with the round trip checked: the weights read back by ``llm_surgeon.load_pruned`` and by plain
transformers (``trust_remote_code=True``, in a process where llm-surgeon cannot be imported) are identical.

The sizes depend only on how many weights are zero, not on which: magnitude pruning reaches the same 50%
and 2:4 counts as LLM Surgeon in seconds and without calibration, so it is used here.

    python benchmarks/compressed_sizes.py --model smollm2-135m --out runs/compressed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

DIGEST = """
import hashlib, sys, torch
{block}
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.detach().float().numpy().tobytes())
print(type(model).__name__, digest.hexdigest())
"""


def digest(model) -> str:
    value = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value.update(name.encode())
        value.update(tensor.detach().float().numpy().tobytes())
    return value.hexdigest()


def main() -> None:
    from llm_surgeon import PruneConfig, load_pruned, prune
    from llm_surgeon.artifacts.output_dir import save_model_files
    from llm_surgeon.evaluation.footprint import folder_bytes
    from llm_surgeon.models.loading import load_model_and_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="runs/compressed")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for granularity in ("unstructured", "2:4"):
        model, tokenizer, _ = load_model_and_tokenizer(args.model)
        prune(model, None, PruneConfig(method="magnitude", granularity=granularity, sparsity=0.5), progress=False)
        expected = digest(model)
        sizes = {}
        for save_format in ("dense", "compressed"):
            folder = out / f"{granularity.replace(':', '-')}-{save_format}"
            shutil.rmtree(folder, ignore_errors=True)
            save_model_files(model, tokenizer, folder, save_format=save_format, sparsity=(0.5, granularity))
            sizes[save_format] = folder_bytes(folder)
        folder = out / f"{granularity.replace(':', '-')}-compressed"
        ours = digest(load_pruned(folder))
        plain = subprocess.run([sys.executable, "-c", DIGEST.format(block='sys.modules["llm_surgeon"] = None'),
                                str(folder)], capture_output=True, text=True, check=True).stdout.split()
        rows.append({"granularity": granularity, "dense_bytes": sizes["dense"], "compressed_bytes": sizes["compressed"],
                     "ratio": sizes["compressed"] / sizes["dense"], "load_pruned_identical": ours == expected,
                     "transformers_class": plain[0], "transformers_identical": plain[1] == expected})
    print(json.dumps(rows))
    print("\n| model | dense with zeros, MB | compressed, MB | ratio | weights read back identical |")
    print("|---|---|---|---|---|")
    for r in rows:
        same = "yes" if r["load_pruned_identical"] and r["transformers_identical"] else "NO"
        print(f"| {args.model} 50% {r['granularity']} | {r['dense_bytes'] / 2**20:.1f} | "
              f"{r['compressed_bytes'] / 2**20:.1f} | {r['ratio']:.3f} | {same} (load_pruned and "
              f"transformers {r['transformers_class']}) |")


if __name__ == "__main__":
    main()
