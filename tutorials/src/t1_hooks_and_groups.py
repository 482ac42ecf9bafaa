# %% [markdown]
# # Tutorial 1: hooks, caches and token groups on a toy audio-visual LLM
#
# An audio-visual LLM (AVLLM) reads one long sequence: a few text tokens, then hundreds of audio and
# video tokens produced by its encoders, then the question. Every interpretability question about
# such a model ("does the answer come from the sound or from the picture?", "where does the audio
# information go?") starts by knowing **which positions belong to which modality** and reading or
# editing the activations **at those positions**.
#
# avlens keeps TransformerLens's one idea (every activation is a `HookPoint` with a predictable
# dotted name, and caching, patching and ablation are all "a function at a name") and adds token
# groups as one more part of the name: `blocks.1.hook_resid_pre.video` is the residual stream
# entering block 1 *at the video positions only*.
#
# This tutorial runs on `avlens.load_toy()`: a 1.4 M-parameter Qwen2.5-Omni thinker trained from
# scratch on avlens's synthetic audio-visual world (12 sound-making objects, 4-second clips). It is
# tiny (4 layers, d_model 128), so everything here runs on a laptop CPU in about a minute, and its
# ground truth is known: we know which modality carries the answer in every clip.
#
# **Contents**
#
# 1. Token layouts and group views: which position is which, and how to cache one group.
# 2. Ablating a modality: zero one group's residual stream and watch the answer.
# 3. Attention between token groups: how much each group attends to each other group.
# 4. Logit attribution: which layer writes the answer.
#
# **How to use it.** This is the exercise notebook's text; the solution notebook is the same with
# every solution filled in. Each exercise is a function with its shapes in the signature
# (`Float[Tensor, "batch pos d_model"]` means a float tensor of shape `[batch, pos, d_model]`); fill
# in its body, run the cell below it, and `checks.test_...` compares your function with an
# independent reference and prints a success message (or says what is wrong). Solutions are hidden
# under "Solution" below each exercise.

# %% [setup]

# %% [imports]
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

import avlens
from avlens import viz
from avlens.data import synth, tasks
from tutorials import checks

# %%
torch.set_grad_enabled(False)  # we only run forward passes here

model = avlens.load_toy()
model

# %% [markdown]
# Two clips from the synthetic world, each with a multiple-choice question. In the first a dog
# barks **off-screen** while a silent phone is in view: only the audio says "dog". In the second a
# piano is seen but **silent**: only the video says "piano". `clip.truth` records all of this.

# %%
clips = [synth.make_clip("dog", "offscreen", seed=1), synth.make_clip("piano", "silent", seed=2)]
examples = [tasks.multiple_choice(clip, seed=0) for clip in clips]
for clip, ex in zip(clips, examples):
    print(clip.truth)
    print("   question:", ex.question)
    print("   answer:  ", ex.answer, "=", clip.truth.target)

batch = model.prepare_media(
    [tasks.prompt_text(ex) for ex in examples],
    audio=[clip.waveform for clip in clips],
    video=[clip.frames for clip in clips],
    fps=synth.FPS,
    use_audio_in_video=True,
)
answers = torch.tensor([model.to_single_token(ex.answer) for ex in examples])  # [batch]
batch

# %% [section]
# ## 1️⃣ Token layouts and group views
#
# > ##### Learning Objectives
# >
# > - Read a `TokenLayout`: which positions are audio, video, text, special; their time stamps and chunks.
# > - Cache activations with `run_with_cache` and slice them by token group.
# > - Use group views (`<hook name>.<group>`) to read one modality's activations with a hook.

# %% [markdown]
# `batch.layout` is a `BatchLayout`: one boolean mask `[batch, pos]` per token group. The groups
# `audio, video, image, text, special, pad` partition the positions; overlay groups such as `last`
# (each sample's last real position, where the answer is read) may overlap them. Its terminal repr
# run-length encodes each sample; in a notebook it draws a coloured strip.
#
# The clip is "audio in video", as Qwen2.5-Omni interleaves it: the media is cut into 2-second
# chunks, and each chunk holds its video tokens (2 frames merged into 4 patches each here: 8
# tokens) followed by its audio tokens (25 per second: 50).

# %%
print(batch.layout)
batch.layout

# %%
layout = batch.layout
audio_pos = layout.positions("audio", sample=0)  # a LongTensor of positions
video_pos = layout.positions("video", sample=0)
print("audio positions", audio_pos[:5].tolist(), "...", "video positions", video_pos.tolist())
print("their time stamps (s):", layout.time[0, audio_pos[:5]].tolist(), layout.time[0, video_pos].tolist())
print("chunk of each video token:", layout.chunk[0, video_pos].tolist())
print("the answer is read at position", layout.positions("last", sample=0).item())
print(model.to_str_tokens(batch, 0)[:14])

# %% [markdown]
# `run_with_cache` returns the logits and an `ActivationCache` with every hook point, named as in
# TransformerLens (`blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_pattern`, ...). Group views
# are not cached by default (they would duplicate memory); name them in `names_filter` to cache one.

# %%
logits, cache = model.run_with_cache(batch)
print(len(cache), "activations;", "resid_pre of block 1:", tuple(cache["blocks.1.hook_resid_pre"].shape))
print("pattern of block 1:", tuple(cache["blocks.1.attn.hook_pattern"].shape), "= [batch, head, query, key]")

_, video_cache = model.run_with_cache(batch, names_filter=["blocks.1.hook_resid_pre.video"])
print("the video view:", tuple(video_cache["blocks.1.hook_resid_pre.video"].shape), "= [batch, n_video, d_model]")

# %% [exercise] name=group_mean_resid difficulty=1 importance=3 minutes=10
# ### Exercise - implement `group_mean_resid`
#
# Average the residual stream over the positions of one token group, separately for each sample.
# The group is given as a boolean mask `[batch, pos]` (e.g. `batch.layout.mask("video")`); samples
# may have different numbers of positions in the group, so do not index with `positions(...)`.
#
# This is the first step of many analyses in this library: "the mean video state at layer 1",
# a modality's centroid for a probe, a direction to steer along.

# %%
def group_mean_resid(
    resid: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_model"]:
    """Mean of `resid` over the positions where `mask` holds, per sample."""
    # EXERCISE
    # # Multiply by the mask (as a float, with a trailing axis), sum over positions, divide by the count.
    # raise NotImplementedError("group_mean_resid: average resid over the masked positions of each sample")
    # SOLUTION
    m = mask.to(resid.dtype)[..., None]  # [batch, pos, 1]
    return (resid * m).sum(1) / m.sum(1)
    # END

# %%
checks.test_group_mean_resid(group_mean_resid)

mean_video = group_mean_resid(cache["blocks.1.hook_resid_pre"], layout.mask("video"))
print("mean video state at block 1, sample 0:", mean_video[0, :6])

# %% [exercise] name=group_activation difficulty=2 importance=4 minutes=10
# ### Exercise - implement `group_activation`
#
# Read one token group's activation at any hook with a **group view hook** instead of the cache:
# attach a forward hook to `f"{hook_name}.{group}"` with `model.run_with_hooks(batch, fwd_hooks=[(name,
# fn)])` and keep what it receives. A hook function has the signature `fn(activation, hook)`; if it
# returns `None` the activation is left unchanged.
#
# A view receives `[batch, n_group, ...]`: the parent hook's activation at the group's positions
# (every sample must have the same number of positions in the group). Views exist for every hook
# whose second axis is the position (`hook_resid_pre`, `attn.hook_z`, `mlp.hook_post`, ...).

# %%
def group_activation(model, batch, hook_name: str, group: str) -> Float[Tensor, "batch n_group *rest"]:
    """The activation at `hook_name` restricted to `group`'s positions, read by a hook on the group view."""
    # EXERCISE
    # # A dict or list defined outside the hook function can carry the tensor out of it.
    # raise NotImplementedError("group_activation: hook f'{hook_name}.{group}' and store what it receives")
    # SOLUTION
    store = {}

    def save(x: Tensor, hook) -> None:
        store["x"] = x.detach().clone()

    model.run_with_hooks(batch, fwd_hooks=[(f"{hook_name}.{group}", save)])
    return store["x"]
    # END

# %%
checks.test_group_activation(group_activation)

z_audio = group_activation(model, batch, "blocks.2.attn.hook_z", "audio")
print("attn.hook_z at the audio positions:", tuple(z_audio.shape), "= [batch, n_audio, head, d_head]")

# %% [section]
# ## 2️⃣ Ablating a modality
#
# > ##### Learning Objectives
# >
# > - Edit activations by returning a new value from a hook function.
# > - Zero one modality's residual stream at one layer and measure the answer's probability.
# > - See *when* the toy model moves the media's information to the answer position.

# %% [exercise] name=ablate_group difficulty=2 importance=5 minutes=15
# ### Exercise - implement `ablate_group`
#
# Zero the residual stream entering block `layer` at one group's positions (hook
# `blocks.{layer}.hook_resid_pre.{group}` and return zeros), run the model, and return the
# probability of each sample's answer token at its last real position (`batch.layout.mask("last")`
# selects it). The residual stream is what every later layer reads, so zeroing it at the group's
# positions removes everything those positions carry from that layer on.

# %%
def ablate_group(model, batch, layer: int, group: str, answers: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """P(answer) at the last position with `group`'s resid_pre at `layer` set to zero."""
    # EXERCISE
    # # 1. a hook returning torch.zeros_like(x); 2. logits [batch, pos, vocab] from run_with_hooks;
    # # 3. softmax at the last position; 4. pick each sample's answer (torch.arange(batch) indexing or gather).
    # raise NotImplementedError("ablate_group: zero the group's resid_pre at `layer` and read P(answer)")
    # SOLUTION
    def zero(x: Tensor, hook) -> Tensor:
        return torch.zeros_like(x)

    logits = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre.{group}", zero)])
    last = logits[batch.layout.mask("last")]  # [batch, vocab]: one last position per sample
    probs = last.float().softmax(-1)
    return probs[torch.arange(len(answers)), answers]
    # END

# %%
checks.test_ablate_group(ablate_group)

clean_p = logits[layout.mask("last")].softmax(-1)[torch.arange(2), answers]
print(f"clean P(answer): {clean_p.tolist()}")
for group in ("audio", "video", "text"):
    for layer in range(model.cfg.n_layers):
        p = ablate_group(model, batch, layer, group, answers)
        print(f"zero {group:>5} at block {layer}: P(answer) = dog clip {p[0]:.3f}, piano clip {p[1]:.3f}")

# %% [markdown]
# Read the table. Zeroing the **audio** entering block 0 destroys the off-screen dog's answer
# (the audio is the only evidence) and leaves the silent piano's alone; zeroing the **video** does
# the opposite. Each clip uses exactly the modality the synthetic world made informative.
#
# From block 1 on, zeroing either modality changes almost nothing: block 0's attention has
# already copied what the answer needs from the media positions into later positions (the question
# and the answer position). Zeroing the **text** hurts at every block: the question holds the
# options, and the answer is assembled at the text positions. Tutorial 2 localises this with
# activation patching.

# %% [section]
# ## 3️⃣ Attention between token groups
#
# > ##### Learning Objectives
# >
# > - Compute the attention mass a query group puts on a key group from an attention pattern.
# > - Use `model.attention_group_summary`, which computes it for every layer, head and pair of groups
# >   inside the forward pass (no full pattern is kept, so it scales to long sequences).
# > - Read a group-flow view and the attention one query pays to every token.

# %% [exercise] name=group_attention_mass difficulty=2 importance=4 minutes=15
# ### Exercise - implement `group_attention_mass`
#
# For one layer's pattern `A[b, h, q, k]` (each row sums to 1 over the keys), the attention mass
# from query group Q to key group K is the mean over the queries in Q of the attention they put on
# all keys in K:
#
# $$\text{mass}[b, h] = \frac{1}{|Q_b|} \sum_{q \in Q_b} \sum_{k \in K_b} A[b, h, q, k]$$
#
# So the masses from one query group to all partition groups sum to 1.

# %%
def group_attention_mass(
    pattern: Float[Tensor, "batch head q k"], query_mask: Bool[Tensor, "batch q"], key_mask: Bool[Tensor, "batch k"]
) -> Float[Tensor, "batch head"]:
    """Mean over the query group's positions of the attention put on the key group's positions."""
    # EXERCISE
    # # Sum the pattern over the key group, then average over the query group (both per sample).
    # raise NotImplementedError("group_attention_mass: sum over keys in K, mean over queries in Q")
    # SOLUTION
    to_keys = (pattern * key_mask[:, None, None, :].to(pattern.dtype)).sum(-1)  # [batch, head, q]
    qm = query_mask[:, None, :].to(pattern.dtype)  # [batch, 1, q]
    return (to_keys * qm).sum(-1) / qm.sum(-1)
    # END

# %%
checks.test_group_attention_mass(group_attention_mass)

pattern0 = cache["blocks.0.attn.hook_pattern"]
for key_group in ("audio", "video", "text", "special"):
    mass = group_attention_mass(pattern0, layout.mask("last"), layout.mask(key_group))
    print(f"block 0, answer position -> {key_group:>7}: per head, dog clip {mass[0].numpy().round(3)}, "
          f"piano clip {mass[1].numpy().round(3)}")

# %% [markdown]
# `model.attention_group_summary(batch)` computes these masses for every layer, head, query group
# and key group in one streaming pass: `summary.mass` is `[batch, layer, head, query_group,
# key_group]`, `summary["last", "audio"]` is `[batch, layer, head]`. `avlens.viz.group_flow_view`
# draws it as a grid of small heatmaps, one per layer (rows) and head (columns), plus a column for
# the mean over heads: in each, rows are query groups and columns key groups. Hover a matrix to
# see it large with its numbers. Its data is `layers x heads x groups x groups` numbers whatever the
# sequence length, so it stays small for a 2,000-token clip.

# %%
summary = model.attention_group_summary(batch)
print(summary)
viz.group_flow_view(summary, sample=0, title="Dog clip: attention mass between token groups")

# %% [markdown]
# The same attention one token at a time. Take the dog clip's answer position in block 0 and the
# head that puts the most attention on media; `avlens.viz.token_strip` lays the clip's tokens out as
# a strip (text tokens with their text, media tokens as narrow time-stamped cells) coloured by any
# per-token value: here the attention each token receives from the answer position.

# %%
last0 = int(layout.positions("last", sample=0))
media0 = (layout.mask("audio") | layout.mask("video"))[0]
head = int(pattern0[0, :, last0][:, media0].sum(-1).argmax())
print(f"block 0, head {head}: {pattern0[0, head, last0][media0].sum():.3f} of the answer position's attention is on media")
viz.token_strip(batch, values=pattern0[0, head, last0], sample=0, str_tokens=model.to_str_tokens(batch, 0),
                       query=last0, value_label=f"attention from the answer position (block 0, head {head})")

# %% [markdown]
# Media tokens mean more on their media. `avlens.viz.spectrogram_view` draws the same values over
# the audio tokens as a heat band on the clip's log-mel spectrogram, on one time axis, with the
# audio playable in the page (press play: the dog barks where the answer position looks).
# `avlens.viz.frame_strip_view` draws values over the video tokens as heat on each frame's patch
# grid; here for the piano clip, the head of block 0 whose answer position looks most at video.
# Even that head gives each video token only about 1 % of its attention: the answer position does
# not read the video directly (tutorial 2 finds the route, through the question's tokens).

# %%
viz.spectrogram_view(batch, values=pattern0[0, head, last0], sample=0, waveform=clips[0].waveform,
                     value_label=f"attention from the answer position (block 0, head {head})")

# %%
last1 = int(layout.positions("last", sample=1))
video_head = int(pattern0[1, :, last1][:, layout.mask("video")[1]].sum(-1).argmax())
viz.frame_strip_view(batch, values=pattern0[1, video_head, last1], sample=1, frames=clips[1].frames,
                     value_label=f"attention from the answer position (block 0, head {video_head})")

# %% [markdown]
# To see whole attention patterns, drill down into a window of positions: `attention_drilldown`
# runs the model up to one layer and keeps only the window's rows and columns (circuitsvis's
# `attention_heads` view, tokens labelled and coloured by group). By default the window is the last
# media chunk and the question.

# %%
viz.attention_drilldown(model, batch, layer=0, sample=0)

# %% [section]
# ## 4️⃣ Logit attribution: which layer writes the answer
#
# > ##### Learning Objectives
# >
# > - Decompose the final residual stream into the embedding and each layer's attention and MLP output.
# > - Compute each component's direct contribution to a logit through the final RMSNorm and the unembedding.
# > - Check that the contributions sum to the logit, and compare with TransformerLens's `cache.logit_attrs`.

# %% [markdown]
# The residual stream at the end is a sum: `resid_final = embed + sum_l (attn_out_l + mlp_out_l)`.
# `cache.decompose_resid(return_labels=True)` stacks these terms: `[component, batch, pos, d_model]`.
# The logits are `W_U^T (w * resid_final / scale)`, where `scale = sqrt(mean(resid_final^2) + eps)`
# is the final RMSNorm's (cached at `ln_final.hook_scale`, `[batch, pos, 1]`) and `w` its weight.
# Holding the scale fixed (it depends on the whole sum), the map is linear, so each component
# contributes `(component / scale) . (w * W_U[:, token])` to the token's logit:
# `model.tokens_to_residual_directions(token)` is that direction `w * W_U[:, token]`.

# %% [exercise] name=logit_attribution difficulty=3 importance=4 minutes=20
# ### Exercise - implement `logit_attribution`
#
# Return each component's direct contribution to each sample's answer logit at that sample's last
# real position: `[component, batch]`, components in the order of `cache.decompose_resid`. Their sum
# over components must equal the model's logit for the answer.

# %%
def logit_attribution(model, cache, batch, answers: Int[Tensor, "batch"]) -> Float[Tensor, "component batch"]:
    """Direct contribution of each residual component to each sample's answer logit at its last position."""
    # EXERCISE
    # # components: cache.decompose_resid() -> [component, batch, pos, d_model]; pick each sample's last
    # # position (batch.layout.positions("last") or the mask), divide by ln_final.hook_scale there, then
    # # dot with model.tokens_to_residual_directions(answers) -> [batch, d_model].
    # raise NotImplementedError("logit_attribution: decompose, normalise by the final scale, project on the answer")
    # SOLUTION
    components = cache.decompose_resid()  # [component, batch, pos, d_model]
    last = batch.layout.mask("last")  # [batch, pos], one position per sample
    at_last = components[:, last]  # [component, batch, d_model]
    scale = cache["ln_final.hook_scale"][last]  # [batch, 1]
    directions = model.tokens_to_residual_directions(answers)  # [batch, d_model]
    return ((at_last / scale) * directions).sum(-1)
    # END

# %%
checks.test_logit_attribution(logit_attribution)

_, labels = cache.decompose_resid(return_labels=True)
attr = logit_attribution(model, cache, batch, answers)
for name, row in zip(labels, attr):
    print(f"{name:>11}: dog clip {row[0]:+7.2f}   piano clip {row[1]:+7.2f}")
print(f"{'sum':>11}: dog clip {attr[:, 0].sum():+7.2f}   piano clip {attr[:, 1].sum():+7.2f}  "
      f"(the answer logits: {logits[layout.mask('last')][torch.arange(2), answers].tolist()})")

# %% [markdown]
# A raw logit mixes the answer's own evidence with a shift that every option shares; the
# difference between the answer and another option's logit removes that shift. Here the second
# option letter of each question is compared with the answer letter.

# %%
wrong = torch.tensor([model.to_single_token("A" if ex.answer != "A" else "B") for ex in examples])
diff = logit_attribution(model, cache, batch, answers) - logit_attribution(model, cache, batch, wrong)
for name, row in zip(labels, diff):
    print(f"{name:>11}: dog clip {row[0]:+7.2f}   piano clip {row[1]:+7.2f}")

# %% [markdown]
# Block 0 writes almost nothing *directly* into the answer's margin, yet section 2 showed that
# the answer is lost when block 0 cannot read the media. Direct and total effects differ: block 0
# moves information that later blocks (here mostly blocks 1 and 2) turn into the answer letter.
# Direct logit attribution answers "who writes the logit", not "who is needed"; the causal tools
# of tutorial 2 answer the second question.

# %% [markdown]
# ## Summary
#
# - A `TokenLayout` names every position's group, time stamp and chunk; group views
#   (`blocks.1.hook_resid_pre.video`) read and edit one modality at any hook.
# - Zeroing a modality's residual stream shows which modality each answer needs, and that the
#   toy moves the media's information out of the media positions in its first block.
# - `attention_group_summary` measures attention between groups for every layer and head without
#   keeping the patterns; `token_strip` and `attention_drilldown` show where one query looks.
# - Direct logit attribution splits the answer logit into the embedding's and each layer's share.
#
# **Next**: tutorial 2 asks the causal question properly, with activation patching and causal
# tracing across modalities (`avlens.patching`).
