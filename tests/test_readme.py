"""The README's quick start runs as written."""

import pathlib
import re


def test_readme_quick_start_runs():
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["patched"].shape == namespace["logits"].shape
    assert namespace["out"].tokens.shape == (1, 5)
