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


# Answer cells that, in one kernel, would have rigged every graded cell after them. Each is put
# in L01's last answer cell (max_fp16_logit), with a wrong value, on the stub model/: the honest
# score of that notebook is the first answer's test alone (every model test fails on the stubs).
WRONG = "\nmax_fp16_logit = 12.5\n"
HOSTILE_ANSWERS = {
    "input_transformers": """\
        _ip = get_ipython()
        _ip.input_transformers_cleanup.append(lambda lines: ["pass\\n"])
        _ip.input_transformers_post.append(lambda lines: ["pass\\n"])
        """,
    "ast_transformer": """\
        import ast as _ast
        class _Nothing(_ast.NodeTransformer):
            def visit_Module(self, node):
                return _ast.Module(body=[_ast.Pass()], type_ignores=[])
        get_ipython().ast_transformers.append(_Nothing())
        """,
    "wraps_the_shell": """\
        _ip = get_ipython()
        _run_cell, _run_cell_async = _ip.run_cell, _ip.run_cell_async
        _ip.run_cell = lambda raw_cell, *a, **k: _run_cell("pass", *a, **k)
        _ip.run_cell_async = lambda raw_cell, *a, **k: _run_cell_async("pass", *a, **k)
        _ip.transform_cell = lambda raw_cell: "pass\\n"
        """,
    "pre_run_cell_callback": """\
        import torch as _t, torch.testing as _tt
        def _rig(*_):
            _t.allclose = _t.equal = lambda *a, **k: True
            _t.isfinite = _t.isinf = lambda *a, **k: _t.tensor(True)
            _tt.assert_close = lambda *a, **k: None
            globals()["max_fp16_logit"] = 12.5
        get_ipython().events.register("pre_run_cell", _rig)
        get_ipython().events.register("pre_execute", _rig)
        """,
    "rebinds_names": """\
        import types as _types, torch as _torch
        torch = _types.SimpleNamespace(**{k: getattr(_torch, k) for k in dir(_torch) if not k.startswith("__")})
        torch.allclose = torch.equal = lambda *a, **k: True
        torch.isfinite = torch.isinf = lambda *a, **k: True
        torch.testing = _types.SimpleNamespace(assert_close=lambda *a, **k: None)
        class AssertionError(Exception):
            pass
        isinstance = lambda *a: True
        abs = lambda x: 0.0
        float = lambda x: 11.0898
        len = lambda x: 0
        all = lambda x: True
        sorted = lambda x, **k: x
        math = _types.SimpleNamespace(log=lambda x: 12.5, isclose=lambda *a, **k: True, sqrt=lambda x: 16.0)
        """,
    "patches_the_guard": """\
        import coursekit.nbguard as _guard, coursekit.nbcarry as _carry, torch as _t, torch.testing as _tt
        _guard.restore = _guard.capture = lambda *a, **k: None
        _carry.bind = lambda namespace, blob, names: namespace.update(max_fp16_logit=11.0898)
        _t.allclose = _t.equal = lambda *a, **k: True
        _t.isfinite = _t.isinf = lambda *a, **k: _t.tensor(True)
        _tt.assert_close = lambda *a, **k: None
        """,
    "exits_the_kernel": """\
        import os as _os
        _os._exit(0)
        """,
    "always_equal_object": """\
        class _Right(float):
            pass
        class _Answer:
            def __eq__(self, other):
                return True
            __ne__ = lambda self, other: False
            __float__ = lambda self: 11.0898
            def __reduce__(self):
                return (exec, ("open('pwned-by-reduce', 'w').write('x')",))
        max_fp16_logit = _Answer()
        """,
    # It breaks the harvest and leaves its own answer file: a pickle that would run code when loaded.
    "forges_the_answer_file": """\
        import os as _os, pickle as _pickle, coursekit.nbcarry as _carry
        class _Payload:
            def __reduce__(self):
                return (exec, ("open('pwned-by-pickle', 'w').write('x'); "
                               "globals()['max_fp16_logit'] = 11.0898",))
        _carry.dump = lambda *a, **k: None
        _os.makedirs(".course-answers", exist_ok=True)
        with open(".course-answers/1.pt", "wb") as _f:   # the last answer's file
            _pickle.dump({"max_fp16_logit": _Payload()}, _f)
        """,
}
# Files a submission ships next to its notebook: an IPython startup file (the kernel once had
# HOME there) and a coursekit/ that would shadow the tooling (the notebook's folder came first
# on sys.path). Neither may be read by a grading kernel.
SHIPPED = {
    ".ipython/profile_default/startup/00-rig.py":
        "get_ipython().input_transformers_cleanup.append(lambda l: ['pass\\n'])\n",
    "coursekit/__init__.py": "raise SystemExit('the shipped coursekit was imported')\n",
    "torch.py": "raise SystemExit('the shipped torch was imported')\n",
}


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

    def hostile_answer(code):
        nb = nbformat.from_dict(source[L01])
        code = textwrap.dedent(code)
        answers(nb)[-1].source = code if "max_fp16_logit =" in code else code + WRONG
        return nb

    first_test = next(c.metadata.nbgrader.points for c in graded(source[L01])
                      if c.metadata.nbgrader.grade_id == "l01_test_predicted_std")
    hostile = {f"hostile_{name}": (L01, hostile_answer(code), "stubs", first_test)
               for name, code in HOSTILE_ANSWERS.items()}
    hostile["hostile_ships_files"] = (L01, hostile_answer(""), "stubs", first_test)
    answer_tests = sum(c.metadata.nbgrader.points for c in graded(complete)
                       if c.metadata.nbgrader.grade_id in ("l02_test_sum_overflow", "l02_test_memory_accesses"))

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
        # It kills the answers' kernel at its first answer: no answer reaches the graded cells,
        # the model's tests still count.
        "kills_its_kernel": (L02, crashing, "solutions", max_points[L02] - answer_tests),
        "emits_warnings": (L02, complete, "warnings", max_points[L02]),
        "steals_solutions": (L02, complete, "steal", direct_score(complete, "raises", tmp)),
        "aa_vandal": (L02, vandal, "solutions", max_points[L02]),
        "aa_rewrites_the_gradebook": (L02, gradebook_thief, "solutions", max_points[L02]),
        "aa_gradebook_daemon": (L02, gradebook_daemon, "solutions", max_points[L02]),
        "aa_signals_nbgrader": (L02, signals_nbgrader, "solutions", max_points[L02]),
        **hostile,
    }
    for student, (lesson, nb, model_kind, _) in students.items():
        folder = course / "submitted" / student / lesson
        (folder / "model").mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{lesson}.ipynb"))
        for name, text in model_files(model_kind).items():
            (folder / "model" / name).write_text(text)
        if student == "hostile_ships_files":
            for name, text in SHIPPED.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(text)

    for lesson in (L01, L02):
        nbgrader("autograde", lesson, "--force", "--Execute.timeout=20", course_dir=course, check=False)
    time.sleep(5)  # the daemon's moment (it must be dead by now)
    nbgrader("export", "--to", str(tmp / "grades.csv"), course_dir=course)
    with open(tmp / "grades.csv") as f:
        scores = {(row["student_id"], row["assignment"]): float(row["score"]) for row in csv.DictReader(f)}
    return {"scores": scores, "students": students, "course": course, "loop_cost": loop_cost,
            "max_points": max_points}


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
    # In the kernel sandbox the vandal sees no other submission; without it, it may overwrite them uselessly.
    if detect().level == "bwrap":
        assert victim.read_text() != "vandalised"


def test_hostile_answers_would_have_scored_and_now_score_nothing(autograded):
    """Each hostile answer gets what its wrong value deserves: the first answer's
    test only, not the full marks one rigged kernel would have given."""
    students = autograded["students"]
    hostile = [s for s in students if s.startswith("hostile_")]
    assert len(hostile) == len(HOSTILE_ANSWERS) + 1
    for student in hostile:
        assert 0 < students[student][3] < autograded["max_points"][L01], student


def test_no_payload_ran_and_no_generated_cell_is_kept(autograded):
    autograded_dir = autograded["course"] / "autograded"
    assert not list(autograded_dir.glob("**/pwned-*")), "a carried answer's pickle ran code"
    for notebook in autograded_dir.glob(f"*/{L01}/{L01}.ipynb"):
        nb = notebooks.load(notebook)
        sources = "\n".join(c.source for c in nb.cells)
        assert "inserted by the grader" not in sources, f"{notebook}: a generated cell is in the graded notebook"
