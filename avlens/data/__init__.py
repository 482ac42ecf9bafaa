"""Raw media to model inputs, the synthetic audio-visual world, tasks and the toy tokenizer.

Submodules: `media` (waveforms -> log-mel features, frames -> Qwen2.5-VL patches, placeholder
expansion, `prepare_media`), `synth` (the synthetic audio-visual world), `tasks` (prompts and
answers for the toy tasks), `tokenizer` (the toy word-level tokenizer with Qwen2.5-Omni's
special tokens).
"""
