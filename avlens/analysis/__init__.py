"""Cross-modal hub analysis (METHODS.md sections 1-5): sink dimensions and sink tokens, the
modality dominance score, the cross-modal / unimodal split and the unimodal-dominance rules.

    from avlens.analysis import find_sink_dims, find_sinks, modality_dominance, cross_modal_split
"""

from avlens.analysis.dominance import classify_dominance, cross_modal_split, ie_clean, ie_corrupt, modality_dominance
from avlens.analysis.sinks import SinkDims, SinkReport, find_sink_dims, find_sinks, global_sinks_from_layers

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
]
