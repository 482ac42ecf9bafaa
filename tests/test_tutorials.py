"""The ARENA-style tutorials (`tutorials/`): generated notebooks up to date with their sources,
every exercise with objectives, difficulty, importance, a time budget and a jaxtyping signature,
stubs that fail their checks and solutions that pass them, and the Colab set-up cell.

The solution notebooks themselves are executed by nbmake (`make test` passes
`--nbmake tutorials/solutions`); here each exercise's stub and solution are taken from the source
file and handed to its check directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tutorials import build, checks  # noqa: E402

SOURCES = build.sources()
TUTORIALS = {p.stem: build.load(p) for p in SOURCES}
EXERCISES = [(name, e.name) for name, tut in TUTORIALS.items() for e in tut.exercises]


def test_there_are_four_tutorials_with_exercises():
    assert [t.short for t in TUTORIALS.values()] == ["t1", "t2", "t3", "t4"]
    for tut in TUTORIALS.values():
        assert len(tut.exercises) >= 3, f"{tut.name} has only {len(tut.exercises)} exercises"


def test_committed_notebooks_are_the_ones_their_sources_generate():
    stale = build.stale()
    assert not stale, f"notebooks out of date with tutorials/src (run `make tutorials`): {[str(p) for p in stale]}"


@pytest.mark.parametrize("name", TUTORIALS)
def test_every_exercise_has_objectives_difficulty_importance_and_a_time_budget(name):
    tut = TUTORIALS[name]
    sections = {s.title: s for s in tut.sections}
    nb = build.render(tut, "exercises")
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    for e in tut.exercises:
        assert sections[e.section].objectives, f"{e.name}: its section {e.section!r} lists no learning objectives"
        assert 1 <= e.difficulty <= 5 and 1 <= e.importance <= 5 and e.minutes > 0
        header = next(m for m in markdown if m.startswith(f"### Exercise - {e.title}"))
        assert f"Difficulty: {'🔴' * e.difficulty}{'⚪' * (5 - e.difficulty)}" in header
        assert f"Importance: {'🔵' * e.importance}{'⚪' * (5 - e.importance)}" in header
        assert f"You should spend up to ~{e.minutes} minutes on this exercise." in header
    for s in tut.sections:
        cell = next(m for m in markdown if m.startswith(f"## {s.title}"))
        assert "> ##### Learning Objectives" in cell


@pytest.mark.parametrize("name", TUTORIALS)
def test_every_stub_has_a_jaxtyping_signature(name):
    for e in TUTORIALS[name].exercises:
        anns = build.jaxtyping_annotations(e.stub)
        assert e.name in anns, f"{name}: the stub of exercise {e.name!r} defines no function {e.name}"
        assert anns[e.name], f"{name}: {e.name}'s signature has no jaxtyping annotation (e.g. Float[Tensor, \"batch pos\"])"
        assert build.jaxtyping_annotations(e.solution)[e.name] == anns[e.name], f"{e.name}: stub and solution signatures differ"


@pytest.mark.parametrize("name", TUTORIALS)
def test_exercise_notebook_hides_solutions_in_details_and_solution_notebook_fills_them_in(name):
    tut = TUTORIALS[name]
    ex, sol = build.render(tut, "exercises"), build.render(tut, "solutions")
    ex_code = [c.source for c in ex.cells if c.cell_type == "code"]
    sol_code = [c.source for c in sol.cells if c.cell_type == "code"]
    assert len(ex_code) == len(sol_code)
    for e in tut.exercises:
        assert e.stub != e.solution
        assert e.stub in ex_code and e.solution not in ex_code
        assert e.solution in sol_code and e.stub not in sol_code
        i = [c.source for c in ex.cells].index(e.stub)
        details = ex.cells[i + 1].source
        assert details.startswith("<details><summary>Solution</summary>") and e.solution in details
        assert details.rstrip().endswith("</details>")
    assert not any(c.get("outputs") for c in ex.cells + sol.cells if c.cell_type == "code")
    # the source's marker lines never reach a notebook
    for nb in (ex, sol):
        for c in nb.cells:
            if c.cell_type == "code":
                assert not re.search(r"^\s*# (EXERCISE|SOLUTION|END)\s*$", c.source, re.M)


def _namespace(tut, upto: str) -> dict:
    """The `[imports]` cells and the solutions of the exercises before `upto`, executed."""
    ns: dict = {"__name__": f"tutorial_{tut.short}"}
    exec(compile(tut.imports_code(), f"<{tut.name} imports>", "exec"), ns)
    for e in tut.exercises:
        if e.name == upto:
            return ns
        exec(compile(e.solution, f"<{tut.name}:{e.name} solution>", "exec"), ns)
    raise KeyError(upto)


@pytest.mark.parametrize("name,exercise", EXERCISES)
def test_the_stub_fails_its_check_and_the_solution_passes_it(name, exercise, capsys):
    tut = TUTORIALS[name]
    e = next(x for x in tut.exercises if x.name == exercise)
    check = getattr(checks, e.check)
    ns = _namespace(tut, exercise)
    exec(compile(e.stub, f"<{name}:{exercise} stub>", "exec"), ns)
    with pytest.raises((NotImplementedError, AssertionError)):
        check(ns[exercise])
    exec(compile(e.solution, f"<{name}:{exercise} solution>", "exec"), ns)
    check(ns[exercise])
    assert f"All tests in `{e.check}` passed!" in capsys.readouterr().out


def test_checks_catch_a_wrong_answer_not_only_a_stub():
    """A plausible mistake (mean over all positions instead of the group's) fails the check."""
    import torch

    def wrong(resid, mask):
        return resid.mean(1)

    with pytest.raises(AssertionError, match="values differ"):
        checks.test_group_mean_resid(wrong)

    def no_renorm(pattern, query_mask, key_mask):  # sums over queries instead of averaging
        return (pattern * key_mask[:, None, None, :]).sum(-1).mul(query_mask[:, None, :]).sum(-1)

    with pytest.raises(AssertionError):
        checks.test_group_attention_mass(no_renorm)

    def overflowing_boost(scores, queries, keys, alpha):  # boosts masked cells too; inf * 0 -> nan for alpha >= 1
        cells = (queries[:, None, :, None] & keys[:, None, None, :]).to(scores.dtype)
        return scores + alpha * scores.abs() * cells

    with pytest.raises(AssertionError, match="values differ|nan|inf"):
        checks.test_boost_scores(overflowing_boost)

    def boosts_masked_cells(scores, queries, keys, alpha):  # no overflow, but a masked cell is "boosted"
        cells = queries[:, None, :, None] & keys[:, None, None, :]
        return torch.where(cells, scores + alpha * scores.abs(), scores)

    with pytest.raises(AssertionError, match="values differ"):
        checks.test_boost_scores(boosts_masked_cells)
    assert torch.is_grad_enabled()  # the checks leave torch's global state alone


def test_setup_cell_installs_nothing_locally_and_finds_the_clone(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(ROOT / "tutorials" / "solutions")
    ns: dict = {}
    exec(build.setup_cell(), ns)
    assert calls == []
    assert ns["AVLENS_ROOT"] == ROOT
    assert ns["AVLENS_SOURCE"] == build.AVLENS_SOURCE


def test_setup_cell_in_colab_clones_and_installs_from_the_named_source(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd))
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    ns: dict = {}
    exec(build.setup_cell(), ns)
    assert calls[0][:2] == ["git", "clone"] and build.AVLENS_SOURCE in calls[0]
    assert calls[1][1:4] == ["-m", "pip", "install"] and calls[1][-1] == "avlens"
    assert ns["AVLENS_ROOT"] == tmp_path / "avlens"
    assert sys.path[0] == str(tmp_path / "avlens")


def test_every_notebook_starts_with_the_same_setup_cell():
    for tut in TUTORIALS.values():
        for variant in build.VARIANTS:
            code = [c.source for c in build.render(tut, variant).cells if c.cell_type == "code"]
            assert code[0] == build.setup_cell()
            assert 'if "google.colab" in sys.modules:' in code[0]


# ------------------------------------------------------------------------------- the source format
GOOD = '''# %% [markdown]
# # Title
# %% [setup]
# %% [imports]
import torch
# %% [section]
# ## 1 Section
#
# > ##### Learning Objectives
# >
# > - learn it
# %% [exercise] name=double difficulty=1 importance=2 minutes=5
# ### Exercise - double it
# %%
def double(x: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
    # EXERCISE
    # # hint
    # raise NotImplementedError("double")
    # SOLUTION
    return 2 * x
    # END
# %%
checks.test_double(double)
'''


def test_marker_blocks_split_into_stub_and_solution():
    tut = build.parse(GOOD, "t9_demo.py")
    (e,) = tut.exercises
    assert e.stub.splitlines()[1:] == ["    # hint", '    raise NotImplementedError("double")']
    assert e.solution.splitlines()[1:] == ["    return 2 * x"]
    assert (e.difficulty, e.importance, e.minutes, e.check, e.section) == (1, 2, 5, "test_double", "1 Section")
    assert build.jaxtyping_annotations(e.stub) == {"double": ['Float[Tensor, "n"]', 'Float[Tensor, "n"]']}


@pytest.mark.parametrize("edit,message", [
    (("difficulty=1", "difficulty=7"), "difficulty must be an integer from 1 to 5"),
    (("    # raise NotImplementedError", "    raise NotImplementedError"), "every line of an '# EXERCISE' block is commented"),
    (("    # END\n", ""), "not closed with '# END'"),
    (("checks.test_double(double)", "print(double)"), "is never checked"),
    (("# > - learn it", "# no objectives"), "Learning Objectives"),
    (("# %% [setup]\n", ""), "exactly one [setup] cell"),
    (("# %% [imports]", "# %% [import]"), "unknown cell kind [import]"),
    (("# # Title", "Title"), "must start with '# '"),
])
def test_malformed_sources_raise_errors_naming_the_line_and_the_fix(edit, message):
    bad = GOOD.replace(*edit)
    with pytest.raises(build.TutorialSourceError, match=re.escape(message)) as err:
        build.parse(bad, "t9_demo.py")
    assert re.match(r"t9_demo\.py:\d+: ", str(err.value))
