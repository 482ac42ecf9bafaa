"""The paper's methods and VAR are never a silent no-op per sample (a batch mixing an
audio-visual prompt with a text-only one is an error naming the text-only sample), their arguments
are checked with the published defaults in the message, and `avlens hallucination --model` says
up front when a family cannot build prompts from raw media."""

import math

import pytest
import torch

from avlens.mitigation import VAR, AdaptiveGuidance, AVPrompt, NothingToSteer, SinkConfig, SinkSteering, decode, steering_sinks
from avlens.mitigation.decoding import Branch
from avlens.mitigation.steering import _VARRun

TOY_SINKS = SinkConfig("attention", eps=0.1, dims=[])


def _text_only(prompt) -> str:
    return prompt.text.split("<|vision_bos|>")[0] + " what is it ?"


def _batch(toy, prompt, texts):
    """One left-padded batch of `texts`; every text holding the video placeholder gets the clip."""
    n = sum("<|VIDEO|>" in t for t in texts)
    return toy.prepare_media(texts, audio=[prompt.audio] * n or None, video=[prompt.video] * n or None, fps=prompt.fps,
                             use_audio_in_video=n > 0, padding_side="left")


@pytest.fixture(scope="module")
def mixed(toy, prompt):
    """[the audio-visual caption prompt, a text-only prompt]."""
    b = _batch(toy, prompt, [prompt.text, _text_only(prompt)])
    lay = b.layout
    media = lay.mask("audio") | lay.mask("video")
    assert media.any(1).tolist() == [True, False]
    return b


def _no_hooks_left(model) -> bool:
    return not any(hp.fwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------------------------ VAR, per sample
def test_var_rejects_a_batch_with_a_text_only_sample_and_names_it(toy, prompt, mixed):
    with pytest.raises(NothingToSteer, match=r"samples \[1\] have no audio, video or image tokens"):
        decode(toy, mixed, VAR(sinks=TOY_SINKS), max_new_tokens=2)
    with pytest.raises(NothingToSteer, match=r"samples \[0\] have no audio, video or image tokens"):
        decode(toy, AVPrompt(_text_only(prompt)), VAR(sinks=TOY_SINKS), max_new_tokens=2)
    assert _no_hooks_left(toy)


def test_var_counts_edited_rows_per_sample(toy, prompt):
    """Two copies of one prompt: each sample's count is the single prompt's count."""
    one = decode(toy, prompt, VAR(sinks=TOY_SINKS), max_new_tokens=2)
    assert all(x.shape == (1,) for x in one.run.edited)
    n = int(torch.stack(one.run.edited).sum())
    assert n > 0
    two = decode(toy, _batch(toy, prompt, [prompt.text, prompt.text]), VAR(sinks=TOY_SINKS), max_new_tokens=2)
    assert all(x.shape == (2,) for x in two.run.edited)
    assert torch.stack(two.run.edited).sum(0).tolist() == [n, n]


def test_var_finish_names_the_samples_it_left_unedited(toy, prompt, mixed):
    run = _VARRun([Branch(mixed)])
    run.edited = [torch.tensor([3, 0]), torch.tensor([0, 0]), torch.tensor([1, 0])]  # sample 1 never edited
    with pytest.raises(NothingToSteer, match=r"edited no attention row in samples \[1\]"):
        run.finish()
    run.edited = [torch.tensor([0, 2]), torch.tensor([1, 0])]  # each sample edited somewhere: fine
    run.finish()
    run.edited = []  # no hooked call at all: every sample unedited
    with pytest.raises(NothingToSteer, match=r"samples \[0, 1\]"):
        run.finish()


# --------------------------------------------------------------------- sink steering, per sample
def test_steering_sinks_names_the_samples_without_global_sinks(toy, mixed):
    for call in (lambda: steering_sinks(toy, mixed, TOY_SINKS),
                 lambda: SinkSteering(sinks=TOY_SINKS).fwd_hooks(toy, mixed),
                 lambda: decode(toy, mixed, AdaptiveGuidance(SinkSteering(sinks=TOY_SINKS)), max_new_tokens=2)):
        with pytest.raises(NothingToSteer, match=r"samples \[1\] of this batch of 2 have no global sinks"):
            call()
    assert _no_hooks_left(toy)


def test_steering_sinks_of_a_batch_equal_those_of_each_sample(toy, prompt):
    b = _batch(toy, prompt, [prompt.text, prompt.text])
    one = steering_sinks(toy, prompt.build(toy), TOY_SINKS)
    two = steering_sinks(toy, b, TOY_SINKS)
    for kind in ("cross", "unimodal"):
        assert two.positions(kind, 0) == two.positions(kind, 1) == one.positions(kind, 0)


# ---------------------------------------------------------------------------- argument checks
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=NAN), r"SinkSteering alpha .* published default is 0\.2, got nan"),
    (dict(alpha=INF), r"SinkSteering alpha .* published default is 0\.2, got inf"),
    (dict(alpha="0.2"), r"SinkSteering alpha .* published default is 0\.2, got '0\.2'"),
    (dict(alpha=True), r"SinkSteering alpha"),
    (dict(alpha=-0.1), r"paper's is 0\.2"),
    (dict(after=-1), r"SinkSteering after .* default is 5"),
    (dict(after=2.5), r"SinkSteering after .* integer"),
    (dict(of=0), r"SinkSteering of .* default is 28"),
    (dict(sinks="attention"), r"SinkSteering sinks must be a SinkConfig"),
])
def test_sink_steering_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        SinkSteering(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(base_strength=NAN), r"base_strength .* default is 0\.5, got nan"),
    (dict(base_strength=-0.1), r"base_strength .* default is 0\.5"),
    (dict(cap=NAN), r"cap .* default is 0\.6, got nan"),
    (dict(tm_lo=NAN), r"tm_lo .* default is 0\.4, got nan"),
    (dict(tm_lo=1.5), r"tm_lo .* in \[0, 1\]"),
    (dict(tm_width=INF), r"tm_width .* default is 0\.2"),
    (dict(w_threshold=0), r"w_threshold .* default is 0\.6"),
    (dict(gate_tm=-5), r"gate_tm .* in \[0, 1\]; AdaptiveGuidance's published default is 0\.5, got -5"),
    (dict(warmup_steps=1.5), r"warmup_steps .* integer >= 0 \(official: 1\), got 1\.5"),
    (dict(warmup_steps=True), r"warmup_steps"),
    (dict(momentum=NAN), r"momentum .* official value is 0\.5\), got nan"),
    (dict(momentum="0.5"), r"momentum .* official value is 0\.5"),
    (dict(band=(18.0, 25, 28)), r"band .* \(18, 25, 28\)"),
    (dict(steering=SinkConfig()), r"steering must be a SinkSteering"),
])
def test_adaptive_guidance_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveGuidance(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(N=-1), r"SinkConfig N .* integer >= 1; SinkConfig's published default is 3, got -1"),
    (dict(N=0), r"SinkConfig N .* default is 3, got 0"),
    (dict(N=2.0), r"SinkConfig N .* integer"),
    (dict(definition="foo"), r"definition must be 'hidden' .* or 'attention' .* default is 'hidden', got 'foo'"),
    (dict(tau=0), r"SinkConfig tau .* > 0; .* default is 25\.0 \(VAR's: 20\), got 0"),
    (dict(tau=-3.0), r"SinkConfig tau"),
    (dict(tau=NAN), r"SinkConfig tau"),
    (dict(eps=0), r"SinkConfig eps .* in \(0, 1\]; .* default is 0\.3, got 0"),
    (dict(eps=1.01), r"SinkConfig eps .* default is 0\.3, got 1\.01"),
    (dict(eps=-0.3), r"SinkConfig eps"),
    (dict(dims="12"), r"SinkConfig dims must be None"),
    (dict(dims=[3, -1]), r"SinkConfig dims"),
])
def test_sink_config_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        SinkConfig(**kw)


def test_good_arguments_are_kept():
    c = SinkConfig("attention", N=2, eps=1.0, dims=[])
    assert (c.definition, c.N, c.eps, c.dims) == ("attention", 2, 1.0, [])
    assert SinkConfig().tau == 25.0 and VAR().sinks.tau == 20.0  # the published defaults pass their own checks
    s = SinkSteering(alpha=0, after=0, of=1)
    assert (s.alpha, s.after, s.of) == (0, 0, 1)
    g = AdaptiveGuidance(base_strength=0, cap=0, tm_lo=0, tm_width=math.pi, w_threshold=1, gate_tm=1, warmup_steps=0,
                         momentum=0, band=(0, 0, 1))
    assert (g.tm_width, g.w_threshold, g.warmup_steps) == (math.pi, 1, 0)


# ------------------------------------------------------------------ avlens hallucination --model
def test_hallucination_model_without_prepare_media_exits_naming_the_family(tmp_path, monkeypatch):
    from avlens import HookedAVTransformer
    from avlens.cli import main

    stub = type("HookedVideoLLaMA2AV", (), {"tokenizer": object()})()  # a family without prepare_media
    loaded = []
    monkeypatch.setattr(HookedAVTransformer, "from_pretrained", lambda path, **kw: loaded.append(path) or stub)
    with pytest.raises(SystemExit, match=r"the HookedVideoLLaMA2AV family cannot build prompts from raw media") as e:
        main(["hallucination", "--bench-dir", str(tmp_path / "bench"), "--out", str(tmp_path / "out"),
              "--model", "some/videollama2"])
    assert loaded == ["some/videollama2"]
    msg = str(e.value)
    assert "prepare_media" in msg and "evaluate_folder(model, root, prompt=..., media=...)" in msg
    assert "model.prepare(" in msg and "avlens.mitigation.decode(model, batch, method)" in msg
    assert not (tmp_path / "out").exists()  # nothing was run or written
