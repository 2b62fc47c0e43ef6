"""Block by block, what LLM Surgeon's structured costs predict a shot's removal costs, beside what it costs
(a diagnostic for an allocation, not a result).

One curvature pass of the first shot of a structured run (the run's own settings: 5 shots to ``--sparsity``
kept-fraction target, the first shot's share), its global selection, and then for each block alone: that
block's chosen structures removed with the correlated update, everything else dense, and the calibration
loss measured on ``--eval-windows`` windows. Per block it prints

- ``summed``: the sum of the chosen structures' single costs (what the global ranking adds up);
- ``joint``: the same structures' joint quadratic cost (``column_set_cost`` / ``row_set_cost``), which
  counts how the removed structures interact;
- ``true``: the measured increase of the mean token NLL with only this block pruned;
- the RMS of the block's ``down_proj`` output after its removal over before (a norm that follows the
  layer, as in Gemma 2/3, rescales what is left: the local quadratic cannot see it).

With ``--every-shot`` it runs the whole run instead and prints, shot by shot, the joint cost of the shot's
removals summed over blocks beside the calibration loss the shot added, and each block's FFN share removed
after every shot (where the allocation forms); with ``--by-block`` as well, for every shot, each block it
removes from: its predicted joint cost beside the loss its removals add alone (applied between the shot's
selection and its update, on the model the earlier shots left, the weights put back), so that a cost scale
that drifts differently per block shows.

    python benchmarks/predicted_vs_true_by_block.py --model gemma3-270m --data-dir ../shared/data \\
        [--every-shot [--by-block]]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from llm_surgeon import PruneConfig, load_calibration, load_model_and_tokenizer
from llm_surgeon.curvature.collectors import LocalCollector
from llm_surgeon.curvature.factors import LazyDampedFactors
from llm_surgeon.curvature.placement import EVERY_LAYER_HERE
from llm_surgeon.engine.pruner import PruneResult, curvature_request, needs_calibration, prune_model, setup
from llm_surgeon.engine.selectors import StructureSelector
from llm_surgeon.engine.structures import state_from_masks, structure_costs
from llm_surgeon.math.ranks import spearman
from llm_surgeon.models.adapters import get_adapter


@dataclass
class BlockRow:
    block: int
    ffn_removed: float
    groups_removed: int
    summed: float
    joint: float
    true: float
    down_rms_ratio: float


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--sparsity", type=float, default=0.2, help="the run's structured target")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16, help="calibration windows the true loss is read on")
    parser.add_argument("--every-shot", action="store_true", help="trace every shot of the run (see above)")
    parser.add_argument("--by-block", action="store_true",
                        help="with --every-shot: each shot's true loss block by block, too (see above)")
    return parser.parse_args()


def first_shot(model: nn.Module, calibration: torch.Tensor, config: PruneConfig):
    """The method, selector, damped factors (every layer's, held at once) and the masks of shot 1."""
    adapter = get_adapter(model)
    parts = setup(model, config, adapter)
    if not isinstance(parts.selector, StructureSelector) or not needs_calibration(parts.method, config):
        raise SystemExit("this diagnostic reads a structured run of a curvature method")
    method, selector = parts.method, parts.selector
    fraction = selector.schedule(config.sparsity, config.effective_shots)[0]
    layers = selector.curvature_layers(method)
    collector = LocalCollector(config.batch_size, config.fisher, progress=False)
    raw = collector.collect(model, adapter, layers, calibration, curvature_request(method), config.seed, "shot 1")
    lazy = LazyDampedFactors(raw, config.damp_g, config.damp_a)
    factors = {name: lazy.get(name) for name in raw}
    empty = {name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in parts.linears.items()}
    masks = selector.select(method, factors, empty, fraction, "shot 1")
    return method, selector, factors, masks, empty


def predicted_by_block(method, selector: StructureSelector, factors: dict, masks: dict) -> list[tuple[float, float]]:
    """Per block, (summed single costs, joint cost) of the structures ``masks`` remove."""
    neurons, groups = state_from_masks(selector.units, selector.name_of, masks)
    out = []
    for b, u in enumerate(selector.units):
        lookup = selector._factors_of(factors, b, torch.float64)
        n_cost, g_cost = structure_costs(u, method, lookup)
        summed = float(n_cost[neurons[b]].sum() + g_cost[groups[b]].sum())
        joint = 0.0
        for rel, (kind, idx) in u.removed_indices(neurons[b], groups[b]).items():
            f = lookup(rel)
            if idx.numel() == 0 or f is None:
                continue  # rows of a column-priced structure go free with it
            W = u.linears[rel].weight.detach().double()
            cost = method.column_set_cost(W, idx, f) if kind == "cols" else method.row_set_cost(W, idx, f)
            joint += float(cost)
        out.append((summed, joint))
    return out


def mean_nll(model: nn.Module, ids: torch.Tensor, batch: int = 2) -> float:
    """Mean next-token NLL over ``ids``' windows."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, ids.shape[0], batch):
            chunk = ids[start:start + batch]
            loss = model(chunk, labels=chunk).loss
            tokens = chunk.shape[0] * (chunk.shape[1] - 1)
            total, count = total + float(loss) * tokens, count + tokens
    return total / count


def down_rms(model: nn.Module, ids: torch.Tensor, block: int) -> float:
    """RMS of block ``block``'s ``down_proj`` output on the first window of ``ids``."""
    adapter = get_adapter(model)
    seen: list[float] = []
    layer = adapter.blocks(model)[block].get_submodule("mlp.down_proj")
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(float(o.double().pow(2).mean().sqrt())))
    with torch.inference_mode():
        model(ids[:1])
    handle.remove()
    return seen[0]


@contextlib.contextmanager
def only_block_pruned(method, selector: StructureSelector, factors: dict, masks: dict, removed: dict, block: int):
    """Block ``block``'s ``masks`` applied with the correlated update, every other block left as ``removed``
    leaves it (already zero: applying its masks again changes nothing); the block's weights and biases (a removed
    row's is zeroed) put back after."""
    names = {selector.name_of(block, rel) for rel in selector.units[block].linears}
    saved = {name: [p.detach().clone() for p in selector.linears[name].parameters()] for name in names}
    selector.apply(method, factors, {**removed, **{name: masks[name] for name in names}}, f"block {block}", False)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, tensors in saved.items():
                for param, tensor in zip(selector.linears[name].parameters(), tensors, strict=True):
                    param.copy_(tensor)


def true_by_block(model, method, selector: StructureSelector, factors: dict, masks: dict, empty: dict,
                  ids: torch.Tensor) -> tuple[float, list[tuple[float, float]]]:
    """Dense loss, and per block (loss increase, down_proj RMS after / before) with only that block pruned."""
    dense_loss = mean_nll(model, ids)
    out = []
    for b in range(len(selector.units)):
        before = down_rms(model, ids, b)
        with only_block_pruned(method, selector, factors, masks, empty, b):
            out.append((mean_nll(model, ids) - dense_loss, down_rms(model, ids, b) / before))
        print(f"[block {b}] true {out[-1][0]:.4f}", flush=True)
    return dense_loss, out


def new_removals_by_block(model, method, selector: StructureSelector, factors: dict, removed: dict, masks: dict,
                          ids: torch.Tensor) -> list[float | None]:
    """Per block, the loss its share of a later shot's removals (``masks`` beyond ``removed``) adds alone, on the
    model as the earlier shots left it; None where the shot removes nothing new."""
    base = mean_nll(model, ids)
    out: list[float | None] = []
    for b, unit in enumerate(selector.units):
        names = [selector.name_of(b, rel) for rel in unit.linears]
        if all(torch.equal(masks[name], removed[name]) for name in names):
            out.append(None)
            continue
        with only_block_pruned(method, selector, factors, masks, removed, b):
            out.append(mean_nll(model, ids) - base)
    return out


def rows(selector: StructureSelector, masks: dict, predicted: list, true: list) -> list[BlockRow]:
    neurons, groups = state_from_masks(selector.units, selector.name_of, masks)
    return [BlockRow(b, float(neurons[b].float().mean()), int(groups[b].sum()), p[0], p[1], t[0], t[1])
            for b, (p, t) in enumerate(zip(predicted, true, strict=True))]


@dataclass
class ShotTrace:
    predicted: list[list[tuple[float, float]]]
    """Per shot, per block: (summed, joint) cost of the shot's removals (earlier ones are zeros: cost 0)."""
    losses: list[float]
    """The calibration loss before the first shot and after each."""
    shares: list[list[float]]
    """Per shot, per block: the share of FFN neurons removed after it."""
    true_by_block: list[list[float | None]] = field(default_factory=list)
    """With ``by_block``: per shot, per block, the loss the block's new removals add alone
    (:func:`new_removals_by_block`)."""


def trace_shots(model: nn.Module, calibration: torch.Tensor, config: PruneConfig, ids: torch.Tensor,
                by_block: bool = False) -> ShotTrace:
    """The run itself, its selection watched: each shot's predicted costs by block, the loss it added, and the
    FFN shares after it; with ``by_block`` also each block's true loss of the shot's removals (measured between
    the selection and the update, the weights put back, so the run goes on unchanged)."""
    adapter = get_adapter(model)
    parts = setup(model, config, adapter)
    selector = parts.selector
    if not isinstance(selector, StructureSelector):
        raise SystemExit("this diagnostic reads a structured run")
    trace = ShotTrace(predicted=[], losses=[mean_nll(model, ids)], shares=[])
    select = selector.select

    def watched(method, factors, removed, fraction, label="", placement=EVERY_LAYER_HERE):
        masks = select(method, factors, removed, fraction, label, placement)
        trace.predicted.append(predicted_by_block(method, selector, factors, masks))
        if by_block:
            trace.true_by_block.append(new_removals_by_block(model, method, selector, factors, removed, masks, ids))
        return masks

    def after_shot(shot: int, result: PruneResult) -> None:
        trace.losses.append(mean_nll(model, ids))
        neurons, _ = state_from_masks(selector.units, selector.name_of, result.masks)
        trace.shares.append([float(n.float().mean()) for n in neurons])
        print(f"[shot {shot}] loss {trace.losses[-1]:.4f}", flush=True)

    selector.select = watched
    prune_model(model, calibration, config, progress=False, on_shot_end=after_shot, adapter=adapter, parts=parts)
    return trace


def print_trace(trace: ShotTrace) -> None:
    print("| shot | predicted (joint, all blocks) | true loss added | true / predicted |")
    print("|---|---|---|---|")
    for k, by_block in enumerate(trace.predicted):
        joint = sum(j for _, j in by_block)
        true = trace.losses[k + 1] - trace.losses[k]
        print(f"| {k + 1} | {joint:.4f} | {true:.4f} | {true / joint if joint > 0 else float('nan'):.2f} |")
    print("| block | " + " | ".join(f"FFN removed after shot {k + 1}" for k in range(len(trace.shares))) + " |")
    print("|---" * (1 + len(trace.shares)) + "|")
    for b in range(len(trace.shares[0])):
        print(f"| {b} | " + " | ".join(f"{shares[b]:.2f}" for shares in trace.shares) + " |")
    if trace.true_by_block:
        print_by_block(trace)


def print_by_block(trace: ShotTrace) -> None:
    """Per shot, the blocks it removes from: predicted joint cost, true loss alone, and their ratio."""
    print("| shot | block | FFN removed before -> after | predicted (joint) | true, alone | true / predicted |")
    print("|---" * 6 + "|")
    for k, true in enumerate(trace.true_by_block):
        before = trace.shares[k - 1] if k else [0.0] * len(true)
        for b, loss in enumerate(true):
            if loss is None:
                continue
            joint = trace.predicted[k][b][1]
            ratio = f"{loss / joint:.2f}" if joint > 0 else "n/a"
            print(f"| {k + 1} | {b} | {before[b]:.2f} -> {trace.shares[k][b]:.2f} | {joint:.4f} | {loss:.4f} | "
                  f"{ratio} |")


def main() -> None:
    args = _arguments()
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=torch.float32)[:2]
    config = PruneConfig(method="surgeon", granularity="structured", sparsity=args.sparsity, shots=args.shots,
                         seed=0)
    calibration = load_calibration(tokenizer, samples=args.calib_samples, seqlen=args.calib_seqlen, seed=0,
                                   data_dir=args.data_dir)
    if args.every_shot:
        print_trace(trace_shots(model, calibration, config, calibration[:args.eval_windows], args.by_block))
        print(f"{args.model}: {args.shots} shots to {args.sparsity:.0%} structured; {time.perf_counter() - t0:.0f} s")
        return
    method, selector, factors, masks, empty = first_shot(model, calibration, config)
    predicted = predicted_by_block(method, selector, factors, masks)
    dense_loss, true = true_by_block(model, method, selector, factors, masks, empty, calibration[:args.eval_windows])
    table = rows(selector, masks, predicted, true)
    print(f"{args.model}: shot 1 of {args.shots} to {args.sparsity:.0%} structured; dense calibration NLL "
          f"{dense_loss:.4f} on {args.eval_windows} windows; {time.perf_counter() - t0:.0f} s")
    print("| block | FFN removed | head groups removed | summed cost | joint cost | true increase | true / joint "
          "| down_proj RMS after / before |")
    print("|---" * 8 + "|")
    for r in table:
        ratio = r.true / r.joint if r.joint > 0 else float("nan")
        print(f"| {r.block} | {r.ffn_removed:.2f} | {r.groups_removed} | {r.summed:.4f} | {r.joint:.4f} | "
              f"{r.true:.4f} | {ratio:.2f} | {r.down_rms_ratio:.2f} |")
    touched = [r for r in table if r.joint > 0]
    if len(touched) > 2:
        ratios = [r.true / r.joint for r in touched]
        print(f"Spearman (blocks with removals) of true/joint against the down_proj RMS ratio: "
              f"{spearman(ratios, [r.down_rms_ratio for r in touched]):+.2f}; of true against joint: "
              f"{spearman([r.true for r in touched], [r.joint for r in touched]):+.2f}")


if __name__ == "__main__":
    main()
