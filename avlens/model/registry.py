"""Which `HookedAVTransformer` subclass handles which Hugging Face model.

Families register themselves when `avlens.families` is imported (which `import avlens` does), so
the base class can dispatch `from_hf` / `from_pretrained` without importing a higher layer.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

_BY_HF_CLASS: dict[str, type] = {}
_BY_MODEL_TYPE: dict[str, type] = {}
_LM_FAMILY: list[type] = []  # the family that wraps a bare Hugging Face language model


def register_family(family: type, hf_classes: Iterable[str], model_types: Iterable[str]) -> type:
    for name in hf_classes:
        _BY_HF_CLASS[name] = family
    for mt in model_types:
        _BY_MODEL_TYPE[mt] = family
    return family


def register_lm_family(family: type) -> type:
    """The family `HookedAVTransformer.from_hf_lm` builds (the generic backbone family)."""
    _LM_FAMILY[:] = [family]
    return family


def lm_family() -> type:
    if not _LM_FAMILY:
        raise RuntimeError("no language-model family is registered; import avlens (which imports avlens.families)")
    return _LM_FAMILY[0]


def supported() -> list[str]:
    return sorted(_BY_HF_CLASS)


def family_for_hf_model(hf_model: Any) -> type:
    name = type(hf_model).__name__
    if name in _BY_HF_CLASS:
        return _BY_HF_CLASS[name]
    mt = getattr(getattr(hf_model, "config", None), "model_type", None)
    if mt in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[mt]
    raise NotImplementedError(
        f"avlens has no family for {name} (model_type {mt!r}). Supported Hugging Face classes: "
        f"{supported()}. docs/families.md says how to add one."
    )


def family_for_checkpoint(path_or_id: str) -> type:
    if os.path.isdir(path_or_id):
        cfg_path = os.path.join(path_or_id, "config.json")
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
