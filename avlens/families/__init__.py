"""One `HookedAVTransformer` subclass per AVLLM family, and the dispatch from Hugging Face classes
and checkpoint configs to them."""

from __future__ import annotations

import json
import os
from typing import Any

from avlens.families.qwen2_5_omni import HookedQwen2_5Omni

# Hugging Face class name / config model_type -> family class
_BY_HF_CLASS = {
    "Qwen2_5OmniThinkerForConditionalGeneration": HookedQwen2_5Omni,
    "Qwen2_5OmniForConditionalGeneration": HookedQwen2_5Omni,
}
_BY_MODEL_TYPE = {
    "qwen2_5_omni": HookedQwen2_5Omni,
    "qwen2_5_omni_thinker": HookedQwen2_5Omni,
}

SUPPORTED = sorted(_BY_HF_CLASS)


def family_for_hf_model(hf_model: Any):
    name = type(hf_model).__name__
    if name in _BY_HF_CLASS:
        return _BY_HF_CLASS[name]
    mt = getattr(getattr(hf_model, "config", None), "model_type", None)
    if mt in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[mt]
    raise NotImplementedError(
        f"avlens has no family for {name} (model_type {mt!r}). Supported Hugging Face classes: "
        f"{SUPPORTED}. See docs/ for how to add a family."
    )


def family_for_checkpoint(path_or_id: str):
    cfg_path = os.path.join(path_or_id, "config.json")
    if os.path.isdir(path_or_id):
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{path_or_id} has no config.json; is it a Hugging Face checkpoint folder?")
        with open(cfg_path) as f:
            mt = json.load(f).get("model_type")
    else:
        from transformers import AutoConfig

        mt = AutoConfig.from_pretrained(path_or_id).model_type
    if mt in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[mt]
    raise NotImplementedError(f"avlens has no family for model_type {mt!r}; supported: {sorted(_BY_MODEL_TYPE)}")


__all__ = ["HookedQwen2_5Omni", "family_for_hf_model", "family_for_checkpoint", "SUPPORTED"]
