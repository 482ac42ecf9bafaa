"""Generate the tutorials' exercise and solution notebooks from their one source file each.

    python -m tutorials.build            # (re)write tutorials/exercises/*.ipynb and tutorials/solutions/*.ipynb
    python -m tutorials.build --check    # exit 1, naming the stale files, if a notebook differs from its source

Each tutorial is ONE Python file, `tutorials/src/tN_<name>.py`, split into cells by `# %%` lines
(the "percent" format that VS Code, Jupytext and Spyder understand), with a few cell kinds of our
own in square brackets:

    # %% [markdown]        a markdown cell: every line is "# text" (or a bare "#")
    # %%                   a code cell, the same in both notebooks
    # %% [imports]         a code cell that also defines the namespace the exercises are checked in
    #                      (imports and constants only: `tests/test_tutorials.py` executes it)
    # %% [setup]           (no body) the Colab set-up cell, generated here (`setup_cell`)
    # %% [section]         a markdown cell opening a section: a "## " heading, then a
    #                      "> ##### Learning Objectives" block with at least one "> - " bullet
    # %% [exercise] name=NAME difficulty=1-5 importance=1-5 minutes=N [check=CHECK]
    #                      a markdown cell, "### Exercise - ..." then the task; the build adds the
    #                      difficulty / importance / time block after the heading. The NEXT cell is
    #                      the exercise's code cell, holding one or more marker blocks:
    #
    #     def group_mean(x: Float[Tensor, "batch pos d"], ...) -> Float[Tensor, "batch d"]:
    #         # what it computes, in a docstring
    #         # EXERCISE
    #         # # a hint for the student
    #         # raise NotImplementedError("group_mean: compute the mean over the group's positions")
    #         # SOLUTION
    #         return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    #         # END
    #
    # The exercise notebook gets the EXERCISE lines, uncommented (one leading "# " removed), and
    # after the cell a `<details><summary>Solution</summary>` block with the SOLUTION version of the
    # whole cell; the solution notebook gets the SOLUTION lines in place. Every other line of the
    # cell (the signature, the docstring) is in both. The exercise's check is
    # `tutorials.checks.CHECK(NAME)` (CHECK defaults to `test_NAME`); a later cell must call it.

Notebooks are written without outputs, with deterministic cell ids, so regenerating an unchanged
source gives byte-identical files (`tests/test_tutorials.py` checks that the committed notebooks
are up to date). Errors in a source name the file, the line and what to write instead.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nbformat

ROOT = Path(__file__).resolve().parent
SRC_DIR = ROOT / "src"
EXERCISES_DIR = ROOT / "exercises"
SOLUTIONS_DIR = ROOT / "solutions"
VARIANTS = ("exercises", "solutions")

#: where Colab gets avlens (and these tutorials' checks) from: the git repository, cloned and
#: installed by the set-up cell. Change it here and run `make tutorials` to point every notebook
#: elsewhere (a fork, a branch: "https://.../avlens@branch" is not a git URL; use a fork's URL).
AVLENS_SOURCE = "https://github.com/avlens/avlens"

MARKERS = ("# EXERCISE", "# SOLUTION", "# END")
CELL_HEADER = re.compile(r"^# %%(?:\s+\[(?P<kind>[\w-]+)\](?P<attrs>.*))?\s*$")
KINDS = ("markdown", "imports", "setup", "section", "exercise")
JAXTYPING_KINDS = {"Float", "Int", "Bool", "Shaped", "Num", "Integer", "Real", "Inexact", "Complex", "UInt"}


class TutorialSourceError(ValueError):
    """A tutorial source file breaks the format described in this module's docstring."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line = path, line


@dataclass
class Cell:
    """One cell of a source: `kind` is None (plain code) or one of `KINDS`; `lines` its body
    (markdown already stripped of its "# "); `line` where its header is (1-based)."""

    kind: Optional[str]
    lines: list[str]
    line: int
    attrs: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_code(self) -> bool:
        return self.kind in (None, "imports")


@dataclass
class Exercise:
    """One exercise: its metadata, header markdown and the two versions of its code cell."""

    name: str
    title: str
    difficulty: int
    importance: int
    minutes: int
    check: str
    section: str  # the title of the section it belongs to
    header: str  # markdown, with the difficulty / importance / time block inserted
    stub: str  # the code cell as the student gets it
    solution: str  # the code cell with the solution in place
    cell_index: int  # index of its code cell in `Tutorial.cells`


@dataclass
class Section:
    title: str
    objectives: list[str]


@dataclass
class Tutorial:
    name: str  # the source's stem, e.g. "t1_hooks_and_groups"
    path: Path
    cells: list[Cell]
    sections: list[Section]
    exercises: list[Exercise]

    @property
    def short(self) -> str:
        """The notebooks' file stem: "t1" for "t1_hooks_and_groups"."""
        return self.name.split("_", 1)[0]

    def imports_code(self) -> str:
        """The `[imports]` cells, joined: the namespace exercises are defined in."""
        return "\n\n".join(c.text for c in self.cells if c.kind == "imports")


# ----------------------------------------------------------------------------------- parsing
def _attrs(text: str, path: str, line: int) -> dict:
    out = {}
    for tok in text.split():
        if "=" not in tok:
            raise TutorialSourceError(path, line, f"cell attribute {tok!r} must be key=value (no spaces), e.g. difficulty=2")
        k, v = tok.split("=", 1)
        out[k] = v
    return out


def _split_cells(text: str, path: str) -> list[Cell]:
    cells: list[Cell] = []
    lines = text.splitlines()
    if not lines or not CELL_HEADER.match(lines[0]):
        raise TutorialSourceError(path, 1, "a tutorial source starts with a cell header ('# %% [markdown]' or '# %%')")
    for i, ln in enumerate(lines, 1):
        m = CELL_HEADER.match(ln)
        if m:
            kind = m.group("kind")
            if kind is not None and kind not in KINDS:
                raise TutorialSourceError(path, i, f"unknown cell kind [{kind}]; use one of {list(KINDS)} or a plain '# %%'")
            cells.append(Cell(kind, [], i, _attrs(m.group("attrs") or "", path, i)))
        elif ln.startswith("# %%"):
            raise TutorialSourceError(path, i, f"malformed cell header {ln!r}; write '# %%' or '# %% [kind] key=value ...'")
        else:
            cells[-1].lines.append(ln)
    for c in cells:
        while c.lines and not c.lines[-1].strip():
            c.lines.pop()
        while c.lines and not c.lines[0].strip():
            c.lines.pop(0)
        if c.kind in ("markdown", "section", "exercise"):
            md = []
            for j, ln in enumerate(c.lines):
                if ln == "#":
                    md.append("")
                elif ln.startswith("# "):
                    md.append(ln[2:])
                else:
                    raise TutorialSourceError(path, c.line + 1 + j,
                                              f"a markdown line must start with '# ' (or be a bare '#'); got {ln!r}")
            c.lines = md
        if c.kind == "setup" and c.lines:
            raise TutorialSourceError(path, c.line, "a [setup] cell has no body: the build writes the Colab set-up cell")
        if c.kind not in ("exercise",) and c.attrs:
            raise TutorialSourceError(path, c.line, f"only [exercise] cells take attributes; got {c.attrs}")
    return cells


def split_markers(code: str, path: str = "<source>", line: int = 1) -> tuple[str, str, int]:
    """(exercise version, solution version, number of marker blocks) of a code cell."""
    stub, sol = [], []
    state, indent, n_blocks = None, "", 0
    for j, ln in enumerate(code.splitlines()):
        here = line + 1 + j
        s = ln.strip()
        if s in MARKERS:
            ind = ln[: len(ln) - len(ln.lstrip())]
            if s == "# EXERCISE":
                if state is not None:
                    raise TutorialSourceError(path, here, "'# EXERCISE' inside an open block; close the block with '# END' first")
                state, indent = "exercise", ind
            elif s == "# SOLUTION":
                if state != "exercise":
                    raise TutorialSourceError(path, here, "'# SOLUTION' must follow an '# EXERCISE' block")
                if ind != indent:
                    raise TutorialSourceError(path, here, "'# SOLUTION' must be indented like its '# EXERCISE'")
                state = "solution"
            else:
                if state != "solution":
                    raise TutorialSourceError(path, here, "'# END' must close an '# EXERCISE' ... '# SOLUTION' block")
                if ind != indent:
                    raise TutorialSourceError(path, here, "'# END' must be indented like its '# EXERCISE'")
                state = None
                n_blocks += 1
            continue
        if state is None:
            stub.append(ln)
            sol.append(ln)
        elif state == "exercise":
            if not ln.strip():
                stub.append("")
            elif ln == indent + "#":
                stub.append("")
            elif ln.startswith(indent + "# "):
                stub.append(indent + ln[len(indent) + 2:])
            else:
                raise TutorialSourceError(path, here, "every line of an '# EXERCISE' block is commented out ('# ' after the "
                                                      f"block's indentation), so the source runs the solution; got {ln!r}")
        else:
            sol.append(ln)
    if state is not None:
        raise TutorialSourceError(path, line, "a marker block is not closed with '# END'")
    return "\n".join(stub), "\n".join(sol), n_blocks


def _level(value: str, what: str, path: str, line: int) -> int:
    """A difficulty or importance: an integer 1-5."""
    if not value.isdigit() or not 1 <= int(value) <= 5:
        raise TutorialSourceError(path, line, f"{what} must be an integer from 1 to 5, got {value!r}")
    return int(value)


def exercise_block(difficulty: int, importance: int, minutes: int) -> str:
    """The ARENA-style difficulty / importance / time block under an exercise's heading."""
    d = "🔴" * difficulty + "⚪" * (5 - difficulty)
    i = "🔵" * importance + "⚪" * (5 - importance)
    return ("> ```yaml\n"
            f"> Difficulty: {d}\n"
            f"> Importance: {i}\n"
            ">\n"
            f"> You should spend up to ~{minutes} minutes on this exercise.\n"
            "> ```")


def parse(text: str, path: str = "<source>") -> Tutorial:
    """Parse a tutorial source (see the module docstring); raises `TutorialSourceError`."""
    name = Path(path).stem
    cells = _split_cells(text, str(path))
    sections: list[Section] = []
    exercises: list[Exercise] = []
    names: set[str] = set()
    for i, c in enumerate(cells):
        if c.kind == "section":
            if not c.lines or not c.lines[0].startswith("## "):
                raise TutorialSourceError(path, c.line, "a [section] cell starts with a '## ' heading")
            objectives = [ln[4:].strip() for ln in c.lines if ln.startswith("> - ")]
            if not any("Learning Objectives" in ln for ln in c.lines) or not objectives:
                raise TutorialSourceError(path, c.line, "a [section] cell needs a '> ##### Learning Objectives' block with at "
                                                        "least one '> - objective' bullet")
            sections.append(Section(c.lines[0][3:].strip(), objectives))
        elif c.kind == "exercise":
            a = c.attrs
            missing = [k for k in ("name", "difficulty", "importance", "minutes") if k not in a]
            if missing:
                raise TutorialSourceError(path, c.line, f"an [exercise] cell needs {missing}: "
                                                        "'# %% [exercise] name=NAME difficulty=2 importance=3 minutes=10'")
            unknown = set(a) - {"name", "difficulty", "importance", "minutes", "check"}
            if unknown:
                raise TutorialSourceError(path, c.line, f"unknown exercise attributes {sorted(unknown)}")
            if not sections:
                raise TutorialSourceError(path, c.line, "an exercise must come after a [section] cell (its learning objectives)")
            if not c.lines or not c.lines[0].startswith("### Exercise - "):
                raise TutorialSourceError(path, c.line, "an [exercise] cell starts with '### Exercise - <title>'")
            if a["name"] in names:
                raise TutorialSourceError(path, c.line, f"exercise name {a['name']!r} is used twice")
            names.add(a["name"])
            d = _level(a["difficulty"], "difficulty", path, c.line)
            imp = _level(a["importance"], "importance", path, c.line)
            if not a["minutes"].isdigit() or int(a["minutes"]) < 1:
                raise TutorialSourceError(path, c.line, f"minutes must be a positive integer, got {a['minutes']!r}")
            if i + 1 >= len(cells) or not cells[i + 1].is_code:
                raise TutorialSourceError(path, c.line, "an [exercise] cell must be followed by its code cell ('# %%')")
            code = cells[i + 1]
            stub, sol, n = split_markers(code.text, str(path), code.line)
            if n == 0:
                raise TutorialSourceError(path, code.line, "an exercise's code cell needs at least one '# EXERCISE' / "
                                                           "'# SOLUTION' / '# END' block")
            rest = c.lines[1:]
            while rest and not rest[0].strip():
                rest.pop(0)
            header = "\n".join([c.lines[0], "", exercise_block(d, imp, int(a["minutes"]))] + (["", *rest] if rest else []))
            exercises.append(Exercise(
                name=a["name"], title=c.lines[0][len("### Exercise - "):].strip(), difficulty=d,
                importance=imp, minutes=int(a["minutes"]), check=a.get("check", f"test_{a['name']}"),
                section=sections[-1].title, header=header.rstrip(), stub=stub, solution=sol, cell_index=i + 1))
        elif c.is_code:
            if any(ln.strip() in MARKERS for ln in c.lines) and not (i > 0 and cells[i - 1].kind == "exercise"):
                raise TutorialSourceError(path, c.line, "marker blocks ('# EXERCISE' ...) belong in the code cell right "
                                                        "after an [exercise] cell")
    setups = [c for c in cells if c.kind == "setup"]
    if len(setups) != 1:
        raise TutorialSourceError(path, 1, f"a tutorial has exactly one [setup] cell (the Colab set-up); found {len(setups)}")
    for e in exercises:
        called = any(f"checks.{e.check}(" in c.text for c in cells[e.cell_index + 1:] if c.is_code)
        if not called:
            raise TutorialSourceError(path, cells[e.cell_index].line,
                                      f"exercise {e.name!r} is never checked: add a cell calling checks.{e.check}({e.name})")
    return Tutorial(name, Path(path), cells, sections, exercises)


# ----------------------------------------------------------------------------------- rendering
def setup_cell() -> str:
    """The Colab-ready set-up cell: in Colab, clone avlens (with its tutorials) from
    `AVLENS_SOURCE` and install it; on any other machine install nothing and only make the
    clone this notebook lives in importable (for `tutorials.checks`)."""
    return f'''# Set-up. In Google Colab: clone avlens (the library and these tutorials' checks) and install it.
# Anywhere else nothing is installed: run the notebook inside a clone of avlens where it is
# installed (`make install`); this only makes that clone importable, for `tutorials.checks`.
import sys
from pathlib import Path

AVLENS_SOURCE = "{AVLENS_SOURCE}"  # the git repository avlens and its tutorials come from

if "google.colab" in sys.modules:
    import subprocess

    if not Path("avlens").exists():
        subprocess.run(["git", "clone", "--depth", "1", AVLENS_SOURCE, "avlens"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "avlens"], check=True)
    AVLENS_ROOT = Path("avlens").resolve()
else:
    here = Path.cwd().resolve()
    AVLENS_ROOT = next((p for p in [here, *here.parents] if (p / "tutorials" / "checks.py").exists()), None)
    if AVLENS_ROOT is None:
        raise RuntimeError(f"tutorials/checks.py was not found in {{here}} or above it: open this notebook from "
                           "inside a clone of avlens (or in Colab, where this cell clones it).")
if str(AVLENS_ROOT) not in sys.path:
    sys.path.insert(0, str(AVLENS_ROOT))'''


def _details(solution: str) -> str:
    return f"<details><summary>Solution</summary>\n\n```python\n{solution}\n```\n\n</details>"


def render(tut: Tutorial, variant: str) -> nbformat.NotebookNode:
    """The exercise (`variant="exercises"`) or solution (`"solutions"`) notebook of a tutorial."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    by_cell = {e.cell_index: e for e in tut.exercises}
    headers = {e.cell_index - 1: e for e in tut.exercises}
    out = []

    def add(kind: str, source: str) -> None:
        cid = f"{tut.short}-{len(out):03d}"
        if kind == "markdown":
            out.append(nbformat.v4.new_markdown_cell(source, id=cid))
        else:
            out.append(nbformat.v4.new_code_cell(source, id=cid))

    for i, c in enumerate(tut.cells):
        if c.kind == "setup":
            add("code", setup_cell())
        elif c.kind == "exercise":
            add("markdown", headers[i].header)
        elif c.kind in ("markdown", "section"):
            add("markdown", c.text)
        elif i in by_cell:
            e = by_cell[i]
            if variant == "exercises":
                add("code", e.stub)
                add("markdown", _details(e.solution))
            else:
                add("code", e.solution)
        else:
            add("code", c.text)
    nb = nbformat.v4.new_notebook(cells=out)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def sources() -> list[Path]:
    found = sorted(SRC_DIR.glob("t*_*.py"))
    if not found:
        raise FileNotFoundError(f"no tutorial sources (t<N>_<name>.py) in {SRC_DIR}")
    return found


def load(path: Path) -> Tutorial:
    return parse(path.read_text(encoding="utf-8"), str(path))


def outputs(tut: Tutorial) -> dict[Path, str]:
    """Each notebook's path and its text, generated from the source."""
    return {(EXERCISES_DIR if v == "exercises" else SOLUTIONS_DIR) / f"{tut.short}.ipynb": notebook_text(render(tut, v))
            for v in VARIANTS}


def stale() -> list[Path]:
    """Notebooks that are missing or differ from what their sources generate."""
    out = []
    for src in sources():
        for path, text in outputs(load(src)).items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                out.append(path)
    return out


def build() -> list[Path]:
    """Write every notebook; returns the paths written."""
    written = []
    for src in sources():
        for path, text in outputs(load(src)).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def jaxtyping_annotations(code: str) -> dict[str, list[str]]:
    """For each top-level function in `code`: its annotations written with jaxtyping
    (`Float[Tensor, "batch pos d_model"]`, ...), as source text."""
    out = {}
    for node in ast.parse(code).body:
        if isinstance(node, ast.FunctionDef):
            anns = [a.annotation for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs] if a.annotation]
            if node.returns is not None:
                anns.append(node.returns)
            found = []
            for ann in anns:
                for sub in ast.walk(ann):
                    if (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id in JAXTYPING_KINDS
                            and isinstance(sub.slice, ast.Tuple) and len(sub.slice.elts) == 2
                            and isinstance(sub.slice.elts[1], ast.Constant) and isinstance(sub.slice.elts[1].value, str)):
                        found.append(ast.get_source_segment(code, sub))
            out[node.name] = found
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tutorials.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the notebooks are up to date (exit 1 if not)")
    args = ap.parse_args(argv)
    try:
        if args.check:
            bad = stale()
            for p in bad:
                print(f"stale: {p.relative_to(ROOT.parent)} (run `make tutorials`)")
            return 1 if bad else 0
        for p in build():
            print(f"wrote {p.relative_to(ROOT.parent)}")
    except TutorialSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
