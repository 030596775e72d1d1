"""End to end: a simulated class's notebooks autograded by real nbgrader
(`coursekit.release.nbgrader`, the instructor's config), every score exact.

Expected scores come from the lesson's own graded cells: full marks, zero, the
points of a cell the student broke or deleted, or an independent run of the
same notebook and model with coursekit.notebooks (nbclient, nbgrader's
grading rule) where the submission's code is honest. Slow: `course check`
runs it as its own step.
"""
import csv
import shutil
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from coursekit import COURSE_ROOT, notebooks
from coursekit.release import NBGRADER_DIR, nbgrader
from coursekit.sandbox import detect
from coursekit.stubs import expected_stubs

pytestmark = pytest.mark.slow

L01, L02 = "L01_scaled_dot_product", "L02_stable_softmax"
ZEROS_MODEL = textwrap.dedent("""\


    def stable_softmax(x, dim=-1):
        return torch.zeros_like(x)


    def online_softmax(x, block_size, dim=-1):
        return torch.zeros_like(x)
    """)
PATCH_COMPARISONS = ("import torch, torch.testing\ntorch.allclose = lambda *a, **k: True\n"
                     "torch.equal = lambda *a, **k: True\ntorch.testing.assert_close = lambda *a, **k: None\n")
STEAL = textwrap.dedent("""\


    def _steal(name):
        import importlib
        from pathlib import Path
        try:
            return getattr(importlib.import_module("solutions.softmax"), name)
        except Exception:
            pass
        for folder in Path.cwd().resolve().parents:
            source = folder / "solutions" / "softmax.py"
            if source.exists():
                namespace = {}
                exec(source.read_text(), namespace)
                return namespace[name]
        raise RuntimeError("no solutions to be found")


    def stable_softmax(x, dim=-1):
        return _steal("stable_softmax")(x, dim)
    """)


def graded(nb):
    return [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")
            and not c.metadata.nbgrader.get("solution")]


def answers(nb):
    return [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("solution")]


def setup_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code" and not c.get("metadata", {}).get("nbgrader"))


def model_files(kind):
    solutions = {p.name: p.read_text() for p in (COURSE_ROOT / "solutions").glob("*.py")}
    if kind == "stubs":
        return expected_stubs(COURSE_ROOT / "solutions")
    extra = {"solutions": "", "zeros": ZEROS_MODEL, "steal": STEAL,
             "raises": "\n\ndef stable_softmax(x, dim=-1):\n    raise RuntimeError('no solutions here')\n",
             "warnings": "\n\nimport warnings as _w\n_s = stable_softmax\n\n"
                         "def stable_softmax(x, dim=-1):\n    _w.warn('softmax!', UserWarning)\n    return _s(x, dim)\n"}
    return {**solutions, "softmax.py": solutions["softmax.py"] + extra[kind]}


def direct_score(nb, model_kind, tmp: Path):
    """Points by nbgrader's rule from an nbclient run of the notebook (hidden
    tests included) with the given model importable as `model`."""
    folder = tmp / f"direct-{model_kind}"
    (folder / "model").mkdir(parents=True)
    for name, text in model_files(model_kind).items():
        (folder / "model" / name).write_text(text)
    executed = notebooks.execute(nb, "model", allow_errors=True, extra_path=folder)
    return notebooks.score(executed)[0]


@pytest.fixture(scope="module")
def autograded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nbclass")
    course = tmp / "course"
    course.mkdir()
    shutil.copyfile(NBGRADER_DIR / "nbgrader_config.py", course / "nbgrader_config.py")
    source, released, max_points = {}, {}, {}
    for lesson in (L01, L02):
        (course / "source" / lesson).mkdir(parents=True)
        shutil.copyfile(COURSE_ROOT / "notebooks" / f"{lesson}.ipynb", course / "source" / lesson / f"{lesson}.ipynb")
        nbgrader("generate_assignment", lesson, "--force", course_dir=course)
        source[lesson] = notebooks.load(course / "source" / lesson / f"{lesson}.ipynb")
        released[lesson] = notebooks.load(course / "release" / lesson / f"{lesson}.ipynb")
        max_points[lesson] = sum(c.metadata.nbgrader.points for c in graded(source[lesson]))

    complete = nbformat.from_dict(source[L02])        # every answer filled in, hidden tests present
    looping = nbformat.from_dict(complete)
    looped = answers(looping)[0]
    looped.source = "while True:\n    pass\n" + looped.source
    loop_cost = sum(c.metadata.nbgrader.points for c in graded(complete)
                    if c.metadata.nbgrader.grade_id == looped.metadata.nbgrader.grade_id.replace("l02_", "l02_test_"))
    deleting = nbformat.from_dict(complete)
    deleted = graded(deleting)[1]
    deleting.cells = [c for c in deleting.cells if c is not deleted]
    tampering = nbformat.from_dict(released[L02])
    for cell in graded(tampering):
        cell.source = "pass"
    patching = nbformat.from_dict(complete)
    setup_cell(patching).source = PATCH_COMPARISONS + setup_cell(patching).source
    crashing = nbformat.from_dict(complete)
    answers(crashing)[0].source = "import os\nos._exit(1)\n"
    vandal = nbformat.from_dict(complete)
    setup_cell(vandal).source = textwrap.dedent("""\
        from pathlib import Path as _P
        for _nb in _P.cwd().resolve().parents[2].glob("**/submitted/*/*/*.ipynb"):
            _nb.write_text("vandalised")
        """) + setup_cell(vandal).source

    def with_setup(code):
        nb = nbformat.from_dict(complete)
        setup_cell(nb).source = textwrap.dedent(code) + setup_cell(nb).source
        return nb

    # Reaches for the gradebook (three folders up from autograded/<student>/<lesson>) to give
    # everybody full marks; then a daemon that tries again after nbgrader is done; then the grader.
    gradebook_thief = with_setup("""\
        import sqlite3 as _sqlite3
        try:
            _db = _sqlite3.connect("../../../gradebook.db")
            _db.execute("UPDATE grade SET auto_score = 99")
            _db.commit()
        except Exception:
            pass
        """)
    gradebook_daemon = with_setup("""\
        import os as _os, time as _time, sqlite3 as _sqlite3
        _here = _os.path.abspath("../../../gradebook.db")
        if _os.fork() == 0:
            _os.setsid()
            if _os.fork() == 0:
                _time.sleep(3)
                try:
                    _db = _sqlite3.connect(_here)
                    _db.execute("UPDATE grade SET auto_score = 99")
                    _db.commit()
                finally:
                    _os._exit(0)
            _os._exit(0)
        """)
    signals_nbgrader = with_setup("""\
        import os as _os, signal as _signal
        for _pid in {_os.getppid(), 1}:
            try:
                _os.kill(_pid, _signal.SIGTERM)
            except OSError:
                pass
        """)

    zeros_score = direct_score(complete, "zeros", tmp)
    # student -> (lesson, notebook, model kind, expected points)
    students = {
        "reference_l01": (L01, source[L01], "solutions", max_points[L01]),
        "untouched_l01": (L01, released[L01], "stubs", 0),
        "reference": (L02, complete, "solutions", max_points[L02]),
        "untouched": (L02, released[L02], "stubs", 0),
        "wrong_model": (L02, complete, "zeros", zeros_score),
        "patches_comparisons": (L02, patching, "zeros", zeros_score),
        "tampered_test_cells": (L02, tampering, "stubs", 0),
        "deleted_test_cell": (L02, deleting, "solutions", max_points[L02] - deleted.metadata.nbgrader.points),
        "loops_forever": (L02, looping, "solutions", max_points[L02] - loop_cost),
        "kills_its_kernel": (L02, crashing, "solutions", 0),
        "emits_warnings": (L02, complete, "warnings", max_points[L02]),
        "steals_solutions": (L02, complete, "steal", direct_score(complete, "raises", tmp)),
        "aa_vandal": (L02, vandal, "solutions", max_points[L02]),
        "aa_rewrites_the_gradebook": (L02, gradebook_thief, "solutions", max_points[L02]),
        "aa_gradebook_daemon": (L02, gradebook_daemon, "solutions", max_points[L02]),
        "aa_signals_nbgrader": (L02, signals_nbgrader, "solutions", max_points[L02]),
    }
    for student, (lesson, nb, model_kind, _) in students.items():
        folder = course / "submitted" / student / lesson
        (folder / "model").mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{lesson}.ipynb"))
        for name, text in model_files(model_kind).items():
            (folder / "model" / name).write_text(text)

    for lesson in (L01, L02):
        nbgrader("autograde", lesson, "--force", "--Execute.timeout=20", course_dir=course, check=False)
    time.sleep(5)  # the daemon's moment (it must be dead by now)
    nbgrader("export", "--to", str(tmp / "grades.csv"), course_dir=course)
    with open(tmp / "grades.csv") as f:
        scores = {(row["student_id"], row["assignment"]): float(row["score"]) for row in csv.DictReader(f)}
    return {"scores": scores, "students": students, "course": course, "loop_cost": loop_cost}


def test_every_student_is_scored_exactly(autograded):
    got = {student: autograded["scores"].get((student, lesson))
           for student, (lesson, *_rest) in autograded["students"].items()}
    expected = {student: float(points) for student, (_, _, _, points) in autograded["students"].items()}
    assert got == expected


def test_the_cases_cost_what_they_should(autograded):
    assert autograded["loop_cost"] > 0, "the looping answer's test cell is worth points"
    students = autograded["students"]
    assert 0 < students["wrong_model"][3] < students["reference"][3]


def test_the_vandal_graded_nobody_else_differently(autograded):
    victim = autograded["course"] / "submitted" / "reference" / L02 / f"{L02}.ipynb"
    # In the kernel sandbox the vandal sees no other submission; without it, it overwrites them uselessly.
    assert (victim.read_text() == "vandalised") == (detect().level == "none")
