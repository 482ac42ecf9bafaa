"""Shared pytest setup for the avlens test-suite.

* puts ``tests/`` on ``sys.path`` so test modules can ``import hf_reference``;
* session-scoped, lazily-filled caches of the tiny Hugging Face reference models, of the
  ``HookedAVTransformer`` wrapping them and of the HF reference outputs per input case, so a
  model is built once per variant however many tests use it.

The cached models are shared between tests: a test that changes weights, dtype or device must
build its own model (``hf_reference.make_hf_thinker``) instead of using these fixtures. A test
that flips ``model.cfg.use_attn_eager`` must restore it (see ``attn_path`` in
``test_hf_equivalence.py``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import hf_reference as R  # noqa: E402

#: Batch specifications used by the equivalence tests: (id, batch size, padding side).
BATCH_SPECS = {
    "b1": (1, "left"),
    "b2left": (2, "left"),
    "b3right": (3, "right"),
}


@dataclass
class HFCase:
    """One input case with Hugging Face's reference outputs (float32, eager attention)."""

    variant: str
    kind: str
    batch_spec: str
    inputs: dict[str, Any]
    meta: dict[str, Any]
    logits: torch.Tensor  # [B, L, V] from Qwen2_5OmniThinkerForConditionalGeneration
    position_ids: torch.Tensor  # [3, B, L] from get_rope_index
    rope_deltas: torch.Tensor  # [B, 1]

    @property
    def valid(self) -> torch.Tensor:
        """[B, L] bool: non-pad positions."""
        return self.inputs["attention_mask"].bool()


def _name(variant) -> str:
    return R.get_variant(variant)["name"]


@pytest.fixture(scope="session")
def hf_thinker() -> Callable[[str], Any]:
    """``hf_thinker(variant)`` -> cached tiny float32 eager HF thinker (do not modify it)."""
    cache: dict[str, Any] = {}

    def get(variant):
        name = _name(variant)
        if name not in cache:
            cache[name] = R.make_hf_thinker(name, attn="eager")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def hooked_model(hf_thinker) -> Callable[[str], Any]:
    """``hooked_model(variant)`` -> cached ``HookedAVTransformer.from_hf(hf_thinker(variant))``."""
    import avlens

    cache: dict[str, Any] = {}

    def get(variant):
        name = _name(variant)
        if name not in cache:
            cache[name] = avlens.HookedAVTransformer.from_hf(hf_thinker(name))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def hf(request, hf_thinker):
    """The shared tiny HF thinker of the requesting module's `VARIANT` (default "gqa2_hd16"); tests
    that change weights build their own."""
    return hf_thinker(getattr(request.module, "VARIANT", "gqa2_hd16"))


@pytest.fixture(scope="module")
def model(request, hooked_model):
    """The shared `HookedAVTransformer` wrapping `hf` (same variant)."""
    return hooked_model(getattr(request.module, "VARIANT", "gqa2_hd16"))


@pytest.fixture(scope="session")
def hf_case(hf_thinker) -> Callable[[str, str, str], HFCase]:
    """``hf_case(variant, kind, batch_spec)`` -> cached inputs, metadata and HF reference outputs."""
    cache: dict[tuple, HFCase] = {}

    def get(variant, kind: str, batch_spec: str = "b1") -> HFCase:
        name = _name(variant)
        key = (name, kind, batch_spec)
        if key not in cache:
            hf = hf_thinker(name)
            b, side = BATCH_SPECS[batch_spec]
            inputs, meta = R.make_inputs_and_meta(hf.config, kind, batch=b, padding_side=side)
            logits = R.run_hf(hf, inputs)
            pos, deltas = R.hf_rope_index(hf, inputs)
            cache[key] = HFCase(name, kind, batch_spec, inputs, meta, logits, pos, deltas)
        return cache[key]

    return get


# ----------------------------------------------------------------------------- browser tests
# Marker `browser` (pyproject.toml): tests that open pages in headless Chromium
# (tests/browser_util.py). `pytest -m "not browser"` leaves them out.


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium (playwright `Browser` on the system's Chromium), one per test module.
    Skips loudly where playwright or Chromium is missing, fails instead when
    `AVLENS_REQUIRE_BROWSER=1` (as `.ci/run` sets it); tests using it get the `browser` marker."""
    import browser_util

    with browser_util.launch() as browser:
        yield browser


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test that uses the `chromium` fixture `browser` (before `-m` selects), so
    `-m "not browser"` also leaves out browser tests in other modules that forgot the marker."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def pytest_terminal_summary(terminalreporter):
    """Say it in red at the end of the run when browser tests were skipped for want of Chromium."""
    import browser_util

    skipped = terminalreporter.stats.get("skipped", [])
    hits = [r for r in skipped if browser_util.SKIP_PREFIX in str(getattr(r, "longrepr", ""))]
    if hits:
        terminalreporter.write_sep("!", f"{browser_util.SKIP_PREFIX} ({len(hits)}): no headless Chromium; "
                                   "see the SKIPPED lines for why", red=True, bold=True)


# ----------------------------------------------------------------------- the shipped toy model
@pytest.fixture(scope="module")
def toy():
    """The shipped toy audio-visual model (`avlens.load_toy()`), one per test module."""
    from avlens.toy import load_toy

    return load_toy()


@pytest.fixture(scope="module")
def prompt():
    """A caption prompt about a synthetic clip (a dog heard off-screen), as an `AVPrompt` with its
    raw media, for the decoding-time methods."""
    from avlens.data import synth, tasks
    from avlens.mitigation import AVPrompt

    clip = synth.make_clip("dog", "offscreen", seed=3)
    return AVPrompt(tasks.prompt_text(tasks.caption(clip)), audio=clip.waveform, video=clip.frames, fps=synth.FPS)
