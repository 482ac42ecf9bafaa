# %% [markdown]
# # Tutorial 2: activation patching and causal tracing across modalities
#
# Tutorial 1 found, by zeroing, that the toy model needs the audio of an off-screen dog and that
# the audio's information leaves the audio positions in block 0. Zeroing is a blunt tool: a zeroed
# state is one the model never sees. This tutorial asks the causal question properly:
#
# > *Which internal states carry the information that makes the answer right?*
#
# **Activation patching** runs the model on a *corrupted* input (here: the clip with its audio
# silenced) and writes back one *clean* state at a time (a layer, a token group, a position). If
# restoring that one state restores the answer, the state carries what the answer needs. **Causal
# tracing** (ROME) does the same against Gaussian noise on a modality's input embeddings, and
# **attention knockout** cuts attention edges between token groups to find the routes the
# information takes.
#
# By the end you will have traced the toy model's route for one clip: from the audio tokens, read in
# block 0 by a few question tokens (mainly the target's own option word), to the answer position in
# block 1.
#
# **Contents**
#
# 1. Corruptions and patching by hand: write clean states back through group views.
# 2. `avlens.patching.activation_patch`: layers x groups, layers x positions, and why it is fast.
# 3. Causal tracing (ROME): restoring states into noised runs.
# 4. Attention knockout: which attention edges the information flows through.
#
# Everything runs on the shipped toy model on a CPU in about a minute. Each exercise's check
# compares your function with `avlens.patching` (itself tested against brute-force loops,
# TransformerLens and Hugging Face).

# %% [setup]

# %% [imports]
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

import avlens
from avlens import viz
from avlens import patching
from avlens.data import synth, tasks
from tutorials import checks

# %%
import time

torch.set_grad_enabled(False)
model = avlens.load_toy()

clip = synth.make_clip("dog", "offscreen", seed=1)  # a dog barks off-screen; a silent phone is in view
example = tasks.multiple_choice(clip, seed=0)
clean = model.prepare_media(tasks.prompt_text(example), audio=clip.waveform, video=clip.frames, fps=synth.FPS,
                            use_audio_in_video=True)
answer = torch.tensor([model.to_single_token(example.answer)])
print(clip.truth)
print(example.question, "->", example.answer)

# %% [section]
# ## 1️⃣ Corruptions and patching by hand
#
# > ##### Learning Objectives
# >
# > - Build a corrupted input that keeps the clean input's token layout (the paper's corruption: zero a modality's raw signal).
# > - Patch clean activations into the corrupted run ("denoising") through group-view hooks.
# > - Read a layer x group patching grid.

# %% [markdown]
# A corrupted input must have **the same token layout** as the clean one (same groups at the same
# positions), so that a clean state has a place to go. `patching.corruptions.zero_media` silences
# the waveform (or blackens the frames) *before* feature extraction and re-runs the encoder: the
# layout is unchanged, only the content differs. `check_aligned` raises if two batches do not line up.

# %%
corrupted = patching.corruptions.zero_media(model, clean, "audio")
patching.corruptions.check_aligned(clean, corrupted)


def p_answer(batch) -> float:
    logits = model(batch)
    return float(logits[batch.layout.mask("last")].softmax(-1)[0, answer])


print(f"P({example.answer}) clean: {p_answer(clean):.4f}   audio silenced: {p_answer(corrupted):.4f}")

# %% [exercise] name=patch_groups difficulty=2 importance=5 minutes=20
# ### Exercise - implement `patch_groups`
#
# Denoising activation patching over layers and token groups, by hand: for every `layer` in
# `layers` and every `group` in `groups`, run the **corrupted** batch with a hook on
# `blocks.{layer}.hook_resid_pre.{group}` that returns the **clean** run's values at that group,
# and record the probability of the answer at the last position, averaged over the samples.
#
# Get the clean values from one `run_with_cache` of the clean batch (`cache[hook_name]` has every
# position; the group's positions in sample b are `clean.layout.positions(group, sample=b)`), or
# cache the group views themselves with `names_filter`.

# %%
def patch_groups(
    model, clean, corrupted, answers: Int[Tensor, "batch"], layers: list[int], groups: list[str]
) -> Float[Tensor, "layer group"]:
    """P(answer), averaged over samples, with the clean resid_pre of one group at one layer patched in."""
    # EXERCISE
    # # names = [f"blocks.{l}.hook_resid_pre.{g}" ...]; _, cache = model.run_with_cache(clean, names_filter=names)
    # # then for each cell: logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, lambda x, hook: cache[name])])
    # raise NotImplementedError("patch_groups: write the clean group state into the corrupted run, cell by cell")
    # SOLUTION
    names = {(l, g): f"blocks.{l}.hook_resid_pre.{g}" for l in layers for g in groups}
    _, cache = model.run_with_cache(clean, names_filter=list(names.values()))
    out = torch.zeros(len(layers), len(groups))
    for i, l in enumerate(layers):
        for j, g in enumerate(groups):
            name = names[(l, g)]

            def restore(x: Tensor, hook, name=name) -> Tensor:
                return cache[name]

            logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, restore)])
            probs = logits[corrupted.layout.mask("last")].float().softmax(-1)  # [batch, vocab]
            out[i, j] = probs[torch.arange(len(answers)), answers].mean()
    return out
    # END

# %%
checks.test_patch_groups(patch_groups)

groups = ["audio", "video", "text", "special", "last"]
grid = patch_groups(model, clean, corrupted, answer, list(range(model.cfg.n_layers)), groups)
print("P(answer) with one clean group restored at resid_pre (rows: block, columns:", groups, ")")
print(grid.numpy().round(3))

# %% [markdown]
# Restoring the **audio** states entering block 0 brings the answer back completely, and
# restoring them anywhere later does nothing: by block 1 the audio's contribution has left the
# audio positions. From block 1 on the **text** positions carry it, and from block 2 on the
# **last** position (where the answer is read) carries it alone. Information flows audio -> text
# -> answer position, one block at a time.

# %% [section]
# ## 2️⃣ `activation_patch`: every cell, fast
#
# > ##### Learning Objectives
# >
# > - Run `patching.activation_patch` over layers x groups and layers x positions, and read its `PatchResult`.
# > - Find the single positions that carry the answer, and show them on the token strip.
# > - Know why the library is faster than a loop of forward passes (skipped no-ops, partial forwards, batching).

# %% [markdown]
# `patching.activation_patch(model, clean, corrupted, metric, site=..., over=...)` does what you
# just wrote, for any site (`resid_pre`, `attn_out`, `mlp_out`, `attn_in`, per-head `z`, ...) and any
# axes (`layer` / `window`, `position` / `group` / `token_set`, `head`). The metric here is
# `patching.AnswerProb(word, model)`, the softmax probability of the answer at the last position.

# %%
metric = patching.AnswerProb(example.answer, model)
by_group = patching.activation_patch(model, clean, corrupted, metric, over=("layer", "group"), progress=False)
print(by_group.values)
print("base (corrupted):", by_group.base, " source (clean):", by_group.source)
by_group.to_frame().head()

# %% [exercise] name=patch_positions difficulty=2 importance=3 minutes=15
# ### Exercise - implement `patch_positions`
#
# One row of the layer x position grid by brute force: for each position of the sequence, patch
# the clean `blocks.{layer}.hook_resid_pre` into the corrupted run **at that position only** (a
# hook on the full hook name that returns a copy of the corrupted activation with one position
# replaced) and record P(answer), averaged over samples. This is what TransformerLens's
# `get_act_patch_resid_pre` does: one full forward per cell.

# %%
def patch_positions(model, clean, corrupted, answers: Int[Tensor, "batch"], layer: int) -> Float[Tensor, "pos"]:
    """P(answer), averaged over samples, with the clean resid_pre of block `layer` patched in at one position."""
    # EXERCISE
    # # Clone x in the hook before writing into it (x[:, p] = clean_resid[:, p]) and return it.
    # raise NotImplementedError("patch_positions: one forward per position, the clean state written at that position")
    # SOLUTION
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(clean, names_filter=[name])
    clean_resid = cache[name]
    n_pos = clean.shape[1]
    out = torch.zeros(n_pos)
    for p in range(n_pos):
        def restore(x: Tensor, hook, p=p) -> Tensor:
            x = x.clone()
            x[:, p] = clean_resid[:, p]
            return x

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, restore)])
        probs = logits[corrupted.layout.mask("last")].float().softmax(-1)
        out[p] = probs[torch.arange(len(answers)), answers].mean()
    return out
    # END

# %%
checks.test_patch_positions(patch_positions)

t0 = time.perf_counter()
row0 = patch_positions(model, clean, corrupted, answer, layer=0)
loop_seconds = time.perf_counter() - t0
t0 = time.perf_counter()
by_position = patching.activation_patch(model, clean, corrupted, metric, over=("layer", "position"), progress=False)
print(f"your loop, one layer: {loop_seconds:.2f} s; activation_patch, all {model.cfg.n_layers} layers: "
      f"{time.perf_counter() - t0:.2f} s ({by_position.stats})")
print("largest difference from your row:", float((by_position.values[0] - row0).abs().max()))
by_position.top(6)

# %% [markdown]
# `activation_patch` gets the same numbers with far fewer forward passes: a cell whose clean and
# corrupted values are equal (every position before the first audio token) cannot change anything
# and is skipped; a patch at block `l` and position `p` starts from the cached run at block `l` and
# recomputes only the positions from `p` on; and many cells share one batched forward.
#
# The grid as a heatmap (`.plot()`, with token-group bands along the positions: an avlens view that
# draws offline, in an exported HTML page too, from float16 data; hover a cell for its numbers;
# `.plot(backend="plotly")` gives a plotly figure instead), then block 0's row on the token strip:
# which single positions carry the answer when restored.

# %%
by_position.plot()

# %%
str_tokens = model.to_str_tokens(clean, 0)
viz.token_strip(clean, values=by_position.values[0], str_tokens=str_tokens,
                       value_label="P(answer) with this position's clean state restored at block 0")

# %% [markdown]
# The audio tokens' effects on the clip's spectrogram, on one time axis with the audio playable:
# the tokens that restore the answer on their own sit at the onsets of two of the seven barks
# (around 1.7 s and 2.8 s); the other barks' tokens, one at a time, restore little.

# %%
viz.spectrogram_view(clean, values=by_position.values[0], waveform=clip.waveform,
                     value_label="P(answer) with this audio token restored at block 0")

# %%
for _, r in by_position.top(6).iterrows():
    p = int(r["position"])
    print(f"block {int(r['layer'])}, position {p} ({clean.layout.labels(0)[p]}, {str_tokens[p]!r}): "
          f"P(answer) = {r['value']:.3f}")

# the text position (other than the answer position) whose state at block 1 restores the most
row1 = by_position.values.plain()[1].clone()
row1[~clean.layout.mask("text")[0] | clean.layout.mask("last")[0]] = 0
option_pos = int(row1.argmax())
print(f"\nat block 1: position {option_pos}, {str_tokens[option_pos]!r}, restores P(answer) = {row1[option_pos]:.3f}")

# %% [markdown]
# Three kinds of position matter. At block 0 single **audio** tokens each restore part of the
# answer (about half for the best ones): the evidence is spread over the barks. At block 1 one
# **text** token restores almost all of it: the option word `dog` in "D . dog" (the target's own
# option). From block 2 on, the answer position itself carries everything (restoring the state
# that is read out is trivially enough). Block 0 has moved the audio's evidence into the option
# token, and the answer position reads it from there. Sections 3 and 4 check this route with two
# other tools.

# %% [section]
# ## 3️⃣ Causal tracing (ROME)
#
# > ##### Learning Objectives
# >
# > - Corrupt with Gaussian noise on one group's input embeddings (ROME's corruption), with several noised copies.
# > - Restore one clean state into every noised copy and average: the indirect effect of that state.
# > - Run `patching.causal_trace` over layers x positions and compare it with zero-audio patching.

# %% [markdown]
# ROME corrupts differently: it adds Gaussian noise of 3 times the embeddings' standard deviation
# to the input embeddings of one group, in `n_copies` independently noised copies, and restores
# one clean `resid_post` state at a time, averaging the answer probability over the copies.
# `gaussian_noise` returns the copies stacked along the batch (copy-major: copy 0 of every sample,
# then copy 1, ...).

# %%
sigma = 3 * patching.corruptions.embedding_std(model, clean, "audio")
noised = patching.corruptions.gaussian_noise(model, clean, "audio", sigma=sigma, n_copies=10, seed=0)
print(f"sigma = {sigma:.3f}; noised batch: {noised.batch_size} copies; P(answer) per copy:",
      model(noised)[noised.layout.mask("last")].softmax(-1)[:, answer[0]].numpy().round(3))

# %% [exercise] name=restore_state difficulty=3 importance=4 minutes=20
# ### Exercise - implement `restore_state`
#
# Restore the clean `blocks.{layer}.hook_resid_post` at one position into every noised copy and
# return P(answer) averaged over the copies of each clean sample: `[batch]` for a clean batch of
# `batch` samples. The noised batch has `n_copies * batch` rows, copy-major, so row `r` is a copy
# of clean sample `r % batch`.

# %%
def restore_state(
    model, clean, noised, answers: Int[Tensor, "batch"], layer: int, position: int
) -> Float[Tensor, "batch"]:
    """P(answer) per clean sample, averaged over its noised copies, with one clean resid_post restored."""
    # EXERCISE
    # # clean_resid[rows % b] lines the clean states up with the copies; answers likewise.
    # # Average over copies: reshape [n_copies * b] -> [n_copies, b] and take the mean over axis 0.
    # raise NotImplementedError("restore_state: restore one clean state into each noised copy and average")
    # SOLUTION
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(clean, names_filter=[name])
    b = clean.batch_size
    rows = torch.arange(noised.batch_size) % b
    clean_resid = cache[name][rows]  # [n_copies * b, pos, d_model]

    def restore(x: Tensor, hook) -> Tensor:
        x = x.clone()
        x[:, position] = clean_resid[:, position]
        return x

    logits = model.run_with_hooks(noised, fwd_hooks=[(name, restore)])
    probs = logits[noised.layout.mask("last")].float().softmax(-1)  # [n_copies * b, vocab]
    p = probs[torch.arange(noised.batch_size), answers[rows]]
    return p.reshape(-1, b).mean(0)
    # END

# %%
checks.test_restore_state(restore_state)

for layer in range(model.cfg.n_layers):
    print(f"restore resid_post of block {layer} at position {option_pos}: "
          f"P(answer) = {float(restore_state(model, clean, noised, answer, layer, option_pos)[0]):.3f}")

# %% [markdown]
# `patching.causal_trace` runs the whole layer x position grid (and ROME's windows of layers with
# `window=` and `site="mlp_out"` or `"attn_out"`). `values` is the restored probability, `base`
# the noised one, `source` the clean one.

# %%
trace = patching.causal_trace(model, clean, metric, "audio", sigma=sigma, n_copies=10, seed=0, progress=False)
print("noised:", trace.base, " clean:", trace.source)
print(trace.top(4))
trace.plot()

# %% [markdown]
# The trace agrees with zero-audio patching: under noise too, restoring the `dog` option token's
# state after block 0 brings most of the answer back, and after block 1 only the answer position's
# own state does (restoring the option token after block 1 is too late: block 1 has already read
# it). Audio states after block 0 restore nothing: they are no longer on the route.

# %% [section]
# ## 4️⃣ Attention knockout
#
# > ##### Learning Objectives
# >
# > - Block attention edges from one set of keys to one set of queries by adding -inf to their attention scores.
# > - Measure the relative change of the answer probability, per layer window.
# > - Use `patching.attention_knockout` to find which group-to-group edges, in which layers, carry the information.

# %% [markdown]
# Patching says *which states* matter; knockout says *which edges* the information travels along.
# Adding `-inf` to the pre-softmax scores `blocks.{l}.attn.hook_attn_scores` (`[batch, head, query,
# key]`) of chosen (query, key) pairs removes those edges; each row renormalises over the keys it
# still sees. A query's edge to itself is never blocked, so no row is ever fully masked.

# %% [exercise] name=knockout_prob difficulty=3 importance=4 minutes=20
# ### Exercise - implement `knockout_prob`
#
# Return P(answer) at each sample's last position when every edge from a key in `key_mask` to a
# *later* query in `query_mask` is blocked in each layer of `layers`. Edges from a key to itself or
# to earlier queries are left alone (causal attention removes the latter anyway).

# %%
def knockout_prob(
    model, batch, answers: Int[Tensor, "batch"], key_mask: Bool[Tensor, "batch pos"], query_mask: Bool[Tensor, "batch pos"],
    layers: list[int],
) -> Float[Tensor, "batch"]:
    """P(answer) with the attention edges key -> later query blocked in `layers`."""
    # EXERCISE
    # # blocked[b, q, k] = query_mask[b, q] & key_mask[b, k] & (k < q); masked_fill(blocked[:, None], -inf)
    # raise NotImplementedError("knockout_prob: -inf on the blocked (query, key) scores in each layer")
    # SOLUTION
    n = batch.shape[1]
    earlier = torch.arange(n)[None, :] < torch.arange(n)[:, None]  # [q, k]: key strictly before the query
    blocked = query_mask[:, :, None] & key_mask[:, None, :] & earlier[None]  # [batch, q, k]

    def knock(scores: Tensor, hook) -> Tensor:
        return scores.masked_fill(blocked[:, None], float("-inf"))

    hooks = [(f"blocks.{l}.attn.hook_attn_scores", knock) for l in layers]
    logits = model.run_with_hooks(batch, fwd_hooks=hooks)
    probs = logits[batch.layout.mask("last")].float().softmax(-1)
    return probs[torch.arange(len(answers)), answers]
    # END

# %%
checks.test_knockout_prob(knockout_prob)

lay = clean.layout
option_mask = torch.zeros_like(lay.mask("text"))
option_mask[0, option_pos] = True
p0 = p_answer(clean)
for keys, queries, what in [("audio", "last", "audio -> answer position"), ("audio", "text", "audio -> text"),
                            ("audio", option_mask, f"audio -> the option token ({str_tokens[option_pos]!r})"),
                            (option_mask, "last", "option token -> answer position")]:
    km = lay.mask(keys) if isinstance(keys, str) else keys
    qm = lay.mask(queries) if isinstance(queries, str) else queries
    row = [float(knockout_prob(model, clean, answer, km, qm, [l])[0]) for l in range(model.cfg.n_layers)]
    print(f"{what:>38}: relative change per block " + "  ".join(f"{(p - p0) / p0 * 100:+7.1f}%" for p in row))

# %% [markdown]
# The route, edge by edge. Cutting audio -> answer position changes nothing in any block: the
# answer position never reads the audio directly. Cutting audio -> every text token in block 0
# destroys the answer; cutting it to the `dog` option token alone removes about half, and so does
# cutting option token -> answer position in block 1. The option word is the main reader, not the
# only one: the audio's evidence reaches the answer through a few text tokens, led by the target's
# own option.
#
# `patching.attention_knockout` does the same sweep, by default over windows of layers around each
# centre (9 layers, as in *Cross-modal Information Flow in MLLMs*; the toy has only 4, so use
# `window=1`), reporting the relative change `(p_new - p_base) / p_base x 100`:

# %%
for keys, queries in [("audio", "text"), ("video", "text"), ("text", "last")]:
    ko = patching.attention_knockout(model, clean, metric, keys, queries, window=1, progress=False)
    print(f"{keys:>5} -> {queries:<5}", ko.values.plain().numpy().round(2))
ko.plot()

# %% [markdown]
# ## Summary
#
# - Corruptions that keep the token layout (`zero_media`, `gaussian_noise`, `swap_media`) let a
#   clean state be written back where it belongs; group views make patching a whole modality one hook.
# - `activation_patch` computes any layer / group / position / head grid exactly, skipping cells
#   that cannot matter and recomputing only what a patch changes.
# - Patching, ROME tracing and knockout agree on the toy's route for an off-screen dog: the audio is
#   read in block 0 by question tokens, mainly the target's option word, and the answer position
#   reads them in block 1.
#
# **Next**: tutorial 3 asks whether *sink* tokens of one modality carry information about the other
# (the paper's cross-modal hubs), and runs the paper's Table 1 protocol on the toy.
