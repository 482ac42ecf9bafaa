"""The benchmark scorers against hand-made prediction files, including the published scripts'
quirks (METHODS.md section 7): every expected number below is worked out by hand."""

import json

import pytest

from avlens.analysis.hallucination import (AV_OBJECTS, ObjectVocabulary, avcd_correct, parse_yes_no, score_avhbench,
                                           score_captions, score_cmm)

AV = "Audio-driven Video Hallucination"
VA = "Video-driven Audio Hallucination"
M = "AV Matching"


def rec(vid, task, text, label, pred):
    return {"video_id": vid, "task": task, "text": text, "label": label, "pred": pred}


def test_avcd_rule_is_a_raw_substring_test():
    assert avcd_correct("Yes, there is.", "Yes")
    assert avcd_correct("I don't know", "no")          # "know" contains "no"
    assert avcd_correct("yes and no", "yes") and avcd_correct("yes and no", "no")
    assert not avcd_correct("Absolutely.", "yes")      # neither yes nor no
    assert not avcd_correct("Nope, yes", "maybe")
    # eval_acc.py strips the label (and the prediction) before the substring test
    assert avcd_correct("yes", " Yes\n") and avcd_correct("  No.  ", "no ")


def test_mad_parser_follows_score_py():
    """MAD VideoLLaMA2/score.py: normalize_answer(extract_answer(pred)), each case traced through
    the script: word-bounded yes patterns first, then no patterns, then the first-word fallback."""
    assert parse_yes_no("Incorrect.", "mad") == "no"            # \bcorrect\b does not match inside "incorrect"
    assert parse_yes_no("No, that is correct", "mad") == "yes"  # yes patterns are tried first
    assert parse_yes_no("False", "mad") == "no"
    assert parse_yes_no("It is negative", "mad") == "no"
    assert parse_yes_no("Affirmative!", "mad") == "yes"
    # fallback: normalize_answer(first word): one trailing punctuation mark removed, then the lists
    assert parse_yes_no("Y.", "mad") == "yes" and parse_yes_no("n", "mad") == "no"
    assert parse_yes_no("1.", "mad") == "yes" and parse_yes_no("0", "mad") == "no"
    assert parse_yes_no("Y..", "mad") == "yes"                  # "y." then normalised again in calculate_accuracy
    # ... then the substring rule
    assert parse_yes_no("Unknown.", "mad") == "no"              # "unknown" contains "no"
    assert parse_yes_no("Nothing is there", "mad") == "no"
    assert parse_yes_no("yesterday it rained", "mad") == "yes"
    assert parse_yes_no("That is untrue.", "mad") == "that"     # \btrue\b misses "untrue": the first word
    assert parse_yes_no("Maybe, hard to say", "mad") == "maybe"
    assert parse_yes_no("", "mad") == "" and parse_yes_no("   ", "mad") == ""


def test_avhbench_mad_parser_drops_duplicates_then_errors(tmp_path):
    recs = [
        rec("v1", AV, "Is a dog visible?", "yes", "Yes."),
        rec("v1", AV, "Is a dog visible?", "yes", "No."),            # duplicate: dropped (first kept)
        rec("v2", AV, "Is a cat visible?", "no", "ERROR: timeout"),  # dropped
        rec("v2", AV, "Is a car visible?", "no", "No, that is correct"),  # parses yes: wrong
        rec("v3", VA, "Is there a dog sound?", "no", "no"),
        rec("v3", VA, "Is there a cat sound?", "yes", "Hmm"),       # "hmm": wrong, unparsed
        rec("v3", VA, "Is there a car sound?", "No", "Not sure"),   # first word "not" -> no: right
        rec("v6", VA, "Is there a bird sound?", "yes", "ERROR: x"),
        rec("v6", VA, "Is there a bird sound?", "yes", "Yes"),      # duplicate of an ERROR row: both go
        rec("v4", M, "Do they match?", "yes", "true"),
        rec("v5", "AV Captioning", "Describe.", "a dog barks", "a dog"),  # not yes/no: ignored
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    s = score_avhbench(str(path), parser="mad")
    assert s["dropped"] == {"error": 2, "duplicate": 2}
    av, va = s["per_task"][AV], s["per_task"][VA]
    # AV: (yes,yes) correct, (no, parsed yes) wrong -> acc 1/2; preds yes twice, 1 TP -> P 1/2, R 1/1
    assert av["n"] == 2 and av["accuracy"] == 0.5 and av["precision"] == 0.5 and av["recall"] == 1.0
    assert av["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5) and av["yes_ratio"] == 1.0
    # VA: no/no right, yes/"hmm" wrong, no/no right -> 2/3; no yes predictions -> P 0, R 0; 1 unparsed
    assert va["n"] == 3 and va["accuracy"] == pytest.approx(2 / 3)
    assert va["precision"] == 0.0 and va["recall"] == 0.0 and va["unparsed"] == 1
    assert s["per_task"][M]["accuracy"] == 1.0
    assert s["overall_mad"] == pytest.approx((1 / 2 + 2 / 3) / 2)   # unweighted mean of the two tasks
    assert s["overall_script"] == pytest.approx(3 / 5)               # pooled over AV + VA, Matching left out
    assert s["pooled"]["n"] == 6 and s["pooled"]["accuracy"] == pytest.approx(4 / 6)


def test_mad_overall_script_truncates_each_task_count_like_the_script():
    # score.py stores correct_predictions = int(accuracy * n): 15/22*22 = 14.999... -> 14
    recs = [rec("a", AV, f"q{i}", "yes", "yes" if i < 15 else "no") for i in range(22)]
    recs += [rec("b", VA, "q", "no", "no")]
    s = score_avhbench(recs, parser="mad")
    assert s["per_task"][AV]["accuracy"] == pytest.approx(15 / 22)
    assert s["overall_script"] == pytest.approx((14 + 1) / 23)


def test_avhbench_avcd_parser_keeps_duplicates_and_uses_substrings():
    recs = [
        rec("v1", AV, "q1", "yes", "Yes."),
        rec("v1", AV, "q1", "yes", "No."),               # duplicate kept by AVCD's script
        rec("v2", AV, "q2", "no", "I don't know"),       # "know" -> contains "no": correct
        rec("v3", VA, "q3", "no", "yes and no"),         # correct (contains "no"); parsed yes
        rec("v3", VA, "q4", "yes", "ERROR: x"),          # kept, no yes/no: wrong
    ]
    s = score_avhbench(recs, parser="avcd")
    assert s["dropped"] == {"error": 0, "duplicate": 0}
    assert s["per_task"][AV]["n"] == 3 and s["per_task"][AV]["accuracy"] == pytest.approx(2 / 3)
    assert s["per_task"][VA]["accuracy"] == 0.5
    assert s["per_task"][VA]["yes_ratio"] == 0.5 and s["per_task"][VA]["unparsed"] == 1
    assert s["overall_mad"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_avhbench_names_missing_keys():
    with pytest.raises(KeyError, match="pred_key"):
        score_avhbench([{"video_id": 1, "task": AV, "text": "q", "label": "yes", "prediction": "yes"}])


def test_cmm_first_five_characters_rule():
    rows = [
        {"category": "c", "sub_category": "s1", "granularity": "object", "question": "q", "answer": "yes", "pred": " Yes, a dog."},
        {"category": "c", "sub_category": "s1", "granularity": "object", "question": "q", "answer": "no", "pred": "There is no dog"},  # 'no' not in first 5
        {"category": "c", "sub_category": "s2", "granularity": "event", "question": "q", "answer": "no", "pred": "Nope"},  # 'no' in 'nope'
        {"category": "c", "sub_category": "s2", "granularity": "event", "question": "q", "answer": "yes", "pred": "I think yes"},  # too late
    ]
    s = score_cmm(rows)
    assert s["sub_category"]["s1"] == {"n": 2, "accuracy": 0.5, "pa": 1.0, "hr": 0.0}
    assert s["sub_category"]["s2"] == {"n": 2, "accuracy": 0.5, "pa": 0.0, "hr": 1.0}
    assert s["granularity"]["event"]["accuracy"] == 0.5
    assert s["overall"] == 0.5 and s["pooled"]["accuracy"] == 0.5


def test_chair_counts_mentions_synonyms_plurals_and_alternatives():
    gt = [{"video_id": "a", "prompt": "p", "objects": ["dog/puppy", "car"]},
          {"video_id": "b", "prompt": "p", "objects": ["bell", "zither"]}]
    preds = [{"video_id": "a", "pred": "Two puppies bark near an automobile while a cat meows."},  # dog, car, cat(h)
             {"video_id": "b", "pred": "A church bell rings and a zither plays; bells again."}]      # bell, zither, bell
    s = score_captions(preds, gt)
    assert s["per_caption"][0]["mentions"] == ["dog", "car", "cat"]
    assert s["per_caption"][1]["mentions"] == ["bell", "zither", "bell"]  # 'church bell' as one phrase; unknown GT word learnt
    assert s["mentions"] == 6 and s["hallucinated"] == 1
    assert s["chair_i"] == pytest.approx(1 / 6) and s["chair_s"] == 0.5 and s["recall"] == 1.0


def test_vocabulary_is_extendable():
    v = ObjectVocabulary({"tram": ["streetcar"]})
    assert v.mentions("Streetcars pass a tram") == ["tram", "tram"]
    assert "dog" in AV_OBJECTS.synonyms and AV_OBJECTS.canonical("kittens") == "cat"


def _fake_compare(monkeypatch, tmp_path, answers, missing=()):
    """compare_methods on a hand-made avhbench.json with decoding faked: the "model" answers each
    question with `answers[question]`; `media` raises FileNotFoundError for the ids in `missing`."""
    import types

    import torch

    import avlens.mitigation.compare as cmp

    texts = sorted(set(answers.values()))

    def fake_decode(model, p, method, n_new, eos):
        return types.SimpleNamespace(tokens=torch.tensor([[texts.index(answers[p.text])]]), seconds=0.01,
                                     setup_seconds=0.0, prefill_seconds=0.005, n_steps=0)

    monkeypatch.setattr(cmp, "decode", fake_decode)
    model = types.SimpleNamespace(tokenizer=types.SimpleNamespace(eos_token_id=None, decode=lambda ids: texts[ids[0]]))

    def media(vid):
        if vid in missing:
            raise FileNotFoundError(f"videos/{vid}.mp4")
        return None, None, 2.0

    return lambda recs, parser: (
        (tmp_path / "avhbench.json").write_text(json.dumps(recs)),
        (tmp_path / "captions.json").write_text("[]"),
        cmp.compare_methods(model, str(tmp_path), media=media, prompt=lambda q: q, parser=parser, n_boot=20),
    )[-1]


def test_compare_methods_accuracy_uses_the_parsers_own_rule_and_records(monkeypatch, tmp_path):
    recs = [rec("v1", AV, "q1", "yes", ""), rec("v1", AV, "q1", "yes", ""),   # duplicate question
            rec("v2", AV, "q2", "no", ""), rec("v3", VA, "q3", "no", "")]
    answers = {"q1": "Yes", "q2": "I don't know", "q3": "Incorrect."}
    run = _fake_compare(monkeypatch, tmp_path, answers)
    # AVCD: all 4 kept; q1 right twice, q2 right ("know" contains "no"), q3 wrong ("incorrect." holds
    # neither "yes" nor "no") -> 3/4; parsed yes on q1 twice -> yes-ratio 2/4
    t = run(recs, "avcd").table.iloc[0]
    assert t["n_yes_no"] == 4 and t["accuracy"] == pytest.approx(3 / 4) and t["yes_ratio"] == pytest.approx(1 / 2)
    s = score_avhbench([{**r, "pred": answers[r["text"]]} for r in recs], parser="avcd")
    assert t["f1"] == pytest.approx(s["pooled"]["f1"]) and s["pooled"]["accuracy"] == pytest.approx(3 / 4)
    # MAD: the duplicate dropped; q1 yes right, q2 first word "i" wrong, q3 "incorrect" -> no right -> 2/3
    t = run(recs, "mad").table.iloc[0]
    assert t["accuracy"] == pytest.approx(2 / 3) and t["yes_ratio"] == pytest.approx(1 / 3)
    s = score_avhbench([{**r, "pred": answers[r["text"]]} for r in recs], parser="mad")
    assert t["f1"] == pytest.approx(s["pooled"]["f1"]) and s["pooled"]["accuracy"] == pytest.approx(2 / 3)


def test_compare_methods_skips_and_records_missing_media(monkeypatch, tmp_path):
    recs = [rec("v1", AV, "q1", "yes", ""), rec("gone", AV, "q2", "no", ""), rec("v3", VA, "q3", "no", "")]
    run = _fake_compare(monkeypatch, tmp_path, {"q1": "yes", "q2": "no", "q3": "no"}, missing=("gone",))
    res = run(recs, "mad")
    assert [r["video_id"] for r in res.skipped] == ["gone"] and "FileNotFoundError" in res.skipped[0]["reason"]
    assert res.table.iloc[0]["n_yes_no"] == 2 and res.table.iloc[0]["accuracy"] == 1.0
    assert [r["video_id"] for r in res.predictions["plain"]] == ["v1", "v3"]
    out = tmp_path / "out"
    res.save(str(out))
    assert json.loads((out / "skipped.json").read_text()) == res.skipped
