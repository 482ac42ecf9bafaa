"""Causal interventions: activation patching, causal tracing, path patching, attribution
patching and attention knockout, as pure functions `(model, batches, metric, ...) -> result`.
Importable as `avlens.patching` (see `docs/patching.md`)."""

from avlens.interventions import corruptions, metrics
from avlens.interventions.attribution import attribution_patch
from avlens.interventions.engine import NoOpError
from avlens.interventions.grid import layer_windows
from avlens.interventions.metrics import (
    AnswerProb,
    IndirectEffect,
    LogitDiff,
    Metric,
    ResidualDirection,
    answer_tokens,
    ie_clean,
    ie_corrupt,
)
from avlens.interventions.knockout import attention_knockout, blocked_edges
from avlens.interventions.path_patching import path_patch
from avlens.interventions.patching import activation_patch
from avlens.interventions.results import LabelledTensor, PatchResult
from avlens.interventions.sites import SITE_HOOKS
from avlens.interventions.tracing import causal_trace, trace_token_sets

__all__ = [
    "AnswerProb",
    "IndirectEffect",
    "LabelledTensor",
    "LogitDiff",
    "Metric",
    "NoOpError",
    "PatchResult",
    "ResidualDirection",
    "SITE_HOOKS",
    "activation_patch",
    "answer_tokens",
    "attention_knockout",
    "attribution_patch",
    "blocked_edges",
    "causal_trace",
    "corruptions",
    "ie_clean",
    "ie_corrupt",
    "layer_windows",
    "metrics",
    "path_patch",
    "trace_token_sets",
]
