"""coursekit.workspace: the student's notebooks that `course lab` opens are
released versions, made once and then never overwritten without asking."""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from coursekit import workspace
from coursekit.notebooks import load

SOLUTION = "x = 41 + 1  # the answer"


def _source_notebook(path, extra=""):
    answer = new_code_cell(f"### BEGIN SOLUTION\n{SOLUTION}\n### END SOLUTION",
                           metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "answer",
                                                  "locked": False, "schema_version": 3}})
    graded = new_code_cell("assert x == 42\n### BEGIN HIDDEN TESTS\nassert x > 0\n### END HIDDEN TESTS",
                           metadata={"nbgrader": {"solution": False, "grade": True, "grade_id": "check",
                                                  "points": 1, "locked": True, "schema_version": 3}})
    nb = new_notebook(cells=[new_markdown_cell(f"Read [the text](../tutorial/L01/README.md).{extra}"), answer, graded])
    nbformat.write(nb, str(path))


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A course with one source notebook, and an empty place for the workspace."""
    source = tmp_path / "notebooks" / "00_start.ipynb"
    source.parent.mkdir()
    _source_notebook(source)
    monkeypatch.setattr(workspace, "sources", lambda: {"00_start.ipynb": source})
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path / "workspace"))
    return source


def _mine():
    return workspace.workspace_dir() / "00_start.ipynb"


def test_the_workspace_holds_the_released_notebook(course):
    notes = workspace.sync()
    text = _mine().read_text()
    assert SOLUTION not in text and "BEGIN SOLUTION" not in text, "the answer must not reach the student"
    assert "raise NotImplementedError()" in text, "the answer cell gets nbgrader's stub"
    assert "HIDDEN TESTS" not in text and "assert x > 0" not in text, "hidden tests are removed"
    assert "assert x == 42" in text, "the visible test stays"
    assert "](tutorial/L01/README.md)" in text, "links to the texts point into the workspace"
    assert "made your workspace" in notes[0]
    assert (workspace.workspace_dir() / "model").is_symlink()


def test_a_students_edits_are_kept_and_an_upstream_change_is_reported(course):
    workspace.sync()
    nb = load(_mine())
    nb.cells[1].source = "x = 42  # mine"
    nbformat.write(nb, str(_mine()))
    assert workspace.sync() == [], "nothing changed upstream: nothing to say"
    _source_notebook(course, extra=" New paragraph.")  # the course's version changes
    notes = workspace.sync()
    assert "x = 42  # mine" in _mine().read_text(), "a student's notebook is never overwritten"
    assert len(notes) == 1 and "./course lab --refresh start" in notes[0]
    assert len(workspace.sync()) == 1, "the reminder repeats until the student refreshes"


def test_refresh_takes_the_new_version_and_keeps_a_backup(course):
    workspace.sync()
    nb = load(_mine())
    nb.cells[1].source = "x = 42  # mine"
    nbformat.write(nb, str(_mine()))
    _source_notebook(course, extra=" New paragraph.")
    notes = workspace.sync(workspace.refresh_names(["start"]))
    assert "New paragraph." in _mine().read_text()
    backups = list((workspace.workspace_dir() / workspace.BACKUPS).glob("00_start-*.ipynb"))
    assert len(backups) == 1 and "x = 42  # mine" in backups[0].read_text()
    assert "backups" in notes[0]
    assert workspace.sync() == [], "after a refresh the notebook is up to date"


def test_an_untouched_notebook_follows_the_course_and_a_run_one_is_kept(course):
    workspace.sync()
    _source_notebook(course, extra=" New paragraph.")
    notes = workspace.sync()
    assert "New paragraph." in _mine().read_text(), "same cells, never run: nothing to lose"
    assert "updated" in notes[0]
    nb = load(_mine())
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
    nb.cells[2].execution_count = 1
    nbformat.write(nb, str(_mine()))
    _source_notebook(course, extra=" Another paragraph.")
    notes = workspace.sync()
    assert "Another paragraph." not in _mine().read_text() and "ran" in _mine().read_text(), \
        "a notebook the student has run is theirs: kept"
    assert "--refresh start" in notes[0]


def test_a_deleted_notebook_comes_back_and_a_new_lesson_is_added(course, monkeypatch, tmp_path):
    workspace.sync()
    _mine().unlink()
    second = tmp_path / "notebooks" / "L01_scaled_dot_product.ipynb"
    _source_notebook(second)
    monkeypatch.setattr(workspace, "sources", lambda: {"00_start.ipynb": course, second.name: second})
    notes = workspace.sync()
    assert _mine().exists() and (workspace.workspace_dir() / second.name).exists()
    assert notes == [f"new in your workspace: 00_start.ipynb, {second.name}"]
    manifest = json.loads((workspace.workspace_dir() / workspace.MANIFEST).read_text())
    assert set(manifest) == {"00_start.ipynb", second.name}


def test_refresh_names_accepts_lessons_start_and_all_and_rejects_the_unknown():
    names = workspace.refresh_names(["L01", "start"])
    assert names == {"L01_scaled_dot_product.ipynb", "00_start.ipynb"}
    assert workspace.refresh_names(["all"]) == set(workspace.sources())
    with pytest.raises(ValueError, match="L99"):
        workspace.refresh_names(["L99"])


def test_git_ignores_the_workspace():
    from coursekit import COURSE_ROOT
    lines = (COURSE_ROOT / ".gitignore").read_text().splitlines()
    assert "workspace/" in lines
