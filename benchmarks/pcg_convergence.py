"""How fast the correlated update converges on a real model's curvature: PCG on the kept weights started from
the removed weights zeroed (the old default) or from every removed weight's own single-weight OBS update
(``warm_start``, now the default), against CG on the removed weights' multipliers with a Jacobi preconditioner
(:func:`~llm_surgeon.math.obs.removed_set_obs_update`: the same start, two matmuls a step instead of four).

One curvature pass (LLM Surgeon's damped Kronecker factors) over the layers of ``--blocks``; in each layer
the ``--sparsity`` cheapest weights by LLM Surgeon's element cost are removed, and every solver runs
``--iterations`` PCG steps with no tolerance stop. The table gives the quadratic loss left, as a fraction
of the loss with the removed weights zeroed and nothing else moved, after each number of steps (mean and
worst over the layers), and the steps the default tolerance (1e-3 of the starting residual) would take.

    python benchmarks/pcg_convergence.py --data-dir ../shared/data --blocks 0,15,29 --sparsity 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

import torch

from llm_surgeon import load_calibration, load_model_and_tokenizer
from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
from llm_surgeon.curvature.factors import LazyDampedFactors
from llm_surgeon.math.costs import element_costs
from llm_surgeon.math.obs import kronecker_obs_update, kronecker_quadratic, removed_set_obs_update
from llm_surgeon.models.adapters import get_adapter

SOLVERS = {
    "kept-set PCG, zeroed start (4 matmuls a step)": partial(kronecker_obs_update, warm_start=False),
    "kept-set PCG, independent start (the default since 3fc23e6; 4 matmuls a step)":
        partial(kronecker_obs_update, warm_start=True),
    "CG on the removed set's multipliers, Jacobi (independent start; 2 matmuls a step)": removed_set_obs_update,
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--blocks", default="0,15,29")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--checkpoints", default="0,5,10,20,50,100")
    return parser.parse_args()


def layer_trace(W: torch.Tensor, f, sparsity: float, iterations: int, solver) -> dict:
    """Loss fraction left after every step (step 0: the start) and the step the default tolerance stops at."""
    costs = element_costs(W, f.G_inv.diagonal(), f.A_inv.diagonal())
    remove = costs <= costs.flatten().kthvalue(max(1, round(sparsity * W.numel()))).values
    _, start = solver(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=0)
    zeroed = start.loss_no_update
    fractions = {0: start.loss_after / zeroed}
    stop = {"step": None}

    def watch(step: int, delta: torch.Tensor, relative_residual: float) -> None:
        fractions[step] = kronecker_quadratic(delta, f.G, f.A) / zeroed
        if stop["step"] is None and relative_residual <= 1e-3:
            stop["step"] = step

    solver(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=iterations, tolerance=0.0, on_iteration=watch)
    return {"fractions": fractions, "tolerance_stop": stop["step"]}


def main() -> int:
    args = _arguments()
    model, tokenizer, _ = load_model_and_tokenizer(args.model)
    windows = load_calibration(tokenizer, args.samples, args.seqlen, data_dir=args.data_dir)
    adapter = get_adapter(model)
    prefixes = tuple(adapter.module_name(int(b), "") for b in args.blocks.split(","))
    layers = {n: lin for n, lin in adapter.prunable_linears(model).items() if n.startswith(prefixes)}
    started = time.perf_counter()
    raw = LocalCollector(batch_size=8).collect(model, adapter, layers, windows, CurvatureRequest(), seed=0)
    print(f"curvature of {len(layers)} layers in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    factors = LazyDampedFactors(raw, 0.1, 0.1)
    traces = {label: {} for label in SOLVERS}
    for name, lin in layers.items():
        f = factors.get(name)
        for label, solver in SOLVERS.items():
            traces[label][name] = layer_trace(lin.weight.detach(), f, args.sparsity, args.iterations, solver)
        print(json.dumps({"layer": name, **{label: traces[label][name] for label in SOLVERS}}), flush=True)
    print(_table(traces, [int(c) for c in args.checkpoints.split(",")], args))
    return 0


def _table(traces: dict, checkpoints: list[int], args: argparse.Namespace) -> str:
    head = " | ".join(f"{c} steps" for c in checkpoints)
    lines = [f"Loss left / loss zeroed, mean (worst) over {len(next(iter(traces.values())))} layers of blocks "
             f"{args.blocks}, {args.sparsity:.0%} removed per layer, {args.samples} x {args.seqlen} tokens:", "",
             f"| solver | {head} | steps to the default tolerance, mean (max) |",
             "|---|" + "---|" * (len(checkpoints) + 1)]
    for label, by_layer in traces.items():
        cells = []
        for c in checkpoints:
            values = [t["fractions"][c] for t in by_layer.values() if c in t["fractions"]]
            cells.append(f"{sum(values) / len(values):.4f} ({max(values):.4f})" if values else "–")
        stops = [t["tolerance_stop"] for t in by_layer.values()]
        reached = [s for s in stops if s is not None]
        stop = (f"{sum(reached) / len(reached):.1f} ({max(reached)})" if reached else "–") + (
            f", {len(stops) - len(reached)} not within {args.iterations}" if len(reached) < len(stops) else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {stop} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
