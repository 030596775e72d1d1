"""End to end: a simulated class graded by coursekit.grade, every score exact.

Each student is a copy of solutions/ with some functions replaced. The expected
score of every (student, lesson) comes from an independent, plain pytest run
of an *equivalent* package in the course folder: where the student's code
loops, crashes, tampers or reaches for solutions/, the equivalent simply
raises, which is exactly what the grader must make of it (those tests lost,
every other test graded as usual).

Slow (a few minutes): `course check` runs it as its own step.
"""
import csv
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coursekit import COURSE_ROOT
from coursekit.grade import Limits, grade_class
from coursekit.sandbox import detect
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
                        "        try:\n"
                        "            _file.write_text('raise SystemExit(\"vandalised\")\\n')\n"
                        "        except OSError:\n"
                        "            pass\n"},
            {}),
        **ISOLATION_ATTACKS(submissions),
        **CHANNEL_AND_PYTEST_ATTACKS,
        **TAMPERING_ATTACKS,
        **SHORTCUT_ATTACKS,
    }


def _attack(function, body, signature="(x, dim=-1)", module="softmax", returns=None):
    """A submission whose `function` runs `body`, and its equivalent: the
    function raising where the grader must stop the attack (a tampered or
    forbidden call fails every test it ran in), or returning what the body
    returns (`returns`) where the attack simply achieves nothing."""
    source = f"\n\ndef {function}{signature}:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    if returns is None:
        return {module: source}, raising(module, function, signature=signature)
    return {module: source}, {module: f"\n\ndef {function}{signature}:\n    return {returns}\n"}


ZEROS = "return torch.zeros_like(x)\n"
OUT_FOLDER = "__OUT__"          # replaced by the class's output folder
DAEMON_MARK = "987654"          # a daemon's `sleep` argument, looked for after grading


def ISOLATION_ATTACKS(submissions):
    out = str(submissions.parent / "out")
    course = str(COURSE_ROOT)
    return {
        # Reads a classmate's code (every sandbox and snapshot it can find) and returns it.
        "copies_a_classmate": _attack("stable_softmax", f"""\
            import glob as _glob
            for _pattern in ("/tmp/grade-*/model/softmax.py", "../grade-*/model/softmax.py",
                             "../../snapshots/*/model/softmax.py", "{submissions}/reference/model/softmax.py"):
                for _path in _glob.glob(_pattern):
                    _namespace = {{}}
                    exec(open(_path).read(), _namespace)
                    return _namespace["stable_softmax"](x, dim)
            raise RuntimeError("no classmate in sight")
            """),
        # Writes the grader's output and the course's tests, by absolute path.
        "writes_the_grader_s_files": _attack("logsumexp", f"""\
            for _path in ("{out}/grades.csv", "{course}/testcases/L02_stable_softmax/test_basic.py"):
                try:
                    open(_path, "a").write("\\nhacked\\n")
                except OSError:
                    pass
            return torch.zeros(x.shape[:-1])
            """, returns='torch.zeros(x.shape[:-1])'),
        # A double-forked daemon that outlives the test process unless the
        # sandbox kills the whole process tree.
        "forks_a_daemon": ({"softmax": textwrap.dedent(f"""\
            import os as _os
            if _os.fork() == 0:
                _os.setsid()
                if _os.fork() == 0:
                    _os.execv("/bin/sleep", ["sleep", "{DAEMON_MARK}"])
                _os._exit(0)
            """)}, {}),
        # SIGTERM to its parent and to pid 1 (the grader, without a PID namespace).
        "signals_the_grader": ({"softmax": textwrap.dedent("""\
            import os as _os
            import signal as _signal
            for _pid in {_os.getppid(), 1}:
                try:
                    _os.kill(_pid, _signal.SIGTERM)
                except OSError:
                    pass
            """)}, {}),
        "fills_the_disk": _attack("logsumexp", """\
            _chunk = b"x" * (1 << 20)
            for _n in range(0 if globals().setdefault("_full", []) else 10_000):  # once per process
                _full.append(_n)
                try:
                    with open(f"fill-{_n}", "wb") as _f:
                        for _ in range(32):
                            _f.write(_chunk)
                except OSError:
                    break
            return torch.zeros(x.shape[:-1])
            """, returns='torch.zeros(x.shape[:-1])'),
        "forks_many_processes": _attack("softmax_backward", """\
            import os as _os, time as _time
            for _ in range(0 if globals().setdefault("_forked", []) else 2000):  # once per process
                _forked.append(_)
                try:
                    if _os.fork() == 0:
                        _time.sleep(600)
                        _os._exit(0)
                except OSError:
                    break
            return grad_y * 0
            """, signature="(y, grad_y, dim=-1)", returns="grad_y * 0"),
        "eats_memory": _attack("softmax_backward", """\
            _hoard = []
            while True:
                _hoard.append(torch.ones(1 << 27))
            """, signature="(y, grad_y, dim=-1)"),
        "floods_the_output": _attack("naive_softmax", """\
            print("x" * (20 << 20))
            raise AssertionError("y" * (5 << 20))
            """),
        # Connects to the grader's machine: a listener on its loopback
        # (__PORT__). Reached: wrong answers; unreachable: right ones.
        "uses_the_network": ({"softmax": textwrap.dedent("""\
            import socket as _socket
            _stable = stable_softmax

            def stable_softmax(x, dim=-1):
                try:
                    _socket.create_connection(("127.0.0.1", __PORT__), timeout=1).close()
                    return torch.zeros_like(x)
                except OSError:
                    return _stable(x, dim)
            """)}, {}),
    }


CHANNEL_AND_PYTEST_ATTACKS = {
    # Rewrites every report file it can find at exit, and forges records on
    # every file descriptor.
    "rewrites_the_report_at_exit": _attack("stable_softmax", """\
        import atexit as _atexit, glob as _glob, json as _json
        def _full_marks():
            for _path in _glob.glob("**/report*.json", recursive=True) + _glob.glob("/tmp/**/report*.json"):
                open(_path, "w").write(_json.dumps({"collected": [], "running": None, "results": {}}))
        _atexit.register(_full_marks)
        return torch.zeros_like(x)
        """, returns='torch.zeros_like(x)'),
    "forges_report_records": _attack("stable_softmax", """\
        import json as _json, os as _os
        _node = _os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        for _fd in range(3, 64):
            for _kind in ("result", "finish"):
                try:
                    _os.write(_fd, (_json.dumps({"kind": _kind, "node": _node, "outcome": "passed",
                                                 "message": "", "points": 1}) + "\\n").encode())
                except OSError:
                    pass
        return torch.zeros_like(x)
        """, returns='torch.zeros_like(x)'),
    # A conftest.py next to the model: pytest must never load it.
    "ships_a_conftest": ({"conftest": textwrap.dedent("""\
        import pytest

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            outcome = yield
            outcome.get_result().outcome = "passed"

        def pytest_configure(config):
            class _Cheat:
                @pytest.hookimpl(hookwrapper=True)
                def pytest_runtest_makereport(self, item, call):
                    outcome = yield
                    outcome.get_result().outcome = "passed"
            config.pluginmanager.register(_Cheat(), "cheat")
        """), "softmax": "\n\ndef stable_softmax(x, dim=-1):\n    return torch.zeros_like(x)\n"},
        {"softmax": "\n\ndef stable_softmax(x, dim=-1):\n    return torch.zeros_like(x)\n"}),
    # Registers a plugin that marks every test passed, from inside a test.
    "registers_a_plugin": _attack("stable_softmax", """\
        import gc as _gc, pytest as _pytest
        class _Cheat:
            @_pytest.hookimpl(hookwrapper=True)
            def pytest_runtest_makereport(self, item, call):
                outcome = yield
                outcome.get_result().outcome = "passed"
        for _config in [o for o in _gc.get_objects() if type(o).__name__ == "Config"]:
            try:
                _config.pluginmanager.register(_Cheat())
            except Exception:
                pass
        return torch.zeros_like(x)
        """),
    "patches_pytest_reports": _attack("stable_softmax", """\
        import _pytest.reports as _reports
        _original = _reports.TestReport.__init__
        def _passed(self, *args, **kwargs):
            _original(self, *args, **kwargs)
            self.outcome = "passed"
        _reports.TestReport.__init__ = _passed
        return torch.zeros_like(x)
        """),
}


TAMPERING_ATTACKS = {
    "swaps_assert_close_code": _attack("stable_softmax", """\
        import coursekit.testing as _testing
        _testing.assert_close.__code__ = (lambda actual, expected, **kw: None).__code__
        return torch.zeros_like(x)
        """),
    "shadows_tensor_any": _attack("stable_softmax", """\
        torch.Tensor.any = lambda self, *args, **kwargs: torch.tensor(False)
        torch.Tensor.all = lambda self, *args, **kwargs: torch.tensor(True)
        return torch.zeros_like(x)
        """),
    "patches_math_isclose": _attack("logsumexp", """\
        import math as _math
        _math.isclose = lambda *args, **kwargs: True
        return torch.zeros(x.shape[:-1])
        """),
    "poisons_the_references": _attack("stable_softmax", """\
        import torch.nn.functional as _F
        torch.softmax = lambda t, dim=-1, **kw: torch.zeros_like(t)
        _F.softmax = lambda t, dim=-1, **kw: torch.zeros_like(t)
        torch.einsum = lambda *args, **kwargs: torch.zeros(())
        return torch.zeros_like(x)
        """),
    "replaces_sys_modules": _attack("stable_softmax", """\
        import sys as _sys, types as _types
        _fake = _types.ModuleType("torch.testing")
        _fake.assert_close = lambda *args, **kwargs: None
        _sys.modules["torch.testing"] = _fake
        return torch.zeros_like(x)
        """),
    "returns_a_lying_tensor": _attack("stable_softmax", """\
        class _Agreeable(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                with torch._C.DisableTorchFunctionSubclass():
                    result = func(*args, **(kwargs or {}))
                if getattr(func, "__name__", "") in ("sub", "__sub__", "abs", "__gt__", "gt"):
                    return torch.zeros_like(result) if isinstance(result, torch.Tensor) else result
                return result
        return torch.zeros_like(x).as_subclass(_Agreeable)
        """),
}


SHORTCUT_ATTACKS = {
    "calls_torch_softmax": _attack("stable_softmax", "return torch.softmax(x, dim)\n"),
    "calls_tensor_logsumexp": _attack("logsumexp", "return x.logsumexp(dim)\n"),
    "calls_the_reference": _attack("stable_softmax", """\
        from coursekit.reference import softmax_ref
        return softmax_ref(x, dim).to(x.dtype)
        """),
    # below the torch functions: an aten op called directly, or any call with torch functions off
    "calls_aten_softmax": _attack("stable_softmax", "return torch.ops.aten._softmax(x, dim, False)\n"),
    "hides_softmax_from_torch_function": _attack("stable_softmax", """\
        with torch._C.DisableTorchFunction():
            return torch.softmax(x, dim)
        """),
}


# Students whose submission the static scan or the run must flag (a word of the
# reason), and those it must not.
FLAGGED = {
    "loops_forever": None, "exits_the_process": "os._exit", "segfaults": "ctypes", "emits_warnings": None,
    "patches_comparisons": "assigns to torch.allclose", "imports_the_solutions": "importlib",
    "reads_the_solution_files": "exec", "aa_vandalises_other_students": "path",
    "copies_a_classmate": "exec", "writes_the_grader_s_files": "path outside", "forks_a_daemon": "fork",
    "signals_the_grader": "signal", "fills_the_disk": "globals", "forks_many_processes": "fork",
    "eats_memory": None, "floods_the_output": None, "uses_the_network": "socket",
    "rewrites_the_report_at_exit": "atexit", "forges_report_records": "forged",
    "ships_a_conftest": None, "registers_a_plugin": "registered a pytest plugin",
    "patches_pytest_reports": "_pytest", "swaps_assert_close_code": "__code__",
    "shadows_tensor_any": "torch.Tensor.any", "patches_math_isclose": "math.isclose",
    "poisons_the_references": "torch.softmax", "replaces_sys_modules": "sys.modules",
    "returns_a_lying_tensor": "subclass", "calls_torch_softmax": "torch.softmax (called from softmax.py)",
    "calls_tensor_logsumexp": "logsumexp (called from softmax.py)", "calls_the_reference": "softmax_ref",
    "calls_aten_softmax": "aten._softmax (called from softmax.py)",
    "hides_softmax_from_torch_function": "aten._softmax (called from softmax.py)",
}


def write_package(folder: Path, base: dict, appended: dict, replace=None):
    folder.mkdir(parents=True)
    for name, text in base.items():
        extra = appended.get(name[:-3], "")
        (folder / name).write_text(text + (f"\n\n# ---- appended ----\n{extra}" if extra else ""))
    for module, text in appended.items():  # files of their own (a conftest.py)
        if f"{module}.py" not in base:
            (folder / f"{module}.py").write_text(text)
    for path in folder.glob("*.py"):
        text = path.read_text()
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        path.write_text(text)


def sandbox_processes():
    """Processes started in a grading sandbox (bwrap sets HOME=/course) still alive."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"HOME=/course\0" in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def simulated_class(tmp_path_factory):
    """Two classes graded like two courses' worth of submissions: the L01
    known-wrong implementations on L01, and the L02 ones with every hostile
    submission on L02 (their attacks live in softmax.py), each with the
    reference and the untouched stubs."""
    root = tmp_path_factory.mktemp("class")
    direct = root / "direct"
    solutions = {p.name: p.read_text() for p in sorted((COURSE_ROOT / "solutions").glob("*.py"))}
    stubs = expected_stubs(COURSE_ROOT / "solutions")
    listener = socket.socket()  # what "uses_the_network" must not reach from its sandbox
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = {"__PORT__": str(listener.getsockname()[1])}
    classes, students = {}, {}
    for lesson in LESSONS:
        submissions = root / lesson.number / "submissions"
        members = {"reference": ({}, {})}
        # L01: a few known-wrong implementations beside the reference (every one is
        # checked by `course check`'s known-wrong step); L02: all of them, and the hostile class.
        wrong = known_wrong_files(lesson)
        for path in wrong if lesson.number == "L02" else wrong[:4]:
            module, _, _ = describe(path)
            members[f"{lesson.number}_{path.stem}"] = ({module: path.read_text()}, {module: path.read_text()})
        if lesson.number == "L02":
            members.update(hostile_students(submissions))
        for name, (submitted, equivalent) in members.items():
            write_package(submissions / name / "model", solutions, submitted, port)
            if name not in students:
                write_package(direct / f"direct_{name}", solutions, equivalent, port)
        write_package(submissions / "untouched" / "model", stubs, {})
        members["untouched"] = ({}, {})
        classes[lesson.id] = (submissions, sorted(members))
        students.update(members)
    write_package(direct / "direct_untouched", stubs, {})

    expected = direct_scores(students, direct)
    submissions = root / "L02" / "submissions"
    before = {p: p.read_bytes() for p in sorted(root.glob("L0*/submissions/**/*.py"))}
    course_tests = {p: p.read_bytes() for p in sorted((COURSE_ROOT / "testcases").glob("L02*/*.py"))}
    log, grades = [], {}
    start = time.perf_counter()
    for lesson in LESSONS:
        folder, _ = classes[lesson.id]
        for g in grade_class(folder, [lesson], root / lesson.number / "out", LIMITS, gradescope=True, jobs=2,
                             log=log.append):
            grades[g.student, g.lesson] = g
    seconds = time.perf_counter() - start
    listener.close()
    return {"grades": grades, "expected": expected, "log": log, "classes": classes, "root": root,
            "out": root / "L02" / "out", "submissions": submissions, "students": classes["L02_stable_softmax"][1],
            "before": before, "course_tests": course_tests, "left_behind": sandbox_processes(), "seconds": seconds}


LIMITS = Limits(seconds_per_test=3, memory_mb=1536, disk_mb=64, processes=64)


def direct_scores(students, direct: Path):
    """{(student, lesson id): score} from plain pytest runs of the equivalent
    packages, scored against the reference's passing tests. A lesson whose
    modules a package leaves alone scores as the reference; students with the
    same equivalent share one package; each lesson's run covers the packages
    that change it (one process per lesson, side by side)."""
    representative, seen = {}, {}
    for name, (_, equivalent) in students.items():
        key = tuple(sorted(equivalent.items())) if name not in ("reference", "untouched") else name
        representative[name] = seen.setdefault(key, name)
    runs = {}
    for lesson in LESSONS:
        changed = [name for name, (_, equivalent) in students.items() if representative[name] == name
                   and (name in ("reference", "untouched") or set(equivalent) & set(lesson.modules))]
        report = direct / f"{lesson.id}.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", str(lesson.tests), "--impl=" + ",".join(f"direct_{n}" for n in changed),
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
            source = representative[name] if representative[name] in changed else "reference"
            scores[name, lesson_id] = sum(points for node, points in reference.items()
                                          if outcomes[source, node]["outcome"] == "passed")
    return scores


def test_every_student_gets_a_score_for_every_lesson(simulated_class):
    assert set(simulated_class["grades"]) == {(s, lesson) for lesson, (_, members) in
                                              simulated_class["classes"].items() for s in members}


def test_scores_are_exactly_the_equivalent_packages_scores(simulated_class):
    assert len(simulated_class["grades"]) >= 50
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
            if (f"{lesson.number}_{path.stem}", lesson.id) not in grades:
                continue
            grade = grades[f"{lesson.number}_{path.stem}", lesson.id]
            assert grade.score < grade.max_score, f"{path.stem} kept full marks in {lesson.id}"


@pytest.mark.parametrize("student, lesson, lost_some", [
    ("loops_forever", "L02_stable_softmax", True),
    ("exits_the_process", "L02_stable_softmax", True), ("segfaults", "L02_stable_softmax", True),
    ("emits_warnings", "L02_stable_softmax", False), ("patches_comparisons", "L02_stable_softmax", True),
    ("imports_the_solutions", "L02_stable_softmax", True), ("reads_the_solution_files", "L02_stable_softmax", True),
    ("aa_vandalises_other_students", "L02_stable_softmax", False),
    ("forks_a_daemon", "L02_stable_softmax", False), ("signals_the_grader", "L02_stable_softmax", False),
    ("uses_the_network", "L02_stable_softmax", False), ("calls_torch_softmax", "L02_stable_softmax", True),
    ("returns_a_lying_tensor", "L02_stable_softmax", True),
])
def test_hostile_code_costs_only_what_it_breaks(simulated_class, student, lesson, lost_some):
    grade = simulated_class["grades"][student, lesson]
    assert (grade.score < grade.max_score) == lost_some, f"{student} in {lesson}: {grade.score}/{grade.max_score}"
    assert grade.score > 0, "the tests its code does not touch are still graded"


def test_the_vandal_changed_nobody_else_s_grade(simulated_class):
    victim = simulated_class["submissions"] / "reference" / "model" / "softmax.py"
    # With bwrap the vandal cannot even see its victims; without, it overwrites them, uselessly.
    assert ("vandalised" in victim.read_text()) == (detect().level == "none")
    grades = simulated_class["grades"]
    assert grades["reference", "L02_stable_softmax"].score == grades["reference", "L02_stable_softmax"].max_score


def test_flags_name_what_the_submission_did(simulated_class):
    grades = simulated_class["grades"]
    wrong = {}
    for student in simulated_class["students"]:
        flags = " | ".join(grades[student, "L02_stable_softmax"].flags)
        word = FLAGGED.get(student)
        if word is None and flags or word is not None and word not in flags:
            wrong[student] = (word, flags[:300])
    assert not wrong, f"student: (expected word in the flags, the flags) where they differ: {wrong}"


def test_flags_reach_the_instructor_not_the_student(simulated_class):
    out = simulated_class["out"]
    report = (out / "instructor_report.md").read_text()
    assert "## calls_torch_softmax / L02_stable_softmax" in report and "## reference /" not in report
    for student in ("calls_torch_softmax", "forks_a_daemon"):
        feedback = (out / "feedback" / f"{student}.md").read_text()
        assert "flag" not in feedback.lower() and "softmax.py:" not in feedback
    rows = {(r["student"], r["lesson"]): r for r in csv.DictReader(open(out / "grades.csv"))}
    assert rows["forks_a_daemon", "L02_stable_softmax"]["flags"] and not rows["reference", "L02_stable_softmax"]["flags"]


def test_nothing_outside_a_sandbox_changed(simulated_class):
    if detect().level != "bwrap":
        pytest.skip("without bwrap a submission can reach other folders (isolation none)")
    after = {p: p.read_bytes() for p in sorted(simulated_class["root"].glob("L0*/submissions/**/*.py"))}
    assert after == simulated_class["before"], "a submission's code changed files of other submissions"
    assert {p: p.read_bytes() for p in simulated_class["course_tests"]} == simulated_class["course_tests"]
    assert "hacked" not in (simulated_class["out"] / "grades.csv").read_text()


def test_no_process_outlives_its_run(simulated_class):
    if detect().level != "bwrap":
        pytest.skip("without a PID namespace a double-forked daemon can outlive its run (isolation none)")
    assert simulated_class["left_behind"] == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"sleep {DAEMON_MARK}" not in ps


def test_isolation_level_is_announced(simulated_class):
    assert simulated_class["log"][0].startswith(f"isolation: {detect().level}")


def test_feedback_stays_small(simulated_class):
    for path in (simulated_class["out"] / "feedback").glob("*.md"):
        assert path.stat().st_size < 200_000, f"{path.name} is {path.stat().st_size} bytes"


def test_speed_of_an_honest_student(simulated_class):
    """Seconds per (student, lesson), printed for the record (-s)."""
    pairs = len(simulated_class["grades"])
    print(f"\n{pairs} (student, lesson) runs in {simulated_class['seconds']:.0f} s: "
          f"{simulated_class['seconds'] / pairs:.1f} s each, jobs=2, isolation {detect().level}")


def test_outputs_csv_feedback_and_gradescope(simulated_class):
    out = simulated_class["out"]
    rows = (out / "grades.csv").read_text().splitlines()
    assert rows[0] == "student,lesson,score,max,status,flags"
    assert len(rows) == 1 + len(simulated_class["classes"]["L02_stable_softmax"][1])
    assert all(",graded," in row for row in rows[1:])
    feedback = (out / "feedback" / "exits_the_process.md").read_text()
    assert "crashed" in feedback and "L02_stable_softmax" in feedback
    assert (out / "gradescope" / "reference.json").exists()


def test_a_rerun_grades_only_what_is_missing(simulated_class):
    out = simulated_class["out"]
    before = (out / "grades.csv").read_text()
    for student in ("reference", "L02_global_max"):
        (out / "results" / student / "L02_stable_softmax.json").unlink()
    log = []
    grade_class(simulated_class["submissions"], [find_lesson("L02")], out, LIMITS, jobs=2, log=log.append)
    graded = sorted(line.split()[0] for line in log[1:])
    assert graded == ["L02_global_max", "reference"]
    assert (out / "grades.csv").read_text() == before
