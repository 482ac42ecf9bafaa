"""Cross-modal hub analysis (METHODS.md sections 1-5): sink dimensions and sink tokens, the
modality dominance score, the cross-modal / unimodal split, the unimodal-dominance rules and the
study that puts them together (the paper's Table 1 for any model).

    from avlens.analysis import find_sink_dims, find_sinks, modality_dominance, cross_modal_split
"""

from avlens.analysis.dominance import classify_dominance, cross_modal_split, ie_clean, ie_corrupt, modality_dominance
from avlens.analysis.sinks import SinkDims, SinkReport, find_sink_dims, find_sinks, global_sinks_from_layers
from avlens.analysis.study import TOKEN_SETS, HubStudy, StudySample, cross_modal_hub_study, toy_samples

__all__ = [
    "SinkDims",
    "SinkReport",
    "find_sink_dims",
    "find_sinks",
    "global_sinks_from_layers",
    "modality_dominance",
    "cross_modal_split",
    "classify_dominance",
    "ie_clean",
    "ie_corrupt",
    "cross_modal_hub_study",
    "HubStudy",
    "StudySample",
    "toy_samples",
    "TOKEN_SETS",
]
