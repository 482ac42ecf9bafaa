"""Generic backbone family (`HookedAVTransformer.from_hf_lm`) against Hugging Face's own decoders.

For each backbone type (Qwen2 with q/k/v bias; Llama with a decoupled head_dim and Llama 3 rope
scaling; Mistral; Qwen3 with q/k RMSNorm; the text path of Qwen2.5-VL with 3-D M-RoPE) the HF model
runs on embeddings merged by hand (`masked_scatter` of random media features into placeholder
positions) with explicit position ids; avlens gets the same ids and features (or the merged
embeddings and a layout) and must give the same logits (<= 1e-4, float32, eager) on a left-padded
batch of two. The worked adapter of docs/families.md is executed as written and checked the same
way.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

import avlens
from avlens.families.generic import as_batch_layout
from backbones import AUDIO_ID, VIDEO_ID, features, hf_positions, make_backbone, media_prompt, merged_embeddings

KINDS = ["qwen2", "llama", "mistral", "qwen3", "qwen2_5_vl"]
TOKEN_IDS = {"audio_token_id": AUDIO_ID, "video_token_id": VIDEO_ID}


@pytest.fixture(scope="module")
def backbone():
    cache = {}

    def get(kind):
        if kind not in cache:
            hf = make_backbone(kind)
            cache[kind] = (hf, avlens.HookedAVTransformer.from_hf_lm(hf, token_ids=TOKEN_IDS))
        return cache[kind]

    return get


def _positions(kind, am):
    pos = hf_positions(am)
    if kind != "qwen2_5_vl":
        return pos
    # 3-D positions that differ per axis (as a video block's would), the text path takes them as given
    g = torch.Generator().manual_seed(3)
    return torch.stack([pos, pos + torch.randint(0, 4, pos.shape, generator=g), pos * 2])


def _hf_logits(kind, hf, merged, am, pos):
    with torch.no_grad():
        return hf(inputs_embeds=merged, attention_mask=am, position_ids=pos).logits


@pytest.mark.parametrize("path", ["features", "inputs_embeds"])
@pytest.mark.parametrize("kind", KINDS)
def test_generic_backbone_logits_equal_hf_text_model_on_merged_embeddings(kind, path, backbone):
    hf, model = backbone(kind)
    ids, am = media_prompt()
    feats = features(ids, am, model.cfg.d_model)
    merged = merged_embeddings(hf.get_input_embeddings(), ids, am, feats)
    pos = _positions(kind, am)
    ref = _hf_logits(kind, hf, merged, am, pos)
    if path == "features":
        batch = model.prepare(input_ids=ids, attention_mask=am, features=feats, position_ids=pos)
    else:
        names = [["pad" if not a else {AUDIO_ID: "audio", VIDEO_ID: "video"}.get(int(i), "text") for i, a in zip(r, m)]
                 for r, m in zip(ids, am)]
        batch = model.prepare(inputs_embeds=merged, attention_mask=am, layout=names, position_ids=pos)
    got = model(batch)
    valid = am.bool()
    diff = (got[valid] - ref[valid]).abs().max().item()
    assert diff <= 1e-4, f"{kind}: max |logit diff| {diff:.2e}"
    assert batch.layout.counts("audio").tolist() == [5, 5] and batch.layout.counts("video").tolist() == [6, 6]


@pytest.mark.parametrize("kind", ["qwen2", "qwen2_5_vl"])
def test_generic_backbone_default_positions_equal_hf_default_positions(kind, backbone):
    """Without position ids, avlens's running count equals what HF computes itself (1-D) or its
    text-only 3-D positions (Qwen2.5-VL with no image/video grids)."""
    hf, model = backbone(kind)
    ids, am = media_prompt(seed=4)
    feats = features(ids, am, model.cfg.d_model)
    merged = merged_embeddings(hf.get_input_embeddings(), ids, am, feats)
    with torch.no_grad():
        ref = hf(inputs_embeds=merged[:1], attention_mask=am[:1]).logits
    got = model(model.prepare(input_ids=ids[:1], features={k: v[: len(v) // 2] for k, v in feats.items()}))
    assert (got - ref).abs().max().item() <= 1e-4


def test_generic_backbone_shares_weights_and_reads_flags(backbone):
    hf, model = backbone("qwen3")
    assert model.cfg.qk_norm and not model.cfg.qkv_bias
    assert model.blocks[1].attn.q_norm.w.data_ptr() == hf.model.layers[1].self_attn.q_norm.weight.data_ptr()
    assert model.W_E.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    hf2, m2 = backbone("qwen2")
    assert m2.cfg.qkv_bias and m2.cfg.rope_kind == "1d"
    hf3, m3 = backbone("qwen2_5_vl")
    assert m3.cfg.rope_kind == "mrope" and m3.cfg.mrope_section == [2, 3, 3]
    assert isinstance(m2, avlens.HookedGenericAV)
    assert type(avlens.HookedAVTransformer.from_hf(hf2)).__name__ == "HookedGenericAV"


def test_generic_prepare_errors_name_the_problem(backbone):
    hf, model = backbone("qwen2")
    ids, am = media_prompt()
    feats = features(ids, am, model.cfg.d_model)
    with pytest.raises(ValueError, match="audio positions but no audio features"):
        model.prepare(input_ids=ids, attention_mask=am, features={"video": feats["video"]})
    with pytest.raises(ValueError, match="feature vectors for"):
        model.prepare(input_ids=ids, attention_mask=am, features={**feats, "audio": feats["audio"][:-1]})
    with pytest.raises(TypeError, match="no adapter"):
        model.prepare(input_ids=ids, audio=torch.zeros(3))
    with pytest.raises(ValueError, match="exactly one of"):
        model.prepare()
    with pytest.raises(ValueError, match="did you mean 'audio'"):
        as_batch_layout(["text", "audoi"], torch.ones(1, 2))
    with pytest.raises(ValueError, match="pass layout"):
        model.prepare(inputs_embeds=torch.zeros(1, 3, model.cfg.d_model))


def test_generic_backbone_refuses_inputs_longer_than_sliding_window():
    import transformers as T

    from backbones import _COMMON

    hf = T.MistralForCausalLM(T.MistralConfig(**_COMMON, sliding_window=8)).eval()
    model = avlens.HookedAVTransformer.from_hf_lm(hf)
    model(torch.arange(8)[None])  # within the window: full attention == sliding window
    with pytest.raises(NotImplementedError, match="sliding window of 8"):
        model(torch.arange(9)[None])


def test_generic_from_hf_lm_refuses_moe_and_foreign_modules():
    import qwen3_reference as Q

    with pytest.raises(TypeError, match="not a Hugging Face decoder"):
        avlens.HookedAVTransformer.from_hf_lm(torch.nn.Linear(2, 2))
    with pytest.raises(NotImplementedError, match="mixture-of-experts"):
        avlens.HookedAVTransformer.from_hf_lm(Q.make_thinker())


# ------------------------------------------------------------------------------ the docs' adapter


def _doc_example() -> str:
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "families.md")
    text = open(path).read()
    section = text[text.index("## Writing an adapter"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_adapter_example_is_under_40_lines_and_matches_hf_on_merged_embeddings():
    code = _doc_example()
    assert len(code.strip().splitlines()) < 40
    ns = {}  # the block is self-contained: it builds its own LM
    exec(compile(code, "docs/families.md", "exec"), ns)
    echo_lm = ns["echo_lm"]
    assert type(echo_lm).__name__ == "Qwen2ForCausalLM"
    model, batch, logits = ns["model"], ns["batch"], ns["logits"]
    adapter = model.adapter
    # the reference: HF's Qwen2 on the prompt with the adapter's features merged by hand
    ids = batch.input_ids
    feats = adapter.encode(audio=ns["audio"], video=ns["video"])
    audio_id, video_id = adapter.placeholders["audio"], adapter.placeholders["video"]
    with torch.no_grad():
        x = echo_lm.get_input_embeddings()(ids)
        x = x.masked_scatter((ids == audio_id)[..., None], feats["audio"])
        x = x.masked_scatter((ids == video_id)[..., None], feats["video"])
        ref = echo_lm(inputs_embeds=x).logits
        plain = echo_lm(ids).logits  # placeholders left as token embeddings
    assert (logits - ref).abs().max().item() <= 1e-5
    assert (plain - ref).abs().max().item() > 1e-3  # the merge is visible at this tolerance
    assert batch.layout.counts("audio").item() == 2 and batch.layout.counts("video").item() == 3
    assert batch.layout.counts("special").item() == 4
    # the adapter's modules are part of the model (moved with it; not in the default cache)
    assert "adapter.audio_proj.weight" in dict(model.named_parameters())


def test_from_pretrained_causal_lm_checkpoint_dispatches_to_generic_family(tmp_path):
    hf = make_backbone("qwen2", seed=8)
    hf.save_pretrained(tmp_path)
    model = avlens.HookedAVTransformer.from_pretrained(str(tmp_path))
    assert type(model).__name__ == "HookedGenericAV"
    tok = torch.randint(0, 100, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(tok) - hf(tok).logits).abs().max().item() <= 1e-4
