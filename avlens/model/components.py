"""The decoder backbone, written out: RMSNorm, rotary embeddings (1-D and multimodal), grouped-query
attention, SwiGLU MLP and the pre-norm block, with a hook point at every place the equations
name. Hook names follow TransformerLens.

Shapes: `b` batch, `p` query positions, `k` key positions, `h` query heads, `g` KV heads,
`e` d_head, `d` d_model.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avlens.config import AVConfig
from avlens.model.hook_points import AVHookPoint, RunState

# ----------------------------------------------------------------------------------- RMSNorm


class RMSNorm(nn.Module):
    """`y = w * x / sqrt(mean(x^2) + eps)` (Zhang & Sennrich 2019), statistics in float32.

    Hooks: `hook_scale` = sqrt(mean(x^2) + eps), `[..., 1]` (TransformerLens divides by it);
    `hook_normalized` = x / scale, before the weight.
    """

    def __init__(self, d: int, eps: float, state: RunState, group_views: bool = True):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d))
        self.hook_scale = AVHookPoint(state, group_views=group_views)
        self.hook_normalized = AVHookPoint(state, group_views=group_views)
        self.folded = False

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized((xf / scale).to(dtype))
        if self.folded:
            return normalized
        return self.w * normalized


class HeadRMSNorm(nn.Module):
    """RMSNorm over each head's vector (Qwen3's q_norm / k_norm), no hooks."""

    def __init__(self, d_head: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_head))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.w * xf.to(dtype)


# ----------------------------------------------------------------------------------- rotary


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021) with Qwen's multimodal variants.

    - "1d": angle = position * inv_freq.
    - "mrope" (Qwen2-VL, Qwen2.5-Omni TMRoPE): position ids are 3-D (temporal, height, width);
      the d_head/2 frequencies are split into contiguous blocks of sizes `mrope_section`, block i
      taking its angle from axis i.
    - "mrope_interleaved" (Qwen3-VL / Qwen3-Omni): frequency j takes axis H if j % 3 == 1 and
      j < 3 * section[1], W if j % 3 == 2 and j < 3 * section[2], else T.
    """

    def __init__(self, cfg: AVConfig):
        super().__init__()
        e = cfg.d_head
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, e, 2, dtype=torch.float) / e))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.kind = cfg.rope_kind
        axis = torch.zeros(e // 2, dtype=torch.long)
        if cfg.rope_kind == "mrope":
            axis = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(cfg.mrope_section)])
        elif cfg.rope_kind == "mrope_interleaved":
            sec = cfg.mrope_section
            j = torch.arange(e // 2)
            axis = torch.where((j % 3 == 1) & (j < 3 * sec[1]), 1, torch.where((j % 3 == 2) & (j < 3 * sec[2]), 2, 0))
        self.register_buffer("axis", axis, persistent=False)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin `[b, p, e]` for position ids `[b, p]` or `[3, b, p]`."""
        inv = self.inv_freq.to(position_ids.device)
        if self.kind == "1d":
            if position_ids.ndim == 3:
                position_ids = position_ids[0]
            freqs = position_ids[..., None].float() * inv  # [b, p, e/2]
        else:
            if position_ids.ndim == 2:
                position_ids = position_ids[None].expand(3, -1, -1)
            freqs3 = position_ids[..., None].float() * inv  # [3, b, p, e/2]
            index = self.axis.to(freqs3.device).view(1, 1, 1, -1).expand(1, *freqs3.shape[1:])
            freqs = freqs3.gather(0, index)[0]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate `x` `[b, p, heads, e]` by angles given as cos/sin `[b, p, e]`."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------------- attention


class AttentionMask:
    """Which keys each query may see: causal, minus padded keys.

    A padded query may see only itself, so no row is empty (an all-masked row would give NaN in
    `scaled_dot_product_attention`, and NaN values times zero weights still poison real rows).
    """

    def __init__(self, key_valid: Tensor, q_start: int, n_q: int):
        self.key_valid = key_valid.bool()  # [b, k]
        self.q_start = q_start
        self.n_q = n_q
        self._allowed: Optional[Tensor] = None
        self._blocked: Optional[Tensor] = None

    @property
    def n_k(self) -> int:
        return self.key_valid.shape[1]

    @property
    def plain_causal(self) -> bool:
        """True when a plain causal mask is exact (no padding, no cached prefix)."""
        return self.q_start == 0 and self.n_q == self.n_k and bool(self.key_valid.all())

    def blocked(self) -> Tensor:
        """Bool `[b, 1, p, k]`, the complement of `allowed()`."""
        if self._blocked is None:
            self._blocked = ~self.allowed()
        return self._blocked

    def allowed(self) -> Tensor:
        """Bool `[b, 1, p, k]`."""
        if self._allowed is None:
            dev = self.key_valid.device
            q = torch.arange(self.q_start, self.q_start + self.n_q, device=dev)[:, None]
            k = torch.arange(self.n_k, device=dev)[None, :]
            causal = k <= q
            allowed = causal[None] & (self.key_valid[:, None, :] | (k == q)[None])
            self._allowed = allowed[:, None]
        return self._allowed


class Attention(nn.Module):
    """Grouped-query attention with rotary embeddings and q/k/v biases (Qwen2).

    q = x W_Q + b_Q, k = x W_K + b_K, v = x W_V + b_V (k, v with n_key_value_heads heads);
    rotary on q and k; scores = q k^T / sqrt(d_head), masked; pattern = softmax(scores);
    z = pattern v; out = sum_h z_h W_O[h] (+ b_O).

    The weights live in Hugging Face's layout (`q_proj.weight` is `[h * e, d]`) so that a model
    built with `from_hf` shares the very tensors of the HF model; `W_Q`, `W_K`, ... are
    TransformerLens-layout views of them.

    With no hook on `hook_attn_scores` / `hook_pattern` and no group summary requested, the
    pattern is never materialised: `scaled_dot_product_attention` computes z.
    """

    def __init__(self, cfg: AVConfig, state: RunState, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self._state = state
        d, h, g, e = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
        self.q_proj = nn.Linear(d, h * e, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, g * e, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, g * e, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * e, d, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = HeadRMSNorm(e, cfg.eps)
            self.k_norm = HeadRMSNorm(e, cfg.eps)
        self.hook_q = AVHookPoint(state)
        self.hook_k = AVHookPoint(state)
        self.hook_v = AVHookPoint(state)
        self.hook_rot_q = AVHookPoint(state)
        self.hook_rot_k = AVHookPoint(state)
        self.hook_attn_scores = AVHookPoint(state, group_views=False)
        self.hook_pattern = AVHookPoint(state, group_views=False)
        self.hook_z = AVHookPoint(state)
        self.hook_result = AVHookPoint(state)
        self.summary_collector = None  # set by HookedAVTransformer.attention_group_summary

    # -- TransformerLens-layout views of the weights ---------------------------------------
    @property
    def W_Q(self) -> Tensor:
        """[h, d, e]"""
        h, e = self.cfg.n_heads, self.cfg.d_head
        return self.q_proj.weight.view(h, e, -1).transpose(1, 2)

    @property
    def _W_K(self) -> Tensor:
        g, e = self.cfg.n_key_value_heads, self.cfg.d_head
        return self.k_proj.weight.view(g, e, -1).transpose(1, 2)

    @property
    def _W_V(self) -> Tensor:
        g, e = self.cfg.n_key_value_heads, self.cfg.d_head
        return self.v_proj.weight.view(g, e, -1).transpose(1, 2)

    @property
    def W_K(self) -> Tensor:
        """[h, d, e] (KV heads repeated per query head; `_W_K` has the KV heads)."""
        return self._W_K.repeat_interleave(self.cfg.n_rep, dim=0)

    @property
    def W_V(self) -> Tensor:
        return self._W_V.repeat_interleave(self.cfg.n_rep, dim=0)

    @property
    def W_O(self) -> Tensor:
        """[h, e, d]"""
        h, e = self.cfg.n_heads, self.cfg.d_head
        return self.o_proj.weight.T.reshape(h, e, -1)

    def _bias(self, lin: nn.Linear, heads: int) -> Tensor:
        if lin.bias is None:
            return torch.zeros(heads, self.cfg.d_head, device=lin.weight.device, dtype=lin.weight.dtype)
        return lin.bias.view(heads, self.cfg.d_head)

    @property
    def b_Q(self) -> Tensor:
        return self._bias(self.q_proj, self.cfg.n_heads)

    @property
    def _b_K(self) -> Tensor:
        return self._bias(self.k_proj, self.cfg.n_key_value_heads)

    @property
    def _b_V(self) -> Tensor:
        return self._bias(self.v_proj, self.cfg.n_key_value_heads)

    @property
    def b_K(self) -> Tensor:
        return self._b_K.repeat_interleave(self.cfg.n_rep, dim=0)

    @property
    def b_V(self) -> Tensor:
        return self._b_V.repeat_interleave(self.cfg.n_rep, dim=0)

    @property
    def b_O(self) -> Tensor:
        if self.o_proj.bias is None:
            return torch.zeros(self.cfg.d_model, device=self.o_proj.weight.device, dtype=self.o_proj.weight.dtype)
        return self.o_proj.bias

    # -- forward -------------------------------------------------------------------------------
    def _project(self, x: Tensor, lin: nn.Linear, heads: int) -> Tensor:
        """x `[b, p, d]` -> `[b, p, heads, e]`; or per-head inputs `[b, p, heads, d]`."""
        e = self.cfg.d_head
        if x.ndim == 3:
            return lin(x).unflatten(-1, (heads, e))
        W = lin.weight.view(heads, e, -1)  # [heads, e, d]
        out = torch.einsum("bphd,hed->bphe", x, W)
        if lin.bias is not None:
            out = out + lin.bias.view(heads, e)
        return out

    def forward(
        self,
        q_input: Tensor,
        k_input: Tensor,
        v_input: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: AttentionMask,
        kv_cache: Optional["KVCache"] = None,
    ) -> Tensor:
        cfg = self.cfg
        h, g, e = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
        expand_kv = getattr(cfg, "ungroup_grouped_query_attention", False) and g != h
        q = self._project(q_input, self.q_proj, h)
        k = self._project(k_input, self.k_proj, g)
        v = self._project(v_input, self.v_proj, g)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if expand_kv:
            k = k.repeat_interleave(cfg.n_rep, dim=2)
            v = v.repeat_interleave(cfg.n_rep, dim=2)
        q = self.hook_q(q)
        k = self.hook_k(k)
        v = self.hook_v(v)
        cos, sin = rope
        q = self.hook_rot_q(apply_rotary(q, cos, sin))
        k = self.hook_rot_k(apply_rotary(k, cos, sin))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        n_kv_heads = k.shape[2]
        rep = h // n_kv_heads

        want_pattern = self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks() or cfg.use_attn_eager
        collector = self.summary_collector
        if want_pattern:
            z = self._eager(q, k, v, mask, rep, 0, q.shape[1], hooks=True, collector=collector)
        elif collector is not None:
            z = self._chunked(q, k, v, mask, rep, collector)
        else:
            z = self._sdpa(q, k, v, mask, rep)
        z = self.hook_z(z)  # [b, p, h, e]
        if cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            out = result.sum(2)
            if self.o_proj.bias is not None:
                out = out + self.o_proj.bias
            return out
        return self.o_proj(z.flatten(-2))

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, rep: int) -> Tensor:
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if mask.plain_causal:
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=rep > 1)
        else:
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask.allowed(), enable_gqa=rep > 1)
        return out.transpose(1, 2)

    def _eager(self, q, k, v, mask: AttentionMask, rep: int, q0: int, q1: int, hooks: bool, collector) -> Tensor:
        """Explicit scores and pattern for queries q0:q1 (all of them when hooks fire)."""
        kx = k.repeat_interleave(rep, dim=2) if rep > 1 else k
        vx = v.repeat_interleave(rep, dim=2) if rep > 1 else v
        # scale q (small) rather than the scores (large), and mask in place: the full-size
        # score tensor is allocated once
        # batched matmuls on [b, h, ., .] views (cheaper to dispatch than einsum for decoding steps)
        scores = torch.matmul(q[:, q0:q1].transpose(1, 2) / math.sqrt(self.cfg.d_head), kx.permute(0, 2, 3, 1))
        scores.masked_fill_(mask.blocked()[:, :, q0:q1], torch.finfo(scores.dtype).min)
        if hooks:
            scores = self.hook_attn_scores(scores)
        pattern = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if hooks:
            pattern = self.hook_pattern(pattern)
        if collector is not None:
            collector.add(self.layer, pattern, q0)
        return torch.matmul(pattern, vx.transpose(1, 2)).transpose(1, 2)

    def _chunked(self, q, k, v, mask: AttentionMask, rep: int, collector) -> Tensor:
        """Eager attention in query chunks, feeding each chunk's pattern to the group summary, so
        that no full `[b, h, p, k]` pattern is ever held."""
        b, p, h, _ = q.shape
        n_k = k.shape[1]
        # elements of float32 pattern per chunk (a collector may ask for smaller chunks)
        budget = getattr(collector, "chunk_elements", 32 * 2**20)
        chunk = max(1, min(p, budget // max(1, b * h * n_k)))
        outs = [self._eager(q, k, v, mask, rep, s, min(p, s + chunk), hooks=False, collector=collector) for s in range(0, p, chunk)]
        return torch.cat(outs, dim=1)


class GatedMLP(nn.Module):
    """SwiGLU MLP (Shazeer 2020): out = W_out (act(x W_gate) * (x W_in)).

    Hooks: `hook_pre` = x W_gate (before the activation), `hook_pre_linear` = x W_in,
    `hook_post` = act(pre) * pre_linear.
    """

    def __init__(self, cfg: AVConfig, state: RunState):
        super().__init__()
        d, m = cfg.d_model, cfg.d_mlp
        self.gate_proj = nn.Linear(d, m, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(d, m, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(m, d, bias=cfg.mlp_bias)
        self.act = _activation(cfg.act_fn)
        self.hook_pre = AVHookPoint(state)
        self.hook_pre_linear = AVHookPoint(state)
        self.hook_post = AVHookPoint(state)

    @property
    def W_gate(self) -> Tensor:
        return self.gate_proj.weight.T

    @property
    def W_in(self) -> Tensor:
        return self.up_proj.weight.T

    @property
    def W_out(self) -> Tensor:
        return self.down_proj.weight.T

    @property
    def b_in(self) -> Tensor:
        b = self.up_proj.bias
        return b if b is not None else torch.zeros(self.up_proj.out_features, device=self.up_proj.weight.device, dtype=self.up_proj.weight.dtype)

    @property
    def b_out(self) -> Tensor:
        b = self.down_proj.bias
        return b if b is not None else torch.zeros(self.down_proj.out_features, device=self.down_proj.weight.device, dtype=self.down_proj.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(self.gate_proj(x))
        pre_linear = self.hook_pre_linear(self.up_proj(x))
        post = self.hook_post(self.act(pre) * pre_linear)
        return self.down_proj(post)


def _activation(name: str):
    acts = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in acts:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(acts)}")
    return acts[name]


class TransformerBlock(nn.Module):
    """Pre-norm decoder block: resid_mid = resid_pre + attn(ln1(resid_pre));
    resid_post = resid_mid + mlp(ln2(resid_mid))."""

    def __init__(self, cfg: AVConfig, state: RunState, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.ln1 = RMSNorm(cfg.d_model, cfg.eps, state)
        self.attn = Attention(cfg, state, layer)
        self.ln2 = RMSNorm(cfg.d_model, cfg.eps, state)
        self.mlp = GatedMLP(cfg, state)
        self.hook_resid_pre = AVHookPoint(state)
        self.hook_q_input = AVHookPoint(state)
        self.hook_k_input = AVHookPoint(state)
        self.hook_v_input = AVHookPoint(state)
        self.hook_attn_out = AVHookPoint(state)
        self.hook_resid_mid = AVHookPoint(state)
        self.hook_mlp_out = AVHookPoint(state)
        self.hook_resid_post = AVHookPoint(state)

    def forward(self, resid_pre: Tensor, rope, mask: AttentionMask, kv_cache=None) -> Tensor:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        if cfg.use_split_qkv_input:
            h, g = cfg.n_heads, cfg.n_key_value_heads
            q_in = self.ln1(self.hook_q_input(resid_pre[:, :, None].expand(-1, -1, h, -1).clone()))
            k_in = self.ln1(self.hook_k_input(resid_pre[:, :, None].expand(-1, -1, g, -1).clone()))
            v_in = self.ln1(self.hook_v_input(resid_pre[:, :, None].expand(-1, -1, g, -1).clone()))
        else:
            q_in = k_in = v_in = self.ln1(resid_pre)
        attn_out = self.hook_attn_out(self.attn(q_in, k_in, v_in, rope, mask, kv_cache))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class KVCache:
    """Rotated keys and values of every layer, `[b, k, heads, e]`, grown one step at a time."""

    def __init__(self, n_layers: int):
        self.keys: list[Optional[Tensor]] = [None] * n_layers
        self.values: list[Optional[Tensor]] = [None] * n_layers
        # [b, past + new] attention mask over every position the next call's keys cover
        self.key_mask: Optional[Tensor] = None

    @property
    def length(self) -> int:
        k = next((x for x in self.keys if x is not None), None)
        return 0 if k is None else k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v
