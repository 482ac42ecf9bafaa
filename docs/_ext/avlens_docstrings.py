"""Sphinx extension: render avlens's free-form docstrings as safe reStructuredText.

avlens's docstrings are written for a reader in Jupyter or an editor, not for Sphinx: Markdown-ish
`code` spans, indented examples, aligned argument lists, tables, `[batch, pos]` shapes and `|x|`
norms. Fed to autodoc as they are, docutils reads them as rST and fails in dozens of places
(unexpected indentation, undefined substitutions `|x|`, stray emphasis `*args`, `name_`
references), and `make docs` builds with warnings as errors.

Rewriting every docstring to rST would fight the project's style (and other people's edits), so
this extension converts them when autodoc reads them (`autodoc-process-docstring`):

- a paragraph of plain prose (lines at one indentation, not starting like a list, a table, a
  doctest or an rST construct) stays prose: its lines are joined, `code` spans become inline
  literals, ``**bold**`` stays bold, and every other character that rST could read as markup is
  backslash-escaped, so the text shows exactly as written;
- anything else (indented code, argument lists, bullet lists, tables, doctests) becomes a literal
  block, shown preformatted as the author laid it out; consecutive such paragraphs share one block.

So the summary line reads as prose in the API pages, and nothing in a docstring can break the
build or be interpreted as markup. Only objects from the avlens package are converted.
"""

from __future__ import annotations

import re

# characters rST may read as markup inside a paragraph; a backslash makes each literal
_ESCAPE = re.compile(r"([\\*_|`\[\]<>:#=+~^{}!@$%&])")
# a paragraph starting like this is structure, not prose
_STRUCTURE = re.compile(
    r"^(\s|[-*+•]\s|\d+[.)]\s|[a-zA-Z][.)]\s|#|>>>|\.\.|\||=|:|\[|\(?\w+\)\s|[-=~^\"'`*+#]{3,}\s*$)"
)
# a line inside a paragraph that starts a list item or table row: keep the paragraph's layout
_STRUCTURE_LINE = re.compile(r"^\s*([-*+•]\s|\d+[.)]\s|\||>>>)")


def _inline_literal(code: str) -> str:
    code = code.strip()
    if not code:
        return ""
    if "``" in code:  # cannot sit inside an rST inline literal: show it escaped instead
        return _ESCAPE.sub(r"\\\1", code)
    # `\ ` on both sides: allowed next to any character, and removed from the output
    return "\\ ``" + code + "``\\ "


def prose(text: str) -> str:
    """One paragraph of free-form text as rST that shows exactly that text.

    `code` and ``code`` spans become inline literals, **bold** stays bold, everything else is
    escaped."""
    out = []
    for part in re.split(r"(``[^`]+``|`[^`]+`|\*\*[^*\s][^*]*?\*\*)", text):
        if not part:
            continue
        if part.startswith("``") and part.endswith("``") and len(part) > 4:
            out.append(_inline_literal(part[2:-2]))
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(_inline_literal(part[1:-1]))
        elif part.startswith("**") and part.endswith("**") and len(part) > 4:
            inner = _ESCAPE.sub(r"\\\1", part[2:-2]).strip()
            out.append("\\ **" + inner + "**\\ " if inner else "")
        else:
            out.append(_ESCAPE.sub(r"\\\1", part))
    return "".join(out).strip()


def _is_prose(par: list[str]) -> bool:
    if _STRUCTURE.match(par[0]):
        return False
    if any(line[:1].isspace() for line in par):
        return False
    return not any(_STRUCTURE_LINE.match(line) for line in par[1:])


def _paragraphs(lines: list[str]) -> list[list[str]]:
    pars, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            pars.append(cur)
            cur = []
    if cur:
        pars.append(cur)
    return pars


def _dedent(lines: list[str]) -> list[str]:
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents) if indents else 0
    return [line[cut:] for line in lines]


def to_rst(lines: list[str]) -> list[str]:
    """Free-form docstring lines -> rST lines that render the same text without warnings.

    Blank lines inside a preformatted run are kept; prose paragraphs become one line each."""
    lines = [line.expandtabs(4) for line in lines]
    pars = _paragraphs(lines)
    # split the raw lines into prose paragraphs and preformatted runs (with their inner blank lines)
    out: list[str] = []
    block: list[str] = []

    def flush():
        if block:
            while block and not block[-1].strip():
                block.pop()
            out.extend(["::", ""])
            out.extend(("    " + line) if line.strip() else "" for line in _dedent(block))
            out.append("")
            block.clear()

    for par in pars:
        if _is_prose(par):
            flush()
            text = prose(" ".join(line.strip() for line in par))
            if text:
                out.extend([text, ""])
        else:
            if block:
                block.append("")
            block.extend(par)
    flush()
    while out and not out[-1].strip():
        out.pop()
    if out:
        out.append("")
    return out


def process_docstring(app, what, name, obj, options, lines):
    """`autodoc-process-docstring` handler: convert avlens docstrings in place."""
    module = getattr(obj, "__module__", None) or ""
    if not (name.startswith("avlens") or module.startswith("avlens")):
        return
    lines[:] = to_rst(list(lines))


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
