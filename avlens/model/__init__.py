"""The hooked decoder backbone."""

from avlens.model.components import KVCache
from avlens.model.hook_points import AVHookPoint, GroupViewHookPoint, RunState
from avlens.model.hooked import GenerateOutput, HookedAVTransformer
from avlens.model.summary import AttentionGroupSummary

__all__ = ["HookedAVTransformer", "GenerateOutput", "AttentionGroupSummary", "KVCache", "AVHookPoint", "GroupViewHookPoint", "RunState"]
