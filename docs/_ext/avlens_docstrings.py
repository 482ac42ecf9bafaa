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

import inspect
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


def _base_indent(obj) -> int | None:
    """The indentation a docstring's body lines were written at: 0 for a module, the `def` /
    `class` line's indentation + 4 otherwise (None where the source cannot be read)."""
    if inspect.ismodule(obj):
        return 0
    target = obj.fget if isinstance(obj, property) else obj
    try:
        target = inspect.unwrap(target)
        src, _ = inspect.getsourcelines(target)
    except (TypeError, OSError, ValueError):
        return None
    for line in src:
        stripped = line.lstrip()
        if stripped.startswith(("def ", "async def ", "class ")):
            return len(line) - len(stripped) + 4
    return None


def docstring_lines(obj) -> list[str] | None:
    """The docstring of `obj` with its own relative indentation kept.

    `inspect.cleandoc` (and autodoc) remove the common indentation of the lines after the first,
    so in a docstring whose only later lines are an indented example the example loses its
    indentation and would read as prose. Here the removed indentation is the one the body was
    written at (from the source), so the example stays indented."""
    raw = getattr(obj, "__doc__", None)
    if not isinstance(raw, str) or not raw.strip():
        return None
    lines = raw.expandtabs(8).splitlines()
    rest = lines[1:]
    base = _base_indent(obj)
    if base is None:
        indents = [len(x) - len(x.lstrip()) for x in rest if x.strip()]
        base = min(indents) if indents else 0
    out = [lines[0].strip()] + [x[min(base, len(x) - len(x.lstrip())):].rstrip() for x in rest]
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def process_docstring(app, what, name, obj, options, lines):
    """`autodoc-process-docstring` handler: convert avlens docstrings in place."""
    module = getattr(obj, "__module__", None) or ""
    if not (name.startswith("avlens") or module.startswith("avlens")):
        return
    given = list(lines)
    own = docstring_lines(obj)
    # use the indentation-preserving form only when autodoc's lines are that same docstring
    if own is not None and [x.strip() for x in own if x.strip()] == [x.strip() for x in given if x.strip()]:
        given = own
    lines[:] = to_rst(given)


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
