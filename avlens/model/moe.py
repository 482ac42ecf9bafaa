"""Sparse mixture-of-experts MLP (Qwen3-MoE / Qwen3-Omni), written out with its hook points.

    router_logits = x W_router                                   [b, p, E]
    probs = softmax(router_logits)              (float32)
    top-k experts by probability; their probabilities renormalised to sum to 1 (norm_topk_prob)
    expert_weights = those k weights at their experts, 0 elsewhere  [b, p, E]
    out = sum_e expert_weights[..., e] * W_down[e] (act(x W_gate[e]) * (x W_up[e]))

Hooks (`blocks.{l}.mlp.*`):
    hook_router_logits   [b, p, E]   the router's logits (an edit changes the routing)
    hook_expert_weights  [b, p, E]   the mixing weights; the experts run where a weight is non-zero,
                                     so zeroing a column ablates that expert and writing a weight
                                     into a column routes positions to it
    hook_expert_indices  [b, p, k]   the chosen experts (read-only information)
    experts.{e}.hook_pre / hook_pre_linear / hook_post   [n_e, d_mlp]   expert e's SwiGLU, on the
                                     n_e positions routed to it (`hook.ctx["token_index"]`: their
                                     flat `b * pos + p` indices)
    experts.{e}.hook_out [n_e, d_model]  expert e's output before its mixing weight

The expert weights are Hugging Face's fused tensors (`gate_up_proj [E, 2 * d_mlp, d]`,
`down_proj [E, d, d_mlp]`), shared, not copied; experts are summed in index order, as HF does.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from avlens.model.components import _activation
from avlens.model.hook_points import AVHookPoint, RunState


class ExpertHooks(nn.Module):
    """Hook points of one expert (its activations on the positions routed to it)."""

    def __init__(self):
        super().__init__()
        self.hook_pre = HookPoint()
        self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()

    def fire(self, hook: HookPoint, x: Tensor, token_index: Tensor) -> Tensor:
        if hook.fwd_hooks or hook.bwd_hooks:
            hook.ctx["token_index"] = token_index
        return hook(x)


class MoEMLP(nn.Module):
    """Top-k routed SwiGLU experts with normalised top-k probabilities (see the module docstring)."""

    def __init__(self, d_model: int, d_mlp: int, n_experts: int, top_k: int, norm_topk_prob: bool, act_fn: str, state: RunState):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must lie in [1, n_experts={n_experts}]")
        self.n_experts, self.top_k, self.norm_topk_prob = n_experts, top_k, norm_topk_prob
        self.router_weight = nn.Parameter(torch.empty(n_experts, d_model))
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_mlp, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_mlp))
        self.act = _activation(act_fn)
        self.hook_router_logits = AVHookPoint(state)
        self.hook_expert_weights = AVHookPoint(state)
        self.hook_expert_indices = AVHookPoint(state)
        self.experts = nn.ModuleList([ExpertHooks() for _ in range(n_experts)])

    @classmethod
    def from_hf(cls, hf_block: nn.Module, act_fn: str, state: RunState) -> "MoEMLP":
        """Share the parameters of an HF sparse MoE block (`.gate.weight`, `.experts.gate_up_proj`,
        `.experts.down_proj`)."""
        gate, experts = hf_block.gate, hf_block.experts
        n, two_m, d = experts.gate_up_proj.shape
        with torch.device("meta"):
            m = cls(d, two_m // 2, n, gate.top_k, gate.norm_topk_prob, act_fn, state)
        m.router_weight = gate.weight
        m.gate_up_proj = experts.gate_up_proj
        m.down_proj = experts.down_proj
        return m

    def routing(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Router logits `[b, p, E]` and dense expert weights `[b, p, E]` (after their hooks)."""
        logits = self.hook_router_logits(F.linear(x, self.router_weight))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top, idx = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
        self.hook_expert_indices(idx)
        weights = torch.zeros_like(probs).scatter(-1, idx, top).to(logits.dtype)
        return logits, self.hook_expert_weights(weights)

    def forward(self, x: Tensor) -> Tensor:
        b, p, d = x.shape
        _, weights = self.routing(x)
        flat = x.reshape(-1, d)
        w = weights.reshape(-1, self.n_experts)
        out = torch.zeros_like(flat)
        hit = (w != 0).any(0).nonzero()[:, 0].tolist()
        for e in hit:
            tokens = (w[:, e] != 0).nonzero()[:, 0]
            hooks = self.experts[e]
            gate, up = F.linear(flat[tokens], self.gate_up_proj[e]).chunk(2, dim=-1)
            gate = hooks.fire(hooks.hook_pre, gate, tokens)
            up = hooks.fire(hooks.hook_pre_linear, up, tokens)
            post = hooks.fire(hooks.hook_post, self.act(gate) * up, tokens)
            y = hooks.fire(hooks.hook_out, F.linear(post, self.down_proj[e]), tokens)
            out.index_add_(0, tokens, (y * w[tokens, e, None]).to(out.dtype))
        return out.reshape(b, p, d)

    @torch.no_grad()
    def fold_norm(self, w: Tensor) -> None:
        """Fold the preceding RMSNorm's weight `w [d]` into the router and the experts' input
        projections (new tensors; a Hugging Face model sharing the old ones is unchanged)."""
        self.router_weight = nn.Parameter(self.router_weight * w.to(self.router_weight.dtype))
        self.gate_up_proj = nn.Parameter(self.gate_up_proj * w.to(self.gate_up_proj.dtype))


def expert_usage(weights: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """How often each expert is chosen: `[E]` counts over the positions of `weights [b, p, E]`
    (cached `hook_expert_weights`) where `mask [b, p]` is true (e.g. `layout.mask("audio")`)."""
    chosen = weights != 0
    if mask is not None:
        chosen = chosen & mask.bool()[..., None].to(chosen.device)
    return chosen.sum((0, 1))
