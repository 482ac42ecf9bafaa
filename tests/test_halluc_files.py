"""The real-benchmark path of the hallucination harness: an AVHBench-format folder (a questions
file of {video_id, task, text, label}, videos/{id}.mp4, audios/{id}.wav, no captions.json) written
here with real media files (PyAV: H.264 video with a PCM track in .mp4, PCM .wav), read back by
`FileMedia`, and run end to end by `avlens hallucination --bench-dir` on the toy model.

References: the waveforms and frames the test wrote (PCM is exact after 16-bit quantisation;
H.264 at crf 10 within a loose bound); which file each sample's audio came from is told apart by
writing different sounds to the .wav and to the video's own track; the table's accuracy is
checked against the predictions compared with the labels directly (the toy answers exactly
"yes" / "no")."""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av")

from avlens.data import synth, tasks  # noqa: E402
from avlens.data.halluc_bench import (AUDIO_FILE, VIDEO_TRACK, FileMedia, evaluate_folder,  # noqa: E402
                                      read_avhbench_folder)
from test_media_files import write_audio, write_video  # noqa: E402  (the project's PyAV writers)

AV = "Audio-driven Video Hallucination"
VA = "Video-driven Audio Hallucination"
Q = 1 / 32768  # 16-bit PCM quantisation step

# video_id -> (class, condition, seed, what is on disk)
CLIPS = {
    "00001": ("dog", "offscreen", 3, "wav + video with a (silent) track"),
    "00002": ("car", "clear", 4, "video with its track, no wav: fallback"),
    "00003": ("bird", "clear", 5, "video without a track, no wav: skipped"),
    "00004": ("bell", "clear", 6, "nothing on disk: skipped"),
    "00005": ("piano", "clear", 7, "corrupt wav + video with a track: skipped, never replaced"),
}


def _clip(vid):
    cls, cond, seed, _ = CLIPS[vid]
    return synth.make_clip(cls, cond, seed)


def _mp4(path, clip, track):
    return write_video(path, clip.frames, int(clip.fps), codec="libx264", pix_fmt="yuv420p", audio=track,
                       options={"crf": "10"})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("AVHBench_v0")
    (root / "videos").mkdir()
    (root / "audios").mkdir()
    c1, c2, c3, c5 = (_clip(v) for v in ("00001", "00002", "00003", "00005"))
    _mp4(root / "videos/00001.mp4", c1, np.zeros_like(c1.waveform))     # the track is silence ...
    write_audio(root / "audios/00001.wav", c1.waveform)                   # ... the wav holds the sound
    _mp4(root / "videos/00002.mp4", c2, c2.waveform)
    _mp4(root / "videos/00003.mp4", c3, None)
    _mp4(root / "videos/00005.mp4", c5, c5.waveform)
    (root / "audios/00005.wav").write_bytes(b"RIFF\x00\x00 not a wav file")
    recs = []
    for vid in CLIPS:
        for ex in tasks.presence_probes(_clip(vid), seed=0, n_absent=1):
            recs.append({"video_id": vid, "task": VA if ex.probe_modality == "audio" else AV, "text": ex.question,
                         "label": ex.answer.capitalize()})   # AVHBench writes "Yes" / "No"
        recs.append({"video_id": vid, "task": "AV Captioning", "text": "Describe what you see and hear in a single sentence.",
                     "label": "A reference sentence."})
    (root / "QA.json").write_text(json.dumps(recs, indent=1))   # AVHBench's own name; no captions.json
    caps = [{"video_id": v, "prompt": tasks.caption(_clip(v)).question,
             "objects": sorted(set(_clip(v).truth.heard) | set(_clip(v).truth.seen))} for v in ("00001", "00002")]
    (root / "caption_set.json").write_text(json.dumps(caps))
    return root, recs


def test_file_media_reads_the_files_and_records_where_the_audio_came_from(bench):
    root, _ = bench
    media = FileMedia(str(root))
    c1, c2 = _clip("00001"), _clip("00002")
    wave, frames, fps = media("00001")
    # the wav (the clip's sound), not the video's silent track
    assert wave.shape == c1.waveform.shape and np.abs(wave - c1.waveform).max() <= Q
    assert frames.shape == c1.frames.shape and fps == 2.0
    assert np.abs(frames.astype(int) - c1.frames).mean() < 4          # H.264, crf 10
    assert media.log["00001"] == {"video_id": "00001", "video": "videos/00001.mp4", "audio": "audios/00001.wav",
                                  "audio_source": AUDIO_FILE}
    with pytest.warns(UserWarning, match="00002: audios/00002.wav is missing"):
        wave, frames, _ = media("00002")                                 # no wav: the video's own track
    assert np.abs(wave - c2.waveform).max() <= Q
    assert media.log["00002"]["audio_source"] == VIDEO_TRACK
    assert media.log["00002"]["note"] == "audios/00002.wav is missing: the audio is the video's own track (videos/00002.mp4)"
    with pytest.raises(FileNotFoundError, match=r"no audio for '00003'.*00003.wav is missing.*00003.mp4 has no audio track"):
        media("00003")
    with pytest.raises(FileNotFoundError, match="missing video .*00004.mp4"):
        media("00004")
    with pytest.raises(ValueError, match="00005.wav"):                   # corrupt wav: not replaced by the track
        media("00005")
    assert media.log["00003"]["audio_source"] is None and "no audio track" in media.log["00003"]["error"]
    assert "00004.mp4" in media.log["00004"]["error"] and "00005.wav" in media.log["00005"]["error"]
    strict = FileMedia(str(root), audio_fallback=False)
    with pytest.raises(FileNotFoundError, match="audio_fallback=False"):
        strict("00002")


def test_bench_dir_command_runs_end_to_end_and_records_skips_and_fallbacks(bench, tmp_path, capsys):
    from avlens.cli import main

    root, recs = bench
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="00002: audios/00002.wav is missing"):
        assert main(["hallucination", "--bench-dir", str(root), "--out", str(out), "--methods", "plain,vcd",
                     "--captions", "caption_set.json"]) == 0
    printed = capsys.readouterr().out
    assert "5 videos read" in printed and "3 skipped" in printed and "1 with the audio taken from the video's own track" in printed
    assert "audio fallback 00002: audios/00002.wav is missing" in printed and "| vcd |" in printed
    for f in ("table.csv", "table.json", "table.md", "predictions_plain.jsonl", "predictions_vcd.jsonl", "skipped.json",
              "media.json", "bench/avhbench.json", "bench/captions.json"):
        assert (out / f).exists(), f
    skipped = {s["video_id"]: s for s in json.loads((out / "skipped.json").read_text())}
    assert sorted(skipped) == ["00003", "00004", "00005"]
    assert "has no audio track" in skipped["00003"]["reason"] and "missing video" in skipped["00004"]["reason"]
    assert skipped["00004"]["video"] == "videos/00004.mp4" and skipped["00005"]["audio"] == "audios/00005.wav"
    media = {m["video_id"]: m for m in json.loads((out / "media.json").read_text())}
    assert media["00001"]["audio_source"] == AUDIO_FILE and media["00002"]["audio_source"] == VIDEO_TRACK
    yes_no = [r for r in recs if r["video_id"] in ("00001", "00002") and r["task"] != "AV Captioning"]
    for method in ("plain", "vcd"):
        preds = [json.loads(line) for line in (out / f"predictions_{method}.jsonl").read_text().splitlines()]
        assert [(r["video_id"], r["text"]) for r in preds if r["kind"] == "yes_no"] == [(r["video_id"], r["text"]) for r in yes_no]
        assert sum(r["kind"] == "caption" for r in preds) == 2
        # every record of the fallback sample says so; the others name their audio file
        for r in preds:
            if r["video_id"] == "00002":
                assert r["audio_source"] == VIDEO_TRACK and "audios/00002.wav is missing" in r["media_note"]
            else:
                assert r["audio_source"] == AUDIO_FILE and "media_note" not in r
        table = {row["method"]: row for row in json.loads((out / "table.json").read_text())}
        # the toy answers exactly "yes" / "no": accuracy = share of predictions equal to the label
        # (the questions of one clip are distinct, so MAD's duplicate rule drops nothing)
        yn = [r for r in preds if r["kind"] == "yes_no"]
        assert {r["pred"] for r in yn} <= {"yes", "no"}
        # 6 probes of 00001 (offscreen: heard, seen, absent) + 4 of 00002 (clear: no other-modality object)
        assert table[method]["n_yes_no"] == len(yes_no) == 10 and table[method]["n_captions"] == 2
        assert table[method]["accuracy"] == pytest.approx(np.mean([r["pred"] == r["label"].lower() for r in yn]))


def test_evaluate_folder_without_out_leaves_nothing_behind(bench, tmp_path, monkeypatch):
    from avlens.toy import load_toy

    root, _ = bench
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)      # mkdtemp reads TMPDIR again
    with pytest.warns(UserWarning, match="00002"):
        res = evaluate_folder(load_toy(), str(root), max_items=7, n_boot=10)
    assert list(tmp_path.iterdir()) == []                # the staged files were removed
    # max_items counts yes/no rows (AV Captioning rows are not run: no caption set, no captions.json):
    # the 6 probes of 00001 and the first of 00002
    assert res.table.iloc[0]["n_yes_no"] == 7 and res.table.iloc[0]["n_captions"] == 0
    assert [s["video_id"] for s in res.skipped] == []
    assert {r["video_id"] for r in res.predictions["plain"]} == {"00001", "00002"}


def test_bad_folders_and_arguments_say_what_is_wrong(bench, tmp_path):
    from avlens.cli import main

    root, recs = bench
    with pytest.raises(SystemExit) as e:        # argparse: --questions only means something with --bench-dir
        main(["hallucination", "--out", str(tmp_path), "--questions", "QA.json"])
    assert e.value.code == 2
    with pytest.raises(SystemExit, match="does not exist or is not a folder"):
        main(["hallucination", "--bench-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.json").write_text("[]")
    with pytest.raises(SystemExit, match=r"looked for \['avhbench.json', 'QA.json'\]; found \['notes.json'\].*--questions"):
        main(["hallucination", "--bench-dir", str(empty), "--out", str(tmp_path / "o")])
    (empty / "avhbench.json").write_text(json.dumps([{**recs[0], "task": "Audio Hallucination"}]))
    with pytest.raises(SystemExit, match=r"tasks \['Audio Hallucination'\] that AVHBench does not have"):
        main(["hallucination", "--bench-dir", str(empty), "--out", str(tmp_path / "o")])
    (empty / "avhbench.json").write_text(json.dumps([{"video_id": "1", "task": AV, "question": "q", "label": "Yes"}]))
    with pytest.raises(ValueError, match=r"record 0 .* lacks \['text'\]"):
        read_avhbench_folder(str(empty))
    with pytest.raises(SystemExit, match="caption set 'gone.json' not found"):
        main(["hallucination", "--bench-dir", str(root), "--out", str(tmp_path / "o"), "--captions", "gone.json"])


def test_model_option_loads_a_checkpoint_folder_and_prompts_it_with_the_template(bench, tmp_path):
    """`--model` loads an AVLLM with `HookedAVTransformer.from_pretrained` (here the shipped toy's
    checkpoint folder, as a user's local folder) and prompts it with `--prompt-template`: written in
    the toy's own format it reproduces the default (toy) run exactly; the default template is the
    Qwen-Omni chat format."""
    import warnings

    from avlens.cli import main
    from avlens.mitigation.compare import omni_prompt, template_prompt
    from avlens.toy import TOY_DIR

    root, _ = bench
    toy_format = "<|im_start|> user <|vision_bos|><|VIDEO|><|vision_eos|> {question} <|im_end|> <|im_start|> assistant"
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the audio fallback of 00002 (tested above)
        for name, extra in (("toy", []), ("model", ["--model", str(TOY_DIR), "--prompt-template", toy_format]),
                            ("omni", ["--model", str(TOY_DIR)])):
            out = tmp_path / name
            assert main(["hallucination", "--bench-dir", str(root), "--out", str(out), "--methods", "plain",
                         "--max-items", "6"] + extra) == 0
            runs[name] = [json.loads(line)["pred"] for line in (out / "predictions_plain.jsonl").read_text().splitlines()]
    assert runs["model"] == runs["toy"] and len(runs["toy"]) == 6
    assert len(runs["omni"]) == 6
    q = "Is there a dog?"
    assert template_prompt(toy_format)(q) == toy_format.replace("{question}", q)
    text = omni_prompt(q)
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith("<|im_start|>assistant\n")
    assert "<|vision_bos|><|VIDEO|><|vision_eos|>Is there a dog?<|im_end|>" in text
    for bad, match in (("no field", "exactly one"), ("{question} {other}", "braces")):
        with pytest.raises(ValueError, match=match):
            template_prompt(bad)
    with pytest.raises(SystemExit, match="--model needs --bench-dir"):
        main(["hallucination", "--out", str(tmp_path / "x"), "--model", str(TOY_DIR)])
    with pytest.raises(SystemExit, match="--prompt-template needs --model"):
        main(["hallucination", "--bench-dir", str(root), "--out", str(tmp_path / "y"), "--prompt-template", toy_format])
