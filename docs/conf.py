"""Sphinx configuration of the avlens documentation site (`make docs`).

Choices (docs/index.md, "About this site", says why):

- Sphinx + furo + myst-nb: the pages stay Markdown (MyST), the tutorials are rendered from their
  notebooks by myst-nb, the API reference comes from the docstrings through autodoc.
- Everything offline: MathJax is served from a local copy (the `django-static-mathjax` package,
  MathJax 3.2.2, part of the `docs` extra), not from a CDN.
- Generated, not hand-written: the hook and token-group tables (`_ext/avlens_hooks.py`, from the
  toy model at build time) and the API pages (`_ext/avlens_api.py`); avlens's free-form
  docstrings are made safe for rST by `_ext/avlens_docstrings.py`.
- Tutorials: the solution notebooks `tutorials/solutions/*.ipynb` are copied into
  `docs/tutorials/` at build time (git-ignored copies) and rendered by myst-nb; see
  `nb_execution_mode` below.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(REPO))  # avlens from this checkout, installed or not

import avlens  # noqa: E402

project = "avlens"
author = "the avlens authors"
copyright = "the avlens authors"
release = version = avlens.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "avlens_docstrings",
    "avlens_api",
    "avlens_hooks",
    "avlens_notebooks",  # offline plotly figures and quiet progress bars in executed notebooks
]

exclude_patterns = ["_build", "figures/*.py", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}

# ---------------------------------------------------------------------------------------- MyST
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve
# The existing pages jump from H1 to H3 in places; MyST's header-level check is advisory.
suppress_warnings = ["myst.header"]

# ---------------------------------------------------------------------------------------- autodoc
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show defaults as written (`torch.float32`, not a repr)
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # TransformerLens's docstrings are not avlens's to render
add_module_names = False

# ---------------------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"avlens {release}"
html_static_path: list[str] = ["_static"]
html_css_files = ["avlens.css"]
html_show_sourcelink = False


def _local_mathjax() -> str:
    """Copy MathJax 3's tex-mml-chtml component and its fonts into a static folder under _build,
    and return `mathjax_path` relative to `_static`. The site then loads no script from the
    network (Sphinx's default is a CDN URL)."""
    try:
        import mathjax  # the django-static-mathjax package: MathJax 3.2.2's distribution
    except ImportError as e:
        raise RuntimeError(
            "The docs need a local MathJax: install the docs extra (pip install -e '.[docs]', "
            "which includes django-static-mathjax), or run `make docs`, which does."
        ) from e
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    dest = DOCS / "_build" / "static-mathjax"
    target = dest / "mathjax"
    if not (target / "tex-mml-chtml.js").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(es5 / "tex-mml-chtml.js", target / "tex-mml-chtml.js")
        shutil.copytree(es5 / "output" / "chtml" / "fonts" / "woff-v2", target / "output" / "chtml" / "fonts" / "woff-v2",
                        dirs_exist_ok=True)
    html_static_path.append(str(dest))
    return "mathjax/tex-mml-chtml.js"


mathjax_path = _local_mathjax()

# ---------------------------------------------------------------------------------------- tutorials
TUTORIAL_SOURCES = REPO / "tutorials" / "solutions"
TUTORIAL_DEST = DOCS / "tutorials"


def _copy_tutorials() -> list[str]:
    """Copy the solution notebooks into docs/tutorials/ (git-ignored) and drop stale copies."""
    TUTORIAL_DEST.mkdir(exist_ok=True)
    found = sorted(TUTORIAL_SOURCES.glob("*.ipynb")) if TUTORIAL_SOURCES.is_dir() else []
    names = {p.name for p in found}
    for old in TUTORIAL_DEST.glob("*.ipynb"):
        if old.name not in names:
            old.unlink()
    for src in found:
        dst = TUTORIAL_DEST / src.name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copy2(src, dst)  # copy only on change, so Sphinx rebuilds only changed pages
    return sorted(names)


tutorial_notebooks = _copy_tutorials()

# Execution of the tutorial notebooks. "cache" (default): executed with the kernel of this
# Python, once per change of a notebook's code (jupyter-cache in docs/_build/.jupyter_cache), so
# the pages show the outputs (the views included). AVLENS_DOCS_EXECUTE=off builds the pages
# without outputs (fast local check); "force" re-executes everything.
nb_execution_mode = os.environ.get("AVLENS_DOCS_EXECUTE", "cache")
if nb_execution_mode not in ("off", "cache", "force", "auto", "inline"):
    raise ValueError(f"AVLENS_DOCS_EXECUTE={nb_execution_mode!r}: use off, cache or force")
nb_execution_timeout = 900  # per cell, seconds
nb_execution_raise_on_error = False  # a failing cell is a warning, so -W fails the build after reporting everything
nb_execution_show_tb = True
nb_execution_excludepatterns: list[str] = []
nb_merge_streams = True
