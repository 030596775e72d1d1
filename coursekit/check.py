"""`course check`: every test against the reference solutions, plus the
self-checks that keep the course honest. CI runs this; it exits non-zero if
any check fails, and ends with one line "check: N passed, M failed".

1. The tooling passes its own tests (coursekit/tests), and the appendix kernels theirs
   (APPENDIX_TESTS: under the Triton interpreter without a GPU).
2. model/ is exactly solutions/ with the solution blocks stripped.
3. No test imports solutions/ (expected values come from coursekit.reference).
4. Notebooks are committed without outputs, ask for the course kernel and
   print the implementation's path (`./course sync-notebooks`); every graded
   test cell ends in an assert.
5. Every test passes on the reference solutions.
6. Every test fails on the untouched stubs (those that pass are listed).
7. Each lesson's known-wrong implementations are caught by the suite they name.
8. Every notebook runs top to bottom on the reference; each lesson notebook,
   graded by nbgrader's rule, gets full marks there (run as autograding runs
   it: the answer cells in one kernel, the graded cells in another that gets
   the answers as data, coursekit/nbcarry.py) and zero as released to a
   student with the stubs.
9. The student release (./course release) holds nothing of the solutions or
   hidden tests.
10. A hostile class (known-wrong, looping, crashing, tampering, solution-
   stealing, vandal, sandbox-escaping, report-forging, pytest-steering and
   shortcut-taking submissions, code and notebooks) is graded exactly, with
   the expected flags (coursekit/tests, slow).
11. In a real browser (headless Chromium), `./course lab` opens the start page
   on the course kernel without nbgrader's menu, a lesson notebook runs on the
   reference with no error, and the working tree stays as it was
   (coursekit/browser_check.py; skipped, saying why, without a browser).

--quick runs 1-6.
"""
import ast
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coursekit import COURSE_ROOT, known_wrong, notebooks, stubs
from coursekit.lessons import LESSONS
from coursekit.runner import run_with_report

STUB_PACKAGE = "course_stubs"


def _header(text):
    print(f"\n==> {text}", flush=True)


def _run_pytest(impl, *args, workdir=None, capture=True):
    """pytest over all lessons; returns (exit code, {nodeid: result})."""
    run, results = run_with_report(["testcases"], impl, *args, pythonpath=workdir, capture=capture)
    if capture and not results:
        print(run.stdout[-3000:], run.stderr[-3000:])
    return run.returncode, results


def _count(results, outcome):
    return sum(1 for r in results.values() if r["outcome"] == outcome)


# Tests of course code that is no exercise (appendix kernels students read): run with the tooling's.
APPENDIX_TESTS = ["tutorial/L05_flash_attention/hopper"]


def check_tooling(ctx):
    run = subprocess.run([sys.executable, "-m", "pytest", "coursekit/tests", *APPENDIX_TESTS, "-m", "not slow", "-q",
                          "-p", "no:cacheprovider"], cwd=COURSE_ROOT)
    return run.returncode == 0


def check_grading(ctx):
    run = subprocess.run([sys.executable, "-m", "pytest", "coursekit/tests", "-m", "slow", "-q",
                          "-p", "no:cacheprovider"], cwd=COURSE_ROOT)
    return run.returncode == 0


def check_stubs_in_sync(ctx):
    problems = stubs.drift()
    for problem in problems:
        print(f"  {problem}")
    if problems:
        print("  fix: ./course sync-stubs (maintainers; it overwrites model/)")
    return not problems


def check_no_solution_imports(ctx):
    pattern = re.compile(r"^\s*(from|import)\s+solutions\b|import_module\(\s*['\"]solutions", re.MULTILINE)
    offenders = [str(p.relative_to(COURSE_ROOT)) for p in (COURSE_ROOT / "testcases").rglob("test_*.py")
                 if pattern.search(p.read_text())]
    for path in offenders:
        print(f"  {path} imports solutions/: use the impl fixture and coursekit.reference")
    return not offenders


def check_notebooks_clean(ctx):
    problems = [f"{problem} (fix: ./course sync-notebooks)" for problem in notebooks.sync_notebooks(check=True)]
    for path in sorted(notebooks.NOTEBOOKS.glob("*.ipynb")):
        nb = notebooks.load(path)
        if notebooks.has_outputs(nb):
            problems.append(f"notebooks/{path.name} has outputs or execution counts: clear them before committing")
        problems += [f"notebooks/{path.name}: graded cell {cell.metadata.nbgrader.grade_id} does not end in an "
                     "assert or assert_* call (nbgrader gives full marks to a cell that merely runs)"
                     for cell in notebooks.graded_cells(nb)
                     if not cell.metadata.nbgrader.get("solution") and not _ends_in_assert(cell.source)]
    for problem in problems:
        print(f"  {problem}")
    return not problems


def _ends_in_assert(source):
    """Does the cell's last statement verify something? An assert, a call to an
    assert* function (torch.testing.assert_close), or a loop/with/if whose body
    ends in one; a bare expression like `x == y` does not."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and _verifies(body[-1])


def _verifies(statement):
    if isinstance(statement, ast.Assert):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        function = statement.value.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        return name.startswith("assert")
    if isinstance(statement, (ast.For, ast.While, ast.With, ast.If)) and statement.body:
        return _verifies(statement.body[-1])
    return False


def check_reference_passes(ctx):
    code, results = _run_pytest("solutions", "-q", "-rfE", capture=False)
    print(f"  {_count(results, 'passed')} passed, {_count(results, 'skipped')} skipped "
          f"(GPU-only tests skip without a GPU), {_count(results, 'failed') + _count(results, 'error')} failed")
    return code == 0 and _count(results, "passed") > 0


def check_stubs_fail(ctx):
    code, results = _run_pytest(STUB_PACKAGE, "-q", "--tb=no", workdir=ctx["stub_dir"])
    passing = sorted(node for node, r in results.items() if r["outcome"] in ("passed", "xpassed"))
    failing = _count(results, "failed") + _count(results, "error")
    print(f"  {failing} tests fail on the stubs, {len(passing)} pass, {_count(results, 'skipped')} skipped")
    for node in passing:
        print(f"  PASSES ON STUBS: {node}")
    return failing > 0 and not passing


def check_known_wrong(ctx):
    verdicts = known_wrong.check_lessons([lesson for lesson in LESSONS if lesson.available])
    for v in verdicts:
        status = f"caught by {len(v.caught_by)} {v.suite} test(s)" if v.caught else "NOT CAUGHT"
        print(f"  {v.lesson.split('_')[0]:5s} {v.name:38s} {status:28s} {v.summary}")
        if v.error:
            print(f"      the run broke: {v.error.strip()[-500:]}")
    return bool(verdicts) and all(v.caught for v in verdicts)


def check_notebooks(ctx):
    ok = True
    lesson_notebooks = {lesson.notebook: lesson for lesson in LESSONS if lesson.available}
    for path in sorted(notebooks.NOTEBOOKS.glob("*.ipynb")):
        start = time.perf_counter()
        source = notebooks.load(path)
        try:
            # A lesson notebook runs as autograding runs it: answers in one kernel, graded cells in another.
            reference = notebooks.execute(source, "solutions", separate=path in lesson_notebooks)
        except Exception as err:  # nbclient's CellExecutionError carries the cell and traceback
            print(f"  {path.name}: FAILED to run on the reference:\n{str(err)[-3000:]}")
            ok = False
            continue
        if path not in lesson_notebooks:
            print(f"  {path.name}: runs ({time.perf_counter() - start:.0f} s)")
            continue
        got, total, _ = notebooks.score(reference)
        released = notebooks.execute(notebooks.release_version(source), STUB_PACKAGE, allow_errors=True,
                                     extra_path=ctx["stub_dir"])
        stub_points, _, rows = notebooks.score(released)
        fine = total > 0 and got == total and stub_points == 0
        ok &= fine
        print(f"  {path.name}: reference {got:g}/{total:g}, released with stubs {stub_points:g}/{total:g} "
              f"({time.perf_counter() - start:.0f} s){'' if fine else '  <-- WRONG'}")
        for grade_id, points, _ in rows:
            if points:
                print(f"      {grade_id} scores {points:g} on the stubs")
    return ok


def check_browser(ctx):
    """None (skipped) where no browser can run."""
    from coursekit import browser_check
    reason = browser_check.unavailable()
    if reason:
        print(f"  skipped: {reason}")
        return None
    return browser_check.run()


def check_release(ctx):
    from coursekit.release import build_release, find_leaks
    out = ctx["stub_dir"] / "release"
    build_release(out)
    leaks = find_leaks(out)
    for leak in leaks:
        print(f"  LEAK: {leak}")
    return not leaks and _release_behaves(out)


def _release_behaves(out):
    """In the release, --impl solutions and an instructor command each say in
    one line why they cannot run; its README promises neither."""
    ok = True
    readme = (out / "README.md").read_text()
    for phrase in ("course check", "solutions/", "--impl solutions"):
        if phrase in readme:
            print(f"  the release's README mentions {phrase!r}")
            ok = False
    for command, expected in ((["test", "L01", "--impl", "solutions"], "no reference solutions"),
                              (["check"], "instructor command")):
        run = subprocess.run([sys.executable, "-m", "coursekit", *command], cwd=out, capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(out)))
        if run.returncode != 2 or expected not in run.stderr:
            print(f"  in the release, course {' '.join(command)}: exit {run.returncode}, "
                  f"{(run.stdout + run.stderr).strip()[-300:]!r} (wanted exit 2 and {expected!r})")
            ok = False
    return ok


CHECKS = [
    ("the tooling passes its own tests", check_tooling, False),
    ("model/ is solutions/ with the solution blocks stripped", check_stubs_in_sync, False),
    ("tests never import solutions/", check_no_solution_imports, False),
    ("notebooks: no outputs, the course kernel, graded cells end in an assert", check_notebooks_clean, False),
    ("every test passes on the reference solutions", check_reference_passes, False),
    ("every test fails on the untouched stubs", check_stubs_fail, False),
    ("known-wrong implementations are caught", check_known_wrong, True),
    ("notebooks run on the reference and grade full / zero", check_notebooks, True),
    ("the student release leaks no solution or hidden test", check_release, True),
    ("a hostile class is graded exactly (sandbox, report channel, tampering, shortcuts)", check_grading, True),
    ("./course lab in a real browser: course kernel, no nbgrader menu, a lesson runs, tree clean",
     check_browser, True),
]


def run_all(quick=False) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="course-check-") as tmp:
        stub_dir = Path(tmp)
        package = stub_dir / STUB_PACKAGE
        package.mkdir()
        for name, text in stubs.expected_stubs(COURSE_ROOT / "solutions").items():
            (package / name).write_text(text)
        ctx = {"stub_dir": stub_dir}
        for title, check, slow in CHECKS:
            if quick and slow:
                continue
            _header(title)
            start = time.perf_counter()
            ok = check(ctx)  # True, False, or None: skipped (it says why)
            results.append((title, ok, time.perf_counter() - start))
            status = "skipped" if ok is None else "ok" if ok else "FAILED"
            print(f"  {status} ({results[-1][2]:.0f} s)", flush=True)

    print("\nSummary")
    for title, ok, seconds in results:
        print(f"  {'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {title}  ({seconds:.0f} s)")
    failed = sum(1 for _, ok, _ in results if ok is False)
    skipped = sum(1 for _, ok, _ in results if ok is None)
    print(f"check: {len(results) - failed - skipped} passed, {failed} failed"
          + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0
