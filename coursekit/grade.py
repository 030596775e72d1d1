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
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coursekit import COURSE_ROOT, copy_coursekit, scan
from coursekit.runner import run_graded
from coursekit.sandbox import Limits, detect

__all__ = ["Limits", "LessonGrade", "grade_class"]


class IsolationError(RuntimeError):
    pass


@dataclass
class LessonGrade:
    student: str
    lesson: str
    score: float
    max_score: float
    tests: dict = field(default_factory=dict)  # nodeid -> {"outcome", "message", "points"}
    status: str = "graded"                      # or "error: <what went wrong on the grader's side>"
    flags: list = field(default_factory=list)   # for the instructor, never in the student's feedback


def find_model_files(submission: Path):
    """The student's model/*.py: under model/ if there is one, else at the top.
    A conftest.py is never taken (it would be pytest's, not the exercise's)."""
    folder = submission / "model" if (submission / "model").is_dir() else submission
    return sorted(p for p in folder.glob("*.py") if p.is_file() and not p.is_symlink() and p.name != "conftest.py")


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


def lesson_files(lesson):
    """The files of a lesson's test folder that travel with its tests: the
    suites and any shared helper module (_*.py), never known_wrong/."""
    return sorted(p for p in lesson.tests.glob("*.py") if p.name.startswith(("test_", "_")))


def make_sandbox(lesson, model_dir: Path, parent=None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="grade-", dir=parent))
    copy_coursekit(root)
    shutil.copyfile(COURSE_ROOT / "pyproject.toml", root / "pyproject.toml")  # pytest's settings
    tests = root / "testcases" / lesson.tests.name
    tests.mkdir(parents=True)
    for path in lesson_files(lesson):
        shutil.copyfile(path, tests / path.name)
    shutil.copytree(model_dir, root / "model")
    return root


def run_lesson(lesson, model_dir: Path, limits: Limits, isolation=None, parent=None):
    """({nodeid: {"outcome", "message", "points"}}, flags) for every test of the
    lesson, resuming after each crash until every collected test has an outcome.
    Raises RuntimeError when the grader could not get a report at all."""
    isolation = isolation or detect()
    sandbox = make_sandbox(lesson, model_dir, parent)
    select = getattr(lesson, "select", None)
    outcomes, collected, flags = {}, None, []
    try:
        for attempt in range(1000):  # each pass settles at least one test
            run = run_graded(sandbox, f"testcases/{lesson.tests.name}", limits, isolation,
                             deselect=list(outcomes), select=select)
            if not run.started:
                if attempt == 0:
                    raise RuntimeError("the test process reported nothing (the sandbox did not start)")
                for node in collected or []:
                    outcomes.setdefault(node, {"outcome": "crashed", "points": None,
                                               "message": "the test process died before reporting (at start-up)"})
                break
            flags += [f for f in run.flags if f not in flags]
            for node, result in run.results.items():
                outcomes.setdefault(node, result)
            collected = collected or run.collected  # later passes collect fewer (deselected)
            if run.running and run.running not in outcomes:
                reason = run.killed or "the test process died (crash, os._exit, or the memory limit)"
                outcomes[run.running] = {"outcome": "crashed", "message": reason, "points": None}
            if not collected or all(node in outcomes for node in collected) or not run.running:
                break
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    if not collected:
        raise RuntimeError("the test process collected no tests")
    flags = summarise_flags(flags)
    for node in collected:
        outcomes.setdefault(node, {"outcome": "not run", "message": "the run ended before this test", "points": None})
    return outcomes, flags


def summarise_flags(flags):
    """One line per reason: 'reason (in N tests, first NODE)' for per-test flags."""
    by_reason, order = {}, []
    for flag in flags:
        node, sep, reason = flag.partition(": ")
        if not sep or "::" not in node:
            node, reason = None, flag
        if reason not in by_reason:
            by_reason[reason] = []
            order.append(reason)
        if node:
            by_reason[reason].append(node)
    return [reason if not by_reason[reason] else
            f"{reason} (in {len(by_reason[reason])} test{'s' if len(by_reason[reason]) > 1 else ''}, "
            f"first {by_reason[reason][0]})" for reason in order]


def score_lesson(student, lesson, outcomes, baseline, flags=()) -> LessonGrade:
    """Points of the baseline's passing tests that the student also passes."""
    tests, score = {}, 0.0
    for node, reference in baseline.items():
        got = outcomes.get(node, {"outcome": "missing", "message": "the test did not run"})
        earned = reference["points"] if got["outcome"] == "passed" else 0
        score += earned
        tests[node] = {"outcome": got["outcome"], "message": got.get("message", ""),
                       "points": earned, "max_points": reference["points"]}
    return LessonGrade(student, lesson.id, score, sum(r["points"] for r in baseline.values()), tests,
                       flags=list(flags))


def reference_baseline(lesson, limits: Limits, isolation=None, parent=None) -> dict:
    """The tests the reference passes here, with their points."""
    outcomes, flags = run_lesson(lesson, COURSE_ROOT / "solutions", limits, isolation, parent)
    failing = [node for node, r in outcomes.items() if r["outcome"] not in ("passed", "skipped")]
    if failing or flags:
        raise RuntimeError(f"the reference fails {lesson.id} tests in the grading sandbox: {(failing + flags)[:5]}")
    return {node: r for node, r in outcomes.items() if r["outcome"] == "passed"}


# ---------------------------------------------------------------------------
# Outputs, written as results arrive
# ---------------------------------------------------------------------------
CSV_HEADER = ["student", "lesson", "score", "max", "status", "flags"]


class Outputs:
    """out/results/<student>/<lesson>.json per finished pair (a rerun skips
    those), grades.csv and feedback rewritten after each one."""

    def __init__(self, out: Path, gradescope: bool):
        self.out, self.gradescope = out, gradescope
        self.lock = threading.Lock()
        (out / "results").mkdir(parents=True, exist_ok=True)
        self.grades = {}
        for path in sorted((out / "results").glob("*/*.json")):
            try:
                grade = LessonGrade(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                continue
            if grade.status == "graded":
                self.grades[grade.student, grade.lesson] = grade

    def done(self, student, lesson_id):
        return (student, lesson_id) in self.grades

    def add(self, grade: LessonGrade):
        with self.lock:
            self.grades[grade.student, grade.lesson] = grade
            folder = self.out / "results" / grade.student
            folder.mkdir(exist_ok=True)
            _write_atomic(folder / f"{grade.lesson}.json", json.dumps(asdict(grade), indent=1))
            self.write()

    def write(self):
        grades = [self.grades[key] for key in sorted(self.grades)]
        rows = [CSV_HEADER] + [[g.student, g.lesson, f"{g.score:g}" if g.status == "graded" else "",
                                f"{g.max_score:g}" if g.status == "graded" else "", g.status,
                                "; ".join(g.flags)] for g in grades]
        import io
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        _write_atomic(self.out / "grades.csv", text.getvalue())
        by_student = {}
        for g in grades:
            by_student.setdefault(g.student, []).append(g)
        (self.out / "feedback").mkdir(exist_ok=True)
        for student, lessons in by_student.items():
            _write_atomic(self.out / "feedback" / f"{student}.md", feedback_text(student, lessons))
            if self.gradescope:
                (self.out / "gradescope").mkdir(exist_ok=True)
                _write_atomic(self.out / "gradescope" / f"{student}.json",
                              json.dumps(gradescope_results(lessons), indent=1))
        flagged = [g for g in grades if g.flags]
        _write_atomic(self.out / "instructor_report.md", instructor_report(flagged))


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def instructor_report(flagged):
    lines = ["# Flagged submissions", "",
             "Flags do not change a score; they say what to look at. Static-scan flags come from reading",
             "the code; run flags from what the code did while graded (tampering, forbidden calls).", ""]
    if not flagged:
        lines.append("None.")
    for g in flagged:
        lines += [f"## {g.student} / {g.lesson}: {g.score:g} / {g.max_score:g}", ""]
        lines += [f"- {flag}" for flag in g.flags] + [""]
    return "\n".join(lines)


def feedback_text(student, lessons):
    lines = [f"# Feedback for {student}", ""]
    for g in lessons:
        if g.status != "graded":
            lines += [f"## {g.lesson}: not graded yet", "", "The grader could not run this lesson; "
                      "your instructor has been told.", ""]
            continue
        lines += [f"## {g.lesson}: {g.score:g} / {g.max_score:g}", ""]
        failed = [(node, t) for node, t in g.tests.items() if t["outcome"] != "passed"]
        if not failed:
            lines += ["Every test passed.", ""]
        for node, t in failed:
            lines += [f"- `{node}` ({t['outcome']}, 0 / {t['max_points']:g})", "",
                      "  ```", *("  " + line[:300] for line in (t["message"] or "").splitlines()[:25]), "  ```", ""]
    return "\n".join(lines)


def gradescope_results(lessons):
    return {"score": sum(g.score for g in lessons if g.status == "graded"),
            "tests": [{"name": node, "score": t["points"], "max_score": t["max_points"],
                       "output": "" if t["outcome"] == "passed" else f"{t['outcome']}: {t['message'][:2000]}"}
                      for g in lessons for node, t in g.tests.items()]}


def write_outputs(grades, out: Path, gradescope: bool):
    outputs = Outputs(out, gradescope)
    for grade in grades:
        outputs.grades[grade.student, grade.lesson] = grade
    outputs.write()


def grade_class(submissions: Path, lessons, out: Path, limits: Limits = None, gradescope=False, jobs=1,
                log=print, isolation="auto"):
    """Grade every student of `submissions` on every lesson, `jobs` runs at a
    time. Pairs already graded in `out` (an earlier, interrupted run) are
    kept; a pair the grader cannot run gets an error row, not a zero.
    isolation: "auto" (the best this machine offers), "strict" (refuse unless
    bwrap and a cgroup are available) or "none"."""
    limits = limits or Limits()
    found = detect()
    if isolation == "strict" and not found.strict:
        raise IsolationError(f"--isolation strict, but this machine offers {found.detail}")
    active = found if isolation != "none" else type(found)("none", found.cgroup, "none: requested")
    log(f"isolation: {active.detail}")
    outputs = Outputs(out, gradescope)
    with tempfile.TemporaryDirectory(prefix="grading-") as work:
        work = Path(work)
        students = snapshot(submissions, work)
        flags_by_student = {s: scan.scan_package(folder) for s, folder in students.items()}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            baselines = dict(zip((lesson.id for lesson in lessons),
                                 pool.map(lambda lesson: reference_baseline(lesson, limits, active, work), lessons)))

            def grade(pair):
                (student, model_dir), lesson = pair
                try:
                    outcomes, run_flags = run_lesson(lesson, model_dir, limits, active, work)
                    grade = score_lesson(student, lesson, outcomes, baselines[lesson.id],
                                         flags_by_student[student] + run_flags)
                except Exception as err:  # the grader's own failure: an error row, never a silent 0
                    grade = LessonGrade(student, lesson.id, 0.0, 0.0, status=f"error: {type(err).__name__}: {err}",
                                        flags=flags_by_student[student])
                outputs.add(grade)
                log(f"{student:24s} {lesson.id:28s} "
                    + (f"{grade.score:g} / {grade.max_score:g}" if grade.status == "graded" else grade.status)
                    + ("  [flagged]" if grade.flags else ""))
                return grade

            todo = [(s, lesson) for s in students.items() for lesson in lessons if not outputs.done(s[0], lesson.id)]
            list(pool.map(grade, todo))
    outputs.write()
    return [outputs.grades[s, lesson.id] for s in students for lesson in lessons if (s, lesson.id) in outputs.grades]
