"""docs/patching.md's example runs as written on the shipped toy model, and its results make sense."""

import pathlib
import re

import pytest
import torch

from avlens.toy import toy_available


@pytest.mark.skipif(not toy_available(), reason="no toy checkpoint shipped")
def test_patching_docs_example_runs_on_the_toy_model():
    text = (pathlib.Path(__file__).parent.parent / "docs" / "patching.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "docs/patching.md", "exec"), ns)
    grid, clean = ns["grid"], ns["clean"]
    L = ns["model"].cfg.n_layers
    assert grid.values.shape == (L, clean.shape[1])
    # the toy answers from the audio: restoring every clean audio state at layer 0 restores the answer
    assert float(grid.source) > 0.9 and float(grid.base) < 0.5
    assert float(ns["by_group"].values[0, ns["by_group"].coords["group"].index("audio")]) > 0.9
    assert set(ns["ie"]) == {"IE_clean"} and ns["ie"]["IE_clean"].values.shape == (3,)
    assert ns["ko"].values.shape == (L,) and torch.isfinite(ns["ko"].values).all()
    assert ns["heads"].values.shape == (L, ns["model"].cfg.n_heads)
    assert ns["path"].values.shape == (L - 1, ns["model"].cfg.n_heads)
