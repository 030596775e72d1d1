"""Prove that each lesson's suite catches its known-wrong implementations.

A known-wrong implementation is a file testcases/<lesson>/known_wrong/<name>.py:

    \"\"\"One line: the bug, and why a student writes it.\"\"\"
    MODULE = "softmax"          # the module of model/ it breaks
    CAUGHT_BY = "basic"         # optional: "basic" (default) or "advanced"

    def stable_softmax(x, dim=-1):
        ...                     # the wrong version

It is built into a throwaway package: a copy of solutions/ with the file's text
appended to MODULE, so its definitions replace the reference ones (and every
caller inside the module sees them). The named suite must then fail.
"""
import ast
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from coursekit import COURSE_ROOT
from coursekit.runner import run_with_report

SETTING = re.compile(r'^(MODULE|CAUGHT_BY)\s*=\s*"(\w+)"', re.MULTILINE)


@dataclass
class Verdict:
    lesson: str
    name: str
    summary: str
    suite: str
    caught_by: list  # node ids of the tests that failed
    error: str = ""

    @property
    def caught(self):
        return bool(self.caught_by)


def known_wrong_files(lesson):
    """The lesson's known-wrong files; for a part of a lesson, those that break its modules."""
    folder = lesson.known_wrong
    paths = sorted(folder.glob("*.py")) if folder.is_dir() else []
    return [path for path in paths if not lesson.is_part or describe(path)[0] in lesson.modules]


def describe(path: Path):
    text = path.read_text()
    settings = dict(SETTING.findall(text))
    if "MODULE" not in settings:
        raise ValueError(f"{path}: no MODULE = \"...\" line")
    summary = (ast.get_docstring(ast.parse(text)) or "").split("\n")[0]
    return settings["MODULE"], settings.get("CAUGHT_BY", "basic"), summary


def build_package(path: Path, workdir: Path, package: str):
    module, _, _ = describe(path)
    target = workdir / package
    shutil.copytree(COURSE_ROOT / "solutions", target, ignore=shutil.ignore_patterns("__pycache__"))
    module_file = target / f"{module}.py"
    if not module_file.exists():
        raise ValueError(f"{path}: MODULE {module!r} is not a module of solutions/")
    module_file.write_text(module_file.read_text() + f"\n\n# ---- known-wrong override: {path.name} ----\n"
                           + path.read_text())


def check_suite(lesson, suite, paths, workdir: Path, marker=None):
    """Run one suite of `lesson` once, parametrised over every package in `paths`
    (only its tests with `marker`, a pytest -m expression, when given)."""
    packages = {f"known_wrong_{lesson.number.lower()}_{path.stem}": path for path in paths}
    for package, path in packages.items():
        build_package(path, workdir, package)
    select = ["-m", marker] if marker else []
    run, results = run_with_report([lesson.tests / f"test_{suite}.py"], ",".join(packages), "-q", "--tb=no",
                                   *select, pythonpath=workdir, threads=1)
    error = "" if results else (run.stdout[-2000:] + run.stderr[-2000:])
    verdicts = []
    for package, path in packages.items():
        _, _, summary = describe(path)
        param = re.compile(rf"[\[-]{package}[\]-]")
        # a lone package is not a parameter (the impl fixture is parametrised only for two or more)
        failed = [node for node, r in results.items()
                  if (len(packages) == 1 or param.search(node)) and r["outcome"] in ("failed", "error")]
        verdicts.append(Verdict(lesson.id, path.stem, summary, suite, failed, error))
    return verdicts


def check_lessons(lessons, jobs=None):
    """Run every known-wrong implementation of `lessons`; returns [Verdict].

    One pytest run per (lesson, suite, kind of module), `jobs` of them side by
    side (default: one per core), each with one torch thread and its own folder
    of packages; the verdicts come back in lesson order."""
    tasks = []
    for lesson in lessons:
        # A bug in a Triton module is looked for by the `triton` tests only, and a
        # bug in a plain module by the others: the interpreter is slow, and the
        # other tests would only run the correct code of the other module again.
        groups = {}
        for path in known_wrong_files(lesson):
            module, suite, _ = describe(path)
            groups.setdefault((suite, module.endswith("_triton")), []).append(path)
        for (suite, triton), paths in sorted(groups.items()):
            tasks.append((lesson, suite, paths, lesson.marker_expression("triton" if triton else "not triton")))
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="known-wrong-") as tmp:
        def run(numbered):
            index, (lesson, suite, paths, marker) = numbered
            workdir = Path(tmp) / str(index)
            workdir.mkdir()
            return check_suite(lesson, suite, paths, workdir, marker)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return [verdict for verdicts in pool.map(run, enumerate(tasks)) for verdict in verdicts]
