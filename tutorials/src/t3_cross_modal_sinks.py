# %% [markdown]
# # Tutorial 3: cross-modal sinks and the paper's Table 1 protocol
#
# *Probing Cross-modal Information Hubs in Audio-Visual LLMs* (ICML 2026) makes a claim about how
# AVLLMs combine sound and picture. Large models have **sink tokens**: a few tokens whose hidden
# states carry massive activations in a handful of dimensions and which attract a large share of
# attention. In an AVLLM some sinks of one modality are attended mostly by the *other* modality's
# tokens: **cross-modal sinks**. The paper's Table 1 shows that, in samples whose answer comes from
# one modality, restoring the other modality's cross-modal sinks restores more of the answer than
# restoring its other sinks or random tokens: the cross-modal sinks are *hubs* that hold
# information from the dominant modality.
#
# avlens implements the paper's pipeline for any model it hooks, with nothing hard-coded: sink
# dimensions are discovered, sinks found under two definitions, scored by a modality dominance
# score, split into cross-modal and unimodal, and traced with the paper's token-set patching.
# In this tutorial you write each step yourself, check it against `avlens.analysis`, and run the
# whole protocol on the toy model.
#
# **Be warned in advance: the toy has no massive activations and no cross-modal hubs.** It is a
# 4-layer, d_model-128 model trained for 23 minutes; the paper's mechanism emerges in 7B models.
# The toy is here to make the protocol concrete and cheap, and its result (no set beats random) is
# reported as measured, not dressed up. `docs/analysis.md` has the 360-clip version.
#
# **Contents**
#
# 1. Massive activations and sink dimensions.
# 2. Sink tokens under two definitions (hidden state, attention) and the global-sink rule.
# 3. The modality dominance score and the cross-modal / unimodal split.
# 4. The Table 1 protocol: unimodal dominance, token-set tracing, the study on the toy.

# %% [setup]

# %% [imports]
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

import avlens
from avlens import viz
from avlens import analysis, patching
from avlens.data import synth, tasks
from tutorials import checks

# %%
torch.set_grad_enabled(False)
model = avlens.load_toy()
clips = synth.make_dataset(8, seed=1000)  # 8 held-out clips
samples = analysis.toy_samples(model, clips)  # one multiple-choice prompt each
sample = samples[0]
batch = sample.batch
print(sample.id, sample.info)
_, cache = model.run_with_cache(batch)

# %% [section]
# ## 1️⃣ Massive activations and sink dimensions
#
# > ##### Learning Objectives
# >
# > - Know Sun et al.'s definition of a massive activation: `|a| > 100` and `|a| >= 1000 x` the median magnitude of its hidden state.
# > - Measure how far a model is from having them (largest ratio to the median per layer and dimension).
# > - Use `analysis.find_sink_dims`, and see a planted massive activation recovered.

# %% [markdown]
# In LLMs of a few billion parameters, a few residual-stream dimensions take values in the
# thousands at a few tokens (the first token, a delimiter), while a typical activation is of
# order 1 (Sun et al., *Massive Activations in Large Language Models*). The paper calls these the
# **sink dimensions** (458 and 2570 in Qwen2.5-7B). An activation `resid_pre[l][b, p, d]` is massive
# if `|a| > 100` and `|a| >= 1000 x median(|resid_pre[l][b]|)`, the median over the sample's real
# tokens and all dimensions.

# %% [exercise] name=max_ratio_to_median difficulty=2 importance=3 minutes=10
# ### Exercise - implement `max_ratio_to_median`
#
# For one layer's residual stream, return per dimension the largest ratio `|a| / median` over all
# real tokens of all samples, where `median` is the median of `|a|` over *that sample's* real
# tokens and all dimensions. `valid` marks the real (non-padding) tokens. This is the number that
# says how close a model is to the 1000x rule.

# %%
def max_ratio_to_median(resid: Float[Tensor, "batch pos d_model"], valid: Bool[Tensor, "batch pos"]) -> Float[Tensor, "d_model"]:
    """Per dimension: max over samples and real tokens of |a| / (median |a| of the sample's real tokens)."""
    # EXERCISE
    # # Loop over samples: a = resid[s][valid[s]].abs() is [n_real, d_model]; a.median() is one number.
    # raise NotImplementedError("max_ratio_to_median: per sample, divide |a| by its median; max over tokens and samples")
    # SOLUTION
    out = torch.zeros(resid.shape[-1])
    for s in range(resid.shape[0]):
        a = resid[s][valid[s]].abs().float()  # [n_real, d_model]
        out = torch.maximum(out, a.amax(0) / a.median())
    return out
    # END

# %%
checks.test_max_ratio_to_median(max_ratio_to_median)

for layer in range(model.cfg.n_layers):
    r = max_ratio_to_median(cache[f"blocks.{layer}.hook_resid_pre"], batch.attention_mask.bool())
    print(f"block {layer}: largest |a| / median = {r.max():6.1f} (dim {int(r.argmax())}); "
          f"largest |a| = {cache[f'blocks.{layer}.hook_resid_pre'].abs().max():.1f}")

# %% [markdown]
# Nowhere near 1000x (or 100 in absolute value). `analysis.find_sink_dims` applies the rule over
# many samples and lists every dimension, layer and token where it fires; it says so when nothing
# does. With `min_abs=None` and a lower `min_ratio` (the relative rule for small models) it finds a
# few layer-0 dimensions on video tokens: the vision merger's output enters the residual stream
# un-normalised. Those are large inputs, not the persistent sink dimensions of a large model.

# %%
batches = [s.batch for s in samples]
print(analysis.find_sink_dims(model, batches))
print(analysis.find_sink_dims(model, batches, min_abs=None, min_ratio=20))

# %% [markdown]
# What a massive activation would look like: plant one. A hook adds 10,000 to dimension 5 of the
# residual stream at two video tokens from block 1 on (a hook on `blocks.1.hook_resid_pre` changes
# what every later block receives); `find_sink_dims` recovers exactly that dimension, those layers
# and those tokens, and `find_sinks` marks the two tokens as hidden-state sinks (with a tau below
# the toy's bound of 11.3, see section 2). The pipeline finds sinks where they exist; the toy just
# has none.

# %%
video_pos = batch.layout.positions("video", sample=0)
planted = [int(video_pos[0]), int(video_pos[8])]


def plant(x: Tensor, hook) -> Tensor:
    x = x.clone()
    x[0, planted, 5] += 10_000.0
    return x


with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", plant)]):
    found = analysis.find_sink_dims(model, [batch])
    planted_report = analysis.find_sinks(model, batch, dims=found.dims, tau=8.0)
print(found, "\nplanted at positions", planted)
print("hidden-state sinks (layer, position):", planted_report.is_sink.nonzero().tolist())

# %% [section]
# ## 2️⃣ Sink tokens: two definitions and the global-sink rule
#
# > ##### Learning Objectives
# >
# > - Compute the hidden-state sink score `max_{d in dims} |x_d / rms(x)|` and know why `tau = 25` cannot fire when `d_model = 128`.
# > - Compute the attention sink score: the mean attention a token receives from the queries after it.
# > - Apply the official global-sink rule: the most frequent per-layer sinks, then only audio and video tokens.

# %% [markdown]
# **Hidden-state sinks** (VAR, the paper): token p is a sink at layer l if
# `max_{d in dims} |x_hat_d| > tau` where `x_hat = x / sqrt(mean(x^2) + 1e-6)` is the residual stream
# entering layer l, RMS-normalised without weights. Since `sum_d x_hat_d^2 = d_model` (up to the
# epsilon), `|x_hat_d| <= sqrt(d_model)`: 59.9 for Qwen2.5-7B (d_model 3584; the paper's tau is 25),
# but 11.3 for the toy, so tau = 25 can never fire here and `find_sinks` refuses it.

# %% [exercise] name=hidden_sink_scores difficulty=1 importance=3 minutes=10
# ### Exercise - implement `hidden_sink_scores`
#
# For every token, the largest `|x_hat_d|` over the sink dimensions `dims`, with
# `x_hat = x / sqrt(mean(x^2) + 1e-6)` over `d_model`, computed in float32 (a bfloat16 model's
# residual squared loses too much precision).

# %%
def hidden_sink_scores(resid: Float[Tensor, "batch pos d_model"], dims: list[int]) -> Float[Tensor, "batch pos"]:
    """max over `dims` of |x_d / sqrt(mean(x^2) + 1e-6)|, in float32."""
    # EXERCISE
    # raise NotImplementedError("hidden_sink_scores: RMS-normalise each token, then max |.| over the sink dims")
    # SOLUTION
    x = resid.float()
    x_hat = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return x_hat[..., dims].abs().amax(-1)
    # END

# %%
checks.test_hidden_sink_scores(hidden_sink_scores)

try:
    analysis.find_sinks(model, batch, dims=[5], tau=25.0)
except ValueError as err:
    print("find_sinks refuses:", err)

# %% [markdown]
# **Attention sinks** (Gu et al., *When Attention Sink Emerges*, ICLR 2025): token p is a sink at
# layer l if, in some head, the mean attention it receives from the (real) queries after it
# exceeds `eps` (0.3). This needs no sink dimensions, so it works on any model, the toy included.

# %% [exercise] name=attention_from_later difficulty=2 importance=4 minutes=15
# ### Exercise - implement `attention_from_later`
#
# For one layer's pattern, return for every head and key position k the mean of `A[b, h, q, k]`
# over the real queries `q > k` (0 where there is none). `valid` marks the real tokens; padding
# queries do not count, and padding keys score 0.

# %%
def attention_from_later(pattern: Float[Tensor, "batch head q k"], valid: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch head k"]:
    """Mean attention each key receives from the real queries after it."""
    # EXERCISE
    # # later[b, q, k] = valid[b, q] & (q > k); sum the pattern over those queries, divide by their count.
    # raise NotImplementedError("attention_from_later: mean over the later real queries of the attention to each key")
    # SOLUTION
    n = pattern.shape[-1]
    after = torch.arange(n)[:, None] > torch.arange(n)[None, :]  # [q, k]: q after k
    later = (valid[:, :, None] & after[None]).to(pattern.dtype)  # [batch, q, k]
    total = (pattern * later[:, None]).sum(2)  # [batch, head, k]
    count = later.sum(1)[:, None]  # [batch, 1, k]
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)) * valid[:, None].to(pattern.dtype)
    # END

# %%
checks.test_attention_from_later(attention_from_later)

valid = batch.attention_mask.bool()
labels = batch.layout.labels(0)
for layer in range(model.cfg.n_layers):
    score = attention_from_later(cache[f"blocks.{layer}.attn.hook_pattern"], valid)[0].amax(0)  # max over heads
    top = score.topk(4).indices.tolist()
    print(f"block {layer}: top attention-sink scores " + ", ".join(f"{p} ({labels[p]}) {score[p]:.2f}" for p in top))

# %% [markdown]
# The toy's strongest attention sinks are text and special tokens (the chat template, the end of
# the question) at 0.3-0.6; media tokens reach about 0.1 (mostly the first video tokens of each chunk). So the
# paper's eps = 0.3 would find no media sinks at all; the toy analyses use eps = 0.1 (16 times
# uniform attention over 156 tokens), a choice written down in `docs/analysis.md`.
#
# `analysis.find_sinks` computes both scores for every layer in one streaming forward pass (no
# pattern is kept): `hidden_scores` `[batch, layer, pos]`, `attention_scores` `[batch, layer, head,
# pos]`, and the boolean maps `is_sink` / `attention_is_sink` `[layer, pos]`.

# %%
report = analysis.find_sinks(model, batch, dims=[], eps=0.1)
print(report)
print("found by:", report.found_by())
sink_score = report.attention_scores[0].amax(1).amax(0)  # [pos]: max over layers and heads
viz.token_strip(batch, values=sink_score, str_tokens=model.to_str_tokens(batch, 0),
                value_label="attention sink score (max over layers and heads)")

# %% [markdown]
# The video tokens' sink scores on the frames they come from: the strongest media sinks are the
# first patch tokens of each 2-second chunk, wherever the object is.

# %%
viz.frame_strip_view(batch, values=sink_score, frames=clips[0].frames, value_label="attention sink score")

# %% [markdown]
# The per-layer sink lists are reduced to **global sinks** by the official rule: concatenate the
# lists layer by layer, keep `Counter(...).most_common(floor(|T| / N))` (ties in first-seen order;
# `|T|` the prompt length, N = 2), then keep only audio and video tokens.

# %% [exercise] name=global_sinks difficulty=2 importance=3 minutes=10
# ### Exercise - implement `global_sinks`
#
# `sink_map[l, p]` says whether token p is a sink at layer l (one sample, no padding, so
# `|T| = len(labels)`); `labels[p]` is p's group. Return the global sinks in the rule's order.

# %%
def global_sinks(sink_map: Bool[Tensor, "layer pos"], labels: list[str], N: int = 2) -> list[int]:
    """The official global-sink rule, restricted to audio and video tokens."""
    # EXERCISE
    # # collections.Counter keeps first-seen order among equal counts (Python 3.7+).
    # raise NotImplementedError("global_sinks: Counter over the per-layer lists, most_common(len // N), media only")
    # SOLUTION
    from collections import Counter

    per_layer = [row.nonzero().flatten().tolist() for row in sink_map]
    counts = Counter(p for positions in per_layer for p in positions)
    top = [p for p, _ in counts.most_common(len(labels) // N)]
    return [p for p in top if labels[p] in ("audio", "video")]
    # END

# %%
checks.test_global_sinks(global_sinks)

sinks = global_sinks(report.attention_is_sink, labels, N=2)
print("global sinks (attention definition, eps 0.1):", [(p, labels[p]) for p in sinks])

# %% [section]
# ## 3️⃣ Modality dominance: who attends to a sink
#
# > ##### Learning Objectives
# >
# > - Compute the modality dominance score (MDS) of a sink: `(v - a) / (v + a)` from the attention video and audio queries pay it.
# > - Split one modality's sinks into cross-modal and unimodal at the median MDS.

# %% [markdown]
# For a sink s at one layer, `v` is the mean attention it receives from the **video** queries
# after it (averaged over heads and over those queries) and `a` the same from the **audio**
# queries; `MDS = (v - a) / (v + a + 1e-9)`, +1 when only video attends to it, -1 when only audio
# does. A side with no queries after the sink scores 0. A *video* sink with a negative MDS is
# attended mostly by audio: a candidate cross-modal hub.

# %% [exercise] name=modality_dominance_score difficulty=2 importance=4 minutes=15
# ### Exercise - implement `modality_dominance_score`
#
# One layer, one sample: `pattern` is `[head, q, k]`; `video_q` and `audio_q` mark the video and
# audio positions (as queries). Return the MDS of each position in `sinks`.

# %%
def modality_dominance_score(
    pattern: Float[Tensor, "head q k"], video_q: Bool[Tensor, "q"], audio_q: Bool[Tensor, "q"], sinks: list[int]
) -> Float[Tensor, "sink"]:
    """(v - a) / (v + a + 1e-9) per sink, v / a the mean attention from later video / audio queries."""
    # EXERCISE
    # # For sink s: queries q > s of the modality; mean of pattern[:, q, s] over heads and those queries (0 if none).
    # raise NotImplementedError("modality_dominance_score: mean attention from later video and audio queries, then MDS")
    # SOLUTION
    out = []
    for s in sinks:
        later = torch.arange(pattern.shape[1]) > s

        def mean_from(queries: Tensor) -> Tensor:
            q = queries & later
            return pattern[:, q, s].mean() if bool(q.any()) else torch.tensor(0.0)

        v, a = mean_from(video_q), mean_from(audio_q)
        out.append((v - a) / (v + a + 1e-9))
    return torch.stack(out)
    # END

# %%
checks.test_modality_dominance_score(modality_dominance_score)

lay = batch.layout
per_layer = torch.stack([modality_dominance_score(cache[f"blocks.{l}.attn.hook_pattern"][0], lay.mask("video")[0],
                                                  lay.mask("audio")[0], sinks) for l in range(model.cfg.n_layers)])
print("MDS [layer, sink]:\n", per_layer.numpy().round(3))
print("library:", analysis.modality_dominance(model, batch, sinks))

# %% [markdown]
# The split (`analysis.cross_modal_split`, METHODS.md section 3): in an audio-dominant sample the
# video sinks are sorted by layer-averaged MDS, descending; the first half (most video-attended)
# are unimodal, the rest cross-modal; mirrored for video-dominant samples. A single sink counts as
# cross-modal (`n // 2 = 0` unimodal), as in the official code.

# %%
video_sinks = [p for p in sinks if labels[p] == "video"]
if video_sinks:
    mds = analysis.modality_dominance(model, batch, video_sinks).mean(0)
    cross, uni = analysis.cross_modal_split(video_sinks, mds, dominant="audio")
    print("video sinks", video_sinks, "layer-averaged MDS", mds.numpy().round(3), "-> cross-modal", cross, "unimodal", uni)

# %% [section]
# ## 4️⃣ The Table 1 protocol on the toy
#
# > ##### Learning Objectives
# >
# > - Label a sample audio- or video-dominant by zeroing each modality's raw input (the unimodal-dominance rule).
# > - Compute a token set's indirect effect: clean states written back at the attention input of every layer at once.
# > - Run `analysis.cross_modal_hub_study` and read its table honestly.

# %% [markdown]
# Per sample, the protocol is:
#
# 1. Answer three times: with both modalities (`y_av`), with the frames zeroed (`y_a`), with the
#    waveform zeroed (`y_v`). **Audio-dominant** if `y_av == y_a != y_v`, **video-dominant** if
#    `y_av == y_v != y_a`, else skipped (`analysis.classify_dominance`).
# 2. Corrupt by zeroing the dominant modality's raw input; find the non-dominant modality's sinks
#    and split them into cross-modal and unimodal.
# 3. For each token set S of the non-dominant modality (all its tokens, its sinks, as many random
#    tokens, the cross-modal sinks, the unimodal sinks), write S's clean states back into the
#    corrupted run at the normalised attention input (`blocks.{l}.ln1.hook_normalized`, which
#    feeds q, k and v) **of every layer at once**, and measure
#    `IE_clean = (P_patched(o_clean) - P_corrupt(o_clean)) x 100`, with `o_clean` the clean answer.
#
# If cross-modal sinks are hubs holding the dominant modality's information, restoring them brings
# the answer back more than random tokens do.

# %%
clean = batch
ys = {}
for name, zeroed in [("av", None), ("a", "video"), ("v", "audio")]:
    run = clean if zeroed is None else patching.corruptions.zero_media(model, clean, zeroed)
    logits = model(run)
    ys[name] = model.to_string(logits[run.layout.mask("last")].argmax(-1))
dominant = analysis.classify_dominance(ys["av"], ys["a"], ys["v"])
other = {"audio": "video", "video": "audio"}[dominant]  # the non-dominant modality, whose tokens are traced
print(ys, "->", dominant, "dominant")

# %% [exercise] name=token_set_ie difficulty=3 importance=5 minutes=20
# ### Exercise - implement `token_set_ie`
#
# Return `IE_clean x 100` of one token set: run the corrupted batch with, in **every** layer, a hook
# on `blocks.{l}.ln1.hook_normalized` that writes the clean run's values at `positions` (and
# leaves every other position corrupted); `P` is the softmax probability of `answer` at the last
# position. One sample (batch of 1).

# %%
def token_set_ie(model, clean, corrupted, positions: Int[Tensor, "n"], answer: int) -> Float[Tensor, ""]:
    """IE_clean x 100 of the token set `positions`, patched at ln1.hook_normalized of every layer."""
    # EXERCISE
    # # Cache the clean ln1.hook_normalized of every layer; p_corrupt from a plain run of `corrupted`.
    # raise NotImplementedError("token_set_ie: patch the set's clean attention inputs in every layer; (p_patched - p_corrupt) x 100")
    # SOLUTION
    names = [f"blocks.{l}.ln1.hook_normalized" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(clean, names_filter=names)

    def restore(x: Tensor, hook) -> Tensor:
        x = x.clone()
        x[:, positions] = cache[hook.name][:, positions]
        return x

    def p_answer(logits: Tensor) -> Tensor:
        return logits[corrupted.layout.mask("last")].float().softmax(-1)[0, answer]

    p_corrupt = p_answer(model(corrupted))
    p_patched = p_answer(model.run_with_hooks(corrupted, fwd_hooks=[(n, restore) for n in names]))
    return (p_patched - p_corrupt) * 100
    # END

# %%
checks.test_token_set_ie(token_set_ie)

o_clean = model.to_single_token(ys["av"])
corrupted = patching.corruptions.zero_media(model, clean, dominant)  # zero the dominant modality's raw input
tokens = lay.positions(other, sample=0)
other_sinks = [p for p in sinks if labels[p] == other] or [int(tokens[0])]
for name, positions in [(f"all {other}", tokens), (f"{other} sinks", torch.tensor(other_sinks)),
                        (f"first 3 {other} tokens", tokens[:3])]:
    print(f"IE_clean x 100 of {name:>20}: {float(token_set_ie(model, clean, corrupted, positions, o_clean)):+.3f}")

# %% [markdown]
# `patching.trace_token_sets(model, clean, corrupted, token_sets, o_clean, o_corrupt)` does this
# for many sets at once, and `analysis.cross_modal_hub_study(model, samples)` runs the whole
# protocol over samples, recording why each skipped sample was skipped. With the toy's settings
# (attention sinks at eps = 0.1, N = 2, and `min_audio_chunks=1`: the official video-dominant
# script needs 5 audio chunks, a 4-second clip has 2) on 120 held-out clips (about 10 seconds):

# %%
study = analysis.cross_modal_hub_study(model, analysis.toy_samples(model, synth.make_dataset(120, seed=1000)),
                                       definition="attention", eps=0.1, min_audio_chunks=1, progress=False)
print(study)
print("skipped:", study.skip_reasons())
table = study.table(n_boot=500)
table

# %%
study.plot()

# %% [markdown]
# **What this shows, honestly.** Most clips are skipped: in about 40 % neither modality
# dominates, and in most of the rest the non-dominant modality has no sink even at eps = 0.1. In
# the audio-dominant samples every token set's effect is within about half a point of answer
# probability of zero, and the sink, cross-modal and unimodal sets are indistinguishable from random
# tokens of the same size; the couple of video-dominant samples are too few to say anything. In
# the paper's models restoring the cross-modal sinks restores far more than random tokens; here,
# writing back *all* the non-dominant modality's tokens restores nothing. That matches tutorials 1
# and 2: the toy reads each modality from its own tokens into the question's text tokens in block
# 0, and nothing of the dominant modality passes through the other modality's tokens. The toy has
# no cross-modal hubs for the protocol to find.
#
# That is a result about the toy, not about the pipeline: section 1's planted activation, and
# avlens's tests with planted states, show that the same code finds sinks and hubs where they
# exist. On a real AVLLM (`avlens.HookedAVTransformer.from_pretrained("Qwen/Qwen2.5-Omni-7B")`)
# the same calls run with the paper's defaults: `definition="auto"` picks the hidden-state
# definition once `find_sink_dims` finds the sink dimensions, with tau = 25.
#
# ## Summary
#
# - Massive activations are measured, not assumed: `find_sink_dims` reports the largest ratio per
#   layer and dimension when nothing qualifies.
# - Two sink definitions, both computed in one streaming pass by `find_sinks`; the global-sink rule
#   and the MDS follow the official code, ties included.
# - The Table 1 protocol is `cross_modal_hub_study`: dominance by zeroing raw inputs, token-set
#   tracing at the attention input of every layer, bootstrap intervals. On the toy it finds no hubs.
#
# **Next**: tutorial 4 uses the sinks to steer attention at decoding time against hallucination,
# and compares that with published baselines.
