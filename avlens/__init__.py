"""avlens: mechanistic interpretability for audio-visual large language models.

    import avlens
    model = avlens.HookedAVTransformer.from_hf(hf_thinker)
    batch = model.prepare(**processor_outputs)
    logits, cache = model.run_with_cache(batch)
    cache["blocks.3.hook_resid_post"]                 # [batch, pos, d_model]
    model.run_with_hooks(batch, fwd_hooks=[("blocks.3.hook_resid_post.audio", fn)])
    avlens.patching.activation_patch(model, clean, corrupted, metric)   # the causal toolkit
"""

from avlens.batch import AVBatch
from avlens.config import AVConfig
from avlens.families import AVAdapter, HookedGenericAV, HookedQwen2_5Omni, HookedQwen3Omni, HookedVideoLLaMA2AV, HookedVideoSalmonn2Plus
from avlens.layout import PARTITION_GROUPS, BatchLayout, GroupPositions, TokenLayout
from avlens.model import AttentionGroupSummary, GenerateOutput, HookedAVTransformer, KVCache
from avlens.toy import load_toy
from avlens import patching  # noqa: E402  (the causal toolkit, avlens.interventions)

__version__ = "0.1.0"

__all__ = [
    "AVAdapter",
    "AVBatch",
    "AVConfig",
    "AttentionGroupSummary",
    "BatchLayout",
    "GenerateOutput",
    "GroupPositions",
    "HookedAVTransformer",
    "HookedGenericAV",
    "HookedQwen2_5Omni",
    "HookedQwen3Omni",
    "HookedVideoLLaMA2AV",
    "HookedVideoSalmonn2Plus",
    "KVCache",
    "PARTITION_GROUPS",
    "TokenLayout",
    "load_toy",
    "patching",
]
