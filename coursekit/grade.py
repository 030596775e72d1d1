"""Grade a class's model/ code with the course's pytest suites.

    ./course grade SUBMISSIONS --lessons L01 L02 --out grades/

SUBMISSIONS holds one folder per student: a copy of the student's course folder
(with model/ inside) or just their model/ files. Every student gets a score for
every lesson, whatever their code does:

1. Snapshots first. Each student's model/*.py is copied into the grader's work
   folder before any student code runs, so code that writes into another
   student's folder cannot change that student's grade.
2. One sandbox per (student, lesson): a fresh temporary folder holding the
   grader's own copies of the tests and tooling and the student's snapshot as
   the package `model`. No solutions/ anywhere on its path; `python -I` with a
   clean environment; limits on memory and core files; a time limit per test.
3. Crashes cost one test. If the process dies (os._exit, a segfault, the
   memory limit), the test it was running scores 0 and the run resumes after
   it, until every test has an outcome.
4. The reference sets the scale. The gradable tests and their points come from
   running the reference solutions in the same kind of sandbox: a test the
   reference skips (no GPU here) counts for nobody; a test the student's code
   skips, or never reaches, scores 0.

Writes grades.csv (student, lesson, score, max), feedback/<student>.md (each
failed test with its message) and, with --gradescope, gradescope/<student>.json
in Gradescope's results.json format.
"""
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from coursekit import COURSE_ROOT, copy_coursekit
from coursekit.pytest_plugin import read_report


@dataclass
class Limits:
    seconds_per_test: float = 30.0
    seconds_per_run: float = 900.0   # a backstop for loops inside C code, which SIGALRM cannot interrupt
    memory_mb: int = 4096


@dataclass
class LessonGrade:
    student: str
    lesson: str
    score: float
    max_score: float
    tests: dict = field(default_factory=dict)  # nodeid -> {"outcome", "message", "points"}


def find_model_files(submission: Path):
    """The student's model/*.py: under model/ if there is one, else at the top."""
    folder = submission / "model" if (submission / "model").is_dir() else submission
    return sorted(p for p in folder.glob("*.py") if p.is_file() and not p.is_symlink())


def snapshot(submissions: Path, work: Path) -> dict:
    """Copy every student's model files to work/<student>/model before grading."""
    students = {}
    for folder in sorted(p for p in submissions.iterdir() if p.is_dir()):
        target = work / "snapshots" / folder.name / "model"
        target.mkdir(parents=True)
        for path in find_model_files(folder):
            shutil.copyfile(path, target / path.name)
        students[folder.name] = target
    return students


def make_sandbox(lesson, model_dir: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="grade-"))
    copy_coursekit(root)
    for name in ("conftest.py", "pyproject.toml"):  # the plugin, and pytest's settings
        shutil.copyfile(COURSE_ROOT / name, root / name)
    tests = root / "testcases" / lesson.id
    tests.mkdir(parents=True)
    for path in lesson.tests.glob("test_*.py"):
        shutil.copyfile(path, tests / path.name)
    shutil.copytree(model_dir, root / "model")
    return root


def _limit_resources(memory_mb):
    def apply():
        os.setsid()  # its own process group, so a timeout kills its children too
        memory = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _run_once(sandbox: Path, report: Path, deselect, limits: Limits):
    # One thread per run: runs side by side (--jobs) do not fight over cores.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(sandbox), "LANG": "C.UTF-8",
           "COURSE_IMPL": "model", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-I", "-m", "pytest", "testcases", "--impl", "model", "-q", "--tb=short",
               "-p", "no:cacheprovider", "--course-report", str(report),
               "--course-timeout", str(limits.seconds_per_test)]
    for nodeid in deselect:
        command += ["--deselect", nodeid]
    process = subprocess.Popen(command, cwd=sandbox, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=_limit_resources(limits.memory_mb))
    try:
        process.wait(timeout=limits.seconds_per_run)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        return "run time limit"
    return None


def run_lesson(lesson, model_dir: Path, limits: Limits) -> dict:
    """{nodeid: {"outcome", "message", "points"}} for every test of the lesson,
    resuming after each crash until every collected test has an outcome."""
    sandbox = make_sandbox(lesson, model_dir)
    outcomes, collected = {}, None
    try:
        for attempt in range(1000):  # each pass settles at least one test
            report = sandbox / f"report-{attempt}.json"
            killed = _run_once(sandbox, report, list(outcomes), limits)
            written = read_report(report)
            outcomes.update(written["results"])
            collected = collected or written["collected"]  # later passes collect fewer (deselected)
            running = written["running"]
            if running and running not in outcomes:
                reason = killed or "the test process died (crash, os._exit, or the memory limit)"
                outcomes[running] = {"outcome": "crashed", "message": reason, "points": None}
            if not collected or all(node in outcomes for node in collected) or not running:
                break
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    for node in collected or []:
        outcomes.setdefault(node, {"outcome": "not run", "message": "the run ended before this test", "points": None})
    return outcomes


def score_lesson(student, lesson, outcomes, baseline) -> LessonGrade:
    """Points of the baseline's passing tests that the student also passes."""
    tests, score = {}, 0.0
    for node, reference in baseline.items():
        got = outcomes.get(node, {"outcome": "missing", "message": "the test did not run"})
        earned = reference["points"] if got["outcome"] == "passed" else 0
        score += earned
        tests[node] = {"outcome": got["outcome"], "message": got.get("message", ""),
                       "points": earned, "max_points": reference["points"]}
    return LessonGrade(student, lesson.id, score, sum(r["points"] for r in baseline.values()), tests)


def reference_baseline(lesson, limits: Limits) -> dict:
    """The tests the reference passes here, with their points."""
    outcomes = run_lesson(lesson, COURSE_ROOT / "solutions", limits)
    failing = [node for node, r in outcomes.items() if r["outcome"] not in ("passed", "skipped")]
    if failing:
        raise RuntimeError(f"the reference fails {lesson.id} tests in the grading sandbox: {failing[:5]}")
    return {node: r for node, r in outcomes.items() if r["outcome"] == "passed"}


def write_outputs(grades, out: Path, gradescope: bool):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grades.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "lesson", "score", "max"])
        for g in grades:
            writer.writerow([g.student, g.lesson, f"{g.score:g}", f"{g.max_score:g}"])
    by_student = {}
    for g in grades:
        by_student.setdefault(g.student, []).append(g)
    (out / "feedback").mkdir(exist_ok=True)
    for student, lessons in by_student.items():
        (out / "feedback" / f"{student}.md").write_text(feedback_text(student, lessons))
        if gradescope:
            (out / "gradescope").mkdir(exist_ok=True)
            (out / "gradescope" / f"{student}.json").write_text(json.dumps(gradescope_results(lessons), indent=1))


def feedback_text(student, lessons):
    lines = [f"# Feedback for {student}", ""]
    for g in lessons:
        lines += [f"## {g.lesson}: {g.score:g} / {g.max_score:g}", ""]
        failed = [(node, t) for node, t in g.tests.items() if t["outcome"] != "passed"]
        if not failed:
            lines += ["Every test passed.", ""]
        for node, t in failed:
            lines += [f"- `{node}` ({t['outcome']}, 0 / {t['max_points']:g})", "",
                      "  ```", *("  " + line for line in (t["message"] or "").splitlines()[:25]), "  ```", ""]
    return "\n".join(lines)


def gradescope_results(lessons):
    return {"score": sum(g.score for g in lessons),
            "tests": [{"name": node, "score": t["points"], "max_score": t["max_points"],
                       "output": "" if t["outcome"] == "passed" else f"{t['outcome']}: {t['message']}"}
                      for g in lessons for node, t in g.tests.items()]}


def grade_class(submissions: Path, lessons, out: Path, limits: Limits = Limits(), gradescope=False, jobs=1,
                log=print):
    """Grade every student of `submissions` on every lesson, `jobs` runs at a time."""
    with tempfile.TemporaryDirectory(prefix="grading-") as work:
        students = snapshot(submissions, Path(work))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            baselines = dict(zip((lesson.id for lesson in lessons),
                                 pool.map(lambda lesson: reference_baseline(lesson, limits), lessons)))

            def grade(pair):
                (student, model_dir), lesson = pair
                grade = score_lesson(student, lesson, run_lesson(lesson, model_dir, limits), baselines[lesson.id])
                log(f"{student:24s} {lesson.id:28s} {grade.score:g} / {grade.max_score:g}")
                return grade

            grades = list(pool.map(grade, [(s, lesson) for s in students.items() for lesson in lessons]))
    write_outputs(grades, out, gradescope)
    return grades
