"""The grader's walls, one at a time: the sandbox, the report channel, the
tamper guard, the static scan and the gradebook check (the hostile class in
test_grading_e2e.py puts them together)."""
import math
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch

from coursekit import guard, scan
from coursekit.gradebook import undo_foreign_changes
from coursekit.runner import RunRecord
from coursekit.sandbox import Limits, bwrap_base, detect

needs_bwrap = pytest.mark.skipif(detect().level != "bwrap", reason="bubblewrap cannot create namespaces here")


@needs_bwrap
def test_bwrap_sandbox_sees_no_course_folder_no_network_and_a_small_tmp(tmp_path):
    probe = (
        "import os, socket\n"
        "print(os.path.exists('/work'), os.path.exists(%r))\n"
        "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=2); print('online')\n"
        "except OSError:\n    print('offline')\n"
        "try:\n    open('/tmp/big', 'wb').write(b'x' * (40 << 20)); print('wrote')\n"
        "except OSError:\n    print('full')\n" % str(tmp_path))
    command = bwrap_base(Limits(disk_mb=16)) + [sys.executable, "-c", probe]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.split()
    assert out[1:] == ["False", "offline", "full"], out


def test_records_without_the_token_are_ignored_and_flagged():
    record = RunRecord(token="secret")
    record.take({"kind": "result", "node": "t::a", "outcome": "passed", "token": "guess"})
    record.take({"kind": "result", "node": "t::a", "outcome": "failed", "message": "m", "token": "secret"})
    record.take({"kind": "result", "node": "t::a", "outcome": "passed", "token": "secret"})
    assert record.results["t::a"]["outcome"] == "failed", "the first genuine record counts"
    assert any("forged" in flag for flag in record.flags)


def test_guard_sees_rebinding_code_swaps_and_shadowed_methods():
    snapshot = guard.Snapshot()
    original_isclose, original_code = math.isclose, torch.testing.assert_close.__code__
    try:
        math.isclose = lambda *a, **k: True
        torch.testing.assert_close.__code__ = (lambda *a, **k: None).__code__
        torch.Tensor.any = lambda self, *a, **k: False
        found = " | ".join(snapshot.check())
    finally:
        math.isclose = original_isclose
        torch.testing.assert_close.__code__ = original_code
        if "any" in vars(torch.Tensor):
            del torch.Tensor.any
    assert "math.isclose" in found and "torch.testing.assert_close" in found and "torch.Tensor.any" in found
    assert math.isclose is original_isclose and snapshot.check() == []


def test_scan_flags_what_an_exercise_never_needs():
    source = ("import ctypes, atexit\nimport torch\nimport sys\n"
              "def f(x):\n    torch.allclose = None\n    sys.modules['torch'] = None\n"
              "    exec('1')\n    return sys._getframe(1).f_back\n")
    reasons = " | ".join(scan.scan_source(source, "m.py"))
    for word in ("ctypes", "atexit", "torch.allclose", "sys.modules", "exec", "frame introspection"):
        assert word in reasons
    assert scan.scan_source("import torch\n\ndef f(x):\n    return torch.exp(x)\n", "m.py") == []


def test_gradebook_changes_of_other_students_are_undone(tmp_path):
    db = tmp_path / "gradebook.db"
    with sqlite3.connect(db) as c:
        c.executescript("""
            CREATE TABLE assignment (id TEXT PRIMARY KEY, name TEXT);
            CREATE TABLE submitted_assignment (id TEXT PRIMARY KEY, assignment_id TEXT, student_id TEXT);
            CREATE TABLE submitted_notebook (id TEXT PRIMARY KEY, assignment_id TEXT);
            CREATE TABLE grade (id TEXT PRIMARY KEY, notebook_id TEXT, auto_score FLOAT);
            INSERT INTO assignment VALUES ('a', 'L01');
            INSERT INTO submitted_assignment VALUES ('sa1', 'a', 'alice'), ('sa2', 'a', 'bob');
            INSERT INTO submitted_notebook VALUES ('n1', 'sa1'), ('n2', 'sa2');
            INSERT INTO grade VALUES ('g1', 'n1', 1.0), ('g2', 'n2', 2.0);
        """)
    before = tmp_path / "before.db"
    shutil.copyfile(db, before)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE grade SET auto_score = 5 WHERE id = 'g1'")     # alice, being graded: allowed
        c.execute("UPDATE grade SET auto_score = 99 WHERE id = 'g2'")    # bob: not
        c.execute("UPDATE assignment SET name = 'L99'")                  # nobody's to change
    problems = undo_foreign_changes(before, db, {"alice"}, "L01")
    assert sorted(p.split(":")[0] for p in problems) == ["assignment a", "grade g2"]
    with sqlite3.connect(db) as c:
        assert dict(c.execute("SELECT id, auto_score FROM grade")) == {"g1": 5.0, "g2": 2.0}
        assert c.execute("SELECT name FROM assignment").fetchone() == ("L01",)


def test_strict_isolation_refuses_a_machine_without_it(tmp_path, monkeypatch):
    import coursekit.grade as grade
    from coursekit.lessons import find_lesson
    from coursekit.sandbox import Isolation
    monkeypatch.setattr(grade, "detect", lambda: Isolation("none", "", "none: no bubblewrap"))
    (tmp_path / "subs" / "someone" / "model").mkdir(parents=True)
    with pytest.raises(grade.IsolationError, match="strict"):
        grade.grade_class(tmp_path / "subs", [find_lesson("L02")], tmp_path / "out", isolation="strict",
                          log=lambda *a: None)


@pytest.mark.slow
def test_isolation_none_still_grades_exactly(tmp_path):
    """The level without a sandbox: same scores for an honest class (the hostile
    class runs under the best level the machine offers, test_grading_e2e.py)."""
    from coursekit import COURSE_ROOT
    from coursekit.grade import grade_class
    from coursekit.lessons import find_lesson
    from coursekit.stubs import expected_stubs
    for name, files in (("reference", {p.name: p.read_text() for p in (COURSE_ROOT / "solutions").glob("*.py")}),
                        ("untouched", expected_stubs(COURSE_ROOT / "solutions"))):
        (tmp_path / "subs" / name / "model").mkdir(parents=True)
        for file, text in files.items():
            (tmp_path / "subs" / name / "model" / file).write_text(text)
    log = []
    grades = {g.student: g for g in grade_class(tmp_path / "subs", [find_lesson("L02")], tmp_path / "out",
                                                Limits(seconds_per_test=5), jobs=2, log=log.append,
                                                isolation="none")}
    assert log[0].startswith("isolation: none")
    assert grades["reference"].score == grades["reference"].max_score > 0 and grades["untouched"].score == 0


HOG = """

_honest = stable_softmax


def stable_softmax(x, dim=-1):
    import torch as _torch
    _torch.ones(4 * 2**30 // 8, dtype=_torch.float64)   # 4 GiB, four times the run's memory limit
    return _honest(x, dim)
"""
FORKER = """

_honest = stable_softmax


def stable_softmax(x, dim=-1):
    import os as _os, time as _time
    for _ in range(100_000):                              # far past the run's process limit
        if _os.fork() == 0:
            _time.sleep(20)
            _os._exit(0)
    return _honest(x, dim)
"""
RAISES = "\n\ndef stable_softmax(x, dim=-1):\n    raise RuntimeError('no softmax here')\n"


@pytest.mark.slow
def test_rlimits_alone_stop_memory_hogs_and_fork_loops(tmp_path, monkeypatch):
    """Isolation none with no cgroup (rlimits only): RLIMIT_DATA stops a submission
    that allocates four times the memory limit, RLIMIT_NPROC one that forks without
    end (a user's limit: root is exempt, so as root that case is left out). Each
    scores exactly what a stable_softmax that raises scores, and the class goes on."""
    import os

    import coursekit.grade as grade
    from coursekit import COURSE_ROOT
    from coursekit.lessons import find_lesson
    from coursekit.sandbox import Isolation
    monkeypatch.setattr(grade, "detect", lambda: Isolation("none", "", "none: rlimits only"))
    solutions = {p.name: p.read_text() for p in (COURSE_ROOT / "solutions").glob("*.py")}
    students = {"a_memory_hog": HOG, "raises": RAISES, "z_honest": ""}
    if os.getuid() != 0:
        students["a_fork_loop"] = FORKER
    for name, extra in students.items():
        (tmp_path / "subs" / name / "model").mkdir(parents=True)
        for file, text in solutions.items():
            (tmp_path / "subs" / name / "model" / file).write_text(text + (extra if file == "softmax.py" else ""))
    log = []
    limits = Limits(seconds_per_test=20, memory_mb=1024, processes=64)
    grades = {g.student: g for g in grade.grade_class(tmp_path / "subs", [find_lesson("L02")], tmp_path / "out",
                                                      limits, jobs=1, log=log.append)}
    assert log[0] == "isolation: none: rlimits only"
    assert set(grades) == set(students) and all(g.status == "graded" for g in grades.values()), log
    assert grades["z_honest"].score == grades["z_honest"].max_score > 0
    assert 0 <= grades["raises"].score < grades["raises"].max_score
    for student in set(students) - {"raises", "z_honest"}:
        assert grades[student].score == grades["raises"].score, (student, log)
