"""Fast checks of the docs site's sources and generators, without building the site
(`make docs` builds it, with warnings as errors, in CI).

- every page under docs/ is reachable from docs/index.md through toctrees (Sphinx would warn, and
  a page outside every toctree has no place in the navigation);
- every tutorial solution notebook matches the tutorials index's toctree glob;
- the hook table generator (docs/_ext/avlens_hooks.py) covers every name in `model.hook_dict`
  exactly once, and its shapes equal those of an independent `run_with_cache`;
- the token-group table's shapes equal the layout's group counts;
- the API generator (docs/_ext/avlens_api.py) documents every public module on some page and every
  public object exactly once;
- the docstring converter (docs/_ext/avlens_docstrings.py) turns every avlens docstring into rST
  that docutils parses without a single message, showing the same text.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))


# ----------------------------------------------------------------------------------- toctrees

def _source_pages() -> set[str]:
    """Docnames (paths under docs/ without suffix) of every committed page."""
    pages = set()
    for p in list(DOCS.rglob("*.md")) + list(DOCS.rglob("*.rst")):
        rel = p.relative_to(DOCS)
        if rel.parts[0].startswith("_"):
            continue
        pages.add(str(rel.with_suffix("")))
    return pages


def _toctree_entries(page: str) -> list[str]:
    """The entries (as written) of every toctree on a page, MyST fences or rST directives."""
    path = next(p for p in (DOCS / f"{page}.md", DOCS / f"{page}.rst") if p.exists())
    text = path.read_text()
    entries = []
    for block in re.findall(r"```\{toctree\}\n(.*?)```", text, re.S):
        entries += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(":")]
    for block in re.findall(r"\.\. toctree::\n((?:[ \t]+.*\n|\n)*)", text):
        entries += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(":")]
    return entries


def _reachable(pages: set[str], extra: set[str] = frozenset()) -> set[str]:
    seen, todo = {"index"}, ["index"]
    everything = pages | set(extra)
    while todo:
        page = todo.pop()
        if page not in pages:
            continue
        base = str(Path(page).parent)
        for entry in _toctree_entries(page):
            target = str(Path(base) / entry) if base != "." else entry
            target = target.replace("\\", "/")
            hits = fnmatch.filter(everything, target) if any(c in target for c in "*?[") else [target]
            for hit in hits:
                if hit not in seen:
                    seen.add(hit)
                    todo.append(hit)
    return seen


def test_every_docs_page_is_in_a_toctree():
    pages = _source_pages()
    missing = sorted(pages - _reachable(pages))
    assert not missing, f"pages in no toctree reachable from docs/index.md: {missing}; add them to a toctree"


def test_toctree_entries_name_existing_pages():
    pages = _source_pages()
    for page in pages:
        base = str(Path(page).parent)
        for entry in _toctree_entries(page):
            if any(c in entry for c in "*?["):
                continue
            target = (str(Path(base) / entry) if base != "." else entry).replace("\\", "/")
            assert target in pages, f"docs/{page}: toctree entry {entry!r} names no page"


def test_every_tutorial_notebook_is_in_the_tutorials_toctree():
    notebooks = {f"tutorials/{p.stem}" for p in (ROOT / "tutorials" / "solutions").glob("*.ipynb")}
    if not notebooks:
        pytest.skip("no tutorial solution notebooks yet (tutorials/solutions/*.ipynb)")
    pages = _source_pages()
    missing = sorted(notebooks - _reachable(pages, extra=notebooks))
    assert not missing, f"solution notebooks the docs' tutorials toctree would not list: {missing}"


# ----------------------------------------------------------------------------------- hook table

@pytest.fixture(scope="module")
def hooks_sample():
    import avlens_hooks

    return avlens_hooks, avlens_hooks.sample()


def test_hook_table_covers_every_hook_exactly_once(hooks_sample):
    gen, s = hooks_sample
    rows = gen.hook_rows(s)
    names = [n for r in rows for n in r.names]
    assert len(names) == len(set(names)), "a hook appears in two rows"
    assert set(names) == set(s.model.hook_dict), (
        f"not covered: {sorted(set(s.model.hook_dict) - set(names))}; unknown: {sorted(set(names) - set(s.model.hook_dict))}")
    assert all(r.shape != "-" for r in rows), [r.pattern for r in rows if r.shape == "-"]
    for r in rows:  # a folded row really stands for its names
        if "{l}" in r.pattern or "{i}" in r.pattern:
            rx = re.escape(r.pattern).replace(r"\{l\}", r"\d+").replace(r"\{i\}", r"\d+")
            assert all(re.fullmatch(rx, n) for n in r.names), r


def test_hook_table_shapes_equal_run_with_cache(hooks_sample):
    """Independent reference: the shapes TransformerLens's caching hooks store."""
    gen, s = hooks_sample
    model, batch = s.model, s.batch
    rows = gen.hook_rows(s)
    _, cache = model.run_with_cache(batch)
    checked = 0
    for r in rows:
        for n in r.names:
            if n in cache.keys():
                assert r.shape == gen._fmt(tuple(cache[n].shape)), (n, r.shape, tuple(cache[n].shape))
                assert r.fires == "default cache", (n, r.fires)
                checked += 1
    assert checked > 0.6 * len(model.hook_dict)
    # opt-in hooks, cached with their TransformerLens switch on
    for switch, name in (("use_attn_result", "blocks.0.attn.hook_result"), ("use_split_qkv_input", "blocks.0.hook_k_input")):
        row = next(r for r in rows if name in r.names)
        assert switch in row.fires
        setattr(model.cfg, switch, True)
        try:
            _, c = model.run_with_cache(batch, names_filter=[name])
        finally:
            setattr(model.cfg, switch, False)
        assert row.shape == gen._fmt(tuple(c[name].shape)), (name, row.shape)
    # encoder hooks, cached when named
    enc = next(r for r in rows if "audio_tower.hook_out" in r.names)
    _, c = model.run_with_cache(batch, names_filter=["audio_tower.hook_out"])
    assert enc.shape == gen._fmt(tuple(c["audio_tower.hook_out"].shape))
    # the symbolic reading of a decoder hook
    resid = next(r for r in rows if "blocks.0.hook_resid_post" in r.names)
    assert resid.dims == "[batch, pos, d_model]"


def test_group_table_shapes_equal_layout_counts(hooks_sample):
    gen, s = hooks_sample
    layout, d = s.batch.layout, s.model.cfg.d_model
    rows = {r.group: r for r in gen.group_rows(s)}
    assert set(rows) == set(layout.groups)
    for g, r in rows.items():
        n = int(layout.mask(g)[0].sum())
        if n == 0:
            assert "empty" in r.count and "raises" in r.shape
        else:
            assert r.shape == f"[{s.batch.shape[0]}, {n}, {d}]", (g, r.shape)
    assert rows["audio"].dims == "[batch, n_audio, d_model]"


# ----------------------------------------------------------------------------------- API pages

def _api_directives() -> list[tuple[str, bool]]:
    out = []
    for page in (DOCS / "api").glob("*.rst"):
        text = page.read_text()
        for m in re.finditer(r"^\.\. avlens-api:: (\S+)\n((?:[ \t]+:\S+:.*\n)*)", text, re.M):
            out.append((m.group(1), ":submodules:" in m.group(2)))
    return out


def test_api_pages_cover_every_public_module_and_object():
    import avlens_api

    covered = set()
    for mod, sub in _api_directives():
        assert mod in avlens_api.public_modules(), f"docs/api names {mod!r}, not a public module"
        covered |= set(avlens_api.covered(mod, sub))
    missing = sorted(set(avlens_api.public_modules()) - covered)
    assert not missing, f"public modules on no API page: {missing}; add an avlens-api directive to docs/api/"
    homes = avlens_api.homes()
    documented = [e.path for entries in homes.values() for e in entries]
    assert len(documented) == len(set(documented))
    # every object a public module exports is documented once, under some public path
    ids: dict[int, list[str]] = {}
    for mod in avlens_api.public_modules():
        for e in homes[mod]:
            obj = getattr(importlib.import_module(mod), e.name)
            if not isinstance(obj, (str, bytes, int, float, bool, type(None))):
                ids.setdefault(id(obj), []).append(e.path)
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    for mod in avlens_api.public_modules():
        for name, obj, kind in avlens_api.exported(mod):
            if isinstance(obj, (str, bytes, int, float, bool, type(None))):
                continue
            assert id(obj) in ids, f"{mod}.{name} is public but documented nowhere"
    import avlens

    top = {e.name for e in homes["avlens"]}
    assert {"HookedAVTransformer", "AVBatch", "load_toy"} <= top  # documented under the short names


# ----------------------------------------------------------------------------------- docstrings

def _all_docstrings() -> list[tuple[str, str]]:
    import avlens_api
    import avlens_docstrings

    seen, out = set(), []
    for mod in avlens_api.public_modules():
        m = importlib.import_module(mod)
        items = [(mod, m)] + [(f"{mod}.{n}", o) for n, o, _ in avlens_api.exported(mod)]
        for name, obj in list(items):
            if inspect.isclass(obj):
                items += [(f"{name}.{k}", v) for k, v in vars(obj).items() if not k.startswith("_")]
        for name, obj in items:
            if isinstance(obj, (str, int, float, tuple, dict, list, frozenset, set)):
                continue
            doc = avlens_docstrings.docstring_lines(obj)
            if doc and id(obj.__doc__) not in seen and (getattr(obj, "__module__", "") or mod).startswith("avlens"):
                seen.add(id(obj.__doc__))
                out.append((name, "\n".join(doc)))
    return out


def _plain(text: str) -> str:
    """Text with the inline markup a docstring author uses removed, whitespace collapsed."""
    text = re.sub(r"``(.+?)``", lambda m: m.group(1).strip(), text, flags=re.S)  # code spans, inner
    text = re.sub(r"`([^`]+)`", lambda m: m.group(1).strip(), text)             # spaces trimmed
    text = text.replace("`", "").replace("**", "")
    return " ".join(text.split())


def test_every_docstring_converts_to_warning_free_rst_with_the_same_text():
    from docutils.core import publish_doctree

    import avlens_docstrings

    docs = _all_docstrings()
    assert len(docs) > 300
    for name, doc in docs:
        rst = "\n".join(avlens_docstrings.to_rst(doc.splitlines()))
        stream = io.StringIO()
        tree = publish_doctree(rst, settings_overrides={"warning_stream": stream, "report_level": 1, "halt_level": 5})
        messages = stream.getvalue().strip()
        assert not messages, f"{name}: docutils says:\n{messages}\n--- rST:\n{rst}"
        assert _plain(tree.astext()) == _plain(doc), f"{name}: the rendered text differs from the docstring"


@pytest.mark.parametrize("doc", [
    "Sum of `x_i` over |T| tokens, *args and name_ refs: see [1]_ and :func:`f`.",
    "Summary.\n\n    indented code\n    more\n\n- a list\n- of items\n\nBack to prose with ``code`` and **bold**.",
    "Shape `[batch, pos]`s and a path `a``b` and a trailing colon::",
    "Args:\n    x: the input.\n    y: the other.\n\n1. first\n2. second",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "A `</script>` token and <img src=x onerror=alert(1)> stay text.",
])
def test_docstring_converter_handles_markup_hazards(doc):
    from docutils.core import publish_doctree

    import avlens_docstrings

    rst = "\n".join(avlens_docstrings.to_rst(doc.splitlines()))
    stream = io.StringIO()
    tree = publish_doctree(rst, settings_overrides={"warning_stream": stream, "report_level": 1, "halt_level": 5})
    assert not stream.getvalue().strip(), stream.getvalue()
    assert _plain(tree.astext()) == _plain(doc)
    assert not list(tree.findall(lambda n: n.tagname in ("raw", "reference", "substitution_reference", "footnote_reference",
                                                         "emphasis", "title_reference", "problematic")))


def test_indented_example_after_the_summary_stays_preformatted():
    """A docstring whose only later lines are an indented example (as avlens's module docstring):
    inspect.cleandoc would dedent the example into prose; it must render as a literal block."""
    from docutils.core import publish_doctree

    import avlens
    import avlens_docstrings

    lines = avlens_docstrings.docstring_lines(avlens)
    assert lines[1:] and all(x.startswith("    ") for x in lines if x.strip() and x is not lines[0])
    tree = publish_doctree("\n".join(avlens_docstrings.to_rst(lines)))
    blocks = [n.astext() for n in tree.findall(lambda n: n.tagname == "literal_block")]
    assert any("import avlens" in b and "run_with_cache" in b for b in blocks), blocks
