"""Mixture-of-experts blocks: each expert's slices of the fused 3-D weights as Linear layers of their own.

In current transformers the experts of Mixtral, Qwen2/3-MoE, OLMoE and Granite-MoE are one module with
fused parameters ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]; gpt-oss stores them transposed
([E, H, 2I], [E, I, H]) with biases and a clamped gating of interleaved columns; Llama 4 stores them
transposed without biases and hands every expert every token, its input already scaled by the router's
score (zero where the token is not routed to it). :class:`ExpertView` takes the fused module's place while
a model is pruned: the same computation, written with one ``nn.Linear`` per expert and projection whose
weight is a view of the fused storage, run on the expert's routed tokens only. The curvature hooks then
see each expert's own routed tokens, its weights enter the same global selection and update as every other
matrix (writing into the fused parameters), and :func:`restore_fused` puts the original module back for
saving. The view is checked against the original module's output on random routing when it is made, so a
family whose experts compute differently is refused, not mis-pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_surgeon.errors import UnsupportedArchitectureError


def _expert_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A Linear whose weight (and bias) are the given tensors themselves: views of the fused parameters, no
    copy, so what pruning writes lands in the fused storage."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight)
    if bias is not None:
        linear.bias = nn.Parameter(bias)
    return linear


def _is_transposed_layout(fused: nn.Module) -> bool:
    """gpt-oss: ``gate_up_proj`` [E, H, 2I] and ``down_proj`` [E, I, H] with biases and its own gating."""
    return hasattr(fused, "gate_up_proj_bias") and hasattr(fused, "down_proj_bias") and hasattr(fused, "_apply_gate")


class ExpertView(nn.Module):
    """A fused experts module seen as ``gate_up[e]`` ([2I, H]) and ``down[e]`` ([H, I]) Linear layers.

    Three layouts: Mixtral's bias-free [E, 2I, H] / [E, H, I] with ``act(gate) * up`` on the two halves;
    gpt-oss's transposed [E, H, 2I] / [E, I, H] with biases and its own clamped gating of interleaved
    gate/up columns (the views are transposes of the fused slices; the gating is the module's own); and
    Llama 4's transposed bias-free layout whose module is called with ``scaled_inputs``: every token once
    per expert ([E * T, H]), multiplied by its router score, which is exactly zero for an unrouted token."""

    def __init__(self, fused: nn.Module, scaled_inputs: bool = False):
        super().__init__()
        self._fused = (fused,)  # a tuple, not a submodule: its parameters are the views' storage
        self.num_experts = fused.gate_up_proj.shape[0]
        self.scaled_inputs = scaled_inputs
        self.biased = _is_transposed_layout(fused)
        self.transposed = self.biased or scaled_inputs
        if not self.biased:
            self.act_fn = fused.act_fn
        self.gate_up = nn.ModuleList(self._linear(fused.gate_up_proj, "gate_up_proj_bias", e)
                                     for e in range(self.num_experts))
        self.down = nn.ModuleList(self._linear(fused.down_proj, "down_proj_bias", e) for e in range(self.num_experts))

    def _linear(self, weight: torch.Tensor, bias_name: str, expert: int) -> nn.Linear:
        slice_ = weight.data[expert].T if self.transposed else weight.data[expert]
        return _expert_linear(slice_, getattr(self.fused, bias_name).data[expert] if self.biased else None)

    @property
    def fused(self) -> nn.Module:
        return self._fused[0]

    def _gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.biased:
            return self.fused._apply_gate(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def _expert(self, expert: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.down[expert](self._gated(self.gate_up[expert](tokens)))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor | None = None,
                top_k_weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.scaled_inputs:
            return self._forward_scaled_inputs(hidden_states)
        out = torch.zeros_like(hidden_states)
        for expert in range(self.num_experts):
            top_k_pos, token_idx = torch.where((top_k_index == expert).T)
            if token_idx.numel() == 0:
                continue  # an expert without tokens is not run (its hooks do not fire)
            routed = self._expert(expert, hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, routed.to(out.dtype))
        return out

    def _forward_scaled_inputs(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Llama 4: the rows of expert ``e`` are ``score[t, e] * x_t``; the unrouted ones are zero and give zero
        (``act(0) * 0``), so running the routed rows alone computes the same and counts the expert's tokens."""
        per_expert = hidden_states.view(self.num_experts, -1, hidden_states.shape[-1])
        out = torch.zeros_like(per_expert)
        for expert in range(self.num_experts):
            token_idx = per_expert[expert].ne(0).any(-1).nonzero().squeeze(1)
            if token_idx.numel() == 0:
                continue
            out[expert, token_idx] = self._expert(expert, per_expert[expert, token_idx]).to(out.dtype)
        return out.view(-1, hidden_states.shape[-1])


def check_fused(module: nn.Module, where: str, scaled_inputs: bool = False) -> None:
    """Refuse an experts module that is not the bias-free [E, 2I, H] / [E, H, I] layout, gpt-oss's transposed
    one with biases, or (``scaled_inputs``, Llama 4) the transposed one without biases."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == down.dim() == 3):
        raise UnsupportedArchitectureError(f"{where} holds no fused 3-D gate_up_proj / down_proj expert weights")
    biased = _is_transposed_layout(module)
    unbiased = hasattr(module, "act_fn") and not any("bias" in name for name, _ in module.named_parameters())
    if biased or scaled_inputs:
        experts, hidden, double_width = gate_up.shape
        fits = down.shape == (experts, double_width // 2, hidden) and (unbiased if scaled_inputs else (
            tuple(module.gate_up_proj_bias.shape) == (experts, double_width)
            and tuple(module.down_proj_bias.shape) == (experts, hidden)))
    else:
        experts, double_width, hidden = gate_up.shape
        fits = down.shape == (experts, hidden, double_width // 2) and unbiased
    if not fits:
        raise UnsupportedArchitectureError(
            f"{where}: experts laid out as gate_up {tuple(gate_up.shape)} / down {tuple(down.shape)} are neither "
            "[E, 2I, H] / [E, H, I] without biases nor [E, H, 2I] / [E, I, H] (gpt-oss with biases, Llama 4 "
            "without)")


def _random_routing(view: ExpertView, tokens: torch.Tensor, generator: torch.Generator, top_k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's ``top_k`` experts and their weights."""
    k = min(top_k, view.num_experts)
    index = torch.stack([torch.randperm(view.num_experts, generator=generator)[:k] for _ in range(len(tokens))])
    return index.to(tokens.device), torch.rand(len(tokens), k, generator=generator).to(tokens)


@torch.no_grad()
def _check_view(view: ExpertView, where: str, top_k: int = 2) -> None:
    """The view must compute what the fused module computes (random tokens and routing)."""
    fused = view.fused
    if fused.gate_up_proj.device.type == "meta":
        return
    generator = torch.Generator().manual_seed(0)
    hidden = fused.gate_up_proj.shape[1 if view.transposed else -1]
    tokens = torch.randn(6, hidden, generator=generator).to(fused.gate_up_proj)
    index, weights = _random_routing(view, tokens, generator, top_k)
    if view.scaled_inputs:  # every token once per expert, scaled by its score (0 where not routed)
        scores = torch.zeros(6, view.num_experts).to(tokens).scatter_(1, index, weights)
        scaled = tokens.repeat(view.num_experts, 1) * scores.T.reshape(-1, 1)
        expected, got = fused(scaled), view(scaled)
    else:
        expected, got = fused(tokens, index, weights), view(tokens, index, weights)
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max().clamp_min(1))):
        raise UnsupportedArchitectureError(f"{where}: the experts compute something other than act(gate) * up "
                                           "then down, weighted by the router; this family needs its own adapter")


def install_views(blocks: nn.ModuleList, experts_path: str, scaled_inputs: bool = False) -> list[ExpertView]:
    """Put an :class:`ExpertView` at ``experts_path`` of every block (once), returning the views."""
    parent_path, _, attr = experts_path.rpartition(".")
    views = []
    for index, block in enumerate(blocks):
        parent = block.get_submodule(parent_path) if parent_path else block
        current = getattr(parent, attr, None)
        if current is None:
            continue  # a block without experts (DeepSeek-V3's first, dense blocks)
        if not isinstance(current, ExpertView):
            where = f"block {index} {experts_path}"
            check_fused(current, where, scaled_inputs)
            current = ExpertView(current, scaled_inputs)
            _check_view(current, where)
            setattr(parent, attr, current)
        views.append(current)
    return views


def restore_fused(blocks: nn.ModuleList, experts_path: str) -> None:
    """Put the fused experts modules back (they hold every change made through the views)."""
    parent_path, _, attr = experts_path.rpartition(".")
    for block in blocks:
        parent = block.get_submodule(parent_path) if parent_path else block
        current = getattr(parent, attr, None)
        if isinstance(current, ExpertView):
            setattr(parent, attr, current.fused)


def expert_summary(linears: dict[str, nn.Linear], routed_rows: dict[str, int], experts_path: str) -> dict:
    """Per expert (``...{experts_path}.{e}``): the calibration tokens routed to it in the last shot and the
    sparsity of its two matrices together; and the experts no token reached."""
    marker = f".{experts_path}."
    experts: dict[str, dict] = {}
    for name, linear in linears.items():
        if marker not in name:
            continue
        prefix, _, rest = name.rpartition(marker)
        part, _, index = rest.partition(".")
        entry = experts.setdefault(f"{prefix}{marker}{index}", {"tokens": routed_rows.get(name), "zeros": 0,
                                                                 "weights": 0})
        entry["zeros"] += int((linear.weight == 0).sum())
        entry["weights"] += linear.weight.numel()
    per_expert = {key: {"tokens": e["tokens"], "sparsity": e["zeros"] / e["weights"]} for key, e in experts.items()}
    return {"per_expert": per_expert, "unrouted": [key for key, e in per_expert.items() if e["tokens"] == 0]}
