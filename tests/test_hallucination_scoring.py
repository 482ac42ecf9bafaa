"""The benchmark scorers against hand-made prediction files, including the published scripts'
quirks (METHODS.md section 7): every expected number below is worked out by hand."""

import json

import pytest

from avlens.analysis.hallucination import (AV_OBJECTS, ObjectVocabulary, avcd_correct, cmm_report, judge_avhbench,
                                           parse_yes_no, score_avhbench, score_captions, score_cmm, singular_forms)

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


def test_avhbench_checks_every_record_not_only_the_first():
    """A record after the first that lacks a key is named by its index and key, for both parsers
    (before: only record 0 was checked and record 2 failed later with a bare KeyError)."""
    recs = [rec("v1", AV, "q1", "yes", "yes"), rec("v2", AV, "q2", "no", "no"), rec("v3", VA, "q3", "no", "no")]
    del recs[2]["label"]
    for parser in ("mad", "avcd"):
        with pytest.raises(KeyError, match=r"record 2 lacks the keys \['label'\]"):
            score_avhbench(recs, parser=parser)
    recs[2]["label"] = "no"
    del recs[1]["pred"]
    with pytest.raises(KeyError, match=r"record 1 lacks the keys \['pred'\].*pred_key="):
        judge_avhbench(recs)


def cmm(sub, gran, answer, pred):
    return {"category": "c", "sub_category": sub, "modality": "visual", "granularity": gran,
            "question": "Did you see it in the video? Answer with yes or no.", "answer": answer, "pred": pred}


# CMM's final_output.json layout (JSON lines); each row's fate under calculate_score.py, by hand
# (answer and pred stripped then lower-cased; p5 = pred[:5]):
CMM_ROWS = [
    cmm("visual", "object-level", "yes", "  Yes, there is a river."),   # 1 p5 "yes, ": correct; GT-yes, PA hit
    cmm("visual", "object-level", "no", "No, I did not see any tree."),  # 2 p5 "no, i": correct; GT-no, HR hit
    cmm("visual", "event-level", "Yes.", "Yes, a dog barks."),   # 3 "yes." not in "yes, ": WRONG; but GT-yes and PA hit
    cmm("visual", "event-level", "no", "Nope."),                 # 4 p5 "nope.": correct; HR hit
    cmm("audio", "object-level", "no", "There is no bird."),     # 5 p5 "there": wrong; HR miss
    cmm("audio", "object-level", "yes", "I think yes."),         # 6 p5 "i thi": wrong; PA miss
    cmm("audio", "object-level", "no", "Noise of a car."),       # 7 p5 "noise" holds "no": correct; HR hit
    cmm("both", "Object-Level", "no", "no"),                     # 8 correct; HR hit; granularity not exactly
                                                                 #   "object-level": left out of that breakdown
    cmm("both", "event-level", " NO ", "yes"),                   # 9 answer "no": wrong; GT-no, HR miss
    cmm("both", "event-level", "maybe", "Maybe so."),            # 10 correct; neither GT-yes nor GT-no
]


def test_cmm_scores_reproduce_calculate_score_py(tmp_path):
    path = tmp_path / "output.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in CMM_ROWS))
    s = score_cmm(str(path))
    # entire dataset: correct rows 1, 2, 4, 7, 8, 10 -> 6/10; GT-yes rows 1, 3, 6 with hits 1, 3 -> 2/3;
    # GT-no rows 2, 4, 5, 7, 8, 9 with hits 2, 4, 7, 8 -> 4/6
    p = s["pooled"]
    assert (p["n"], p["correct"], p["n_yes"], p["correct_yes"], p["n_no"], p["correct_no"]) == (10, 6, 3, 2, 6, 4)
    assert p["accuracy"] == 0.6 and p["pa"] == pytest.approx(2 / 3) and p["hr"] == pytest.approx(2 / 3)
    sub = s["sub_category"]
    assert list(sub) == ["visual", "audio", "both"]                  # first-seen order, as printed
    # visual (1-4): correct 1, 2, 4 -> 3/4; PA rows 1, 3 both hit -> 1; HR rows 2, 4 both hit -> 1
    assert (sub["visual"]["accuracy"], sub["visual"]["pa"], sub["visual"]["hr"]) == (0.75, 1.0, 1.0)
    # audio (5-7): correct 7 -> 1/3; PA row 6 missed -> 0; HR rows 5 (miss), 7 (hit) -> 1/2
    assert sub["audio"]["accuracy"] == pytest.approx(1 / 3) and (sub["audio"]["pa"], sub["audio"]["hr"]) == (0.0, 0.5)
    # both (8-10): correct 8, 10 -> 2/3; no GT-yes row -> PA 0 (the script's `else 0`, not NaN);
    # HR rows 8 (hit), 9 (miss) -> 1/2
    assert sub["both"]["accuracy"] == pytest.approx(2 / 3) and sub["both"]["n_yes"] == 0
    assert (sub["both"]["pa"], sub["both"]["hr"]) == (0.0, 0.5)
    # per (granularity, sub_category); row 8's "Object-Level" is in neither level
    g = s["granularity"]
    assert list(g) == ["object-level", "event-level"] and s["granularity_skipped"] == 1
    assert list(g["object-level"]) == ["visual", "audio"] and list(g["event-level"]) == ["visual", "both"]
    # object-level visual (1, 2): all right; object-level audio = rows 5-7 = the audio numbers above
    assert (g["object-level"]["visual"]["accuracy"], g["object-level"]["visual"]["pa"], g["object-level"]["visual"]["hr"]) == (1.0, 1.0, 1.0)
    assert g["object-level"]["audio"]["accuracy"] == pytest.approx(1 / 3) and g["object-level"]["audio"]["hr"] == 0.5
    # event-level visual (3, 4): correct 4 -> 1/2, PA row 3 hit -> 1, HR row 4 hit -> 1
    assert (g["event-level"]["visual"]["accuracy"], g["event-level"]["visual"]["pa"], g["event-level"]["visual"]["hr"]) == (0.5, 1.0, 1.0)
    # event-level both (9, 10): correct 10 -> 1/2, no GT-yes -> PA 0, HR row 9 missed -> 0
    assert (g["event-level"]["both"]["accuracy"], g["event-level"]["both"]["pa"], g["event-level"]["both"]["hr"]) == (0.5, 0.0, 0.0)
    # the paper's overall: unweighted mean over the three sub-categories
    assert s["overall"]["accuracy"] == pytest.approx((3 / 4 + 1 / 3 + 2 / 3) / 3)   # 0.5833, pooled is 0.6
    assert s["overall"]["pa"] == pytest.approx((1 + 0 + 0) / 3) and s["overall"]["hr"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_cmm_report_prints_what_the_script_prints():
    """The script's stdout for CMM_ROWS, typed out: its labels, column widths (35 / 20 / 25 / 10, and
    15 for granularity) and 4 decimals, blank lines where its "\n"s put them."""
    text = cmm_report(score_cmm(CMM_ROWS))
    assert text.splitlines() == [
        "Overall Accuracy (entire dataset): 0.6000",
        "Overall Perception Accuracy (entire dataset): 0.6667",
        "Overall Hallucination Resistance (entire dataset): 0.6667",
        "",
        "sub_category                       perception accuracy Hallucination Resistance accuracy  ",
        "visual                             1.0000              1.0000                   0.7500    ",
        "audio                              0.0000              0.5000                   0.3333    ",
        "both                               0.0000              0.5000                   0.6667    ",
        "",
        "Granularity    sub_category                       perception accuracy Hallucination Resistance accuracy  ",
        "OBJECT-LEVEL RESULTS:",
        "object-level   visual                             1.0000              1.0000                   1.0000    ",
        "object-level   audio                              0.0000              0.5000                   0.3333    ",
        "EVENT-LEVEL RESULTS:",
        "event-level    visual                             1.0000              1.0000                   0.5000    ",
        "event-level    both                               0.0000              0.0000                   0.5000    ",
    ]


def test_cmm_per_granularity_totals_by_hand():
    """avlens's addition (the script prints no per-granularity total): every row of a granularity
    pooled. Object-level = rows 1, 2, 5, 6, 7 (row 8's "Object-Level" is not the exact string):
    correct 1, 2, 7 -> 3/5; GT-yes 1 (hit), 6 (miss) -> PA 1/2; GT-no 2 (hit), 5 (miss), 7 (hit)
    -> HR 2/3. Event-level = rows 3, 4, 9, 10: correct 4, 10 -> 1/2; GT-yes 3 (hit) -> PA 1;
    GT-no 4 (hit), 9 (miss) -> HR 1/2."""
    s = score_cmm(CMM_ROWS)
    t = s["granularity_total"]
    assert list(t) == ["object-level", "event-level"]
    o, e = t["object-level"], t["event-level"]
    assert (o["n"], o["correct"], o["n_yes"], o["correct_yes"], o["n_no"], o["correct_no"]) == (5, 3, 2, 1, 3, 2)
    assert o["accuracy"] == 0.6 and o["pa"] == 0.5 and o["hr"] == pytest.approx(2 / 3)
    assert (e["n"], e["correct"], e["n_yes"], e["correct_yes"], e["n_no"], e["correct_no"]) == (4, 2, 1, 1, 2, 1)
    assert (e["accuracy"], e["pa"], e["hr"]) == (0.5, 1.0, 0.5)
    # pooled over rows, not the mean over the granularity's sub-categories: object-level's
    # sub-category accuracies are 1 (visual) and 1/3 (audio), mean 2/3, but the total is 3/5
    assert o["accuracy"] != pytest.approx((1 + 1 / 3) / 2)
    # the script's text is unchanged by default; the totals are printed only on request, labelled
    assert "avlens addition" not in cmm_report(s)
    lines = cmm_report(s, granularity_totals=True).splitlines()
    assert lines[:16] == cmm_report(s).splitlines()
    assert lines[16:] == [
        "",
        "PER-GRANULARITY TOTALS (avlens addition; calculate_score.py prints none):",
        "Granularity    n       perception accuracy Hallucination Resistance accuracy  ",
        "object-level   5       0.5000              0.6667                   0.6000    ",
        "event-level    4       1.0000              0.5000                   0.5000    ",
    ]
    # a granularity without rows: zeros, like the script's empty groups
    z = score_cmm([cmm("s", "object-level", "yes", "yes")])["granularity_total"]["event-level"]
    assert (z["n"], z["accuracy"], z["pa"], z["hr"]) == (0, 0.0, 0.0, 0.0)


def test_cmm_quirks_one_at_a_time():
    # the answer's first 5 characters decide GT-yes before GT-no: "yes, no" is a yes row
    s = score_cmm([cmm("s", "object-level", "yes, no", "yes")])["pooled"]
    assert (s["n_yes"], s["n_no"], s["correct"]) == (1, 0, 0)          # "yes, no" not in "yes"
    # "unknown"[:5] = "unkno" holds "no": a GT-no row; an empty answer is in every prediction
    s = score_cmm([cmm("s", "object-level", "unknown", "no"), cmm("s", "object-level", "", "whatever")])["pooled"]
    assert (s["n_no"], s["correct_no"], s["correct"]) == (1, 1, 1)
    # only the first 5 characters of the stripped prediction count: "     yes" strips to "yes"
    s = score_cmm([cmm("s", "object-level", "yes", "     yes"), cmm("s", "object-level", "yes", "Sure, yes")])["pooled"]
    assert (s["correct"], s["correct_yes"]) == (1, 1)
    # no rows: every number 0, as the script's `if total > 0 else 0`
    s = score_cmm([])
    assert s["pooled"]["accuracy"] == 0 and s["pooled"]["pa"] == 0 and s["sub_category"] == {}
    assert s["overall"] == {"accuracy": 0.0, "pa": 0.0, "hr": 0.0}


def test_cmm_names_bad_rows():
    with pytest.raises(KeyError, match=r"CMM row 0 lacks \['pred'\].*pred_key="):
        score_cmm([{"sub_category": "s", "granularity": "object-level", "answer": "yes", "prediction": "yes"}])
    assert score_cmm([{"sub_category": "s", "granularity": "object-level", "answer": "yes", "prediction": "yes"}],
                     pred_key="prediction")["pooled"]["accuracy"] == 1.0
    with pytest.raises(TypeError, match=r"CMM row 1: 'pred' is None .*not a string"):
        score_cmm([cmm("s", "object-level", "yes", "yes"), cmm("s", "object-level", "yes", None)])


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


def test_chair_recall_counts_each_ground_truth_entry_once():
    """An entry "a/b" is one object, recalled when any alternative is mentioned (chair.py's recall
    over ground-truth objects). Before the fix, "dog/cat" counted as two objects (recall 0.5)."""
    s = score_captions([{"video_id": "a", "pred": "A dog barks."}], {"a": ["dog/cat"]})
    assert s["recall"] == 1.0 and s["chair_i"] == 0.0 and s["chair_s"] == 0.0 and s["mentions"] == 1
    assert s["per_caption"][0]["n_objects"] == 1 and s["per_caption"][0]["recalled"] == ["dog/cat"]
    # alternatives the vocabulary does not know: one new object named by the first
    s = score_captions([{"video_id": "a", "pred": "A streetcar passes."}], {"a": ["tram/streetcar"]})
    assert s["recall"] == 1.0 and s["per_caption"][0]["mentions"] == ["tram"]
    s = score_captions([{"video_id": "a", "pred": "A tram, then a streetcar."}], {"a": ["tram/streetcar"]})
    assert s["per_caption"][0]["mentions"] == ["tram", "tram"] and s["recall"] == 1.0 and s["chair_i"] == 0.0
    # a known and an unknown alternative: the unknown one becomes a synonym of the known object
    s = score_captions([{"video_id": "a", "pred": "A doggo runs."}], {"a": ["dog/doggo"]})
    assert s["per_caption"][0]["mentions"] == ["dog"] and s["recall"] == 1.0
    # pooled over captions: a has entries {dog/cat, car}, the cat is mentioned -> 1 of 2;
    # b has {tram/streetcar}, nothing mentioned -> 0 of 1; a's "piano" is hallucinated
    s = score_captions([{"video_id": "a", "pred": "A cat near a piano."}, {"video_id": "b", "pred": "Nothing here."}],
                       {"a": ["dog/cat", "car"], "b": ["tram/streetcar"]})
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["chair_i"] == 0.5 and s["chair_s"] == 0.5 and s["hallucinated"] == 1
    # two entries may share an object: each is recalled by it
    s = score_captions([{"video_id": "a", "pred": "a puppy"}], {"a": ["dog", "puppy", "car"]})
    assert s["recall"] == pytest.approx(2 / 3)
    # an entry must name something: "12" has no word, "/" no alternative
    for bad in ("dog/ / 12", "/"):
        with pytest.raises(ValueError, match=f"{bad!r} of 'a' has an empty or letterless alternative"):
            score_captions([{"video_id": "a", "pred": "a dog"}], {"a": [bad, "car"]})


def test_chair_plurals_match_their_singular():
    """Plural endings give candidate singulars and the vocabulary decides: buses -> bus (-es),
    houses -> house (-s), boxes -> box, glasses -> glass, puppies -> puppy, knives -> knife, men ->
    man; before the fix "buses" became "buse" and was missed."""
    assert singular_forms("buses") == ("buses", "bus", "buse")
    assert singular_forms("houses") == ("houses", "hous", "house")
    assert singular_forms("bus") == ("bus",) and singular_forms("glass") == ("glass",) and singular_forms("iris") == ("iris",)
    assert singular_forms("puppies") == ("puppies", "puppy", "puppi", "puppie")
    assert "knife" in singular_forms("knives") and singular_forms("men") == ("men", "man")
    v = ObjectVocabulary({"bus": [], "house": [], "box": [], "glass": [], "knife": []})
    assert v.mentions("Two buses, three houses, boxes, glasses and knives.") == ["bus", "house", "box", "glass", "knife"]
    assert AV_OBJECTS.mentions("Buses and puppies; two men.") == ["bus", "dog", "person"]
    # the word as written wins over a singular: with both "glass" and "glasses" known
    v = ObjectVocabulary({"glass": [], "eyeglasses": ["glasses", "spectacles"]})
    assert v.mentions("Glasses beside a glass.") == ["eyeglasses", "glass"]
    # a synonym given in the plural matches its singular in the text, and its plural
    v = ObjectVocabulary({"tram": ["streetcars"]})
    assert v.mentions("A streetcar and two streetcars.") == ["tram", "tram"] and v.canonical("streetcar") == "tram"
    s = score_captions([{"video_id": "a", "pred": "Two buses honk."}], {"a": ["bus"]})
    assert s["recall"] == 1.0 and s["mentions"] == 1 and s["chair_i"] == 0.0


def test_chair_longest_phrase_first():
    """With "hot dog" in the vocabulary, "hot dog" is that object, not a dog (chair.py replaces its
    two-word names first); without it the dog is found. By hand: GT {dog}; "A dog eats a hot dog":
    mentions dog, hot dog -> 1 of 2 hallucinated."""
    v = ObjectVocabulary({"dog": ["puppy"], "hot dog": ["hotdog"]})
    assert v.mentions("A dog eats a hot dog; two hot-dogs and a hotdog.") == ["dog", "hot dog", "hot dog", "hot dog"]
    s = score_captions([{"video_id": "a", "pred": "A dog eats a hot dog."}], {"a": ["dog"]}, vocabulary=v)
    assert s["per_caption"][0]["hallucinated"] == ["hot dog"] and s["chair_i"] == 0.5 and s["chair_s"] == 1.0
    assert s["recall"] == 1.0
    assert AV_OBJECTS.mentions("a hot dog") == ["dog"]  # no "hot dog" in AV_OBJECTS: the word is a dog
    # phrases of the default vocabulary: "fire truck" is a truck, "alarm clock" a clock, not a siren
    assert AV_OBJECTS.mentions("An alarm clock rings near fire trucks.") == ["clock", "truck"]


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
