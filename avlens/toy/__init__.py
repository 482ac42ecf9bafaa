"""The shipped toy audio-visual model: a tiny Qwen2.5-Omni thinker trained from scratch on the
synthetic world (`avlens.data.synth`) by `avlens.toy.train`.

    model = avlens.load_toy()                      # HookedQwen2_5Omni, via from_pretrained
    batch = model.prepare_media(text, audio=clip.waveform, video=clip.frames, use_audio_in_video=True)

It is a real Hugging Face checkpoint (config.json, model.safetensors, tokenizer and processor
files) in `avlens/toy/checkpoint/`, loaded through exactly the code path of a real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

TOY_DIR = Path(__file__).parent / "checkpoint"


def toy_available() -> bool:
    return (TOY_DIR / "model.safetensors").exists()


def load_toy(dtype: Optional[torch.dtype] = None, device: Optional[str] = None, path: Optional[str] = None):
    """Load the toy model (a `HookedQwen2_5Omni`) with its tokenizer; `model.media_defaults` holds
    the pixel budget its frames were trained with, which `model.prepare_media` uses."""
    from avlens.model.hooked import HookedAVTransformer

    root = Path(path) if path is not None else TOY_DIR
    if not (root / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no toy checkpoint in {root}. Train one with `avlens train-toy --out {root}` "
            "(python -m avlens.toy.train)."
        )
    model = HookedAVTransformer.from_pretrained(str(root), dtype=dtype, device=device)
    settings = json.loads((root / "avlens_toy.json").read_text()) if (root / "avlens_toy.json").exists() else {}
    # from_pretrained reads the pixel budget from preprocessor_config.json; older folders kept it here
    model.media_defaults = getattr(model, "media_defaults", None) or {k: settings[k] for k in ("min_pixels", "max_pixels") if k in settings}
    model.toy_settings = settings
    return model
