"""One `HookedAVTransformer` subclass per AVLLM family. Importing this package registers each
family with `avlens.model.registry`, from which `HookedAVTransformer.from_hf` / `from_pretrained`
dispatch."""

from __future__ import annotations

from avlens.families.generic import AVAdapter, HookedGenericAV
from avlens.families.qwen2_5_omni import HookedQwen2_5Omni
from avlens.families.qwen3_omni import HookedQwen3Omni
from avlens.families.video_salmonn import HookedVideoSalmonn2Plus
from avlens.families.videollama2 import HookedVideoLLaMA2AV, VideoLLaMA2AVAdapter
from avlens.model.registry import family_for_checkpoint, family_for_hf_model, register_family, register_lm_family, supported

register_family(
    HookedQwen2_5Omni,
    hf_classes=("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniForConditionalGeneration"),
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
)

register_family(
    HookedQwen3Omni,
    hf_classes=("Qwen3OmniMoeThinkerForConditionalGeneration", "Qwen3OmniMoeForConditionalGeneration"),
    model_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
)
register_family(HookedVideoLLaMA2AV, hf_classes=(), model_types=("videollama2_qwen2",))
register_lm_family(HookedGenericAV)
register_family(
    HookedGenericAV,
    hf_classes=("Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM", "Qwen2_5_VLForConditionalGeneration"),
    model_types=("qwen2", "llama", "mistral", "qwen3", "qwen2_5_vl"),
)

SUPPORTED = supported()

__all__ = ["AVAdapter", "HookedGenericAV", "HookedQwen2_5Omni", "HookedQwen3Omni", "HookedVideoSalmonn2Plus",
           "HookedVideoLLaMA2AV", "VideoLLaMA2AVAdapter", "family_for_hf_model", "family_for_checkpoint", "SUPPORTED"]
