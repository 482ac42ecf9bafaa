"""Raw media to model inputs, the synthetic audio-visual world, tasks and the toy tokenizer.

Submodules: `media` (waveforms -> log-mel features, frames -> Qwen2.5-VL patches, placeholder
expansion, `prepare_media`; depends on nothing else in avlens), `files` (audio / video files
decoded with PyAV: `load_audio`, `load_video`), `synth` (the synthetic
audio-visual world), `tasks` (prompts and answers for the toy tasks), `tokenizer` (the toy
word-level tokenizer with Qwen2.5-Omni's special tokens).
"""

from avlens.data.files import load_audio, load_video
from avlens.data.media import (
    audio_features,
    expand_placeholder_text,
    expand_placeholders,
    image_patches,
    media_inputs,
    pil_bicubic_resize,
    placeholder_block,
    prepare_media,
    smart_resize,
    video_patches,
)

__all__ = [
    "audio_features",
    "expand_placeholder_text",
    "expand_placeholders",
    "image_patches",
    "load_audio",
    "load_video",
    "media_inputs",
    "pil_bicubic_resize",
    "placeholder_block",
    "prepare_media",
    "smart_resize",
    "video_patches",
]
