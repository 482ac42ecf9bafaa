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


def test_mad_regex_word_boundaries_bind_to_the_ends_only():
    assert parse_yes_no("That is untrue.", "mad") == "yes"      # "true" without a boundary
    assert parse_yes_no("Incorrect.", "mad") == "yes"           # "correct" inside "incorrect"
    assert parse_yes_no("Nothing is there", "mad") == "no"      # "\\bno" prefix
    assert parse_yes_no("False", "mad") == "no"
    assert parse_yes_no("Maybe, hard to say", "mad") == "maybe"  # normalised first word
    assert parse_yes_no("", "mad") == ""
    assert parse_yes_no("yesterday it rained", "mad") == "yes"  # "\\byes" prefix


def test_avhbench_mad_parser_drops_errors_and_duplicates(tmp_path):
    recs = [
        rec("v1", AV, "Is a dog visible?", "yes", "Yes."),
        rec("v1", AV, "Is a dog visible?", "yes", "No."),            # duplicate: dropped (first kept)
        rec("v2", AV, "Is a cat visible?", "no", "ERROR: timeout"),  # dropped
        rec("v2", AV, "Is a car visible?", "no", "Incorrect, none"),  # parses yes (quirk): wrong
        rec("v3", VA, "Is there a dog sound?", "no", "no"),
        rec("v3", VA, "Is there a cat sound?", "yes", "Hmm"),       # unparseable "hmm": wrong
        rec("v4", M, "Do they match?", "yes", "true"),
        rec("v5", "AV Captioning", "Describe.", "a dog barks", "a dog"),  # not yes/no: ignored
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    s = score_avhbench(str(path), parser="mad")
    assert s["dropped"] == {"error": 1, "duplicate": 1}
    av, va = s["per_task"][AV], s["per_task"][VA]
    # AV: (yes,yes) correct, (no, parsed yes) wrong -> acc 1/2; preds yes twice, 1 TP -> P 1/2, R 1/1
    assert av["n"] == 2 and av["accuracy"] == 0.5 and av["precision"] == 0.5 and av["recall"] == 1.0
    assert av["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5) and av["yes_ratio"] == 1.0
    # VA: (no,no) correct, (yes,"hmm") wrong -> acc 1/2, no yes predictions -> P 0, R 0, 1 unparsed
    assert va["accuracy"] == 0.5 and va["precision"] == 0.0 and va["recall"] == 0.0 and va["unparsed"] == 1
    assert s["per_task"][M]["accuracy"] == 1.0
    assert s["overall_mad"] == 0.5                  # mean of the two hallucination tasks
    assert s["pooled"]["n"] == 5 and s["pooled"]["accuracy"] == pytest.approx(3 / 5)


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
