"""The unimodal-dominance study on the shipped toy model: dominance from raw-zeroed runs, one
sample's IE against a brute-force patched run, skip reasons, resuming, and a 50-sample run."""

import json

import numpy as np
import pytest
import torch

from avlens.analysis import HubStudy, cross_modal_hub_study, toy_samples
from avlens.data import synth, tasks
from avlens.toy import toy_available

pytestmark = pytest.mark.skipif(not toy_available(), reason="no toy checkpoint shipped")
KW = dict(min_audio_chunks=1, definition="attention", eps=0.1, progress=False)


@pytest.fixture(scope="module")
def clips():
    return synth.make_dataset(50, seed=5)


@pytest.fixture(scope="module")
def study(toy, clips):
    return cross_modal_hub_study(toy, toy_samples(toy, clips), **KW)


def _answer(model, batch) -> str:
    with torch.no_grad():
        return model.tokenizer.decode([int(model(batch)[0, -1].argmax())]).strip()


def test_fifty_samples_all_kept_or_skipped_with_a_reason(study):
    assert isinstance(study, HubStudy) and len(study.records) == 50
    for r in study.records:
        assert r["skipped"] is None or isinstance(r["skipped"], str)
    assert study.kept, "the toy study should keep some dominant samples"
    t = study.table()
    assert set(t["token_set"]) >= {"all", "sink", "random"}
    assert (t["ie_clean_lo"] <= t["ie_clean"] + 1e-9).all() and (t["ie_clean"] <= t["ie_clean_hi"] + 1e-9).all()
    assert study.settings["definition"] == "attention"
    assert study.plot().kind == "bars" and len(study.plot(backend="plotly").data) > 0


def test_dominance_comes_from_runs_with_the_raw_input_zeroed(toy, clips, study):
    """y_a / y_v recomputed independently: prepare_media with zero frames / a zero waveform."""
    checked = 0
    for clip, r in zip(clips, study.records):
        if "y" not in r:
            continue
        text = tasks.prompt_text(tasks.multiple_choice(clip))
        kw = dict(fps=synth.FPS, use_audio_in_video=True)
        y_av = _answer(toy, toy.prepare_media(text, audio=clip.waveform, video=clip.frames, **kw))
        y_a = _answer(toy, toy.prepare_media(text, audio=clip.waveform, video=np.zeros_like(clip.frames), **kw))
        y_v = _answer(toy, toy.prepare_media(text, audio=np.zeros_like(clip.waveform), video=clip.frames, **kw))
        assert r["y"] == {"av": y_av, "a": y_a, "v": y_v}
        checked += 1
        if checked == 6:
            break
    assert checked == 6


def test_sample_ies_equal_brute_force_patched_runs(toy, clips, study):
    """Every token set's IE_clean / IE_corrupt (x 100, to 1e-3: 1e-5 in probability) of two kept samples (one per dominant modality when
    there are both) against hand-written patched runs."""
    kept = [i for i, r in enumerate(study.records) if r["skipped"] is None]
    picks = [next(i for i in kept if study.records[i]["dominant"] == d) for d in ("audio", "video")
             if any(study.records[i]["dominant"] == d for i in kept)]
    for k in picks:
        r, clip = study.records[k], clips[k]
        text = tasks.prompt_text(tasks.multiple_choice(clip))
        kw = dict(fps=synth.FPS, use_audio_in_video=True)
        clean = toy.prepare_media(text, audio=clip.waveform, video=clip.frames, **kw)
        if r["dominant"] == "audio":  # corrupt: the dominant modality's raw input zeroed
            corrupt = toy.prepare_media(text, audio=np.zeros_like(clip.waveform), video=clip.frames, **kw)
            o_corrupt = r["y"]["v"]
        else:
            corrupt = toy.prepare_media(text, audio=clip.waveform, video=np.zeros_like(clip.frames), **kw)
            o_corrupt = r["y"]["a"]
        ids = {w: toy.tokenizer.convert_tokens_to_ids(w) for w in (r["y"]["av"], o_corrupt)}
        o_clean, o_corrupt = ids[r["y"]["av"]], ids[o_corrupt]
        names = [f"blocks.{l}.ln1.hook_normalized" for l in range(toy.cfg.n_layers)]
        _, cache = toy.run_with_cache(clean, names_filter=lambda n: n in names)

        def probs(batch, positions=None):
            hooks = []
            if positions is not None:
                idx = torch.tensor(positions)

                def write(x, hook):
                    x = x.clone()
                    x[:, idx] = cache[hook.name][:, idx]
                    return x

                hooks = [(n, write) for n in names]
            with torch.no_grad():
                return toy.run_with_hooks(batch, fwd_hooks=hooks)[0, -1].softmax(-1)

        p_corrupt = probs(corrupt)
        other = "video" if r["dominant"] == "audio" else "audio"
        sets = {"all": clean.layout.positions(other, 0).tolist(), "sink": r["sinks"], "random": r["random"],
                "cross_modal_sink": r["cross_modal_sink"], "unimodal_sink": r["unimodal_sink"]}
        assert len(r["random"]) == len(r["sinks"]) and all(clean.layout.labels(0)[p] == other for p in r["random"])
        for name, positions in sets.items():
            if name not in r["ie_clean"]:
                assert not positions
                continue
            p = probs(corrupt, positions)
            assert r["ie_clean"][name] == pytest.approx(100 * float(p[o_clean] - p_corrupt[o_clean]), abs=1e-3), name
            assert r["ie_corrupt"][name] == pytest.approx(100 * float(p_corrupt[o_corrupt] - p[o_corrupt]), abs=1e-3), name
        assert sorted(r["cross_modal_sink"] + r["unimodal_sink"]) == sorted(r["sinks"])


def test_resumes_from_records_without_rerunning(toy, clips, tmp_path, monkeypatch):
    import avlens.analysis.study as S

    path = tmp_path / "study.jsonl"
    samples = toy_samples(toy, clips[:6])
    first = cross_modal_hub_study(toy, samples, records=str(path), **KW)
    assert len(path.read_text().splitlines()) == 6

    def boom(*a, **k):
        raise AssertionError("a recorded sample was re-run")

    monkeypatch.setattr(S, "_one_sample", boom)
    again = cross_modal_hub_study(toy, samples, records=str(path), **KW)
    assert json.dumps(again.records, sort_keys=True) == json.dumps(first.records, sort_keys=True)
    # a run killed while writing leaves a truncated line: ignored, and that sample is re-run
    with open(path, "a") as f:
        f.write('{"id": "99:x", "skip')
    monkeypatch.undo()
    cross_modal_hub_study(toy, samples, records=str(path), **KW)
    # other settings: the old records are not reused
    calls = []
    real = S._one_sample
    monkeypatch.setattr(S, "_one_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = cross_modal_hub_study(toy, samples, records=str(path), **{**KW, "eps": 0.2})
    assert len(calls) == 6 and other.settings["eps"] == 0.2


def test_skip_reasons_and_bad_arguments(toy, clips):
    clip = clips[0]
    text = tasks.prompt_text(tasks.multiple_choice(clip))
    audio_only = toy.prepare_media(text.replace("<|vision_bos|><|VIDEO|><|vision_eos|>", "<|audio_bos|><|AUDIO|><|audio_eos|>"),
                                   audio=clip.waveform)
    no_raw = toy_samples(toy, [clip])[0]
    no_raw.batch.raw = {}
    no_raw.id = "no_raw"
    st = cross_modal_hub_study(toy, [audio_only, no_raw], **KW)
    reasons = [r["skipped"] for r in st.records]
    assert "no video" in reasons[0] and "prepare_media" in reasons[1]
    # video-dominant samples with too few audio chunks are skipped (official threshold 5; toy clips have 2)
    st = cross_modal_hub_study(toy, toy_samples(toy, clips[:20]), **{**KW, "min_audio_chunks": 5})
    assert all(r["dominant"] != "video" for r in st.kept)
    assert any("min_audio_chunks" in (r["skipped"] or "") for r in st.records) or not any(r.get("dominant") == "video" for r in st.records)
    with pytest.raises(ValueError, match="positive integer"):
        cross_modal_hub_study(toy, [audio_only], N=0, progress=False)
    with pytest.raises(ValueError, match="definition"):
        cross_modal_hub_study(toy, [audio_only], definition="both", progress=False)
    with pytest.raises(ValueError, match="massive activations"):
        cross_modal_hub_study(toy, toy_samples(toy, clips[:2]), definition="hidden", progress=False)
    # object positions outside the non-dominant modality: the sample is skipped with the reason
    s = toy_samples(toy, clips[:8])
    for x in s:
        x.object_positions = {"audio": [0], "video": [0]}  # position 0 is text
    st = cross_modal_hub_study(toy, s, **KW)
    assert st.records and not st.kept
    assert any("not audio positions" in (r["skipped"] or "") or "not video positions" in (r["skipped"] or "") for r in st.records)
    assert any("sinks in the non-dominant modality" in (r["skipped"] or "") for r in study_records(toy, clips))
    with pytest.raises(ValueError, match="unique"):
        s = toy_samples(toy, clips[:2])
        s[1].id = s[0].id
        cross_modal_hub_study(toy, s, **KW)


def study_records(toy, clips):
    return cross_modal_hub_study(toy, toy_samples(toy, clips[:12]), **KW).records
