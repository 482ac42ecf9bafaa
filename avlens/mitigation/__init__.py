"""Hallucination mitigation at decoding time (METHODS.md section 7; docs/hallucination.md).

    from avlens.mitigation import decode, AVPrompt, SinkSteering, AdaptiveGuidance, VAR, compare_methods
    out = decode(model, AVPrompt(text, audio=wave, video=frames), SinkSteering(), max_new_tokens=16)
"""

from avlens.mitigation.decoding import AVPrompt, Branch, DecodeOutput, Method, MethodRun, NotApplicable, NothingToSteer, Plain, decode
from avlens.mitigation.guidance import AdaptiveGuidance, guidance_target
from avlens.mitigation.steering import (VAR, SinkConfig, SinkSteering, SteeringSinks, boost_layers, boost_scores, guidance_band,
                                        redistribute_pattern, steering_sinks)

__all__ = ["AVPrompt", "Branch", "DecodeOutput", "Method", "MethodRun", "NotApplicable", "NothingToSteer", "Plain", "decode", "AdaptiveGuidance", "guidance_target",
           "VAR", "SinkConfig", "SinkSteering", "SteeringSinks", "boost_layers", "boost_scores", "guidance_band",
           "redistribute_pattern", "steering_sinks", "compare_methods", "default_methods"]


def default_methods(toy: bool = False) -> dict:
    """Every implemented method with its published defaults. With `toy=True`, what the toy model
    needs instead: the attention sink definition with eps = 0.1 (the toy has no massive
    activations) and MAD asking the toy's own modality question (`toy_assessment`; the toy cannot
    read MAD's prompt). Otherwise MAD asks its official question (`official_assessment`) and VAR
    keeps its own sink threshold (VAR's default `SinkConfig`)."""
    sinks = SinkConfig("attention", eps=0.1, dims=[]) if toy else SinkConfig()
    from avlens.mitigation.baselines import AVCD, MAD, PAI, VCD, official_assessment, toy_assessment

    return {"plain": Plain(), "sink_steering": SinkSteering(sinks=sinks),
            "adaptive_guidance": AdaptiveGuidance(SinkSteering(sinks=sinks)), "var": VAR(sinks=sinks) if toy else VAR(),
            "pai": PAI(), "vcd": VCD(), "avcd": AVCD(),
            "mad": MAD(assessment=toy_assessment if toy else official_assessment)}


def compare_methods(*args, **kwargs):
    from avlens.mitigation.compare import compare_methods as run

    return run(*args, **kwargs)
