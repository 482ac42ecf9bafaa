"""Sphinx extension: the API reference, generated from avlens's docstrings.

Directive ``avlens-api`` (in MyST: ```` ```{avlens-api} avlens.analysis ```` ````) writes, for one
module and (with ``:submodules:``) every public module below it, the module docstring and an
autodoc entry for each public object whose *home* is that module.

Every public object is documented once, under its home: the shortest public path it can be
imported from (``avlens.HookedAVTransformer``, not ``avlens.model.hooked.HookedAVTransformer``),
because that is the name a reader types. Public means: listed in a module's ``__all__``, or, in a
module without ``__all__``, a class or function defined there whose name does not start with an
underscore. Modules whose name has a part starting with an underscore are private. Ties between
equally short paths go to the first module in the walk, except that ``avlens.interventions``
yields to ``avlens.patching`` (the same package under the name the docs use).

The walk (``public_modules``, ``homes``) is plain Python so that ``tests/test_docs.py`` can check,
without building the site, that every public module is covered by some page and every public
object has a home.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import types
from dataclasses import dataclass
from pathlib import Path


ROOT = "avlens"
#: packages that are the same thing as another public name: they rank after it for homes
ALIASES = {"avlens.interventions": "avlens.patching"}
#: a constant whose repr is longer than this is documented without its value
MAX_VALUE_REPR = 160


@dataclass(frozen=True)
class Entry:
    """One public object: where it is documented (`home`, a module) and under which `name`."""

    home: str
    name: str
    kind: str  # "class", "function", "data"

    @property
    def path(self) -> str:
        return f"{self.home}.{self.name}"


@functools.lru_cache(maxsize=1)
def public_modules() -> tuple[str, ...]:
    """Every public avlens module, packages before their submodules, in name order."""
    pkg = importlib.import_module(ROOT)
    names = [ROOT]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=ROOT + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    for alias_target in set(ALIASES.values()):
        if alias_target not in names:
            names.append(alias_target)
    return tuple(sorted(set(names)))


def _kind(obj) -> str | None:
    if isinstance(obj, types.ModuleType):
        return None
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or isinstance(obj, functools.partial):
        return "function"
    if callable(obj) and not isinstance(obj, (str, bytes, int, float, tuple, list, dict)):
        return "function"
    return "data"


def exported(modname: str) -> list[tuple[str, object, str]]:
    """(name, object, kind) of the public names of one module, in `__all__` or source order."""
    mod = importlib.import_module(modname)
    if hasattr(mod, "__all__"):
        names = list(mod.__all__)
    else:
        names = [n for n, o in vars(mod).items()
                 if not n.startswith("_") and (inspect.isclass(o) or inspect.isfunction(o))
                 and getattr(o, "__module__", None) == modname]
    out = []
    for n in names:
        if not hasattr(mod, n):
            raise AttributeError(f"{modname}.__all__ lists {n!r}, which the module does not define; "
                                 "remove it from __all__ or define it")
        obj = getattr(mod, n)
        kind = _kind(obj)
        if kind is not None:
            out.append((n, obj, kind))
    return out


def _key(obj, modname: str, name: str):
    # the same object under several names is one entry; plain values are told apart by path,
    # since equal small ints or strings are shared objects in Python
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return ("value", modname, name)
    return ("object", id(obj))


@functools.lru_cache(maxsize=1)
def homes() -> dict[str, list[Entry]]:
    """Module -> the entries documented on it (every public object exactly once)."""
    rank = {m: i for i, m in enumerate(public_modules())}

    def order(modname: str):
        demoted = any(modname == a or modname.startswith(a + ".") for a in ALIASES)
        return (modname.count("."), demoted, rank[modname])

    best: dict[tuple, tuple] = {}
    for modname in public_modules():
        for n, obj, kind in exported(modname):
            k = _key(obj, modname, n)
            cand = (order(modname), modname, n, kind, obj)
            if k not in best or cand[0] < best[k][0]:
                best[k] = cand
    out: dict[str, list[Entry]] = {m: [] for m in public_modules()}
    for _, modname, n, kind, _obj in best.values():
        out[modname].append(Entry(modname, n, kind))
    for modname, entries in out.items():
        position = {n: i for i, (n, _, _) in enumerate(exported(modname))}
        entries.sort(key=lambda e: position[e.name])
    return out


def covered(modname: str, submodules: bool) -> list[str]:
    """The modules one directive documents."""
    if not submodules:
        return [modname]
    return [m for m in public_modules() if m == modname or m.startswith(modname + ".")]


def module_rst(modname: str) -> list[str]:
    """rST for one module: a section titled with its name, its docstring, its entries."""
    lines: list[str] = [f"``{modname}``", "-" * (len(modname) + 4), ""]
    lines += [f".. automodule:: {modname}", ""]
    mod = importlib.import_module(modname)
    for e in homes()[modname]:
        if e.kind == "class":
            lines += [f".. autoclass:: {e.path}", "   :members:"]
            if any(b is not object for b in getattr(mod, e.name).__bases__):
                lines += ["   :show-inheritance:"]  # "Bases: object" says nothing
            lines += [""]
        elif e.kind == "function":
            lines += [f".. autofunction:: {e.path}", ""]
        else:
            value = getattr(mod, e.name)
            lines += [f".. autodata:: {e.path}"]
            if len(repr(value)) > MAX_VALUE_REPR:
                lines += ["   :no-value:"]
            lines += [""]
    return lines


def _directive():
    """The directive class (built on first use, importing Sphinx; the walk above needs no Sphinx,
    so tests/test_docs.py runs without it)."""
    from docutils import nodes
    from docutils.parsers.rst import directives
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class ApiDirective(SphinxDirective):
        """``.. avlens-api:: avlens.analysis`` with optional ``:submodules:`` (every public module below).

        Use it in an rST page: it emits autodoc directives, which MyST pages would not parse as rST."""

        required_arguments = 1
        option_spec = {"submodules": directives.flag}

        def run(self):
            modname = self.arguments[0].strip()
            if modname not in public_modules():
                raise self.error(f"avlens-api: {modname!r} is not a public avlens module; public modules: "
                                 + ", ".join(public_modules()))
            mods = covered(modname, "submodules" in self.options)
            lines: list[str] = []
            for m in mods:
                lines += module_rst(m)
                mod = importlib.import_module(m)
                if getattr(mod, "__file__", None):
                    self.env.note_dependency(mod.__file__)
            for ext in Path(__file__).parent.glob("*.py"):  # this generator and the docstring converter
                self.env.note_dependency(str(ext))
            node = nodes.container()
            nested_parse_with_titles(self.state, StringList(lines, source=f"<avlens-api {modname}>"), node)
            return node.children

    return ApiDirective


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.add_directive("avlens-api", _directive())
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
