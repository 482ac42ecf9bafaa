"""avlens's Qwen2.5-Omni thinker against Hugging Face, the independent reference.

Every test compares something avlens computes with what ``transformers`` computes for the same
tiny random model (``tests/hf_reference.py``: 4 backbone shapes, processor-exact inputs with
audio, images, video and audio interleaved in video):

* logits of the forward pass (both attention paths), per variant x input kind x batch;
* the 3-D TMRoPE position ids and ``rope_deltas`` (``get_rope_index``);
* the token groups (HF placeholder masks and the inputs' metadata), time stamps, chunk ids;
* the media features written into the placeholders (HF's audio / vision towers);
* greedy generation (HF ``generate``), tokens and per-step logits, with and without EOS;
* checkpoint loading (sharded full Omni, thinker only, pickle), reading only thinker tensors;
* weight sharing by ``from_hf``;
* bfloat16 / float16 models against HF in the same dtype.

Models and HF reference outputs are cached per session (``conftest.py``), so the whole module
runs in seconds on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

import avlens
import avlens.families.qwen2_5_omni as qwen_family
import hf_reference as R
from avlens.layout import PARTITION_GROUPS

VARIANTS = [v["name"] for v in R.TINY_VARIANTS]
EQUIV_KINDS = ("text", "audio", "video", "image", "audio_video", "audio_in_video", "mixed")
BATCHES = ("b1", "b2left", "b3right")
PATHS = ("sdpa", "eager")
MEDIA = ("audio", "video", "image")

LOGIT_ATOL = 1e-4
#: Max |avlens - HF| (both in the low dtype, HF eager) as a fraction of max |fp32 logit|.
#: Measured worst cases over every variant x kind x batch: bf16 0.0625 / ~3.3 (~1.9 %),
#: fp16 0.0068 / ~3.3 (~0.2 %); HF's own error against fp32 is of the same size.
LOW_PRECISION_REL_TOL = {torch.bfloat16: 0.04, torch.float16: 0.005}


# ------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The models are tiny: one intra-op thread is faster, and much faster on a busy 2-core
    machine (thread oversubscription). Restored after this module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@contextlib.contextmanager
def attn_path(model, path: str):
    """Run `model` on avlens's SDPA fast path (default) or its eager path, then restore."""
    old = model.cfg.use_attn_eager
    model.cfg.use_attn_eager = path == "eager"
    try:
        yield model
    finally:
        model.cfg.use_attn_eager = old


def max_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    d = (a.float() - b.float()).abs()
    if where is not None:
        d = d[where]
    return float(d.max().detach()) if d.numel() else 0.0


def avlens_logits(model, inputs, path: str = "sdpa"):
    batch = model.prepare(**inputs)
    with attn_path(model, path), torch.no_grad():
        return batch, model(batch)


class SafeOpenSpy:
    """Stand-in for `safetensors.safe_open` that records every file opened and key read."""

    def __init__(self, real):
        self.real = real
        self.files: list[str] = []
        self.keys_read: list[str] = []

    def __call__(self, filename, *args, **kwargs):
        self.files.append(os.path.basename(str(filename)))
        return _SpyHandle(self.real(filename, *args, **kwargs), self)


class _SpyHandle:
    def __init__(self, handle, spy: SafeOpenSpy):
        self._handle = handle
        self._inner = handle
        self._spy = spy

    def __enter__(self):
        self._inner = self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def get_tensor(self, key):
        self._spy.keys_read.append(key)
        return self._inner.get_tensor(key)

    def get_slice(self, key):
        self._spy.keys_read.append(key)
        return self._inner.get_slice(key)

    def __getattr__(self, name):  # keys(), metadata(), ...
        return getattr(self._inner, name)


# ============================================================================================
# 1. Logits
# ============================================================================================


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch_spec", BATCHES)
@pytest.mark.parametrize("kind", EQUIV_KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_hf_thinker_eager_fp32_on_non_pad_positions(
    variant, kind, batch_spec, path, hf_case, hooked_model
):
    case = hf_case(variant, kind, batch_spec)
    if case.inputs["input_ids"].shape[0] > 1:
        assert not bool(case.valid.all()), "a padded batch case should contain padding"
    model = hooked_model(variant)
    _, logits = avlens_logits(model, case.inputs, path)
    assert logits.shape == case.logits.shape
    assert logits.dtype == torch.float32
    assert bool(torch.isfinite(logits[case.valid]).all())
    d = max_diff(logits, case.logits, case.valid)
    assert d <= LOGIT_ATOL, f"{variant}/{kind}/{batch_spec}/{path}: max |avlens - HF| = {d:.3g}"


def test_sdpa_is_the_default_path_and_use_attn_eager_avoids_it(hf_case, hooked_model, monkeypatch):
    """The two paths compared above really are different code: the default forward calls
    `scaled_dot_product_attention`, `cfg.use_attn_eager=True` never does."""
    case = hf_case(VARIANTS[0], "audio_in_video", "b2left")
    model = hooked_model(VARIANTS[0])
    batch = model.prepare(**case.inputs)
    real = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    results = {}
    for path in PATHS:
        calls.clear()
        with attn_path(model, path), torch.no_grad():
            results[path] = model(batch)
        results[path + "_calls"] = len(calls)
    assert results["sdpa_calls"] >= model.cfg.n_layers
    assert results["eager_calls"] == 0
    assert max_diff(results["sdpa"], results["eager"], case.valid) <= LOGIT_ATOL


# ============================================================================================
# 2. TMRoPE positions
# ============================================================================================


@pytest.mark.parametrize("batch_spec", BATCHES)
@pytest.mark.parametrize("kind", EQUIV_KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_position_ids_and_rope_deltas_equal_hf_get_rope_index(variant, kind, batch_spec, hf_case, hooked_model):
    case = hf_case(variant, kind, batch_spec)
    batch = hooked_model(variant).prepare(**case.inputs)
    B, L = case.inputs["input_ids"].shape
    assert tuple(batch.position_ids.shape) == (3, B, L)
    assert tuple(batch.rope_deltas.shape) == (B, 1)
    valid = case.valid
    ours, theirs = batch.position_ids.cpu(), case.position_ids.cpu()
    for axis in range(3):
        bad = (ours[axis] != theirs[axis]) & valid
        assert not bool(bad.any()), (
            f"axis {axis}: first mismatch at (sample, pos) {bad.nonzero()[0].tolist()}: "
            f"avlens {ours[axis][bad][:5].tolist()} vs HF {theirs[axis][bad][:5].tolist()}"
        )
    assert torch.equal(batch.rope_deltas.cpu().long(), case.rope_deltas.cpu().long()), (
        batch.rope_deltas.tolist(),
        case.rope_deltas.tolist(),
    )


# ============================================================================================
# 3. Token groups, time stamps, chunk ids
# ============================================================================================


@pytest.mark.parametrize("batch_spec", BATCHES)
@pytest.mark.parametrize("kind", EQUIV_KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_group_masks_equal_hf_placeholder_masks_and_metadata_and_partition_positions(
    variant, kind, batch_spec, hf_case, hf_thinker, hooked_model
):
    case = hf_case(variant, kind, batch_spec)
    hf = hf_thinker(variant)
    lay = hooked_model(variant).prepare(**case.inputs).layout
    ids = case.inputs["input_ids"]
    B, L = ids.shape
    assert lay.shape == (B, L)

    # HF's own placeholder masks
    with torch.no_grad():
        embeds = hf.get_input_embeddings()(ids)
    hf_image, hf_video, hf_audio = hf.model.get_placeholder_mask(ids, inputs_embeds=embeds)
    for group, hf_mask in (("audio", hf_audio), ("video", hf_video), ("image", hf_image)):
        assert torch.equal(lay.mask(group).cpu(), hf_mask[..., 0].cpu()), group
    cfg = hf.config
    for group, tok in (("audio", cfg.audio_token_id), ("video", cfg.video_token_id), ("image", cfg.image_token_id)):
        assert torch.equal(lay.mask(group).cpu(), (ids == tok) & case.valid), group
    assert torch.equal(lay.mask("pad").cpu(), ~case.valid)

    # the groups partition the positions: each is in exactly one
    assert set(PARTITION_GROUPS) == {"audio", "video", "image", "text", "special", "pad"}
    cover = torch.stack([lay.mask(g).cpu().long() for g in PARTITION_GROUPS]).sum(0)
    assert bool((cover == 1).all()), f"positions covered {cover.unique().tolist()} times"

    # the metadata's expected columns
    group_of_type = {
        "pad": "pad", "text": "text", "audio": "audio", "video": "video", "image": "image",
        "audio_start": "special", "audio_end": "special", "vision_start": "special", "vision_end": "special",
    }
    for i, s in enumerate(case.meta["samples"]):
        for group in MEDIA:
            expected = sorted(c for item in s[group] for c in item["positions"])
            assert lay.positions(group, sample=i).tolist() == expected, (i, group)
        special = sorted(c for cols in s["special"].values() for c in cols)
        assert lay.positions("special", sample=i).tolist() == special, i
        assert lay.positions("text", sample=i).tolist() == s["text"], i
        assert lay.positions("pad", sample=i).tolist() == s["pad"], i
        assert lay.labels(i) == [group_of_type[t] for t in s["token_types"]], i
    # the batch form of positions(group) agrees with the per-sample form
    for group in PARTITION_GROUPS:
        gp = lay.positions(group, padded=True)
        for i in range(B):
            n = int(gp.mask[i].sum())
            assert gp.index[i, :n].tolist() == lay.positions(group, sample=i).tolist()


def _video_token_seconds(item, merge: int) -> list[float]:
    t, h, w = item["grid_thw"]
    per_frame = (h // merge) * (w // merge)
    return [(k // per_frame) * item["second_per_grid"] for k in range(item["n_tokens"])]


@pytest.mark.parametrize("batch_spec", BATCHES)
@pytest.mark.parametrize("kind", ("audio", "video", "image", "audio_video", "audio_in_video", "mixed"))
@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_time_stamps_chunk_ids_and_media_index_follow_metadata(variant, kind, batch_spec, hf_case, hf_thinker, hooked_model):
    """Audio token k is at k/25 s, video token at (temporal grid) x second_per_grid; chunk ids
    are the 2-second chunks (for audio-in-video exactly the interleaved runs of the metadata);
    media_index numbers the items of a sample; NaN / -1 outside media."""
    case = hf_case(variant, kind, batch_spec)
    cfg = hf_thinker(variant).config
    pps = cfg.position_id_per_seconds
    assert pps == 25
    per_chunk = int(pps * cfg.seconds_per_chunk)
    merge = cfg.vision_config.spatial_merge_size
    lay = hooked_model(variant).prepare(**case.inputs).layout
    time, chunk, media_index = lay.time.cpu(), lay.chunk.cpu(), lay.media_index.cpu()
    aiv = case.meta["use_audio_in_video"]

    for i, s in enumerate(case.meta["samples"]):
        media_cols = set()
        for local, item in enumerate(s["audio"]):
            cols = item["positions"]  # in feature order
            media_cols.update(cols)
            want = torch.arange(len(cols), dtype=torch.float64) / pps
            assert torch.allclose(time[i, cols].double(), want, atol=1e-6), (i, "audio time")
            assert media_index[i, cols].tolist() == [local] * len(cols)
            if item["in_video"] is not None:
                for j, (a, b) in enumerate(item["chunks"]):
                    assert chunk[i, a:b].tolist() == [j] * (b - a), (i, "audio chunk", j)
            else:
                assert chunk[i, cols].tolist() == [k // per_chunk for k in range(len(cols))]
        for local, item in enumerate(s["video"]):
            cols = item["positions"]
            media_cols.update(cols)
            want = torch.tensor(_video_token_seconds(item, merge), dtype=torch.float64)
            assert torch.allclose(time[i, cols].double(), want, atol=1e-6), (i, "video time")
            assert media_index[i, cols].tolist() == [local] * len(cols)
            if item["audio_index"] is not None:
                for j, (a, b) in enumerate(item["chunks"]):
                    assert chunk[i, a:b].tolist() == [j] * (b - a), (i, "video chunk", j)
            else:
                values = [sec * pps for sec in _video_token_seconds(item, merge)]
                want_chunk = [j for j, (a, b) in enumerate(R.chunked_index(values, per_chunk)) for _ in range(a, b)]
                assert chunk[i, cols].tolist() == want_chunk, (i, "video chunk")
        for local, item in enumerate(s["image"]):
            cols = item["positions"]
            media_cols.update(cols)
            assert media_index[i, cols].tolist() == [local] * len(cols)
            assert chunk[i, cols].tolist() == [-1] * len(cols)
        if aiv:
            assert len(s["audio"]) == len(s["video"]) == 1
            assert len(s["video"][0]["chunks"]) >= 2, "audio-in-video samples span >= 2 chunks"
        others = [c for c in range(lay.n_pos) if c not in media_cols]
        assert bool(torch.isnan(time[i, others]).all()), (i, "time outside audio/video")
        assert chunk[i, others].tolist() == [-1] * len(others)
        assert media_index[i, others].tolist() == [-1] * len(others)


# ============================================================================================
# 3b. Media features equal HF's towers
# ============================================================================================


@pytest.mark.parametrize("kind", ("audio", "video", "image", "audio_in_video", "mixed"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_media_features_equal_hf_audio_and_vision_tower_outputs(variant, kind, hf_case, hf_thinker, hooked_model):
    case = hf_case(variant, kind, "b2left")
    hf = hf_thinker(variant)
    batch = hooked_model(variant).prepare(**case.inputs)
    x = case.inputs
    with torch.no_grad():
        want = {}
        if "input_features" in x:
            want["audio"] = hf.get_audio_features(x["input_features"], x["feature_attention_mask"]).last_hidden_state
        if "pixel_values" in x:
            want["image"] = torch.cat(hf.get_image_features(x["pixel_values"], x["image_grid_thw"]).pooler_output)
        if "pixel_values_videos" in x:
            want["video"] = torch.cat(hf.get_video_features(x["pixel_values_videos"], x["video_grid_thw"]).pooler_output)
    assert want and set(batch.features) == set(want)
    for k, w in want.items():
        assert batch.features[k].shape == w.shape, k
        assert max_diff(batch.features[k], w) <= 1e-5, k


# ============================================================================================
# 4. Generation
# ============================================================================================

GEN_STEPS = 6


def _hf_generate(hf, inputs, n, **kwargs):
    hf.model.rope_deltas = None
    try:
        with torch.no_grad():
            out = hf.generate(
                **inputs,
                max_new_tokens=n,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                **kwargs,
            )
    finally:
        hf.model.rope_deltas = None
    L = inputs["input_ids"].shape[1]
    return out.sequences[:, L:], torch.stack(out.logits, 1), out.sequences


@pytest.fixture(scope="module")
def hf_generations(hf_thinker):
    cache = {}

    def get(variant, kind, **kwargs):
        key = (variant, kind, tuple(sorted(kwargs.items())))
        if key not in cache:
            hf = hf_thinker(variant)
            inputs = R.make_inputs(hf.config, kind, batch=2, padding_side="left")
            ids = R.token_ids(hf.config)
            kw = dict(eos_token_id=ids.eos, pad_token_id=ids.pad)
            kw.update(kwargs)
            cache[key] = (inputs, kw, _hf_generate(hf, inputs, GEN_STEPS, **kw))
        return cache[key]

    return get


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ("audio_in_video", "audio_video", "mixed"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_greedy_tokens_and_step_logits_equal_hf_generate_left_padded(
    variant, kind, path, hf_generations, hooked_model
):
    inputs, kw, (hf_tokens, hf_logits, hf_seq) = hf_generations(variant, kind)
    assert not bool(inputs["attention_mask"].bool().all()), "the batch must be left-padded"
    assert hf_tokens.shape == (2, GEN_STEPS)
    model = hooked_model(variant)
    batch = model.prepare(**inputs)
    with attn_path(model, path):
        out = model.generate(batch, max_new_tokens=GEN_STEPS, **kw)
    assert out.tokens.tolist() == hf_tokens.tolist()
    assert out.logits.shape == hf_logits.shape
    d = max_diff(out.logits, hf_logits)
    assert d <= LOGIT_ATOL, f"step logits differ by {d:.3g}"
    assert torch.equal(out.sequences.cpu(), hf_seq.cpu())


def test_generate_pads_finished_sample_and_keeps_matching_hf_after_eos(hf_thinker, hf_generations, hooked_model):
    """Make sample 0's second token the EOS: HF pads sample 0 afterwards while sample 1 goes on;
    avlens must give the same tokens (pad after EOS) and the same logits at every step."""
    chosen = None
    for variant in VARIANTS:
        for kind in ("audio_in_video", "audio_video", "mixed"):
            _, _, (tokens, _, _) = hf_generations(variant, kind)
            t = tokens.tolist()
            eos = t[0][1]
            if eos != t[0][0] and eos not in t[1]:
                chosen = (variant, kind, eos)
                break
        if chosen:
            break
    assert chosen is not None, "no case where sample 0 alone emits the forced EOS"
    variant, kind, eos = chosen
    pad = R.token_ids(hf_thinker(variant).config).pad
    inputs, kw, (hf_tokens, hf_logits, _) = hf_generations(variant, kind, eos_token_id=eos)
    assert hf_tokens[0, 2:].tolist() == [pad] * (GEN_STEPS - 2), "HF pads after EOS"
    assert hf_tokens.shape[1] == GEN_STEPS
    model = hooked_model(variant)
    for path in PATHS:
        with attn_path(model, path):
            out = model.generate(model.prepare(**inputs), max_new_tokens=GEN_STEPS, **kw)
        assert out.tokens.tolist() == hf_tokens.tolist(), path
        assert out.logits.shape == hf_logits.shape
        assert max_diff(out.logits, hf_logits) <= LOGIT_ATOL, path


# ============================================================================================
# 5. Checkpoint loading
# ============================================================================================

CKPT_VARIANTS = ("gqa2_hd16", "tied_gqa3_hd8")


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """variant -> (full Omni model, folder with its sharded safetensors checkpoint)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            full = R.make_full_omni_model(variant)
            folder = tmp_path_factory.mktemp(f"omni_{variant}")
            full.save_pretrained(folder, max_shard_size="200KB")
            cache[variant] = (full, str(folder))
        return cache[variant]

    return get


def _aiv_inputs(config):
    return R.make_inputs(config, "audio_in_video", batch=2, padding_side="left")


@pytest.mark.parametrize("variant", CKPT_VARIANTS)
def test_from_pretrained_sharded_full_omni_checkpoint_gives_from_hf_logits(variant, full_checkpoint):
    full, folder = full_checkpoint(variant)
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json")), "checkpoint must be sharded"
    loaded = avlens.HookedAVTransformer.from_pretrained(folder, attn_implementation="eager")
    assert isinstance(loaded, avlens.HookedQwen2_5Omni)
    assert loaded.cfg.dtype == torch.float32
    ref = avlens.HookedAVTransformer.from_hf(full)
    inputs = _aiv_inputs(full.config.thinker_config)
    valid = inputs["attention_mask"].bool()
    _, got = avlens_logits(loaded, inputs)
    _, want = avlens_logits(ref, inputs)
    assert max_diff(got, want, valid) <= 1e-5
    assert max_diff(got, R.run_hf(full, inputs), valid) <= LOGIT_ATOL
    if R.get_variant(variant)["tie_word_embeddings"]:
        assert loaded.unembed.lm_head.weight.data_ptr() == loaded.W_E.data_ptr(), "tied lm_head"


@pytest.mark.parametrize("variant", CKPT_VARIANTS)
def test_from_pretrained_reads_only_thinker_tensors_of_full_omni_checkpoint(variant, full_checkpoint, monkeypatch):
    full, folder = full_checkpoint(variant)
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    thinker_keys = {k for k in weight_map if k.startswith("thinker.")}
    other_keys = {k for k in weight_map if k.startswith(("talker.", "token2wav."))}
    assert thinker_keys and other_keys
    assert thinker_keys | other_keys == set(weight_map)

    spy = SafeOpenSpy(qwen_family.safe_open)
    monkeypatch.setattr(qwen_family, "safe_open", spy)
    avlens.HookedAVTransformer.from_pretrained(folder, attn_implementation="eager")

    read = set(spy.keys_read)
    bad = sorted(k for k in read if k.startswith(("talker.", "token2wav.")))
    assert not bad, f"read {len(bad)} non-thinker tensors, e.g. {bad[:5]}"
    assert read == thinker_keys, f"thinker tensors not read: {sorted(thinker_keys - read)[:5]}"
    assert len(spy.keys_read) == len(read), "a tensor was read twice"
    # shards holding only talker / token2wav tensors are not even opened
    thinker_files = {weight_map[k] for k in thinker_keys}
    other_only = set(weight_map.values()) - thinker_files
    assert set(spy.files) <= thinker_files, f"opened non-thinker shards {sorted(set(spy.files) - thinker_files)}"
    if not other_only:
        pytest.skip("every shard holds a thinker tensor; the shard-skipping check is vacuous")


@pytest.mark.parametrize("variant", CKPT_VARIANTS)
def test_from_pretrained_thinker_only_checkpoint_gives_hf_logits(variant, tmp_path, monkeypatch):
    hf = R.make_hf_thinker(variant)
    hf.save_pretrained(tmp_path)
    spy = SafeOpenSpy(qwen_family.safe_open)
    monkeypatch.setattr(qwen_family, "safe_open", spy)
    loaded = avlens.HookedAVTransformer.from_pretrained(str(tmp_path), attn_implementation="eager")
    assert spy.keys_read, "thinker tensors should be read through safe_open"
    inputs = _aiv_inputs(hf.config)
    valid = inputs["attention_mask"].bool()
    _, got = avlens_logits(loaded, inputs)
    _, want = avlens_logits(avlens.HookedAVTransformer.from_hf(hf), inputs)
    assert max_diff(got, want, valid) <= 1e-5
    assert max_diff(got, R.run_hf(hf, inputs), valid) <= LOGIT_ATOL


def test_from_pretrained_pickle_checkpoint_needs_allow_pickle(tmp_path):
    variant = "mqa_hd16"
    hf = R.make_hf_thinker(variant)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "pytorch_model.bin"]
    with pytest.raises(ValueError, match="allow_pickle"):
        avlens.HookedAVTransformer.from_pretrained(str(tmp_path))
    loaded = avlens.HookedAVTransformer.from_pretrained(str(tmp_path), allow_pickle=True, attn_implementation="eager")
    inputs = _aiv_inputs(hf.config)
    valid = inputs["attention_mask"].bool()
    _, got = avlens_logits(loaded, inputs)
    assert max_diff(got, R.run_hf(hf, inputs), valid) <= LOGIT_ATOL


@pytest.mark.parametrize("variant", CKPT_VARIANTS)
def test_from_pretrained_bf16_equals_hf_from_pretrained_bf16(variant, tmp_path):
    """Loading straight into bfloat16 gives the model HF's own `from_pretrained(dtype=bf16)`
    gives (same weights, same float32 buffers, hence the same logits)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    R.make_hf_thinker(variant).save_pretrained(tmp_path)
    loaded = avlens.HookedAVTransformer.from_pretrained(str(tmp_path), dtype=torch.bfloat16, attn_implementation="eager")
    assert loaded.cfg.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters() if p.is_floating_point())
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        str(tmp_path), dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    ours, theirs = dict(loaded.named_parameters()), dict(avlens.HookedAVTransformer.from_hf(hf).named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    inputs = _aiv_inputs(hf.config)
    valid = inputs["attention_mask"].bool()
    _, got = avlens_logits(loaded, inputs)
    assert got.dtype == torch.bfloat16
    scale = float(R.run_hf(R.make_hf_thinker(variant), inputs)[valid].abs().max())
    assert max_diff(got, R.run_hf(hf, inputs), valid) <= LOW_PRECISION_REL_TOL[torch.bfloat16] * scale


# ============================================================================================
# 6. from_hf shares weights
# ============================================================================================


def _param_ptrs(module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_hf_shares_every_weight_with_the_hf_thinker(variant, hf_thinker, hooked_model):
    hf, model = hf_thinker(variant), hooked_model(variant)
    lm = hf.model.language_model
    assert isinstance(model, avlens.HookedQwen2_5Omni)
    assert model.W_E is lm.embed_tokens.weight
    assert model.unembed.lm_head.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    assert model.ln_final.w.data_ptr() == lm.norm.weight.data_ptr()
    for block, layer in zip(model.blocks, lm.layers, strict=True):
        a, h = block.attn, layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            ours, theirs = getattr(a, name), getattr(h, name)
            assert ours.weight.data_ptr() == theirs.weight.data_ptr(), name
            if theirs.bias is not None:
                assert ours.bias.data_ptr() == theirs.bias.data_ptr(), name
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert getattr(block.mlp, name).weight.data_ptr() == getattr(layer.mlp, name).weight.data_ptr(), name
        assert block.ln1.w.data_ptr() == layer.input_layernorm.weight.data_ptr()
        assert block.ln2.w.data_ptr() == layer.post_attention_layernorm.weight.data_ptr()
    assert model.blocks[0].attn.q_proj.weight.data_ptr() == lm.layers[0].self_attn.q_proj.weight.data_ptr()
    # nothing copied, nothing left behind on the meta device
    assert _param_ptrs(model) == _param_ptrs(hf)
    assert not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    if R.get_variant(variant)["tie_word_embeddings"]:
        assert model.unembed.lm_head.weight.data_ptr() == model.W_E.data_ptr()


def test_from_hf_weight_edits_in_hf_show_up_in_avlens():
    hf = R.make_hf_thinker(VARIANTS[0])
    model = avlens.HookedAVTransformer.from_hf(hf)
    inputs = R.make_inputs(hf.config, "audio_video", batch=2)
    valid = inputs["attention_mask"].bool()
    _, before = avlens_logits(model, inputs)
    with torch.no_grad():
        hf.model.language_model.layers[0].self_attn.q_proj.weight.mul_(3.0)
        hf.model.language_model.norm.weight.add_(0.5)
    _, after = avlens_logits(model, inputs)
    assert max_diff(before, after, valid) > 1e-2, "the edit should change the logits"
    assert max_diff(after, R.run_hf(hf, inputs), valid) <= LOGIT_ATOL


@pytest.mark.parametrize("variant", ("gqa2_hd16", "tied_gqa3_hd8"))
def test_from_hf_of_full_omni_model_takes_its_thinker(variant):
    full = R.make_full_omni_model(variant)
    model = avlens.HookedAVTransformer.from_hf(full)
    assert isinstance(model, avlens.HookedQwen2_5Omni)
    assert model.W_E is full.thinker.model.language_model.embed_tokens.weight
    assert _param_ptrs(model) == _param_ptrs(full.thinker)
    assert not (_param_ptrs(model) & (_param_ptrs(full.talker) | _param_ptrs(full.token2wav)))
    inputs = _aiv_inputs(full.config.thinker_config)
    valid = inputs["attention_mask"].bool()
    _, got = avlens_logits(model, inputs)
    assert max_diff(got, R.run_hf(full, inputs), valid) <= LOGIT_ATOL


# ============================================================================================
# 7. Low precision
# ============================================================================================


@pytest.fixture(scope="module")
def low_precision_models():
    cache = {}

    def get(variant, dtype):
        key = (variant, dtype)
        if key not in cache:
            hf = R.make_hf_thinker(variant).to(dtype)
            cache[key] = (hf, avlens.HookedAVTransformer.from_hf(hf))
        return cache[key]

    return get


@pytest.mark.parametrize("kind", EQUIV_KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bf16", "fp16"))
def test_low_precision_model_runs_and_is_close_to_hf_in_same_dtype(
    dtype, variant, kind, low_precision_models, hf_case
):
    hf, model = low_precision_models(variant, dtype)
    case = hf_case(variant, kind, "b2left")  # float32 HF reference logits for the scale
    inputs, valid = case.inputs, case.valid
    assert model.cfg.dtype == dtype
    assert model.W_E.dtype == dtype

    batch = model.prepare(**inputs)
    for kind_, feats in batch.features.items():
        assert feats.dtype == dtype, kind_
    with torch.no_grad():
        logits = model(batch)
    cached_logits, cache = model.run_with_cache(batch)
    ref = R.run_hf(hf, inputs)
    assert logits.dtype == dtype and cached_logits.dtype == dtype
    assert bool(torch.isfinite(logits[valid]).all()) and bool(torch.isfinite(cached_logits[valid]).all())
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    assert cache[last].dtype == dtype
    assert tuple(cache[last].shape) == (*inputs["input_ids"].shape, model.cfg.d_model)

    tol = LOW_PRECISION_REL_TOL[dtype] * float(case.logits[valid].abs().max())
    for name, got in (("forward", logits), ("run_with_cache", cached_logits)):
        d = max_diff(got, ref, valid)
        assert d <= tol, f"{name}: max |avlens - HF| = {d:.3g} > {tol:.3g}"
    # the predicted token agrees wherever HF's top-2 margin is clear of rounding noise
    ref_f = ref.float()
    top2 = ref_f.topk(2, dim=-1).values
    clear = valid & (top2[..., 0] - top2[..., 1] > 0.25)
    assert bool((logits.float().argmax(-1) == ref_f.argmax(-1))[clear].all())
