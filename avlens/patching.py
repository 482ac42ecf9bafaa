"""`avlens.patching`: the causal toolkit in one namespace (it lives in `avlens.interventions`).

    from avlens import patching
    corrupted = patching.corruptions.zero_media(model, clean, "audio")
    result = patching.activation_patch(model, clean, corrupted, patching.AnswerProb(answer))
"""

from avlens.interventions import *  # noqa: F401,F403
from avlens.interventions import __all__  # noqa: F401
