"""Toy-model training: a 2-step smoke run writes a checkpoint that Hugging Face's own classes load
and that avlens loads through `from_pretrained`, with equal outputs."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor

from avlens.data import synth, tasks
from avlens.toy import load_toy
from avlens.toy.evaluate import evaluate, prompt_rows
from avlens.toy.train import ClipStore, TrainConfig, collate, train


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    cfg = TrainConfig(n_clips=12, steps=2, batch_size=4, d_model=64, n_layers=2, d_mlp=128, log_every=1)
    res = train(cfg, str(out), verbose=False)
    return out, res


def test_two_training_steps_write_a_checkpoint_hf_loads(smoke):
    out, res = smoke
    assert np.isfinite(res["final_loss"])
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.audio_token == "<|AUDIO|>" and tok.vision_bos_token == "<|vision_bos|>"
    # HF's own processors read their fields from the one preprocessor_config.json, as in a real checkpoint
    fe = WhisperFeatureExtractor.from_pretrained(out)
    assert fe.feature_size == 128
    from transformers import Qwen2VLImageProcessorPil

    from avlens.data import media

    wave = synth.make_clip("dog", "clear", seed=1).waveform
    ref = fe(wave, sampling_rate=16000, return_tensors="pt", padding="max_length", return_attention_mask=True)
    ours, _ = media.audio_features(wave)
    torch.testing.assert_close(ours, ref["input_features"], atol=1e-5, rtol=0)
    ip = Qwen2VLImageProcessorPil.from_pretrained(out)
    assert ip.size["shortest_edge"] == ip.size["longest_edge"] == 56 * 56
    model = load_toy(path=str(out))
    assert model.media_defaults["max_pixels"] == 56 * 56
    from avlens import HookedAVTransformer

    # the plain loading path reads the pixel budget from the checkpoint's processor config too
    assert HookedAVTransformer.from_pretrained(str(out)).media_defaults == {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
    # the hooked model and HF's give the same logits on a toy clip
    clip = synth.make_clip("dog", "clear", seed=1)
    ex = tasks.multiple_choice(clip)
    from avlens.data.tokenizer import config_token_ids

    store = ClipStore([clip], config_token_ids(tok), tok)
    rows = prompt_rows([ex], tok, store)
    ids, att, _ = collate(rows, [[0] * len(rows[0])], tok.pad_token_id, side="left")
    inputs = dict(input_ids=ids, attention_mask=att, **store.batch([0]))
    hf.model.rope_deltas = None
    with torch.no_grad():
        ref = hf(**inputs).logits
        got = model(model.prepare(**inputs))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # prepare_media (raw media, string prompt) gives the same batch as the precomputed features
    batch = model.prepare_media(tasks.prompt_text(ex), audio=clip.waveform, video=clip.frames, fps=synth.FPS, use_audio_in_video=True)
    assert batch.input_ids.tolist() == ids.tolist()
    torch.testing.assert_close(model(batch), got, atol=1e-3, rtol=0)


def test_evaluation_runs_per_mode_task_and_condition(smoke):
    out, _ = smoke
    model = load_toy(path=str(out))
    res = evaluate(model, n_clips=6, captions=2, batch_size=8)["results"]
    for mode in ("both", "audio_only", "video_only"):
        for task in ("multiple_choice", "presence", "modality"):
            assert 0.0 <= res[f"{mode}/{task}/all"]["accuracy"] <= 1.0
    assert "both/caption/all" in res and "both/absent_yes_rate/all" in res


def test_load_toy_names_the_fix_when_no_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-toy"):
        load_toy(path=str(tmp_path))


def test_training_is_deterministic_for_a_seed():
    cfg = TrainConfig(n_clips=8, steps=2, batch_size=4, d_model=64, n_layers=2, d_mlp=128)
    a = train(cfg, None, verbose=False)["model"].state_dict()
    b = train(cfg, None, verbose=False)["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = train(TrainConfig(**{**cfg.__dict__, "seed": 1}), None, verbose=False)["model"].state_dict()
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_fan_in_initialisation_scales_weights():
    from avlens.toy.train import init_weights

    cfg = TrainConfig(n_clips=8, steps=0, d_model=64, n_layers=2, d_mlp=128)
    model = train(cfg, None, verbose=False)["model"]
    init_weights(model, cfg)
    w = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert abs(float(w.std()) * 64**0.5 - 1.0) < 0.05  # N(0, 1 / fan_in), not HF's N(0, 0.02^2)
    assert abs(float(model.model.language_model.embed_tokens.weight.std()) - 1.0) < 0.05


def test_add_evaluation_stores_the_model_card_results(smoke):
    import json

    from avlens.toy.train import add_evaluation

    out, _ = smoke
    add_evaluation(str(out), n_clips=3, verbose=False)
    settings = json.loads((out / "avlens_toy.json").read_text())
    assert "both/multiple_choice/all" in settings["evaluation"]["results"]
    assert settings["training"]["n_examples"] > 0
