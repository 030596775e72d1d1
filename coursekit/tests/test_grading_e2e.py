"""End to end: a simulated class graded by coursekit.grade, every score exact.

Each student is a copy of solutions/ with some functions replaced. The expected
score of every (student, lesson) comes from an independent, plain pytest run
of an *equivalent* package in the course folder: where the student's code
loops, crashes, tampers or reaches for solutions/, the equivalent simply
raises, which is exactly what the grader must make of it (those tests lost,
every other test graded as usual).

Slow (a few minutes): `course check` runs it as its own step.
"""
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coursekit import COURSE_ROOT
from coursekit.grade import Limits, grade_class
from coursekit.known_wrong import describe, known_wrong_files
from coursekit.lessons import find_lesson
from coursekit.runner import read_report
from coursekit.stubs import expected_stubs

pytestmark = pytest.mark.slow

LESSONS = [find_lesson("L01"), find_lesson("L02")]
RAISES = 'raise RuntimeError("stands in for code the grader must stop")'


def raising(module, *functions, signature="(*args, **kwargs)"):
    return {module: "\n".join(f"def {name}{signature}:\n    {RAISES}\n" for name in functions)}


# name -> (what the student submits: {module: appended source}, its equivalent for the direct run)
def hostile_students(submissions: Path):
    victims = [str(submissions / name / "model") for name in ("reference", "untouched")]
    return {
        # Rarely called functions: each looping test costs a time limit, each
        # crash a process start.
        "loops_forever": (
            {"softmax": "def softmax_backward(y, grad_y, dim=-1):\n    while True:\n        pass\n"},
            raising("softmax", "softmax_backward")),
        "exits_the_process": (
            {"softmax": "import os as _os\n\ndef naive_softmax(x, dim=-1):\n    _os._exit(3)\n"},
            raising("softmax", "naive_softmax")),
        "segfaults": (
            {"softmax": "import ctypes as _ctypes\n\ndef logsumexp(x, dim=-1):\n    _ctypes.string_at(0)\n"},
            raising("softmax", "logsumexp")),
        "emits_warnings": (
            {"softmax": "import warnings as _warnings\n_warnings.warn('imported', UserWarning)\n"
                        "_stable = stable_softmax\n\ndef stable_softmax(x, dim=-1):\n"
                        "    _warnings.warn('about to softmax', RuntimeWarning)\n    return _stable(x, dim)\n"},
            {}),
        "patches_comparisons": (
            {"softmax": textwrap.dedent("""\
                import coursekit.testing as _testing

                def stable_softmax(x, dim=-1):
                    torch.allclose = lambda *args, **kwargs: True
                    _testing.assert_close = lambda *args, **kwargs: None
                    return torch.zeros_like(x)
                """)},
            raising("softmax", "stable_softmax")),
        "imports_the_solutions": (
            {"softmax": textwrap.dedent("""\
                import importlib as _importlib

                def _reference(name):
                    for attempt in (lambda: _importlib.import_module("solutions.softmax"),
                                    lambda: __import__("coursekit.impl").impl.Implementation("solutions").softmax):
                        try:
                            return getattr(attempt(), name)
                        except Exception:
                            pass
                    raise RuntimeError("no solutions to be found")

                def stable_softmax(x, dim=-1):
                    return _reference("stable_softmax")(x, dim)

                def online_softmax(x, block_size, dim=-1):
                    return _reference("online_softmax")(x, block_size, dim)
                """)},
            raising("softmax", "stable_softmax", "online_softmax")),
        "reads_the_solution_files": (
            {"softmax": textwrap.dedent("""\
                from pathlib import Path as _Path

                def _stolen(name):
                    for folder in _Path(__file__).resolve().parents:
                        source = folder / "solutions" / "softmax.py"
                        if source.exists():
                            namespace = {}
                            exec(source.read_text(), namespace)
                            return namespace[name]
                    raise RuntimeError("no solution files to be found")

                def logsumexp(x, dim=-1):
                    return _stolen("logsumexp")(x, dim)
                """)},
            raising("softmax", "logsumexp")),
        # Graded first (names sort), so its victims are graded after it ran.
        "aa_vandalises_other_students": (
            {"softmax": "from pathlib import Path as _Path\n"
                        f"for _victim in {victims!r}:\n"
                        "    for _file in _Path(_victim).glob('*.py'):\n"
                        "        _file.write_text('raise SystemExit(\"vandalised\")\\n')\n"},
            {}),
    }


def write_package(folder: Path, base: dict, appended: dict):
    folder.mkdir(parents=True)
    for name, text in base.items():
        extra = appended.get(name[:-3], "")
        (folder / name).write_text(text + (f"\n\n# ---- appended ----\n{extra}" if extra else ""))


@pytest.fixture(scope="module")
def simulated_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    submissions, direct = root / "submissions", root / "direct"
    solutions = {p.name: p.read_text() for p in sorted((COURSE_ROOT / "solutions").glob("*.py"))}
    students = {"reference": ({}, {})}
    for lesson in LESSONS:
        for path in known_wrong_files(lesson):
            module, _, _ = describe(path)
            students[f"{lesson.number}_{path.stem}"] = ({module: path.read_text()}, {module: path.read_text()})
    students.update(hostile_students(submissions))

    for name, (submitted, equivalent) in students.items():
        write_package(submissions / name / "model", solutions, submitted)
        write_package(direct / f"direct_{name}", solutions, equivalent)
    stubs = expected_stubs(COURSE_ROOT / "solutions")
    write_package(submissions / "untouched" / "model", stubs, {})
    write_package(direct / "direct_untouched", stubs, {})
    students["untouched"] = ({}, {})

    expected = direct_scores(students, direct)
    grades = grade_class(submissions, LESSONS, root / "out", Limits(seconds_per_test=3, memory_mb=3072),
                         gradescope=True, jobs=2, log=lambda *args: None)
    return {"grades": {(g.student, g.lesson): g for g in grades}, "expected": expected,
            "out": root / "out", "submissions": submissions, "students": sorted(students)}


def direct_scores(students, direct: Path):
    """{(student, lesson id): score} from plain pytest runs of the equivalent
    packages, scored against the reference's passing tests. A lesson whose
    modules a package leaves alone scores as the reference; each lesson's run
    covers the packages that change it (one process per lesson, side by side)."""
    runs = {}
    for lesson in LESSONS:
        changed = [name for name, (_, equivalent) in students.items()
                   if name in ("reference", "untouched") or set(equivalent) & set(lesson.modules)]
        report = direct / f"{lesson.id}.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", str(lesson.tests), "--impl", ",".join(f"direct_{n}" for n in changed),
             "-q", "--tb=no", "-p", "no:cacheprovider", "--course-report", str(report)],
            cwd=COURSE_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{direct}:{COURSE_ROOT}",
                                  "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs[lesson.id] = (process, report, changed)
    scores = {}
    for lesson_id, (process, report, changed) in runs.items():
        process.wait()
        outcomes = {}  # (student, base node id) -> outcome
        for node, result in read_report(report)["results"].items():
            for name in changed:
                base = re.sub(rf"\[direct_{name}\]|-direct_{name}(?=[\]-])|(?<=\[)direct_{name}-", "", node)
                if base != node:
                    outcomes[name, base] = result
        reference = {node: r["points"] for (name, node), r in outcomes.items()
                     if name == "reference" and r["outcome"] == "passed"}
        for name in students:
            source = name if name in changed else "reference"
            scores[name, lesson_id] = sum(points for node, points in reference.items()
                                          if outcomes[source, node]["outcome"] == "passed")
    return scores


def test_every_student_gets_a_score_for_every_lesson(simulated_class):
    assert set(simulated_class["grades"]) == {(s, l.id) for s in simulated_class["students"] for l in LESSONS}


def test_scores_are_exactly_the_equivalent_packages_scores(simulated_class):
    wrong = {key: (grade.score, simulated_class["expected"][key])
             for key, grade in simulated_class["grades"].items() if grade.score != simulated_class["expected"][key]}
    assert not wrong, f"(student, lesson): (graded, expected) where they differ: {wrong}"


def test_reference_gets_full_marks_and_the_stubs_nothing(simulated_class):
    grades = simulated_class["grades"]
    for lesson in LESSONS:
        full = grades["reference", lesson.id]
        assert full.score == full.max_score > 0
        assert grades["untouched", lesson.id].score == 0


def test_each_known_wrong_implementation_loses_points_in_its_lesson(simulated_class):
    grades = simulated_class["grades"]
    for lesson in LESSONS:
        for path in known_wrong_files(lesson):
            grade = grades[f"{lesson.number}_{path.stem}", lesson.id]
            assert grade.score < grade.max_score, f"{path.stem} kept full marks in {lesson.id}"


@pytest.mark.parametrize("student, lesson, lost_some", [
    ("loops_forever", "L02_stable_softmax", True), ("loops_forever", "L01_scaled_dot_product", False),
    ("exits_the_process", "L02_stable_softmax", True), ("segfaults", "L02_stable_softmax", True),
    ("emits_warnings", "L02_stable_softmax", False), ("patches_comparisons", "L02_stable_softmax", True),
    ("imports_the_solutions", "L02_stable_softmax", True), ("reads_the_solution_files", "L02_stable_softmax", True),
    ("aa_vandalises_other_students", "L02_stable_softmax", False),
])
def test_hostile_code_costs_only_what_it_breaks(simulated_class, student, lesson, lost_some):
    grade = simulated_class["grades"][student, lesson]
    assert (grade.score < grade.max_score) == lost_some, f"{student} in {lesson}: {grade.score}/{grade.max_score}"
    assert grade.score > 0, "the tests its code does not touch are still graded"


def test_the_vandal_ran_but_changed_nobody_else_s_grade(simulated_class):
    victim = simulated_class["submissions"] / "reference" / "model" / "softmax.py"
    assert "vandalised" in victim.read_text(), "the vandal's code should have run (and overwritten this file)"
    grades = simulated_class["grades"]
    assert grades["reference", "L02_stable_softmax"].score == grades["reference", "L02_stable_softmax"].max_score


def test_outputs_csv_feedback_and_gradescope(simulated_class):
    out = simulated_class["out"]
    rows = (out / "grades.csv").read_text().splitlines()
    assert rows[0] == "student,lesson,score,max" and len(rows) == 1 + len(simulated_class["grades"])
    feedback = (out / "feedback" / "exits_the_process.md").read_text()
    assert "crashed" in feedback and "L02_stable_softmax" in feedback
    assert (out / "gradescope" / "reference.json").exists()
    shutil.rmtree(out)
