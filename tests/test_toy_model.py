"""The shipped toy model: loads through from_pretrained, reproduces the model card's accuracies
(the evaluation stored in its avlens_toy.json and the table in docs/toy_model.md), and answers like
Hugging Face's own model on toy clips."""

import json
import pathlib

import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from avlens.toy import TOY_DIR, toy_available
from avlens.toy.evaluate import evaluate

pytestmark = pytest.mark.skipif(not toy_available(), reason="no toy checkpoint shipped")
CARD = pathlib.Path(__file__).parent.parent / "docs" / "toy_model.md"


@pytest.mark.timeout(1800)  # about a minute on a quiet 2-core machine; much longer when the CPU is shared
def test_shipped_weights_reproduce_the_model_card(toy):
    """The full held-out evaluation (360 clips, all modes; captions aside) reproduces the card's
    numbers within 1 point, and the card's table in docs/ shows those numbers."""
    card = json.loads((TOY_DIR / "avlens_toy.json").read_text())["evaluation"]
    torch.set_num_threads(2)
    got = evaluate(toy, n_clips=card["n_clips"], seed=card["seed"], captions=0)["results"]
    keys = [k for k in card["results"] if "caption" not in k]
    assert len(keys) > 100 and set(keys) == set(got)
    for key in keys:
        assert abs(got[key]["accuracy"] - card["results"][key]["accuracy"]) <= 0.01, key
        assert got[key]["n"] == card["results"][key]["n"], key
    doc = CARD.read_text()
    for key, v in card["results"].items():
        mode, task, cond = key.split("/")
        cell = f"{100 * v['accuracy']:.1f} % (n={v['n']})"
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| {task} | {cond} |")), None)
        assert row is not None and cell in row, (key, cell)


def test_hooked_toy_answers_like_hf(toy):
    from avlens.data import synth, tasks

    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(TOY_DIR).eval()
    # every condition; multiple choice, a presence probe and the modality question; as given and with
    # the frames or the waveform zeroed
    clips = [synth.make_clip(c, cond, seed=7 + i) for i, (c, cond) in enumerate(zip(synth.CLASSES, synth.CONDITIONS))]
    clips = clips + [c.zeroed("video") for c in clips[:3]] + [c.zeroed("audio") for c in clips[3:]]
    exs = [f(c) for c in clips for f in (tasks.multiple_choice, lambda c: tasks.presence_probes(c)[0], tasks.modality_question)]
    shown = [c for c in clips for _ in range(3)]
    batch = toy.prepare_media([tasks.prompt_text(e) for e in exs], audio=[c.waveform for c in shown],
                              video=[c.frames for c in shown], fps=synth.FPS, use_audio_in_video=True)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **{k: v for k, v in batch.raw.items() if v is not None})
    hf.model.rope_deltas = None
    with torch.no_grad():
        ref = hf(**inputs).logits[:, -1]
        got = toy(batch)[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert got.argmax(-1).tolist() == ref.argmax(-1).tolist()
