"""Decoding-time mitigation (METHODS.md section 7): each attention edit equals a brute-force
computation from the unsteered pattern, each contrast equals hand-computed logits, and the methods
run end to end on the toy benchmark through the published scorers."""

import math

import numpy as np
import pytest
import torch

from avlens.data import tasks
from avlens.data.halluc_bench import write_toy_benchmark
from avlens.mitigation import (VAR, AdaptiveGuidance, AVPrompt, Plain, SinkConfig, SinkSteering, boost_layers, decode,
                               guidance_band, guidance_target, redistribute_pattern, steering_sinks)
from avlens.mitigation.baselines import VCD, PAI, diffusion_noise, pai_contrast, toy_assessment, vcd_contrast

TOY_SINKS = SinkConfig("attention", eps=0.1, dims=[])


def test_layer_ranges_scale_with_depth():
    assert boost_layers(28) == list(range(6, 28)) and guidance_band(28) == list(range(18, 26))
    assert boost_layers(4) == [2, 3] and guidance_band(4) == [3]


def test_sink_boost_equals_brute_force_on_unsteered_scores(toy, prompt):
    batch = prompt.build(toy)
    steer = SinkSteering(alpha=0.2, sinks=TOY_SINKS)
    sinks = steering_sinks(toy, batch, TOY_SINKS)
    cross = sinks.positions("cross", 0)
    assert cross, "the toy clip must have cross-modal sinks for this test"
    lay = batch.layout
    media = (lay.mask("audio") | lay.mask("video"))[0]
    last_media = int(media.nonzero().max())
    names = [f"blocks.{l}.attn.hook_attn_scores" for l in range(toy.cfg.n_layers)]
    _, clean = toy.run_with_cache(batch, names_filter=names)
    # steer one layer at a time so that the reference scores are that layer's unsteered input
    for l in boost_layers(toy.cfg.n_layers):
        hooks = [h for h in steer.fwd_hooks(toy, batch, sinks) if h[0] == names[l]]
        got = {}
        toy.run_with_hooks(batch, fwd_hooks=hooks + [(names[l], lambda s, hook: got.setdefault("s", s.clone()))])
        ref = clean[names[l]].clone()
        for q in range(last_media + 1, batch.shape[1]):
            for k in cross:
                ref[0, :, q, k] = ref[0, :, q, k] + 0.2 * ref[0, :, q, k].abs()
        torch.testing.assert_close(got["s"], ref)
        assert not torch.equal(got["s"], clean[names[l]])


def test_sink_boost_in_decoding_hits_the_new_query_only(toy, prompt):
    batch = prompt.build(toy)
    steer = SinkSteering(alpha=0.5, sinks=TOY_SINKS)
    hooks = steer.fwd_hooks(toy, batch)
    plain = toy.generate(batch, max_new_tokens=4)
    steered = toy.generate(batch, max_new_tokens=4, fwd_hooks=hooks)
    assert not torch.allclose(plain.logits[:, 1:], steered.logits[:, 1:])  # decoding steps are steered
    assert not toy.hook_dict["blocks.3.attn.hook_attn_scores"].fwd_hooks  # nothing left registered
    out = decode(toy, prompt, steer, max_new_tokens=4)
    torch.testing.assert_close(out.scores, steered.logits[:, : out.scores.shape[1]])  # same as generate + hooks


def test_no_cross_modal_sink_is_an_error_not_a_no_op(toy, prompt):
    with pytest.raises(ValueError, match="no cross sinks"):
        SinkSteering(sinks=SinkConfig("attention", eps=0.99, dims=[])).fwd_hooks(toy, prompt.build(toy))


def test_var_redistribution_equals_brute_force_and_keeps_row_sums():
    g = torch.Generator().manual_seed(0)
    P = torch.softmax(torch.randn(2, 3, 4, 10, generator=g) * 2, -1)
    queries = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 1]], dtype=torch.bool)
    sinks = torch.zeros(2, 10, dtype=torch.bool)
    sinks[:, [0, 2, 6]] = True  # 0: a text sink, 2: a video sink, 6: an audio sink
    video = torch.zeros(2, 10, dtype=torch.bool)
    video[:, 1:5] = True
    audio = torch.zeros(2, 10, dtype=torch.bool)
    audio[:, 5:8] = True
    out = redistribute_pattern(P, queries, sinks, {"video": video, "audio": audio}, p=0.6, rho=0.5, min_media=0.2)
    ref = P.clone()
    edited = 0
    for b in range(2):
        for h in range(3):
            for q in range(4):
                row = P[b, h, q]
                recv = []
                for M in (video[b], audio[b]):
                    tot = sum(float(row[k]) for k in range(10) if M[k])
                    s = sum(float(row[k]) for k in range(10) if M[k] and sinks[b, k])
                    if queries[b, q] and tot >= 0.2 and s <= 0.5 * tot:
                        recv += [k for k in range(10) if M[k] and not sinks[b, k]]
                if not recv:
                    continue
                edited += 1
                freed = 0.4 * sum(float(row[k]) for k in range(10) if sinks[b, k])
                mass = sum(float(row[k]) for k in recv)
                new = row.clone()
                for k in range(10):
                    if sinks[b, k]:
                        new[k] = row[k] * 0.6
                for k in recv:
                    new[k] = row[k] + row[k] / mass * freed
                ref[b, h, q] = new
    assert 0 < edited < 24
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, 4))


def test_guidance_schedule_hand_computed():
    cross, uni, tm = torch.tensor([0.3, 0.1, 0.3]), torch.tensor([0.1, 0.3, 0.1]), torch.tensor([0.2, 0.2, 0.5])
    t = guidance_target(cross, uni, tm)
    # w = 0.75 -> 0.5 * 0.75 = 0.375 (no decay, w >= 0.6)
    # w = 0.25 -> 0.125 * (0.25 / 0.6)^2
    # w = 0.75, tm = 0.5 -> 0.375 * 0.5 (1 + cos(pi / 2)) = 0.1875
    torch.testing.assert_close(t, torch.tensor([0.375, 0.125 * (0.25 / 0.6) ** 2, 0.1875], dtype=torch.float64))
    g = guidance_target(cross, uni, tm, variant="gated")  # w = uni / (cross + uni)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.375, 0.0], dtype=torch.float64))


def test_adaptive_guidance_combines_the_two_branches_with_the_schedule(toy, prompt):
    ag = AdaptiveGuidance(SinkSteering(alpha=1.0, sinks=TOY_SINKS))
    out = decode(toy, prompt, ag, max_new_tokens=5)
    s = [float(x) for x in out.run.history]
    assert s[0] == 0.0 and out.n_branches == 2
    # momentum 0.5: s_t = 0.5 s_{t-1} + 0.5 target_t, target in [0, 0.6]
    assert all(0 <= b <= 0.5 * a + 0.3 + 1e-9 for a, b in zip(s, s[1:]))
    # step 0 has strength 0: the output is the original model's log-probs
    plain = toy.generate(prompt.build(toy), max_new_tokens=1)
    torch.testing.assert_close(out.scores[:, 0], torch.log_softmax(plain.logits[:, 0].float(), -1))


def test_contrasts_equal_hand_computed_logits():
    z = torch.tensor([[2.0, 1.0, -3.0]])
    zn = torch.tensor([[1.0, 2.0, 0.0]])
    # VCD: 2 z - zn = [3, 0, -6]; cutoff log(0.1) + 2 = -0.303: token 2 (z=-3) dropped
    torch.testing.assert_close(vcd_contrast(z, zn), torch.tensor([[3.0, 0.0, float("-inf")]]))
    lp, lu = torch.log_softmax(z, -1), torch.log_softmax(zn, -1)
    ref = 1.1 * (lp - lu) + lu
    ref[0, 2] = float("-inf")
    torch.testing.assert_close(pai_contrast(z, zn), ref)


def test_diffusion_noise_matches_vcd_schedule():
    betas = [1 / (1 + math.exp(-(-6 + 12 * i / 999))) * (0.5e-2 - 1e-5) + 1e-5 for i in range(1000)]
    abar = math.prod(1 - b for b in betas[:501])
    x = torch.ones(20000)
    y = diffusion_noise(x, 500, generator=torch.Generator().manual_seed(0))
    assert abs(float(y.mean()) - math.sqrt(abar)) < 0.02 and abs(float(y.std()) - math.sqrt(1 - abar)) < 0.02


def test_methods_run_on_the_toy_benchmark(toy, tmp_path):
    from avlens.mitigation.compare import compare_methods

    write_toy_benchmark(str(tmp_path), n_clips=2, seed=7)
    from avlens.mitigation.baselines import AVCD, MAD

    methods = {"plain": Plain(), "sink_steering": SinkSteering(sinks=TOY_SINKS), "var": VAR(sinks=TOY_SINKS), "pai": PAI(), "vcd": VCD(),
               "avcd": AVCD(), "mad": MAD(assessment=toy_assessment)}
    res = compare_methods(toy, str(tmp_path), methods, n_boot=50)
    t = res.table.set_index("method")
    assert list(t.index) == list(methods) and (t["n_yes_no"] > 0).all() and (t["n_captions"] == 2).all()
    assert t.loc["plain", "latency_ratio"] == 1.0 and (t["accuracy"] >= 0).all()
    assert all(len(p) == len(res.predictions["plain"]) for p in res.predictions.values())


def test_hallucination_command_writes_the_table(tmp_path, capsys):
    from avlens.cli import main

    assert main(["hallucination", "--out", str(tmp_path), "--n-clips", "1", "--methods", "plain,vcd"]) == 0
    for f in ("table.csv", "table.json", "table.md", "predictions_plain.jsonl", "predictions_vcd.jsonl", "bench/avhbench.json",
              "bench/captions.json", "bench/clips.json"):
        assert (tmp_path / f).exists(), f
    assert "| vcd |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown methods"):
        main(["hallucination", "--out", str(tmp_path), "--n-clips", "1", "--methods", "nope"])


# --- AVCD -------------------------------------------------------------------------------------

def test_avcd_combination_cutoff_and_entropy_gate_hand_computed():
    from avlens.mitigation.baselines import avcd_contrast

    z = torch.tensor([[3.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    z1 = torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    z2 = torch.tensor([[0.5, 0.0, 1.0], [0.0, 1.0, 0.0]])
    z3 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    out = avcd_contrast(z, z1, z2, z3)
    # sample 0: 3 z - z1 + z2 + z3 = [9 - 1 + 0.5, 6 - 2 + 1, 0] = [8.5, 5, 0];
    # entropy of softmax([3, 2, 0]) = 0.83 >= 0.6 -> contrast; cutoff 3 + log 0.2 = 1.39: token 2 dropped
    assert out[0, 0] == 8.5 and out[0, 1] == 5.0 and out[0, 2] == float("-inf")
    # sample 1: uniform, entropy log 3 = 1.10 -> contrast, nothing below the cutoff: [-1, 1, 2]
    torch.testing.assert_close(out[1], torch.tensor([-1.0, 1.0, 2.0]))
    # a confident sample (entropy < 0.6) gets its plain logits
    zc = torch.tensor([[6.0, 0.0, 0.0]])
    p = [math.exp(6) / (math.exp(6) + 2), 1 / (math.exp(6) + 2), 1 / (math.exp(6) + 2)]
    assert -sum(x * math.log(x) for x in p) < 0.6
    torch.testing.assert_close(avcd_contrast(zc, z1[:1], z2[:1], z3[:1]), zc)
    # raising the threshold above log 3 gates the uniform sample too; the official fill value
    torch.testing.assert_close(avcd_contrast(z, z1, z2, z3, entropy_threshold=1.2)[1], z[1])
    assert avcd_contrast(z, z1, z2, z3, fill=-1e-4)[0, 2] == -1e-4
    # alpha = 1: 4 z - 2 z1 + z2 + z3 on sample 0, token 0: 12 - 2 + 0.5 + 0 = 10.5
    assert avcd_contrast(z, z1, z2, z3, alpha=1.0)[0, 0] == 10.5


def test_avcd_masks_the_most_attended_tokens_of_the_other_modalities(toy, prompt):
    """The official selection (kaistmm/AVCD qwen.py), recomputed with loops: from the original
    run's cached patterns, layers 0..L-2, dominance = layer mean of head-mean attention per token of
    each modality (text = every position after the media), threshold = head mean of the median over
    keys of the layer-mean attention; then each perturbed branch, re-run with its own hooks and a
    hook that records its scores before the edit, masks in layer l, head h the plan's tokens whose
    last-query attention in that (already masked) forward exceeds the threshold."""
    import statistics

    from avlens.mitigation.baselines import AVCD

    batch = prompt.build(toy)
    L, H = toy.cfg.n_layers, toy.cfg.n_heads
    layers = list(range(L - 1))
    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    _, cache = toy.run_with_cache(batch, names_filter=names)
    n = batch.shape[1]
    A = [[[float(cache[nm][0, h, -1, k]) for k in range(n)] for h in range(H)] for nm in names]  # [l][h][k]
    lay = batch.layout
    labels = lay.labels(0)
    last_media = max(k for k in range(n) if labels[k] in ("audio", "video"))
    pos = {"text": [k for k in range(n) if k > last_media and labels[k] != "pad"],
           "video": [k for k in range(n) if labels[k] == "video"], "audio": [k for k in range(n) if labels[k] == "audio"]}
    dom_score = {m: sum(sum(sum(A[l][h][k] for h in range(H)) / H for k in p) / len(p) for l in range(len(layers))) / len(layers)
                 for m, p in pos.items()}
    dom = max(dom_score, key=dom_score.get)
    thr = sum(statistics.median([sum(A[l][h][k] for l in range(len(layers))) / len(layers) for k in range(n)])
              for h in range(H)) / H
    out = decode(toy, prompt, AVCD(), max_new_tokens=3)
    run = out.run
    assert run.dominant == [dom] and out.n_branches == 4
    assert abs(float(run.threshold[0]) - thr) < 1e-6
    plan = {"text": (("video", "audio"), ("audio",), ("video",)), "video": (("text", "audio"), ("audio",), ("text",)),
            "audio": (("text", "video"), ("video",), ("text",))}[dom]
    n_masked = 0
    for i, mods in enumerate(plan):
        assert sorted(run.key_masks[i]) == layers  # the last layer is never masked
        # the branch's own forward: record each layer's scores before its edit (a hook added first)
        seen = {}

        def recorder(l):
            def hook(x, hook):
                seen[l] = x[0, :, -1].clone()  # [head, key], before the branch's edit
            return hook

        rec = [(f"blocks.{l}.attn.hook_attn_scores", recorder(l)) for l in layers]
        toy.run_with_hooks(batch, fwd_hooks=rec + list(run.branches[i + 1].hooks))
        for l in layers:
            for h in range(H):
                e = [math.exp(float(v)) for v in seen[l][h] - seen[l][h].max()]
                own = [x / sum(e) for x in e]
                want = {k for m in mods for k in pos[m] if own[k] > thr}
                got = set(run.key_masks[i][l][0, h].nonzero().flatten().tolist())
                assert got == want, (i, l, h)
                n_masked += len(want)
    assert n_masked > 0  # the rule selected something on this clip
    assert not toy.hook_dict["blocks.1.attn.hook_attn_scores"].fwd_hooks  # nothing left registered


def test_avcd_branch_mask_blocks_attention_to_the_chosen_keys(toy, prompt):
    from avlens.mitigation.baselines import AVCD

    out = decode(toy, prompt, AVCD(), max_new_tokens=1)
    run = out.run
    km = run.key_masks[0][1][0]  # layer 1, sample 0: [head, key]
    assert bool(km.any())
    batch = prompt.build(toy)
    got = {}
    hooks = [h for h in run.branches[1].hooks if h[0] == "blocks.1.attn.hook_attn_scores"]
    toy.run_with_hooks(batch, fwd_hooks=hooks + [("blocks.1.attn.hook_pattern", lambda p, hook: got.setdefault("p", p.clone()))])
    P = got["p"][0]
    for h, k in km.nonzero().tolist():
        assert float(P[h, k + 1:, k].detach().abs().max()) == 0.0  # no later query of that head reads a masked key
    unmasked = (~km).nonzero().tolist()
    assert any(float(P[h, k + 1:, k].detach().abs().max()) > 0 for h, k in unmasked if k + 1 < P.shape[1])
    # the step's scores are AVCD's contrast of the four branches' logits (recomputed by hand from separate runs)
    logits = [toy.run_with_hooks(batch, fwd_hooks=list(br.hooks))[:, -1].float() for br in run.branches[1:]]
    z = toy.forward(batch)[:, -1].float()
    ent = float(-(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum().detach())
    if ent < 0.6:
        ref = z
    else:
        ref = 3 * z - logits[0] + logits[1] + logits[2]
        ref = ref.masked_fill(z < z.max() + math.log(0.2), float("-inf"))
    torch.testing.assert_close(out.scores[:, 0], ref, rtol=1e-4, atol=1e-4)


# --- MAD --------------------------------------------------------------------------------------

def test_mad_weights_and_combination_hand_computed():
    from avlens.mitigation.baselines import mad_contrast, mad_weights

    w = mad_weights(torch.tensor([0.2]), torch.tensor([0.3]), torch.tensor([0.5]), gamma=0.5)
    # [2 + 0.5, 1 - 0.5 (0.5 - 0.3), 1 - 0.5 (0.5 - 0.2), -0.5 (0.3 + 0.2)] = [2.5, 0.9, 0.85, -0.25]
    torch.testing.assert_close(w, torch.tensor([[2.5, 0.9, 0.85, -0.25]]))
    zs = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 8.0]])]
    # token 0: 2.5 + 0 + 3.4 + 0 = 5.9; token 1: 0 + 1.8 + 0 - 2 = -0.2
    torch.testing.assert_close(mad_contrast(zs, w), torch.tensor([[5.9, -0.2]]))


def test_mad_self_assessment_is_a_softmax_of_the_models_word_logits(toy, prompt):
    from avlens.data import tasks
    from avlens.mitigation.baselines import MAD

    ids = [toy.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("audio", "video", "both")]
    q = AVPrompt(tasks.prompt_text(tasks.Example("modality", tasks.MODALITY_QUESTION, "", None)), audio=prompt.audio,
                 video=prompt.video, fps=prompt.fps)
    z = toy.forward(q.build(toy))[0, -1].double()
    e = [math.exp(float(z[i]) - float(z[ids].max())) for i in ids]
    p_a, p_v, p_b = (x / sum(e) for x in e)
    out = decode(toy, prompt, MAD(assessment=toy_assessment), max_new_tokens=2)
    torch.testing.assert_close(out.run.probs[0].double(), torch.tensor([p_a, p_v, p_b], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    w = [2 + p_b, 1 - 0.5 * (p_b - p_v), 1 - 0.5 * (p_b - p_a), -0.5 * (p_v + p_a)]
    torch.testing.assert_close(out.run.weights[0].double(), torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    # the first step's scores are the weighted sum of the four branches' logits, recomputed here
    clip_a = prompt.build(toy, audio=np.zeros_like(prompt.audio))
    clip_v = prompt.build(toy, video=np.zeros_like(prompt.video))
    clip_t = prompt.build(toy, audio=np.zeros_like(prompt.audio), video=np.zeros_like(prompt.video))
    zs = [toy.forward(b)[0, -1].double() for b in (prompt.build(toy), clip_a, clip_v, clip_t)]
    ref = sum(wi * zi for wi, zi in zip(w, zs))
    torch.testing.assert_close(out.scores[0, 0].double(), ref, rtol=1e-4, atol=1e-3)
    assert out.n_branches == 4


def test_mad_without_the_words_is_not_applicable(toy, prompt, tmp_path):
    from avlens.mitigation import NotApplicable
    from avlens.mitigation.baselines import MAD
    from avlens.mitigation.compare import compare_methods

    with pytest.raises(NotApplicable, match="not applicable.*'zebra'"):
        decode(toy, prompt, MAD(words=("audio", "zebra", "both")), max_new_tokens=1)
    write_toy_benchmark(str(tmp_path), n_clips=1, seed=7)
    res = compare_methods(toy, str(tmp_path), {"plain": Plain(), "mad": MAD(words=("audio", "zebra", "both"))}, n_boot=20)
    t = res.table.set_index("method")
    assert "not applicable" in t.loc["mad", "not_applicable"] and t.loc["plain", "not_applicable"] == ""
    assert math.isnan(t.loc["mad", "accuracy"]) and "| mad | n/a |" in res.markdown()


def test_stacked_branches_decode_like_one_forward_per_branch(toy, prompt):
    """Branches decoded as one stacked batch (equal lengths; PAI's shorter media-free branch padded on
    the left) give the tokens and scores of one forward per branch, for every method."""
    from avlens.mitigation import default_methods

    for name, method in default_methods(toy=True).items():
        a = decode(toy, prompt, method, max_new_tokens=8, stack_branches=True)
        b = decode(toy, prompt, method, max_new_tokens=8, stack_branches=False)
        assert a.n_steps == b.n_steps == 7, name
        assert torch.equal(a.tokens, b.tokens), name
        torch.testing.assert_close(a.scores, b.scores, atol=2e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_stack_groups_pad_only_hook_free_branches():
    from types import SimpleNamespace

    from avlens.mitigation.decoding import _stack_groups

    def br(n, hooks=False, ndim=3):
        return SimpleNamespace(batch=SimpleNamespace(shape=(1, n), position_ids=torch.zeros((3, 1, n) if ndim == 3 else (1, n))),
                               hooks=[("h", None)] if hooks else [])

    # PAI: hooked full prompt + shorter hook-free media-free prompt -> one stack
    assert _stack_groups([br(40, True), br(12)], True) == [[0, 1]]
    # a hooked branch of another length never joins (its hooks index keys by position)
    assert _stack_groups([br(40, True), br(12, True), br(30)], True) == [[0, 2], [1]]
    # a hook-free branch longer than the hooked stack stays apart; no hooks: everything pads to the longest
    assert _stack_groups([br(20, True), br(30)], True) == [[0], [1]]
    assert _stack_groups([br(20), br(30), br(5)], True) == [[0, 1, 2]]
    # different position-id layouts never mix; stacking off: one branch per forward
    assert _stack_groups([br(20), br(20, ndim=2)], True) == [[0], [1]]
    assert _stack_groups([br(20), br(20)], False) == [[0], [1]]


def test_var_on_generated_keys_equals_full_length_masks():
    """Decoding steps use masks of the prompt's length (generated keys are neither media nor sinks):
    equal to the redistribution with masks padded to every key."""
    from avlens.mitigation.steering import _redistribute, _VarMasks

    g = torch.Generator().manual_seed(0)
    b, h, n, extra = 2, 3, 12, 5
    P = torch.softmax(torch.randn(b, h, 1, n + extra, generator=g) * 3, -1)
    sinks = torch.zeros(b, n, dtype=torch.bool)
    sinks[:, [0, 4]] = True
    video = torch.zeros(b, n, dtype=torch.bool)
    video[:, 2:7] = True
    audio = torch.zeros(b, n, dtype=torch.bool)
    audio[:, 7:10] = True
    q = torch.ones(b, 1, dtype=torch.bool)
    pad = lambda m: torch.cat([m, torch.zeros(b, extra, dtype=torch.bool)], 1)  # noqa: E731
    ref = redistribute_pattern(P, q, pad(sinks), {"video": pad(video), "audio": pad(audio)}, 0.6, 0.5, 0.05)
    got = _redistribute(P, q, _VarMasks(sinks, {"video": video, "audio": audio}, 0.6, P.device), 0.6, 0.5, 0.05)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(ref, P)  # the edit did something
    torch.testing.assert_close(got.sum(-1), P.sum(-1))


def test_batch_layout_cat_stacks_samples():
    from avlens.layout import BatchLayout

    a = BatchLayout.text_only(torch.tensor([[1, 1, 1]]))
    b = BatchLayout.text_only(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    c = BatchLayout.cat([a, b])
    assert c.batch_size == 3 and torch.equal(c.mask("pad"), torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 0]]).bool())
    with pytest.raises(ValueError, match="one length"):
        BatchLayout.cat([a, BatchLayout.text_only(torch.ones(1, 4))])


def test_adaptive_guidance_metrics_equal_the_official_definitions_by_brute_force(toy, prompt):
    """Step 0's cross / uni / text mass recomputed with loops from the cached prefill patterns, as
    the official `_calculate_adaptive_metrics`: per band layer, cross = mean over heads and sinks on
    the audio cross-modal sinks + the same on the video ones (uni likewise), text mass = head-mean
    attention on the positions after the last media token; then averaged over the band's layers.
    The strengths follow the schedule with momentum 0.5 from those metrics."""
    ag = AdaptiveGuidance(SinkSteering(sinks=TOY_SINKS), warmup_steps=0)
    batch = prompt.build(toy)
    sinks = steering_sinks(toy, batch, TOY_SINKS)
    assert sinks.cross["audio"][0] or sinks.cross["video"][0]
    band = guidance_band(toy.cfg.n_layers)
    names = [f"blocks.{l}.attn.hook_pattern" for l in band]
    _, cache = toy.run_with_cache(batch, names_filter=names)
    H, n = toy.cfg.n_heads, batch.shape[1]
    labels = batch.layout.labels(0)
    text_start = max(k for k in range(n) if labels[k] in ("audio", "video")) + 1

    def mean_over(nm, idx):
        if not idx:
            return 0.0
        return sum(float(cache[nm][0, h, -1, k]) for h in range(H) for k in idx) / (H * len(idx))

    cross = sum(mean_over(nm, sinks.cross["audio"][0]) + mean_over(nm, sinks.cross["video"][0]) for nm in names) / len(names)
    uni = sum(mean_over(nm, sinks.unimodal["audio"][0]) + mean_over(nm, sinks.unimodal["video"][0]) for nm in names) / len(names)
    tm = sum(sum(float(cache[nm][0, h, -1, k]) for h in range(H) for k in range(text_start, n)) / H for nm in names) / len(names)
    out = decode(toy, prompt, ag, max_new_tokens=4)
    run = out.run
    c0, u0, t0 = (float(x[0]) for x in run.metrics[0])
    assert abs(c0 - cross) < 1e-6 and abs(u0 - uni) < 1e-6 and abs(t0 - tm) < 1e-6
    # the schedule, by hand: w = cross / (cross + uni), target = min(0.6, 0.5 w), cosine decay above
    # text mass 0.4 over 0.2, (w / 0.6)^2 below 0.6; s_t = 0.5 s_{t-1} + 0.5 target_t
    prev = 0.0
    for t, (c, u, m) in enumerate(run.metrics):
        c, u, m = float(c[0]), float(u[0]), float(m[0])
        w = c / (c + u)
        target = min(0.6, 0.5 * w)
        if m > 0.4:
            target *= 0.5 * (1 + math.cos(math.pi * min(1.0, (m - 0.4) / 0.2)))
        if w < 0.6:
            target *= (w / 0.6) ** 2
        prev = 0.5 * prev + 0.5 * target
        assert abs(float(run.history[t][0]) - prev) < 1e-9, t
    assert len(run.metrics) == 4 and float(run.history[-1][0]) > 0


def test_generate_with_a_method_equals_decode_and_composes_with_hooks(toy, prompt):
    from avlens.mitigation.baselines import VCD

    steer = SinkSteering(sinks=TOY_SINKS)
    for method in (steer, VCD()):
        ref = decode(toy, prompt, method, max_new_tokens=4)
        out = toy.generate(prompt, max_new_tokens=4, method=method)
        assert torch.equal(out.tokens, ref.tokens)
        torch.testing.assert_close(out.logits, ref.scores)
        assert out.method_output.n_branches == ref.n_branches
        assert out.sequences.shape[1] == prompt.build(toy).shape[1] + out.tokens.shape[1]
    # extra hooks fire on every branch of the prompt's shape, each on its own rows, not in the setup;
    # nothing stays registered
    calls = []
    toy.generate(prompt, max_new_tokens=3, method=VCD(),
                 fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(x.shape[0]))])
    assert calls == [1] * (2 + 2 * 2)  # each of the 2 branches: its prefill, then its rows of 2 stacked steps
    calls.clear()
    steered = toy.generate(prompt, max_new_tokens=2, method=SinkSteering(sinks=TOY_SINKS),
                           fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(x.shape[1]))])
    assert calls == [prompt.build(toy).shape[1], 1]  # the sink detection's forwards are not hooked
    # a per-sample hook built for the prompt composes with a multi-branch method
    batch = prompt.build(toy)
    with_boost = toy.generate(prompt, max_new_tokens=2, method=VCD(), fwd_hooks=steer.fwd_hooks(toy, batch))
    assert with_boost.tokens.shape == (1, 2) and steered.tokens.shape == (1, 2)
    assert not any(hp.fwd_hooks for hp in toy.hook_dict.values())
    with pytest.raises(ValueError, match="greedily"):
        toy.generate(prompt, max_new_tokens=2, method=steer, do_sample=True)


def test_methods_run_on_a_random_qwen2_5_omni_thinker():
    """Not only the toy: every method on a tiny random Qwen2.5-Omni thinker with real processor
    outputs (the test fixtures' tokenizer and media); stacked branches equal one forward per branch,
    MAD is not applicable (the vocabulary lacks its words), nothing stays registered."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import hf_reference as R
    from fixtures import make_media_fixtures as F

    import avlens
    from avlens.mitigation import NotApplicable
    from avlens.mitigation.baselines import AVCD, MAD, PAI, VCD

    torch.manual_seed(0)
    v = dict(R.get_variant("gqa2_hd16"))
    v["num_hidden_layers"] = 6
    model = avlens.HookedAVTransformer.from_hf(R.make_hf_thinker(v, attn="eager"))
    model.tokenizer = F.tiny_omni_tokenizer()
    raw = F.media()
    text = "<|im_start|> user <|vision_bos|><|VIDEO|><|vision_eos|> what is making the sound ? <|im_end|> <|im_start|> assistant"
    p = AVPrompt(text, audio=raw["omni_audio0"], video=raw["omni_video0"], fps=2.0, kwargs=dict(video_kwargs=F.OMNI_VIDEO))
    loose = SinkConfig("attention", eps=0.05, dims=[])
    methods = {"steer": SinkSteering(sinks=loose), "guidance": AdaptiveGuidance(SinkSteering(sinks=loose), warmup_steps=0),
               "var": VAR(sinks=loose), "pai": PAI(), "vcd": VCD(), "avcd": AVCD()}
    plain = decode(model, p, Plain(), max_new_tokens=4)
    for name, m in methods.items():
        a = decode(model, p, m, max_new_tokens=4)
        b = decode(model, p, m, max_new_tokens=4, stack_branches=False)
        assert torch.equal(a.tokens, b.tokens), name
        torch.testing.assert_close(a.scores, b.scores, atol=2e-5, rtol=1e-5)
        assert not torch.allclose(a.scores.float(), plain.scores.float()), f"{name} changed nothing"
    with pytest.raises(NotApplicable):
        decode(model, p, MAD(), max_new_tokens=2)
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_var_that_edits_nothing_is_an_error_not_a_no_op(toy, prompt):
    from avlens.mitigation import NothingToSteer

    with pytest.raises(NothingToSteer, match="edited no attention row"):
        decode(toy, prompt, VAR(min_media=1.0, sinks=TOY_SINKS), max_new_tokens=3)  # no row gives all its mass to one modality
    text_only = AVPrompt(prompt.text.split("<|vision_bos|>")[0] + " what is it ?")
    with pytest.raises(NothingToSteer):
        decode(toy, text_only, VAR(sinks=TOY_SINKS), max_new_tokens=2)
    with pytest.raises(ValueError, match="default is 0.6"):
        VAR(p=1.5)
    assert not any(hp.fwd_hooks for hp in toy.hook_dict.values())
    out = decode(toy, prompt, VAR(sinks=TOY_SINKS), max_new_tokens=3)  # the default edits rows on this clip
    assert int(sum(int(x) for x in out.run.edited)) > 0


def test_steering_and_guidance_reject_bad_arguments_with_the_published_defaults():
    for bad, match in ((dict(alpha=-0.1), "paper's is 0.2"), (dict(after=30), "layers > 5 of 28"), (dict(target="x"), "cross")):
        with pytest.raises(ValueError, match=match):
            SinkSteering(**bad)
    for bad, match in ((dict(momentum=2), "official value is 0.5"), (dict(band=(26, 18, 28)), r"\(18, 25, 28\)"),
                       (dict(cap=-1), "0.6"), (dict(warmup_steps=-1), "official: 1"), (dict(variant="x"), "gated")):
        with pytest.raises(ValueError, match=match):
            AdaptiveGuidance(**bad)


def test_boost_scores_leaves_masked_cells_masked_for_any_alpha():
    from avlens.mitigation import boost_scores

    mn = torch.finfo(torch.float32).min
    s = torch.tensor([[[[1.0, -2.0, mn]]]])
    q, k = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    for alpha in (0.2, 1.0, 2.0, 10.0):
        out = boost_scores(s, q, k, alpha)
        assert out[0, 0, 0, 0] == 1 + alpha and out[0, 0, 0, 1] == -2 + 2 * alpha and out[0, 0, 0, 2] == mn
        assert torch.isfinite(out).all()


def _var_by_loops(P, queries, sinks, media, p=0.6, rho=0.5, min_media=0.2):
    """VAR's row edit written out with Python loops (one sample, [h, q, k])."""
    ref = P.clone()
    H, Q, K = P.shape
    for h in range(H):
        for q in range(Q):
            row = [float(x) for x in P[h, q]]
            recv = []
            for M in media:
                tot = sum(row[k] for k in range(K) if M[k])
                s = sum(row[k] for k in range(K) if M[k] and sinks[k])
                if queries[q] and tot >= min_media and s <= rho * tot:
                    recv += [k for k in range(K) if M[k] and not sinks[k]]
            mass = sum(row[k] for k in recv)
            if not recv or mass <= 0:
                continue
            freed = (1 - p) * sum(row[k] for k in range(K) if sinks[k])
            for k in range(K):
                if sinks[k]:
                    ref[h, q, k] = row[k] * p
            for k in recv:
                ref[h, q, k] = row[k] + row[k] / mass * freed
    return ref


def test_var_hooks_on_the_toy_equal_loops_over_the_cached_unsteered_pattern(toy, prompt):
    """The real hook path: each layer's own sinks, every layer but the last, queries after the media;
    one layer hooked at a time so the reference is that layer's cached unsteered pattern."""
    from avlens.analysis import find_sinks

    var = VAR(sinks=TOY_SINKS)
    batch = prompt.build(toy)
    L, n = toy.cfg.n_layers, batch.shape[1]
    rep = find_sinks(toy, batch, dims=[], eps=0.1)
    per_layer = rep.per_layer(0, "attention")
    labels = batch.layout.labels(0)
    last_media = max(k for k in range(n) if labels[k] in ("audio", "video"))
    queries = [q > last_media for q in range(n)]
    media = [[labels[k] == m for k in range(n)] for m in ("audio", "video")]
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    _, clean = toy.run_with_cache(batch, names_filter=names)
    hooks = dict(var.fwd_hooks(toy, batch))
    assert names[L - 1] not in hooks  # the last layer is left alone
    checked = 0
    for l in range(L - 1):
        if not per_layer[l]:
            assert names[l] not in hooks
            continue
        got = {}
        toy.run_with_hooks(batch, fwd_hooks=[(names[l], hooks[names[l]]),
                                             (names[l], lambda x, hook: got.setdefault("p", x.clone()))])
        sinks = [k in set(per_layer[l]) for k in range(n)]
        ref = _var_by_loops(clean[names[l]][0].double(), queries, sinks, media)
        torch.testing.assert_close(got["p"][0].double(), ref, rtol=1e-5, atol=1e-6)
        checked += int(not torch.allclose(ref, clean[names[l]][0].double()))
    assert checked > 0


def test_avcd_threshold_leaves_padding_keys_out():
    """Median over the real keys only (a left-padded sample's pad keys would pull it down)."""
    from avlens.mitigation.baselines import avcd_selection

    attn = torch.tensor([[[[0.0, 0.0, 0.1, 0.2, 0.7]]]])  # [layer 1, b 1, head 1, k 5]; keys 0-1 are padding
    groups = {m: torch.tensor([[False, False, m == "text", m == "video", m == "audio"]]) for m in ("text", "video", "audio")}
    valid = torch.tensor([[False, False, True, True, True]])
    dom, thr = avcd_selection(attn, groups, 0.5, valid)
    assert dom == ["audio"] and abs(float(thr[0]) - 0.2) < 1e-7  # median of (0.1, 0.2, 0.7)
    _, thr_all = avcd_selection(attn, groups, 0.5)
    assert abs(float(thr_all[0]) - 0.1) < 1e-7  # with the pads: median of (0, 0, 0.1, 0.2, 0.7)
