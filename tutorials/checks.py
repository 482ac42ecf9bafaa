"""Checks for the tutorials' exercises (`tutorials/src/t*.py`).

    from tutorials import checks
    checks.test_group_mean_resid(group_mean_resid)   # prints a success line, or raises AssertionError

Each `test_<exercise>(fn)` calls the student's function on inputs it builds itself (random
tensors, and the shipped toy model on clips the notebooks do not use) and compares the result with
an independent reference: the avlens function the exercise re-implements (which has its own tests
against Hugging Face and brute force) and, where the exercise is a computation on tensors, a
brute-force loop written out here. A mismatch raises `AssertionError` naming the input, the shapes
and the largest difference; an unfinished stub raises its own `NotImplementedError`.

The toy model and the small batches are loaded once per process (`toy_model`, `toy_batch`).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "toy_model", "toy_batch",
    # tutorial 1
    "test_group_mean_resid", "test_group_activation", "test_ablate_group", "test_group_attention_mass",
    "test_logit_attribution",
    # tutorial 2
    "test_patch_groups", "test_patch_positions", "test_restore_state", "test_knockout_prob",
    # tutorial 3
    "test_max_ratio_to_median", "test_hidden_sink_scores", "test_attention_from_later", "test_global_sinks",
    "test_modality_dominance_score", "test_token_set_ie",
    # tutorial 4
    "test_yes_probability", "test_knockout_yes", "test_boost_scores", "test_steer_yes",
]


# ------------------------------------------------------------------------------------ shared
@lru_cache(maxsize=1)
def toy_model():
    """The shipped toy audio-visual model (`avlens.load_toy()`), loaded once."""
    import avlens

    return avlens.load_toy()


#: the checks' clips: (object, condition, seed), chosen apart from the notebooks' own clips
CHECK_CLIPS = {
    "mc": [("cat", "video_ambiguous", 31), ("bell", "audio_ambiguous", 32), ("train", "distractor", 33)],
    "probe": [("cat", "offscreen", 41), ("guitar", "silent", 42)],
}


@lru_cache(maxsize=None)
def toy_batch(name: str = "mc"):
    """(batch, answers, examples) for the clips `CHECK_CLIPS[name]`: multiple-choice prompts, audio
    in video; `answers` the answer letters' token ids `[batch]`."""
    from avlens.data import synth, tasks

    model = toy_model()
    clips = [synth.make_clip(o, c, seed=s) for o, c, s in CHECK_CLIPS[name]]
    examples = [tasks.multiple_choice(c, seed=0) for c in clips]
    batch = model.prepare_media([tasks.prompt_text(e) for e in examples], audio=[c.waveform for c in clips],
                                video=[c.frames for c in clips], fps=synth.FPS, use_audio_in_video=True)
    answers = torch.tensor([model.to_single_token(e.answer) for e in examples])
    return batch, answers, examples


def _tensor(x, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def _close(actual, expected: Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """AssertionError unless `actual` is a tensor of `expected`'s shape and values."""
    actual = _tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    if not torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True):
        diff = (a - e).abs()
        diff[torch.isnan(diff)] = float("inf")
        i = tuple(int(j) for j in (diff == diff.max()).nonzero()[0])
        raise AssertionError(f"{what}: values differ; largest difference {float(diff.max()):.3g} at index {i} "
                             f"(yours {float(a[i]):.6g}, expected {float(e[i]):.6g})")


def _no_hooks_left(model, fn_name: str) -> None:
    left = [name for name, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks]
    if left:
        model.remove_all_hook_fns(including_permanent=False)
        raise AssertionError(f"{fn_name} left hooks attached at {left[:3]}: use model.run_with_hooks(...) or "
                             "`with model.hooks(...)`, which remove them when the run ends")


def _passed(name: str) -> None:
    print(f"All tests in `{name}` passed!")


def _last_probs(logits: Tensor, batch) -> Tensor:
    """Softmax at each sample's last real position: `[batch, vocab]`."""
    return logits[batch.layout.mask("last")].float().softmax(-1)


# ------------------------------------------------------------------------------------ tutorial 1
@torch.no_grad()
def test_group_mean_resid(group_mean_resid: Callable) -> None:
    """Random tensors with different group sizes per sample against a per-sample loop; then the
    toy model's video states at block 1 against the mean of the cached group view."""
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(3, 7, 5, generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, [1, 2, 6]] = True
    mask[1, 4] = True
    mask[2, :] = True
    expected = torch.stack([resid[b][mask[b]].mean(0) for b in range(3)])
    _close(group_mean_resid(resid, mask), expected, "random resid [3, 7, 5], groups of 3, 1 and 7 positions")

    model = toy_model()
    batch, _, _ = toy_batch()
    hook = "blocks.1.hook_resid_pre"
    _, cache = model.run_with_cache(batch, names_filter=[hook, hook + ".video"])
    _close(group_mean_resid(cache[hook], batch.layout.mask("video")), cache[hook + ".video"].mean(1),
           "toy model, blocks.1.hook_resid_pre over the video tokens")
    _passed("test_group_mean_resid")


@torch.no_grad()
def test_group_activation(group_activation: Callable) -> None:
    """Against the full cached activation indexed at the group's positions, sample by sample, for
    several hooks (residual, per-head, MLP) and groups."""
    model = toy_model()
    batch, _, _ = toy_batch()
    _, cache = model.run_with_cache(batch)
    lay = batch.layout
    for hook, group in [("blocks.1.hook_resid_pre", "video"), ("blocks.2.attn.hook_z", "audio"),
                        ("blocks.0.mlp.hook_post", "text"), ("blocks.3.hook_attn_out", "special")]:
        expected = torch.stack([cache[hook][b, lay.positions(group, sample=b)] for b in range(lay.batch_size)])
        got = group_activation(model, batch, hook, group)
        _no_hooks_left(model, "group_activation")
        _close(got, expected, f"group_activation(model, batch, {hook!r}, {group!r})")
    _passed("test_group_activation")


@torch.no_grad()
def test_ablate_group(ablate_group: Callable) -> None:
    """Against zeroing the group's positions through the full (not the group view's) hook."""
    model = toy_model()
    batch, answers, _ = toy_batch()
    for layer, group in [(0, "audio"), (0, "video"), (2, "text"), (1, "special")]:
        keep = (~batch.layout.mask(group))[..., None]

        def zero_positions(x, hook, keep=keep):
            return x * keep.to(x.dtype)

        logits = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", zero_positions)])
        expected = _last_probs(logits, batch)[torch.arange(len(answers)), answers]
        got = ablate_group(model, batch, layer, group, answers)
        _no_hooks_left(model, "ablate_group")
        _close(got, expected, f"ablate_group(model, batch, layer={layer}, group={group!r}, answers)")
    _passed("test_ablate_group")


@torch.no_grad()
def test_group_attention_mass(group_attention_mass: Callable) -> None:
    """Random causal patterns against a loop over samples, heads and queries; then the toy's
    patterns against `model.attention_group_summary` (computed inside the forward pass)."""
    g = torch.Generator().manual_seed(1)
    b, h, n = 2, 3, 6
    scores = torch.randn(b, h, n, n, generator=g).masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    pattern = scores.softmax(-1)
    qm = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    km = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    expected = torch.zeros(b, h)
    for s in range(b):
        for hd in range(h):
            qs = qm[s].nonzero().flatten().tolist()
            expected[s, hd] = sum(float(pattern[s, hd, q][km[s]].sum()) for q in qs) / len(qs)
    _close(group_attention_mass(pattern, qm, km), expected, "random causal pattern [2, 3, 6, 6]")

    model = toy_model()
    batch, _, _ = toy_batch()
    _, cache = model.run_with_cache(batch)
    summary = model.attention_group_summary(batch)
    lay = batch.layout
    for layer in (0, 3):
        for q, k in [("last", "audio"), ("text", "video"), ("audio", "audio"), ("video", "special")]:
            got = group_attention_mass(cache[f"blocks.{layer}.attn.hook_pattern"], lay.mask(q), lay.mask(k))
            _close(got, summary[q, k][:, layer], f"toy model, block {layer}, {q} -> {k} (vs attention_group_summary)")
    _passed("test_group_attention_mass")


@torch.no_grad()
def test_logit_attribution(logit_attribution: Callable) -> None:
    """Against TransformerLens's `cache.logit_attrs(cache.decompose_resid(), tokens)` at each
    sample's last position, and the sum over components against the model's logits, for the
    answers and for other tokens."""
    model = toy_model()
    batch, answers, _ = toy_batch()
    logits, cache = model.run_with_cache(batch)
    last = batch.layout.mask("last")
    components = cache.decompose_resid()
    for tokens, what in [(answers, "the answers"), (torch.tensor([5, 17, 40]), "tokens 5, 17, 40")]:
        per_pos = tokens[:, None].expand(batch.shape)  # the same token at every position of a sample
        expected = cache.logit_attrs(components, tokens=per_pos)[:, last]  # [component, batch]
        got = logit_attribution(model, cache, batch, tokens)
        _close(got, expected, f"logit_attribution for {what} (vs cache.logit_attrs)", atol=1e-4)
        _close(got.sum(0), logits[last][torch.arange(len(tokens)), tokens], f"sum over components for {what} vs the logits",
               atol=1e-3)
    _passed("test_logit_attribution")


# ------------------------------------------------------------------------------------ tutorial 2
@lru_cache(maxsize=None)
def _zeroed(name: str, modality: str):
    """`toy_batch(name)` with `modality`'s raw input zeroed (the paper's corruption)."""
    from avlens.patching import corruptions

    batch, _, _ = toy_batch(name)
    return corruptions.zero_media(toy_model(), batch, modality)


@torch.no_grad()
def test_patch_groups(patch_groups: Callable) -> None:
    """Against `patching.activation_patch(..., site="resid_pre", over=("layer", "group"))` on three
    clips, with the audio and then the video zeroed."""
    from avlens import patching

    model = toy_model()
    batch, answers, _ = toy_batch()
    layers, groups = [0, 2], ["audio", "video", "text", "last"]
    for modality in ("audio", "video"):
        corrupted = _zeroed("mc", modality)
        expected = patching.activation_patch(model, batch, corrupted, patching.AnswerProb(answers), over=("layer", "group"),
                                             layers=layers, groups=groups, progress=False).values.plain()
        got = patch_groups(model, batch, corrupted, answers, layers, groups)
        _no_hooks_left(model, "patch_groups")
        _close(got, expected, f"patch_groups with the {modality} zeroed, layers {layers}, groups {groups} "
                              "(vs activation_patch)")
    _passed("test_patch_groups")


@torch.no_grad()
def test_patch_positions(patch_positions: Callable) -> None:
    """Against one layer's row of `patching.activation_patch(..., over=("layer", "position"))`."""
    from avlens import patching

    model = toy_model()
    batch, answers, _ = toy_batch()
    clean, corrupted, answers = batch.select([0, 1]), _zeroed("mc", "audio").select([0, 1]), answers[:2]
    expected = patching.activation_patch(model, clean, corrupted, patching.AnswerProb(answers), over=("layer", "position"),
                                         layers=[1], progress=False).values.plain()[0]
    got = patch_positions(model, clean, corrupted, answers, 1)
    _no_hooks_left(model, "patch_positions")
    _close(got, expected, "patch_positions(model, clean, corrupted, answers, layer=1) (vs activation_patch)")
    _passed("test_patch_positions")


@torch.no_grad()
def test_restore_state(restore_state: Callable) -> None:
    """Against `patching.causal_trace` (same noise: sigma, copies and seed) at single cells, per sample."""
    from avlens import patching

    model = toy_model()
    batch, answers, _ = toy_batch()
    sigma = 3 * patching.corruptions.embedding_std(model, batch, "audio")
    noised = patching.corruptions.gaussian_noise(model, batch, "audio", sigma=sigma, n_copies=3, seed=7)
    audio_pos = int(batch.layout.positions("audio", sample=0)[20])
    question_pos = batch.shape[1] - 12
    for layer, pos in [(0, audio_pos), (1, question_pos), (3, batch.shape[1] - 1)]:
        trace = patching.causal_trace(model, batch, patching.AnswerProb(answers), "audio", sigma=sigma, n_copies=3, seed=7,
                                      layers=[layer], positions=[pos], progress=False)
        got = restore_state(model, batch, noised, answers, layer, pos)
        _no_hooks_left(model, "restore_state")
        _close(got, trace.per_sample[0, 0], f"restore_state at block {layer}, position {pos} (vs causal_trace, per sample)")
    _passed("test_restore_state")


@torch.no_grad()
def test_knockout_prob(knockout_prob: Callable) -> None:
    """Against `patching.attention_knockout(..., layers=...)`'s knocked-out probability (which
    equals the Hugging Face model run with the equivalent 4-D attention mask, in its own tests)."""
    from avlens import patching

    model = toy_model()
    batch, answers, _ = toy_batch()
    lay = batch.layout
    g = torch.Generator().manual_seed(3)
    random_keys = (torch.rand(batch.shape, generator=g) < 0.3) & ~lay.mask("pad")
    for keys, queries, layers in [("audio", "text", [0]), ("text", "last", [1, 2]), ("video", "audio", [0, 1, 2, 3])]:
        km, qm = lay.mask(keys), lay.mask(queries)
        ko = patching.attention_knockout(model, batch, patching.AnswerProb(answers), km, qm, layers=layers, progress=False)
        got = knockout_prob(model, batch, answers, km, qm, layers)
        _no_hooks_left(model, "knockout_prob")
        _close(got, ko.extras["p_new"][0], f"knockout_prob {keys} -> {queries} in layers {layers} (vs attention_knockout)")
    ko = patching.attention_knockout(model, batch, patching.AnswerProb(answers), random_keys, lay.mask("last"), layers=[0, 3],
                                     progress=False)
    _close(knockout_prob(model, batch, answers, random_keys, lay.mask("last"), [0, 3]), ko.extras["p_new"][0],
           "knockout_prob from random keys to the last position in layers [0, 3] (vs attention_knockout)")
    _passed("test_knockout_prob")


# ------------------------------------------------------------------------------------ tutorial 3
def _left_padded_valid() -> Tensor:
    """A `[3, 9]` real-token mask with left padding of 0, 2 and 5 positions."""
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, :2] = False
    valid[2, :5] = False
    return valid


@torch.no_grad()
def test_max_ratio_to_median(max_ratio_to_median: Callable) -> None:
    """Random states with padding and a planted large value against a loop over samples, tokens and
    dims; then the toy's residual streams against `analysis.find_sink_dims(...).max_ratio`."""
    from avlens import analysis

    g = torch.Generator().manual_seed(4)
    resid = torch.randn(3, 9, 6, generator=g)
    valid = _left_padded_valid()
    resid[1, 0, 2] = 1e4  # at padding: must not count
    resid[2, 7, 4] = -300.0
    expected = torch.zeros(6)
    for s in range(3):
        real = [p for p in range(9) if valid[s, p]]
        med = torch.stack([resid[s, p].abs() for p in real]).median()
        for p in real:
            for d in range(6):
                expected[d] = max(expected[d], float(resid[s, p, d].abs() / med))
    _close(max_ratio_to_median(resid, valid), expected, "random resid [3, 9, 6], left padding, a planted -300")

    model = toy_model()
    batch, _, _ = toy_batch()
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_resid_pre"))
    dims = analysis.find_sink_dims(model, [batch])
    for layer in range(model.cfg.n_layers):
        _close(max_ratio_to_median(cache[f"blocks.{layer}.hook_resid_pre"], batch.attention_mask.bool()), dims.max_ratio[layer],
               f"toy model, block {layer} (vs find_sink_dims(...).max_ratio)")
    _passed("test_max_ratio_to_median")


@torch.no_grad()
def test_hidden_sink_scores(hidden_sink_scores: Callable) -> None:
    """A loop over tokens on random states; then the toy against `analysis.find_sinks(...).hidden_scores`."""
    from avlens import analysis

    g = torch.Generator().manual_seed(5)
    resid = torch.randn(2, 5, 8, generator=g) * 3
    dims = [1, 6]
    expected = torch.zeros(2, 5)
    for b in range(2):
        for p in range(5):
            x = resid[b, p]
            rms = float((x.pow(2).mean() + 1e-6).sqrt())
            expected[b, p] = max(abs(float(x[d]) / rms) for d in dims)
    _close(hidden_sink_scores(resid, dims), expected, "random resid [2, 5, 8], dims [1, 6]")

    model = toy_model()
    batch, _, _ = toy_batch()
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_resid_pre"))
    dims = [3, 50, 86]
    rep = analysis.find_sinks(model, batch, dims=dims, tau=5.0)
    for layer in range(model.cfg.n_layers):
        _close(hidden_sink_scores(cache[f"blocks.{layer}.hook_resid_pre"], dims), rep.hidden_scores[:, layer],
               f"toy model, block {layer}, dims {dims} (vs find_sinks(...).hidden_scores)")
    _passed("test_hidden_sink_scores")


@torch.no_grad()
def test_attention_from_later(attention_from_later: Callable) -> None:
    """Random causal patterns with left padding against a loop; then the toy against
    `analysis.find_sinks(...).attention_scores` (computed in a streaming pass)."""
    from avlens import analysis

    g = torch.Generator().manual_seed(6)
    valid = _left_padded_valid()
    b, h, n = 3, 2, 9
    allowed = valid[:, None, None, :] & (torch.arange(n)[None, :] <= torch.arange(n)[:, None])[None, None]
    scores = torch.randn(b, h, n, n, generator=g).masked_fill(~allowed, float("-inf"))
    pattern = torch.nan_to_num(scores.softmax(-1))  # padding query rows: all zero
    expected = torch.zeros(b, h, n)
    for s in range(b):
        for hd in range(h):
            for k in range(n):
                qs = [q for q in range(k + 1, n) if valid[s, q]]
                if qs and valid[s, k]:
                    expected[s, hd, k] = sum(float(pattern[s, hd, q, k]) for q in qs) / len(qs)
    _close(attention_from_later(pattern, valid), expected, "random causal pattern [3, 2, 9, 9] with left padding")

    model = toy_model()
    batch, _, _ = toy_batch()
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    rep = analysis.find_sinks(model, batch, dims=[], eps=0.1)
    for layer in range(model.cfg.n_layers):
        _close(attention_from_later(cache[f"blocks.{layer}.attn.hook_pattern"], batch.attention_mask.bool()),
               rep.attention_scores[:, layer], f"toy model, block {layer} (vs find_sinks(...).attention_scores)")
    _passed("test_attention_from_later")


def test_global_sinks(global_sinks: Callable) -> None:
    """A hand-worked case with ties against the official rule (`global_sinks_from_layers`, media
    only); then the toy's attention sinks against `SinkReport.global_sinks`."""
    from avlens import analysis

    per_layer = [[4, 9], [2, 4, 9], [1, 2, 4, 7, 9]]  # counts: 4 x3, 9 x3, 2 x2, 1 x1, 7 x1 (first seen in that order)
    labels = ["text", "audio", "video", "text", "audio", "audio", "video", "video", "text", "video", "text", "text"]
    sink_map = torch.zeros(3, len(labels), dtype=torch.bool)
    for l, ps in enumerate(per_layer):
        sink_map[l, ps] = True
    for N in (2, 4, 6):
        top = analysis.global_sinks_from_layers(per_layer, len(labels), N)
        expected = [p for p in top if labels[p] in ("audio", "video")]
        got = global_sinks(sink_map, labels, N)
        if list(got) != expected:
            raise AssertionError(f"hand-worked case with N={N}: expected {expected} (most frequent first, ties in first-seen "
                                 f"order, media only), got {list(got)}")

    model = toy_model()
    batch, _, _ = toy_batch()
    rep = analysis.find_sinks(model, batch, dims=[], eps=0.1)
    for s in range(batch.batch_size):
        expected = rep.global_sinks(N=2, sample=s, definition="attention")
        got = global_sinks(rep.attention_is_sink[s], batch.layout.labels(s), 2)
        if list(got) != list(expected):
            raise AssertionError(f"toy model, sample {s}: expected {expected} (SinkReport.global_sinks), got {list(got)}")
    _passed("test_global_sinks")


@torch.no_grad()
def test_modality_dominance_score(modality_dominance_score: Callable) -> None:
    """Against `analysis.modality_dominance` (streaming, inside the forward pass) per layer and
    sample, for video, audio and text positions, including ones with no later video queries."""
    from avlens import analysis

    model = toy_model()
    batch, _, _ = toy_batch()
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    lay = batch.layout
    for s in range(batch.batch_size):
        video, audio = lay.positions("video", sample=s), lay.positions("audio", sample=s)
        # a video sink, an audio token, the last video token (no later video query) and a text token
        positions = [int(video[0]), int(audio[10]), int(video[-1]), batch.shape[1] - 3]
        expected = analysis.modality_dominance(model, batch.select([s]), positions)
        for layer in range(model.cfg.n_layers):
            got = modality_dominance_score(cache[f"blocks.{layer}.attn.hook_pattern"][s], lay.mask("video")[s],
                                           lay.mask("audio")[s], positions)
            _close(got, expected[layer], f"sample {s}, block {layer}, positions {positions} (vs modality_dominance)")
    _passed("test_modality_dominance_score")


@torch.no_grad()
def test_token_set_ie(token_set_ie: Callable) -> None:
    """Against `patching.trace_token_sets(...)["IE_clean"]` (patching at ln1.hook_normalized of every
    layer at once), for token sets of both modalities and both corruptions."""
    from avlens import patching

    model = toy_model()
    batch, answers, _ = toy_batch()
    for s, zeroed in [(0, "audio"), (1, "video")]:
        clean = batch.select([s])
        corrupted = _zeroed("mc", zeroed).select([s])
        other = "video" if zeroed == "audio" else "audio"
        pos = clean.layout.positions(other, sample=0)
        sets = {"all": pos, "three": pos[[0, 3, 7]], "question": torch.arange(clean.shape[1] - 20, clean.shape[1] - 10)}
        ie = patching.trace_token_sets(model, clean, corrupted, {k: v.tolist() for k, v in sets.items()}, o_clean=int(answers[s]),
                                       progress=False)["IE_clean"]
        for i, (name, positions) in enumerate(sets.items()):
            got = token_set_ie(model, clean, corrupted, positions, int(answers[s]))
            _no_hooks_left(model, "token_set_ie")
            _close(torch.as_tensor(got).reshape(()), ie.values.plain()[i],
                   f"sample {s} with the {zeroed} zeroed, token set {name!r} (vs trace_token_sets)", atol=1e-4)
    _passed("test_token_set_ie")


# ------------------------------------------------------------------------------------ tutorial 4
@lru_cache(maxsize=None)
def toy_probes():
    """Single-prompt batches of presence probes about `CHECK_CLIPS["probe"]`: [(batch, example)]."""
    from avlens.data import synth, tasks

    model = toy_model()
    out = []
    for o, c, seed in CHECK_CLIPS["probe"]:
        clip = synth.make_clip(o, c, seed=seed)
        for ex in tasks.presence_probes(clip, seed=0)[:3]:
            out.append((model.prepare_media(tasks.prompt_text(ex), audio=clip.waveform, video=clip.frames, fps=synth.FPS,
                                            use_audio_in_video=True), ex))
    return out


def _yes_no_ids() -> tuple[int, int]:
    model = toy_model()
    return model.to_single_token("yes"), model.to_single_token("no")


@torch.no_grad()
def test_yes_probability(yes_probability: Callable) -> None:
    """Against exp(l_yes) / (exp(l_yes) + exp(l_no)) written out, on random and extreme logits."""
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(4, 10, generator=g) * 5
    logits[3, 2], logits[3, 7] = 80.0, -80.0  # a softmax over the whole vocabulary would still be fine; exp() alone overflows
    for yes, no in [(2, 7), (0, 9)]:
        expected = torch.tensor([1 / (1 + float(torch.exp(torch.tensor(float(l[no] - l[yes]))))) for l in logits])
        _close(yes_probability(logits, yes, no), expected, f"random logits [4, 10], yes id {yes}, no id {no}")
    _passed("test_yes_probability")


@torch.no_grad()
def test_knockout_yes(knockout_yes: Callable) -> None:
    """Against `patching.attention_knockout` (keys -> the text group) run once for P(yes) and once
    for P(no), renormalised."""
    from avlens import patching

    model = toy_model()
    yes, no = _yes_no_ids()
    for batch, ex in toy_probes()[::2]:
        for keys, layers in [("audio", [0]), ("video", [0, 1]), ("special", [2, 3])]:
            p = [patching.attention_knockout(model, batch, patching.AnswerProb(t), keys, "text", layers=layers,
                                             progress=False).extras["p_new"][0] for t in (yes, no)]
            got = knockout_yes(model, batch, keys, layers, yes, no)
            _no_hooks_left(model, "knockout_yes")
            _close(got, p[0] / (p[0] + p[1]), f"{ex.question!r}: {keys} -> text blocked in {layers} (vs attention_knockout)")
    _passed("test_knockout_yes")


@torch.no_grad()
def test_boost_scores(boost_scores: Callable) -> None:
    """Against a loop over cells and `avlens.mitigation.boost_scores`, on scores of both signs with
    masked (very negative) entries."""
    from avlens.mitigation import boost_scores as library_boost

    g = torch.Generator().manual_seed(9)
    scores = torch.randn(2, 3, 5, 5, generator=g) * 4
    scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), torch.finfo(torch.float32).min)
    queries = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 0, 1]], dtype=torch.bool)
    keys = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    mn = torch.finfo(torch.float32).min
    for alpha in (0.2, 1.5):
        expected = scores.clone()
        for b in range(2):
            for q in range(5):
                for k in range(5):
                    for h in range(3):
                        s = float(scores[b, h, q, k])
                        if queries[b, q] and keys[b, k] and s > mn:  # masked cells stay masked
                            expected[b, h, q, k] = s + alpha * abs(s)
        got = boost_scores(scores, queries, keys, alpha)
        _close(got, expected, f"random scores [2, 3, 5, 5] with masked entries (finfo.min), alpha {alpha} (vs a loop over cells)")
        if not bool(torch.isfinite(got).all()):
            raise AssertionError(f"alpha {alpha}: the result has inf/nan; masked cells (finfo.min) must stay as they are")
        _close(got, library_boost(scores, queries, keys, alpha), f"alpha {alpha} (vs avlens.mitigation.boost_scores)")
    _passed("test_boost_scores")


@torch.no_grad()
def test_steer_yes(steer_yes: Callable) -> None:
    """Against the hooks `SinkSteering` installs (`avlens.mitigation.steering.boost_hooks`), for a
    few sink sets, strengths and layer sets."""
    from avlens.mitigation.steering import boost_hooks

    model = toy_model()
    yes, no = _yes_no_ids()
    for batch, ex in toy_probes()[1::2]:
        lay = batch.layout
        video, audio = lay.positions("video", sample=0), lay.positions("audio", sample=0)
        for sinks, alpha, layers in [([int(video[0]), int(audio[5])], 0.2, [2, 3]), ([int(video[4])], 2.0, [0, 1, 2, 3]),
                                     ([int(audio[0]), int(audio[60]), int(video[9])], 1.0, [1])]:
            keys = torch.zeros(batch.shape, dtype=torch.bool)
            keys[:, sinks] = True
            logits = model.run_with_hooks(batch, fwd_hooks=boost_hooks(batch, keys, layers, alpha))
            two = logits[lay.mask("last")][:, [yes, no]].float().softmax(-1)[:, 0]
            got = steer_yes(model, batch, sinks, alpha, layers, yes, no)
            _no_hooks_left(model, "steer_yes")
            _close(got, two, f"{ex.question!r}: sinks {sinks}, alpha {alpha}, layers {layers} (vs SinkSteering's hooks)")
    _passed("test_steer_yes")
