"""The shipped toy model: loads through from_pretrained, reproduces the model card's accuracies on
a fixed evaluation subset, and answers like Hugging Face's own model on toy clips."""

import json
import pathlib

import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from avlens.toy import TOY_DIR, load_toy, toy_available
from avlens.toy.evaluate import evaluate

pytestmark = pytest.mark.skipif(not toy_available(), reason="no toy checkpoint shipped")
SUBSET = pathlib.Path(__file__).parent / "fixtures" / "toy_eval_subset.json"


@pytest.fixture(scope="module")
def toy():
    return load_toy()


def test_shipped_weights_reproduce_the_model_card_subset(toy):
    expected = json.loads(SUBSET.read_text())
    got = evaluate(toy, n_clips=expected["n_clips"], seed=expected["seed"], captions=0)["results"]
    for key, v in expected["results"].items():
        if "caption" in key:
            continue
        assert abs(got[key]["accuracy"] - v["accuracy"]) <= 0.01, key


def test_hooked_toy_answers_like_hf(toy):
    from avlens.data import synth, tasks

    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(TOY_DIR).eval()
    clips = [synth.make_clip(c, "clear", seed=7 + i) for i, c in enumerate(synth.CLASSES[:4])]
    exs = [tasks.multiple_choice(c) for c in clips]
    batch = toy.prepare_media([tasks.prompt_text(e) for e in exs], audio=[c.waveform for c in clips],
                              video=[c.frames for c in clips], fps=synth.FPS, use_audio_in_video=True)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **{k: v for k, v in batch.raw.items() if v is not None})
    hf.model.rope_deltas = None
    with torch.no_grad():
        ref = hf(**inputs).logits[:, -1]
        got = toy(batch)[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert got.argmax(-1).tolist() == ref.argmax(-1).tolist()
