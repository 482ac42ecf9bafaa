"""`HookedAVTransformer`: a hooked decoder for audio-visual LLMs, in the TransformerLens tradition.

    x_0 = splice(W_E[tokens], hook_audio_embed(a), hook_video_embed(v), hook_image_embed(i))
    x_{l+1} = block_l(x_l)                      (hook_resid_pre ... hook_resid_post)
    logits = ln_final(x_L) W_U

Every activation is a hook point with TransformerLens's name, and every per-position activation
has group views (`blocks.3.hook_resid_post.audio`). Families (`avlens.families`) subclass this to
add their layout builder, weight conversion and `prepare`; this file knows no model family.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from avlens.batch import AVBatch
from avlens.config import AVConfig
from avlens.layout import PARTITION_GROUPS, BatchLayout
from avlens.model.components import AttentionMask, KVCache, RMSNorm, Rotary, TransformerBlock
from avlens.model.hook_points import AVHookPoint, GroupViewHookPoint, RunState
from avlens.model.registry import family_for_checkpoint, family_for_hf_model, lm_family
from avlens.model.summary import AttentionGroupSummary, GroupSummaryCollector

ModelInput = Union[AVBatch, Tensor, str, Sequence[str]]


@dataclass
class GenerateOutput:
    """What `generate` returns.

    Attributes:
        tokens: `[batch, n_new]` generated token ids.
        logits: `[batch, n_new, d_vocab]`: the logits each new token was chosen from.
        sequences: `[batch, pos + n_new]` prompt ids followed by the new tokens.
        batch: the prompt batch.
    """

    tokens: Tensor
    logits: Optional[Tensor]
    sequences: Optional[Tensor]
    batch: AVBatch
    method_output: Any = None  # with `generate(method=...)`: the `avlens.mitigation.DecodeOutput`

    def __repr__(self) -> str:
        return f"GenerateOutput(tokens={tuple(self.tokens.shape)}, logits={None if self.logits is None else tuple(self.logits.shape)})"


class HookedAVTransformer(HookedRootModule):
    """A hooked multimodal decoder: Qwen2-style blocks with (multimodal) rotary embeddings.

    Build one with `HookedAVTransformer.from_hf(hf_model)`, `from_pretrained(path_or_id)` or
    `avlens.load_toy()`; or directly from an `AVConfig` (random weights).
    """

    media_kinds: tuple[str, ...] = ("audio", "video", "image")
    # hooks of the modality encoders: left out of the default cache (caching them re-runs the
    # encoders in the forward pass); name them to cache them
    encoder_hook_prefixes: tuple[str, ...] = ()

    def __init__(self, cfg: AVConfig, tokenizer: Any = None):
        super().__init__()
        if not isinstance(cfg, AVConfig):
            raise TypeError(f"expected an AVConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.run_state = RunState()
        state = self.run_state
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        nn.init.normal_(self.embed.W_E, std=0.02)
        self.hook_embed = AVHookPoint(state)
        self.hook_audio_embed = AVHookPoint(state, group_views=False)
        self.hook_video_embed = AVHookPoint(state, group_views=False)
        self.hook_image_embed = AVHookPoint(state, group_views=False)
        self.rotary = Rotary(cfg)
        self.blocks = nn.ModuleList([TransformerBlock(cfg, state, l) for l in range(cfg.n_layers)])
        self.ln_final = RMSNorm(cfg.d_model, cfg.eps, state)
        self.unembed = nn.Module()
        self.unembed.lm_head = nn.Linear(cfg.d_model, cfg.d_vocab_out, bias=False)
        if cfg.tie_word_embeddings:
            self.unembed.lm_head.weight = self.embed.W_E
        self.setup()
        self.eval()

    # ------------------------------------------------------------------------- hook registry
    def setup(self):
        super().setup()
        self.group_view_dict: dict[str, GroupViewHookPoint] = {}
        for name in list(self.hook_dict):
            if isinstance(self.hook_dict[name], GroupViewHookPoint):
                self.group_view_dict[name] = self.hook_dict.pop(name)  # type: ignore[assignment]

    def hook_points(self):
        return list(self.hook_dict.values()) + list(self.group_view_dict.values())

    def remove_all_hook_fns(self, direction="both", including_permanent=False, level=None):
        # only visit hook points that hold hooks: a model has thousands of (mostly idle) group
        # views, and TransformerLens's walk over all of them costs milliseconds per call.
        # Hooks of a `model.hooks(...)` context (level is set) are only ever added through
        # `_enable_hook_with_name` / `_enable_hooks_for_points`, which note their points, so
        # leaving a context (once per decoding step in avlens.mitigation) visits only those.
        tracked = self.__dict__.setdefault("_context_hooked", set())
        points = list(tracked) if level is not None else self.hook_points()
        for hp in points:
            if hp.fwd_hooks or hp.bwd_hooks:
                hp.remove_hooks(direction, including_permanent=including_permanent, level=level)
        if level is None:
            tracked.clear()
        else:
            tracked.difference_update([hp for hp in points if not (hp.fwd_hooks or hp.bwd_hooks)])

    def _enable_hooks_for_points(self, hook_points, enabled, hook, dir):
        tracked = self.__dict__.setdefault("_context_hooked", set())
        for hook_name, hp in hook_points:
            if enabled(hook_name):
                hp.add_hook(hook, dir=dir, level=self.context_level)
                tracked.add(hp)

    def clear_contexts(self):
        for hp in self.hook_points():
            if hp.ctx:
                hp.clear_context()

    def resolve_hook(self, name: str) -> HookPoint:
        """The hook point called `name`, creating the group view `<hook>.<group>` if needed."""
        hp = self.hook_dict.get(name) or self.group_view_dict.get(name)
        if hp is not None:
            return hp
        parent, _, group = name.rpartition(".")
        base = self.hook_dict.get(parent)
        if isinstance(base, AVHookPoint) and group.isidentifier() and not group.startswith("hook_"):
            if not base.has_group_views:
                raise KeyError(
                    f"{parent!r} has no group views: its activation is not indexed by sequence "
                    "position (attention scores/patterns are [batch, head, query, key]; slice "
                    "them in the hook with batch.layout.positions(group) instead)."
                )
            view = base.add_group_view(group)
            view.train(self.training)
            view.name = name
            self.mod_dict[name] = view
            self.group_view_dict[name] = view
            return view
        options = list(self.hook_dict)
        hint = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
        raise KeyError(
            f"unknown hook name {name!r}."
            + (f" Closest: {hint}." if hint else "")
            + " Hook names follow TransformerLens (e.g. 'blocks.0.hook_resid_pre', "
            "'blocks.0.attn.hook_pattern'); group views append a group ('blocks.0.hook_resid_pre.audio'). "
            "List them with model.hook_dict."
        )

    def _enable_hook_with_name(self, name: str, hook: Callable, dir):
        hp = self.resolve_hook(name)
        self.check_hooks_to_add(hp, name, hook, dir=dir)
        hp.add_hook(hook, dir=dir, level=self.context_level)
        self.__dict__.setdefault("_context_hooked", set()).add(hp)

    def _disabled_reason(self, name: str) -> Optional[str]:
        """Why an opt-in hook would never fire, or None if it fires."""
        parts = name.split(".")
        base = next((p[len("hook_"):] for p in reversed(parts) if p.startswith("hook_")), "")
        if base == "result" and not self.cfg.use_attn_result:
            return f"{name!r} only fires with model.cfg.use_attn_result = True (it costs a [batch, pos, head, d_model] tensor per layer); set it first."
        if base in ("q_input", "k_input", "v_input") and not self.cfg.use_split_qkv_input:
            return f"{name!r} only fires with model.cfg.use_split_qkv_input = True; set it first."
        return None

    def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False):
        """Refuse hooks that would never fire (TransformerLens does the same for opt-in hooks)."""
        reason = self._disabled_reason(hook_point_name)
        if reason:
            raise ValueError(reason)

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        if isinstance(name, str):
            hp = self.resolve_hook(name)
            self.check_and_add_hook(hp, name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)
        else:
            super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _names_filter(self, names_filter) -> Callable[[str], bool]:
        """Group views are cached only when named: a callable filter sees the base hooks only."""
        if names_filter is None:
            prefixes = self.encoder_hook_prefixes
            return lambda n: not n.startswith(prefixes) if prefixes else True
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple, set)):
            for n in names_filter:
                self.resolve_hook(n)
            wanted = set(names_filter)
            return lambda n: n in wanted
        if callable(names_filter):
            return names_filter
        raise TypeError("names_filter must be None, a hook name, a list of names or a callable on names")

    def get_caching_hooks(self, names_filter=None, incl_bwd=False, device=None, remove_batch_dim=False, cache=None, pos_slice=None):
        explicit = []
        if isinstance(names_filter, (str, list, tuple, set)):
            names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
            explicit = [n for n in names if n in self.group_view_dict or self._is_creatable_view(n)]
        if isinstance(names_filter, (str, list, tuple, set)):
            for n in [names_filter] if isinstance(names_filter, str) else names_filter:
                reason = self._disabled_reason(n)
                if reason:
                    raise ValueError(reason)
        named = self._names_filter(names_filter)
        filt = lambda n: named(n) and self._disabled_reason(n) is None  # noqa: E731
        cache_dict, fwd, bwd = super().get_caching_hooks(filt, incl_bwd, device, remove_batch_dim, cache, pos_slice)
        if explicit:
            # group views are not in hook_dict, and their position axis is always 1 (0 without
            # the batch axis), whatever the hook's suffix says to TransformerLens's save hook
            from transformer_lens.utilities import Slice

            sl = Slice.unwrap(pos_slice)

            def save(tensor, hook, is_backward=False):
                t = tensor.detach().to(device) if device is not None else tensor.detach()
                if remove_batch_dim:
                    t = t[0]
                t = sl.apply(t, dim=0 if remove_batch_dim else 1)
                cache_dict[hook.name + ("_grad" if is_backward else "")] = t

            save_fwd = save
            save_bwd = lambda t, hook: save(t, hook, True)  # noqa: E731
            for n in explicit:
                self.resolve_hook(n)
                fwd.append((n, save_fwd))
                if incl_bwd:
                    bwd.append((n, save_bwd))
        return cache_dict, fwd, bwd

    def _is_creatable_view(self, name: str) -> bool:
        parent, _, group = name.rpartition(".")
        return isinstance(self.hook_dict.get(parent), AVHookPoint) and not group.startswith("hook_")

    def run_with_cache(self, *model_args, names_filter=None, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """Run the model and cache activations: returns (output, `ActivationCache`).

        `names_filter`: None (every decoder hook; group views and encoder hooks are left out), a
        name, a list of names (group views and encoder hooks included when named), or a callable
        on base hook names. Other keywords as in
        TransformerLens (`device`, `incl_bwd`, `pos_slice`, ...) and the forward's
        (`stop_at_layer`, `start_at_layer`, ...).
        """
        out, cache_dict = super().run_with_cache(*model_args, names_filter=names_filter, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            # an ActivationCache (TransformerLens's tools all work on it) with avlens's reprs and
            # between-block terms (DeepStack) in decompose_resid
            from avlens.model.cache import wrap_cache

            return out, wrap_cache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    # ------------------------------------------------------------------------- weights (TL surface)
    @property
    def W_E(self) -> Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> Tensor:
        """[d_model, d_vocab] (a view of the unembedding; ln_final's weight is not in it unless
        `fold_ln()` was called)."""
        return self.unembed.lm_head.weight.T

    @property
    def b_U(self) -> Tensor:
        return torch.zeros(self.cfg.d_vocab_out, device=self.W_E.device, dtype=self.W_E.dtype)

    def _stack(self, attr: str) -> Tensor:
        return torch.stack([getattr(b.attn, attr) for b in self.blocks], dim=0)

    W_Q = property(lambda self: self._stack("W_Q"))
    W_K = property(lambda self: self._stack("W_K"))
    W_V = property(lambda self: self._stack("W_V"))
    W_O = property(lambda self: self._stack("W_O"))
    b_Q = property(lambda self: self._stack("b_Q"))
    b_K = property(lambda self: self._stack("b_K"))
    b_V = property(lambda self: self._stack("b_V"))
    b_O = property(lambda self: self._stack("b_O"))
    W_in = property(lambda self: torch.stack([b.mlp.W_in for b in self.blocks]))
    W_gate = property(lambda self: torch.stack([b.mlp.W_gate for b in self.blocks]))
    W_out = property(lambda self: torch.stack([b.mlp.W_out for b in self.blocks]))

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Tensor:
        """Sum of the output biases (b_O, b_out) of the layers before `layer` (TL semantics)."""
        acc = torch.zeros(self.cfg.d_model, device=self.W_E.device, dtype=self.W_E.dtype)
        for l in range(layer):
            acc = acc + self.blocks[l].attn.b_O
            if include_mlp_biases:
                acc = acc + self.blocks[l].mlp.b_out
        if mlp_input:
            acc = acc + self.blocks[layer].attn.b_O
        return acc

    def tokens_to_residual_directions(self, tokens) -> Tensor:
        """The residual direction whose dot product with the *normalised* final residual (the
        residual divided by `ln_final.hook_scale`) is the token's logit: `W_U[:, t] * w_ln_final`.
        After `fold_ln()` the weight is inside W_U and this is just `W_U[:, t]`. So
        `cache.logit_attrs(cache.decompose_resid(), tokens)` sums to the logits."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            tokens = torch.tensor(tokens)
        tokens = torch.as_tensor(tokens, device=self.W_E.device)
        dirs = self.W_U[:, tokens]  # [d, *tokens]
        dirs = dirs.movedim(0, -1)
        if not self.ln_final.folded:
            dirs = dirs * self.ln_final.w
        return dirs

    @torch.no_grad()
    def fold_ln(self) -> "HookedAVTransformer":
        """Fold each RMSNorm's weight into the weights that read its output (W_Q/W_K/W_V, W_gate/
        W_in, W_U). New modules are made, so a Hugging Face model sharing weights is unchanged.
        Logits are unchanged; `hook_normalized` then feeds the projections directly."""

        def folded(lin: nn.Linear, w: Tensor) -> nn.Linear:
            new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight = nn.Parameter(lin.weight * w[None, :].to(lin.weight.dtype))
            if lin.bias is not None:
                new.bias = nn.Parameter(lin.bias.clone())
            return new

        for b in self.blocks:
            if b.ln1.folded:
                continue
            w1, w2 = b.ln1.w, b.ln2.w
            a, m = b.attn, b.mlp
            a.q_proj, a.k_proj, a.v_proj = folded(a.q_proj, w1), folded(a.k_proj, w1), folded(a.v_proj, w1)
            if hasattr(m, "fold_norm"):  # mixture-of-experts MLPs fold into router and experts
                m.fold_norm(w2)
            else:
                m.gate_proj, m.up_proj = folded(m.gate_proj, w2), folded(m.up_proj, w2)
            b.ln1.folded = b.ln2.folded = True
        if not self.ln_final.folded:
            self.unembed.lm_head = folded(self.unembed.lm_head, self.ln_final.w)
            self.ln_final.folded = True
        self.setup()
        self.train(self.training)
        return self

    # ------------------------------------------------------------------------- tokens and strings
    def _need_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise RuntimeError(
                f"{what} needs a tokenizer, and this model has none. Load one with "
                "model.set_tokenizer(transformers.AutoTokenizer.from_pretrained(path)) or pass token "
                "ids / an AVBatch instead of strings."
            )
        return self.tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def to_tokens(self, text: Union[str, Sequence[str]], padding_side: str = "left") -> Tensor:
        tok = self._need_tokenizer("to_tokens")
        if isinstance(text, str):
            text = [text]
        old = getattr(tok, "padding_side", None)
        tok.padding_side = padding_side
        try:
            enc = tok(list(text), return_tensors="pt", padding=True)
        finally:
            if old is not None:
                tok.padding_side = old
        return enc["input_ids"].to(self.W_E.device)

    def to_single_token(self, text: str) -> int:
        ids = self._need_tokenizer("to_single_token")(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {ids}")
        return int(ids[0])

    def to_string(self, tokens) -> Union[str, list[str]]:
        tok = self._need_tokenizer("to_string")
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [tok.decode(t) for t in tokens.tolist()]
        return tok.decode(tokens.tolist())

    def to_str_tokens(self, input: ModelInput, sample: int = 0, with_groups: bool = False):
        """String tokens of one sample. Media placeholders read `<audio 0.04s>`, `<video 2.00s>`;
        `with_groups=True` gives `(token, group)` pairs."""
        batch = self._to_batch(input)
        layout = batch.layout
        labels = layout.labels(sample)
        ids = batch.input_ids[sample].tolist() if batch.input_ids is not None else [None] * layout.n_pos
        out = []
        for p, (g, t) in enumerate(zip(labels, ids)):
            if g in self.media_kinds:
                ts = float(layout.time[sample, p])
                s = f"<{g} {ts:.2f}s>" if ts == ts else f"<{g}>"
            elif t is None:
                s = f"<{g}>"
            elif self.tokenizer is not None:
                s = self.tokenizer.decode([t])
            else:
                s = f"<{t}>"
            out.append((s, g) if with_groups else s)
        return out

    # ------------------------------------------------------------------------- inputs
    def special_token_ids(self) -> set[int]:
        """Token ids that form the `special` group (media delimiters, chat markers)."""
        ids = set()
        if self.tokenizer is not None:
            ids |= set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return ids

    def text_positions(self, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary positions of a text-only batch and its rope_deltas (Hugging Face's formula:
        running count of real tokens, padding at 1; deltas = max + 1 - number of real tokens)."""
        mask = attention_mask.long()
        pos = mask.cumsum(-1) - 1
        pos = pos.masked_fill(mask == 0, 1)
        deltas = pos.max(-1, keepdim=True).values + 1 - mask.sum(-1, keepdim=True)
        if self.cfg.rope_kind != "1d":
            pos = pos[None].expand(3, -1, -1)
        return pos, deltas

    def text_batch(self, tokens: Tensor, attention_mask: Optional[Tensor] = None) -> AVBatch:
        """An `AVBatch` of text-only token ids `[batch, pos]` (or `[pos]`)."""
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise TypeError(f"token ids must be an integer tensor, got {tokens.dtype}")
        tokens = tokens.long().to(self.W_E.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        attention_mask = attention_mask.to(tokens.device)
        if int(tokens.max()) >= self.cfg.d_vocab or int(tokens.min()) < 0:
            raise ValueError(f"token ids must lie in [0, {self.cfg.d_vocab}); got {int(tokens.min())}..{int(tokens.max())}")
        special_ids = sorted(self.special_token_ids())
        special = torch.isin(tokens, torch.tensor(special_ids, device=tokens.device)) if special_ids else None
        for kind in self.media_kinds:
            pid = self.cfg.token_ids.get(f"{kind}_token_id")
            if pid is not None and bool((tokens == pid).any()):
                raise ValueError(
                    f"the token ids contain {kind} placeholders (id {pid}) but no {kind} features; "
                    f"build the batch with model.prepare(...) from the processor outputs."
                )
        pos, deltas = self.text_positions(attention_mask)
        layout = BatchLayout.text_only(attention_mask, special)
        return AVBatch(input_ids=tokens, attention_mask=attention_mask, position_ids=pos, layout=layout, rope_deltas=deltas)

    def _to_batch(self, input: ModelInput, attention_mask: Optional[Tensor] = None) -> AVBatch:
        if isinstance(input, AVBatch):
            return input
        if isinstance(input, Tensor):
            return self.text_batch(input, attention_mask)
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            tok = self._need_tokenizer("string input")
            old = getattr(tok, "padding_side", None)
            tok.padding_side = "left"
            try:
                enc = tok([input] if isinstance(input, str) else list(input), return_tensors="pt", padding=True)
            finally:
                if old is not None:
                    tok.padding_side = old
            return self.text_batch(enc["input_ids"], enc["attention_mask"])
        if isinstance(input, dict):
            raise TypeError("got a dict: build an AVBatch with model.prepare(**processor_outputs) first")
        raise TypeError(f"the model takes an AVBatch, token ids [batch, pos] or strings; got {type(input).__name__}")

    def embed_batch(self, batch: AVBatch) -> Tensor:
        """The merged input embeddings `[b, p, d]`: token embeddings with each media kind's
        projected encoder features written into its placeholder positions (in order)."""
        if batch.inputs_embeds is not None:
            x = batch.inputs_embeds.to(self.W_E.dtype)
            # a hook editing in place must not change the caller's batch
            return self.hook_embed(x.clone() if x is batch.inputs_embeds and self.hook_embed.has_hooks() else x)
        x = F.embedding(batch.input_ids, self.W_E)
        for kind in ("audio", "image", "video"):
            feats = batch.features.get(kind)
            if feats is None:
                continue
            hook = getattr(self, f"hook_{kind}_embed")
            moved = feats.to(x.device, x.dtype)
            feats = hook(moved.clone() if moved is feats and hook.has_hooks() else moved)
            mask = batch.layout.mask(kind)
            n = int(mask.sum())
            if feats.shape[0] != n:
                raise ValueError(f"{feats.shape[0]} {kind} features for {n} {kind} positions after hook_{kind}_embed")
            x = x.masked_scatter(mask[..., None].to(x.device), feats)
        for kind in self.media_kinds:
            if kind not in batch.features and int(batch.layout.counts(kind).sum()) > 0:
                raise ValueError(f"the batch has {kind} positions but no {kind} features")
        return self.hook_embed(x)

    # ------------------------------------------------------------------------- forward
    def forward(
        self,
        input: Union[ModelInput, Tensor, None] = None,
        return_type: Optional[str] = "logits",
        *,
        batch: Optional[AVBatch] = None,
        attention_mask: Optional[Tensor] = None,
        start_at_layer: Optional[int] = None,
        stop_at_layer: Optional[int] = None,
        resid: Optional[Tensor] = None,
        kv_cache: Optional[KVCache] = None,
        loss_per_token: bool = False,
        logits_at: Optional[Tensor] = None,
    ):
        """Run the model.

        Args:
            input: an `AVBatch`, token ids `[batch, pos]`, or strings (with a tokenizer). With
                `start_at_layer`, the residual stream `[batch, pos, d_model]` entering that layer
                (then pass the batch it belongs to as `batch=`, for positions and layout; text
                positions are assumed without it).
            return_type: "logits", "loss", "both" or None.
            start_at_layer / stop_at_layer: run only blocks `start:stop` (TransformerLens
                semantics; negative values count from the end). With `stop_at_layer` the residual
                stream entering that layer is returned. Work outside the range is not done.
            resid: alternative way to pass the starting residual with `start_at_layer`.
            kv_cache: a `KVCache`; keys/values of earlier calls are reused (used by `generate`
                and by the patching sweeps, which start from a cached prefix).
            logits_at: LongTensor `[batch, n]` of positions (relative to this call's first
                position): the unembedding runs only there and the logits are `[batch, n, d_vocab]`
                (`ln_final` and its hooks still see every position). The unembedding is a large
                share of a small model's forward; metrics usually read one position.
        """
        L = self.cfg.n_layers
        start = 0 if start_at_layer is None else (start_at_layer % L if start_at_layer < 0 else start_at_layer)
        stop = L if stop_at_layer is None else (stop_at_layer % L if stop_at_layer < 0 else stop_at_layer)
        if not 0 <= start <= stop <= L:
            raise ValueError(f"need 0 <= start_at_layer <= stop_at_layer <= n_layers={L}; got {start}, {stop}")

        if start_at_layer is not None:
            if isinstance(input, Tensor) and input.is_floating_point():
                x = input
            elif resid is not None:
                x = resid
                batch = batch or (input if isinstance(input, AVBatch) else None)
            else:
                raise ValueError("with start_at_layer, pass the residual stream [batch, pos, d_model] as input (or resid=)")
            if x.ndim != 3 or x.shape[-1] != self.cfg.d_model:
                raise ValueError(f"the starting residual must be [batch, pos, {self.cfg.d_model}], got {tuple(x.shape)}")
            if batch is None:
                if self.cfg.rope_kind != "1d":
                    raise ValueError(
                        "start_at_layer on a model with multimodal rotary positions needs the batch the "
                        "residual belongs to: model(resid, start_at_layer=k, batch=batch). For text-only "
                        "input pass batch=model.text_batch(tokens)."
                    )
                batch = self.text_batch(torch.zeros(x.shape[:2], dtype=torch.long, device=x.device), attention_mask)
            x = x.clone()  # hooks editing the residual in place must not change the caller's tensor
            if batch.shape != x.shape[:2]:
                raise ValueError(f"the residual {tuple(x.shape[:2])} and the batch {tuple(batch.shape)} differ in [batch, pos]")
        else:
            if input is None:
                input = batch
            batch = self._to_batch(input, attention_mask)
            x = None

        if logits_at is not None and return_type != "logits":
            raise ValueError(f"logits_at gives logits at some positions only, so return_type must be 'logits'; got {return_type!r}")
        past = kv_cache.length if kv_cache is not None else 0
        key_mask = batch.attention_mask if past == 0 else kv_cache.key_mask
        if key_mask is None or key_mask.shape[1] != past + batch.shape[1]:
            raise ValueError("decoding with a KV cache needs kv_cache.key_mask covering past and new positions")
        self.run_state.begin(batch.layout, start_pos=past, decoding=past > 0)
        try:
            if x is None:
                x = self.embed_batch(batch)
            rope = self.rotary(batch.position_ids.to(x.device), x.dtype)
            mask = AttentionMask(key_mask.to(x.device), q_start=past, n_q=x.shape[1])
            for block in self.blocks[start:stop]:
                x = block(x, rope, mask, kv_cache)
            if stop < L:
                return x
            if return_type is None:
                self.ln_final(x)  # fire its hooks
                return None
            normed = self.ln_final(x)
            if logits_at is not None:
                idx = torch.as_tensor(logits_at, device=x.device).long()
                if idx.ndim != 2 or idx.shape[0] != x.shape[0]:
                    raise ValueError(f"logits_at must be [batch, n] = [{x.shape[0]}, n] positions; got shape {tuple(idx.shape)}")
                if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < x.shape[1]):
                    raise IndexError(f"logits_at positions must lie in [0, {x.shape[1]}); got {int(idx.min())}..{int(idx.max())}")
                normed = normed.gather(1, idx[..., None].expand(-1, -1, normed.shape[-1]))
            logits = self.unembed.lm_head(normed)
        finally:
            self.run_state.begin(None)
        if return_type == "logits":
            return logits
        loss = self.loss(logits, batch, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None; got {return_type!r}")

    def loss(self, logits: Tensor, batch: AVBatch, per_token: bool = False) -> Tensor:
        """Next-token cross-entropy on text targets (media placeholders and padding excluded)."""
        if batch.input_ids is None:
            raise ValueError("the loss needs input_ids")
        targets = batch.input_ids[:, 1:]
        valid = (batch.layout.mask("text") | batch.layout.mask("special"))[:, 1:] & batch.attention_mask[:, :-1].bool()
        lp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        nll = -lp * valid
        if per_token:
            return nll
        return nll.sum() / valid.sum().clamp(min=1)

    # ------------------------------------------------------------------------- group summary
    @torch.no_grad()
    def attention_group_summary(
        self, input: ModelInput, groups: Optional[Sequence[str]] = None, per_key: bool = False
    ) -> AttentionGroupSummary:
        """Attention mass from each query group to each key group, per layer and head, computed
        inside one forward pass, one query chunk at a time (full patterns are never all kept).

        `groups` defaults to the partition groups present in the batch plus any non-empty overlay.
        With `per_key=True` also the attention each position receives from each query group.
        """
        batch = self._to_batch(input)
        lay = batch.layout
        if groups is None:
            groups = [g for g in lay.groups if int(lay.counts(g).sum()) > 0 and g != "pad"]
        for g in groups:
            lay.mask(g)
        collector = GroupSummaryCollector(lay, groups, self.cfg.n_layers, self.cfg.n_heads, per_key)
        for b in self.blocks:
            b.attn.summary_collector = collector
        try:
            self.forward(batch, return_type=None)
        finally:
            for b in self.blocks:
                b.attn.summary_collector = None
        counts = torch.stack([lay.counts(g) for g in groups], dim=-1).float()  # [b, G]
        mass = collector.mass / counts.clamp(min=1)[:, None, None, :, None]
        return AttentionGroupSummary(list(groups), mass, counts.long(), collector.received)

    # ------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input: ModelInput,
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        eos_token_id: Optional[Union[int, Sequence[int]]] = None,
        pad_token_id: Optional[int] = None,
        seed: Optional[int] = None,
        fwd_hooks: Sequence = (),
        return_logits: bool = True,
        verbose: bool = False,
        method=None,
    ) -> GenerateOutput:
        """Greedy or sampled decoding with a KV cache.

        Hooks (given here or active on the model) fire at the prefill and at every step; a step's
        hooks see only the new position, and `hook.ctx["start_pos"]` (or `hook.start_pos`) gives
        the absolute position where the call starts. 3-D rotary positions continue from the
        batch's per-sample `rope_deltas`: position = (real tokens so far) + delta on all axes.
        Samples that emit `eos_token_id` are padded with `pad_token_id` afterwards.

        `method`: a decoding-time intervention from `avlens.mitigation` (`SinkSteering`,
        `AdaptiveGuidance`, `VAR`, `PAI`, `VCD`, `AVCD`, `MAD`, ...): decoding goes through
        `avlens.mitigation.decode` (greedy, every branch on its own KV cache); `logits` are the
        method's combined scores, `method_output` the full `DecodeOutput`; `fwd_hooks` are added to
        every branch of the prompt's shape, each seeing only its own rows (not during the method's
        setup). Methods that rebuild the prompt (`MAD`, `PAI`) need `input` to be
        an `avlens.mitigation.AVPrompt`.
        """
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if method is not None:
            if do_sample:
                raise ValueError("generate(method=...) decodes greedily, as the published methods do; drop do_sample=True")
            from avlens.mitigation.decoding import decode

            out = decode(self, input, method, max_new_tokens, eos_token_id, pad_token_id, fwd_hooks=list(fwd_hooks))
            prompt_batch = out.run.branches[0].batch if out.run is not None and out.run.branches else self._to_batch(input)
            ids = prompt_batch.input_ids
            seq = torch.cat([ids.to(out.tokens.device), out.tokens], 1) if ids is not None else None
            return GenerateOutput(out.tokens, out.scores if return_logits else None, seq, prompt_batch, out)
        batch = self._to_batch(input)
        if not bool(batch.attention_mask[:, -1].bool().all()):
            raise ValueError(
                "generate needs left padding: some samples end in padding, so their next token would "
                "be predicted from a pad position. Pad on the left (processor/tokenizer "
                "padding_side='left')."
            )
        dev = self.W_E.device
        gen = None  # the global RNG (so torch.manual_seed governs sampling), unless seeded here
        if seed is not None:
            gen = torch.Generator(device=dev)
            gen.manual_seed(seed)
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        if pad_token_id is None:
            pad_token_id = self.cfg.token_ids.get("pad_token_id", next(iter(eos), 0))
        deltas = batch.rope_deltas
        if deltas is None:
            deltas = torch.zeros(batch.batch_size, 1, dtype=torch.long, device=dev)
        cache = KVCache(self.cfg.n_layers)
        key_mask = batch.attention_mask.to(dev).long()
        layout = batch.layout
        new_tokens, step_logits = [], []
        finished = torch.zeros(batch.batch_size, dtype=torch.bool, device=dev)
        iterator = range(max_new_tokens)
        if verbose:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="generate")
        self.run_state.generating = True
        try:
            with self.hooks(fwd_hooks=list(fwd_hooks)):
                cache.key_mask = key_mask
                logits = self.forward(batch, kv_cache=cache)[:, -1]
                for step in iterator:
                    if return_logits:
                        step_logits.append(logits)
                    nxt = self._choose(logits, do_sample, temperature, top_k, top_p, gen)
                    nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
                    new_tokens.append(nxt)
                    if eos:
                        finished |= torch.isin(nxt, torch.tensor(sorted(eos), device=dev))
                    if step == max_new_tokens - 1 or bool(finished.all()):
                        break
                    layout = layout.extend(1)
                    logits = self._decode_step(nxt, cache, layout, deltas, batch.position_ids.ndim)
        finally:
            self.run_state.generating = False
        tokens = torch.stack(new_tokens, dim=1)
        seq = torch.cat([batch.input_ids.to(dev), tokens], dim=1) if batch.input_ids is not None else None
        return GenerateOutput(tokens, torch.stack(step_logits, 1) if step_logits else None, seq, batch)

    def _decode_step(self, token: Tensor, cache: KVCache, layout: BatchLayout, deltas: Tensor, pos_ndim: int) -> Tensor:
        """One decoding step: the new token at position (real tokens so far) - 1 + rope delta."""
        cache.key_mask = torch.cat([cache.key_mask, torch.ones_like(cache.key_mask[:, :1])], dim=1)
        pos = cache.key_mask.sum(-1, keepdim=True) - 1 + deltas.to(token.device)  # [b, 1]
        if pos_ndim == 3:
            pos = pos[None].expand(3, -1, -1)
        step = AVBatch(
            input_ids=token[:, None],
            attention_mask=torch.ones_like(token[:, None]),
            position_ids=pos,
            layout=layout.slice(layout.n_pos - 1),
        )
        return self.forward(step, kv_cache=cache)[:, -1]

    @staticmethod
    def _choose(logits: Tensor, do_sample: bool, temperature: float, top_k, top_p, gen) -> Tensor:
        if not do_sample:
            return logits.argmax(-1)
        logits = logits.float() / max(temperature, 1e-8)
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None:
            sorted_logits, idx = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            remove = probs.cumsum(-1) - probs > top_p
            sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    # ------------------------------------------------------------------------- introspection
    def hook_table(self, input: ModelInput) -> list[tuple[str, tuple[int, ...]]]:
        """(hook name, activation shape) for every base hook that fires on `input`."""
        names = []
        _, cache = self.run_with_cache(input)
        for k, v in cache.items():
            names.append((k, tuple(v.shape)))
        return names

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"{type(self).__name__}(layers={c.n_layers}, d_model={c.d_model}, heads={c.n_heads} "
            f"(kv {c.n_key_value_heads}), d_head={c.d_head}, d_mlp={c.d_mlp}, vocab={c.d_vocab}, "
            f"rope={c.rope_kind}{'' if c.mrope_section is None else c.mrope_section}, dtype={c.dtype_name})"
        )

    # ------------------------------------------------------------------------- loading (dispatch)
    @classmethod
    def from_hf(cls, hf_model, **kwargs) -> "HookedAVTransformer":
        """Wrap a Hugging Face model object (weights shared, not copied). Dispatches to the family
        that supports its class."""
        if cls is not HookedAVTransformer:
            raise NotImplementedError(f"{cls.__name__} does not implement from_hf")
        return family_for_hf_model(hf_model).from_hf(hf_model, **kwargs)

    @classmethod
    def from_hf_lm(cls, lm, adapter=None, **kwargs) -> "HookedAVTransformer":
        """Hook an AVLLM by its Hugging Face language model (Qwen2 / Qwen2.5(-VL) / Llama / Mistral /
        Qwen3 decoder; weights shared) and an optional `AVAdapter` that encodes its media. See
        `avlens.families.generic` and docs/families.md ("Writing an adapter")."""
        if cls is not HookedAVTransformer:
            raise NotImplementedError(f"{cls.__name__} does not wrap bare language models; use HookedAVTransformer.from_hf_lm")
        return lm_family().from_hf_lm(lm, adapter, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_id: str, **kwargs) -> "HookedAVTransformer":
        """Load a checkpoint from a local folder or a Hugging Face hub id."""
        if cls is not HookedAVTransformer:
            raise NotImplementedError(f"{cls.__name__} does not implement from_pretrained")
        return family_for_checkpoint(path_or_id).from_pretrained(path_or_id, **kwargs)
