"""The toy tokenizer: Hugging Face loads it with its own classes, and it carries Qwen2.5-Omni's
named special tokens as the Omni processor expects them."""

from transformers import AutoTokenizer

from avlens.data.tokenizer import OMNI_NAMED_TOKENS, SPECIAL_TOKENS, build_tokenizer, config_token_ids


def test_tokenizer_round_trips_through_hf_and_has_named_omni_tokens(tmp_path):
    words = ["is", "there", "a", "dog", "sound", "?", "yes", "no"]
    tok = build_tokenizer(words)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for name, text in OMNI_NAMED_TOKENS.items():
        assert getattr(loaded, name) == text
        assert getattr(loaded, name + "_id") == loaded.convert_tokens_to_ids(text)
    text = "is there a dog sound ? <|vision_bos|><|VIDEO|><|vision_eos|> yes"
    ids = loaded(text)["input_ids"]
    # brute force: whitespace split, then the three glued special tokens
    expected = [words_id for words_id in (sorted(words).index(w) for w in ["is", "there", "a", "dog", "sound", "?"])]
    expected += [loaded.convert_tokens_to_ids(t) for t in ("<|vision_bos|>", "<|VIDEO|>", "<|vision_eos|>")]
    expected += [sorted(words).index("yes")]
    assert ids == expected
    assert loaded("zebra")["input_ids"] == [loaded.convert_tokens_to_ids("<unk>")]
    assert loaded.padding_side == "left"
    assert len(loaded) == len(words) + len(SPECIAL_TOKENS)


def test_config_token_ids_match_the_tokens():
    tok = build_tokenizer(["a", "b"])
    ids = config_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids["audio_token_id"]) == "<|AUDIO|>"
    assert tok.convert_ids_to_tokens(ids["vision_start_token_id"]) == "<|vision_bos|>"
    assert ids["pad_token_id"] == tok.pad_token_id and ids["eos_token_id"] == tok.eos_token_id
