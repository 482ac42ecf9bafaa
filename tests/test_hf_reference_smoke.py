"""Smoke tests of the tiny HF Qwen2.5-Omni reference helpers in tests/hf_reference.py.

They check that the tiny models build and run for every variant and input kind, that the
inputs are laid out the way HF's processor and ``get_rope_index`` expect (so the metadata can
be trusted by other tests), that padded batches agree with their unpadded samples, and that a
tiny full Omni checkpoint saves in shards and reloads as a thinker.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import hf_reference as R  # noqa: E402

VARIANT_NAMES = [v["name"] for v in R.TINY_VARIANTS]
CASES = [(v, k, b) for v in VARIANT_NAMES for k in R.KINDS for b in (1, 2)]


@functools.lru_cache(maxsize=None)
def _model(name: str):
    return R.make_hf_thinker(name)


def _check_layout(model, inputs, meta):
    ids = R.token_ids(model.config)
    input_ids = inputs["input_ids"]
    B, L = input_ids.shape
    assert meta["seq_len"] == L and meta["batch"] == B
    for i, s in enumerate(meta["samples"]):
        row = input_ids[i].tolist()
        mask = inputs["attention_mask"][i].tolist()
        types = s["token_types"]
        assert len(types) == L
        # segments cover the row in order
        cols = [c for _, a, b in s["segments"] for c in range(a, b)]
        assert cols == list(range(L))
        for name, a, b in s["segments"]:
            assert all(types[c] == name for c in range(a, b))
        for c, ty in enumerate(types):
            assert mask[c] == (0 if ty == "pad" else 1)
            if ty == "pad":
                assert row[c] == ids.pad
            elif ty == "text":
                assert 0 <= row[c] < ids.n_text
            else:
                assert row[c] == getattr(ids, ty), (c, ty)
        if meta["padding_side"] == "left":
            assert s["pad"] == list(range(s["offset"]))
        n_real = sum(mask)
        assert n_real == s["length"]
        for a in s["audio"]:
            assert a["n_tokens"] == len(a["positions"]) == R.audio_token_count(a["n_frames"])
            assert all(types[c] == "audio" for c in a["positions"])
        for key in ("video", "image"):
            for it in s[key]:
                assert it["n_tokens"] == len(it["positions"]) == int(np.prod(it["grid_thw"])) // 4
                assert all(types[c] == key for c in it["positions"])
        # all placeholder columns belong to exactly one item
        for key in ("audio", "video", "image"):
            owned = sorted(c for it in s[key] for c in it["positions"])
            assert owned == [c for c, ty in enumerate(types) if ty == key]


def _check_positions(model, inputs, meta, pos):
    """HF's 3-D positions agree with the layout the metadata describes."""
    merge = model.config.vision_config.spatial_merge_size
    pps = model.config.position_id_per_seconds
    for i, s in enumerate(meta["samples"]):
        p = pos[:, i, :]  # [3, L]
        for c in s["pad"]:
            assert p[:, c].tolist() == [1, 1, 1], "HF gives padded slots position 1"
        for c in s["text"] + [c for v in s["special"].values() for c in v]:
            assert p[0, c] == p[1, c] == p[2, c]
        first = s["offset"]
        assert p[:, first].tolist() == [0, 0, 0]
        for a in s["audio"]:
            cols = a["positions"]
            if a["in_video"] is None:
                start = p[0, cols[0] - 1].item() + 1  # <|audio_bos|> precedes
            else:
                vstart = s["special"]["vision_start"]
                vb = max(c for c in vstart if c < cols[0])
                assert types_at(s, vb + 1) == "audio_start"
                assert p[:, vb].tolist() == p[:, vb + 1].tolist(), "both bos share one id"
                start = p[0, vb].item() + 1
            expect = torch.arange(len(cols)) + start
            for ax in range(3):
                assert torch.equal(p[ax, cols], expect)
        for key in ("video", "image"):
            for it in s[key]:
                cols = it["positions"]
                t, h, w = it["grid_thw"]
                hh, ww = h // merge, w // merge
                if key == "video" and it["audio_index"] is not None:
                    vb = max(c for c in s["special"]["vision_start"] if c < cols[0])
                    start = p[0, vb].item() + 1
                else:
                    start = p[0, cols[0] - 1].item() + 1
                spg = it.get("second_per_grid", 1.0) if key == "video" else 1.0
                k = np.arange(len(cols))
                g, r, cc = k // (hh * ww), (k // ww) % hh, k % ww
                if key == "video":  # HF: (arange(t) * float32(spg) * pps).long()
                    tt = (torch.from_numpy(g) * torch.tensor(spg, dtype=torch.float32) * pps).long()
                    tt = (start + tt).tolist()
                else:  # images: t index 0
                    tt = [start] * len(cols)
                assert p[0, cols].tolist() == tt, (key, it)
                assert p[1, cols].tolist() == (start + r).tolist()
                assert p[2, cols].tolist() == (start + cc).tolist()


def types_at(s, c):
    return s["token_types"][c]


@pytest.mark.parametrize("name,kind,batch", CASES)
def test_forward_layout_positions(name, kind, batch):
    model = _model(name)
    inputs, meta = R.make_inputs_and_meta(model.config, kind, batch=batch, seed=batch)
    logits = R.run_hf(model, inputs)
    V = model.config.get_text_config().vocab_size
    assert logits.shape == (batch, meta["seq_len"], V)
    assert torch.isfinite(logits).all()
    assert model.model.rope_deltas is None  # run_hf resets it
    pos, deltas = R.hf_rope_index(model, inputs)
    assert pos.shape == (3, batch, meta["seq_len"]) and deltas.shape == (batch, 1)
    _check_layout(model, inputs, meta)
    _check_positions(model, inputs, meta, pos)
    # audio encoder yields exactly one feature per <|AUDIO|> (HF does not check this itself)
    if "input_features" in inputs:
        with torch.no_grad():
            feats = model.model.get_audio_features(
                inputs["input_features"], inputs["feature_attention_mask"]
            ).last_hidden_state
        assert feats.shape[0] == int((inputs["input_ids"] == model.config.audio_token_id).sum())
    # deltas: max position + 1 - number of real tokens
    for i, s in enumerate(meta["samples"]):
        real = pos[:, i, s["offset"]:s["offset"] + s["length"]]
        assert deltas[i, 0].item() == real.max().item() + 1 - s["length"]


@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_batch_matches_unbatched(kind, padding_side):
    model = _model(VARIANT_NAMES[0])
    inputs, meta = R.make_inputs_and_meta(model.config, kind, batch=2, padding_side=padding_side)
    lengths = [s["length"] for s in meta["samples"]]
    assert len(set(lengths)) == 2, "samples of different lengths"
    logits = R.run_hf(model, inputs)
    pos, _ = R.hf_rope_index(model, inputs)
    for i, (sub, sub_meta) in enumerate(R.unbatch(inputs, meta)):
        s = meta["samples"][i]
        sl = slice(s["offset"], s["offset"] + s["length"])
        _check_layout(model, sub, sub_meta)
        single = R.run_hf(model, sub)
        torch.testing.assert_close(logits[i, sl], single[0], atol=1e-4, rtol=1e-4)
        pos1, _ = R.hf_rope_index(model, sub)
        assert torch.equal(pos[:, i, sl], pos1[:, 0])


def test_audio_in_video_chunk_layout():
    """Documents HF's audio-in-video interleaving and its eos position."""
    model = _model(VARIANT_NAMES[0])
    inputs, meta = R.make_inputs_and_meta(model.config, "audio_in_video", batch=2)
    assert inputs["use_audio_in_video"] is True
    s0, s1 = meta["samples"]
    run = [(n, b - a) for n, a, b in s0["segments"]]
    i0 = run.index(("vision_start", 1))
    # slot 0: 4 s video (t = 0,25,50,75 -> 2 chunks of 2 grids x 4 tokens), 3 s audio (75 tokens)
    assert run[i0:i0 + 8] == [("vision_start", 1), ("audio_start", 1), ("video", 8), ("audio", 50),
                              ("video", 8), ("audio", 25), ("audio_end", 1), ("vision_end", 1)]
    run1 = [(n, b - a) for n, a, b in s1["segments"]]
    i1 = run1.index(("vision_start", 1))
    # slot 1: t = 0,50,100 (3 chunks of 4 tokens), audio 62 tokens (50 + 12)
    assert run1[i1:i1 + 9] == [("vision_start", 1), ("audio_start", 1), ("video", 4), ("audio", 50),
                               ("video", 4), ("audio", 12), ("video", 4), ("audio_end", 1),
                               ("vision_end", 1)]
    pos, _ = R.hf_rope_index(model, inputs)
    p = pos[:, 0]
    vb = s0["special"]["vision_start"][0]
    st = p[0, vb].item() + 1
    a_cols, v_cols = s0["audio"][0]["positions"], s0["video"][0]["positions"]
    assert p[0, a_cols].max().item() == st + 74
    assert p[0, v_cols].max().item() == st + 75
    ae, ve = s0["special"]["audio_end"][0], s0["special"]["vision_end"][0]
    # both eos take 1 + max of the LAST EMITTED chunk (the audio chunk here, max st+74),
    # not 1 + the overall max (st+75): the eos ids collide with the last video grid's t.
    assert p[:, ae].tolist() == [st + 75] * 3 and p[:, ve].tolist() == [st + 75] * 3
    assert p[0, ve + 1].item() == st + 76


def test_generate_padded_audio_in_video():
    for name in VARIANT_NAMES:
        model = _model(name)
        inputs, meta = R.make_inputs_and_meta(model.config, "audio_in_video", batch=2)
        model.model.rope_deltas = None
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        model.model.rope_deltas = None
        L = meta["seq_len"]
        assert out.sequences.shape[0] == 2 and L < out.sequences.shape[1] <= L + 3
        assert torch.equal(out.sequences[:, :L], inputs["input_ids"])
        assert 1 <= len(out.logits) <= 3
        full = R.run_hf(model, inputs)
        torch.testing.assert_close(out.logits[0], full[:, -1], atol=1e-4, rtol=1e-4)
        assert all(torch.isfinite(x).all() for x in out.logits)


def test_determinism_and_nondegenerate_weights():
    a = R.make_hf_thinker(VARIANT_NAMES[0], seed=0).state_dict()
    b = R.make_hf_thinker(VARIANT_NAMES[0], seed=0).state_dict()
    c = R.make_hf_thinker(VARIANT_NAMES[0], seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    model = R.make_hf_thinker(VARIANT_NAMES[0])
    for n, prm in model.named_parameters():
        assert prm.dtype == torch.float32
        assert not torch.all(prm == 0), n
        assert not torch.all(prm == 1), n
        if prm.numel() > 1:
            assert prm.std() > 0, n
    assert not model.training
    i1 = R.make_inputs(model.config, "mixed", batch=2, seed=3)
    i2 = R.make_inputs(model.config, "mixed", batch=2, seed=3)
    for k in i1:
        if torch.is_tensor(i1[k]):
            assert torch.equal(i1[k], i2[k])


def test_variants_configs():
    for v in R.TINY_VARIANTS:
        cfg = R.make_thinker_config(v)
        text = cfg.get_text_config()
        assert text.rope_parameters["mrope_section"] == v["mrope_section"]
        assert text.rope_parameters["rope_theta"] == 1e6
        head_dim = text.hidden_size // text.num_attention_heads
        assert head_dim == v["head_dim"] and sum(v["mrope_section"]) == head_dim // 2
        ids = R.token_ids(cfg)
        assert ids.vision_start == cfg.vision_start_token_id
        special = ("pad", "eos", "audio", "video", "image", "vision_start", "audio_start")
        assert max(ids.as_dict()[k] for k in special) < text.vocab_size
        model = _model(v["name"])
        tied = model.lm_head.weight is model.model.language_model.embed_tokens.weight
        assert tied == v["tie_word_embeddings"]
        assert model.config._attn_implementation == "eager"
        assert model.model.language_model.rotary_emb.mrope_section == v["mrope_section"]
    ratios = {v["num_attention_heads"] // v["num_key_value_heads"] for v in R.TINY_VARIANTS}
    assert len(ratios) >= 3


def test_audio_token_count_matches_hf():
    model = _model(VARIANT_NAMES[0])
    frames = torch.arange(3, 700)
    _, hf = model.model.audio_tower._get_feat_extract_output_lengths(frames)
    ours = torch.tensor([R.audio_token_count(int(f)) for f in frames])
    assert torch.equal(hf, ours)


def test_full_omni_save_and_load_thinker(tmp_path):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    name = VARIANT_NAMES[0]
    full = R.make_full_omni_model(name, seed=0)
    full.save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    keys = list(index["weight_map"])
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    assert all(k.split(".")[0] in ("thinker", "talker", "token2wav") for k in keys)
    prefixes = {".".join(k.split(".")[:2]) for k in keys if k.startswith("thinker.")}
    assert prefixes == {"thinker.model", "thinker.audio_tower", "thinker.visual", "thinker.lm_head"}
    assert "thinker.model.layers.0.self_attn.q_proj.bias" in keys  # no "language_model" on disk
    assert not any("language_model" in k for k in keys)

    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    ref = R.make_hf_thinker(name, seed=0)
    sd, sd_ref = thinker.state_dict(), ref.state_dict()
    assert set(sd) == set(sd_ref)
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    inputs = R.make_inputs(thinker.config, "audio_in_video", batch=2)
    torch.testing.assert_close(R.run_hf(thinker, inputs), R.run_hf(ref, inputs), atol=0, rtol=0)


def test_reference_is_discriminative():
    """Typical port bugs move the tiny model's logits by O(1), far above float32 noise."""
    model = R.make_hf_thinker(VARIANT_NAMES[0])
    inputs = R.make_inputs(model.config, "audio_in_video", batch=2)
    mask = inputs["attention_mask"].bool()
    ref = R.run_hf(model, inputs)

    def diff(out):
        return (out - ref)[mask].abs().max().item()

    pos1d = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    assert diff(R.run_hf(model, inputs, position_ids=pos1d)) > 0.1  # 1-D instead of 3-D positions
    rot = model.model.language_model.rotary_emb
    section = list(rot.mrope_section)
    rot.mrope_section = section[::-1]  # wrong T/H/W split
    try:
        assert diff(R.run_hf(model, inputs)) > 0.1
    finally:
        rot.mrope_section = section
    bias = model.model.language_model.layers[0].self_attn.q_proj.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.zero_()  # forgotten q bias
    try:
        assert diff(R.run_hf(model, inputs)) > 0.1
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert diff(R.run_hf(model, inputs)) == 0.0
    sdpa = R.make_hf_thinker(VARIANT_NAMES[0], attn="sdpa")
    assert diff(R.run_hf(sdpa, inputs)) < 1e-4
