"""A small word-level tokenizer in Hugging Face format with Qwen2.5-Omni's special tokens.

The toy model's vocabulary is 83 words (plus the special tokens). Its tokenizer is a `tokenizers` WordLevel model
(whitespace-split words, one id each) wrapped in `PreTrainedTokenizerFast`, and it defines
Qwen2.5-Omni's special tokens as named special tokens, so `tokenizer.audio_token`,
`tokenizer.vision_bos_token`, `tokenizer.video_token_id`, ... exist exactly as Hugging Face's
`Qwen2_5OmniProcessor` expects of the real Qwen tokenizer. Saved with `save_pretrained`, it loads
back with `transformers.AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

from typing import Iterable

# name on the tokenizer -> token text (the real Qwen2.5-Omni vocabulary's strings)
OMNI_NAMED_TOKENS: dict[str, str] = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
}
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
IM_START = "<|im_start|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: list[str] = [PAD_TOKEN, IM_START, EOS_TOKEN, UNK_TOKEN, *OMNI_NAMED_TOKENS.values()]

# config field of Qwen2_5OmniThinkerConfig -> token text
CONFIG_TOKEN_FIELDS: dict[str, str] = {
    "audio_token_id": "<|AUDIO|>",
    "audio_start_token_id": "<|audio_bos|>",
    "audio_end_token_id": "<|audio_eos|>",
    "vision_start_token_id": "<|vision_bos|>",
    "vision_end_token_id": "<|vision_eos|>",
    "image_token_id": "<|IMAGE|>",
    "video_token_id": "<|VIDEO|>",
}


def build_tokenizer(words: Iterable[str]):
    """A `PreTrainedTokenizerFast` over `words` (ids 0..n-1, in sorted order) followed by the special
    tokens. Text is split on whitespace; special tokens are recognised anywhere, also without
    spaces around them. Unknown words map to `<unk>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(words) - set(SPECIAL_TOKENS))
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"vocabulary words must be non-empty and contain no whitespace: {bad[:5]}")
    vocab = {w: i for i, w in enumerate(words)}
    for s in SPECIAL_TOKENS:
        vocab[s] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=dict(OMNI_NAMED_TOKENS),
        padding_side="left",
    )
    return tok


def config_token_ids(tokenizer) -> dict[str, int]:
    """The token-id fields of a `Qwen2_5OmniThinkerConfig` for this tokenizer."""
    ids = {field: tokenizer.convert_tokens_to_ids(text) for field, text in CONFIG_TOKEN_FIELDS.items()}
    ids["pad_token_id"] = tokenizer.pad_token_id
    ids["eos_token_id"] = tokenizer.eos_token_id
    return ids
