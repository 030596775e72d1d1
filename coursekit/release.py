"""Build the student version of the course, and prove nothing leaks into it.

    ./course release OUT

OUT gets the course as a student should see it: its own README (the student's
commands, from instructor/student-README.md), model/ stubs (generated from
solutions/), the visible test suites (no known-wrong implementations), the
lesson texts, the tooling, and the lesson notebooks as produced by
`nbgrader generate_assignment` in the instructor's nbgrader course folder
(instructor/nbgrader/: answers replaced by stubs, hidden tests removed, graded
cells locked and checksummed in its gradebook, which autograding uses later).
A marker file (.course-release) tells the tooling it runs in a release:
instructor commands and `--impl solutions` then say why they cannot run.

The leak check then reads every file of OUT and fails if it finds a solution
marker, a hidden-test marker, or any line of a solution block or hidden test.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from coursekit import COURSE_ROOT, RELEASE_MARKER, copy_coursekit, stubs
from coursekit.lessons import lesson_folders

NBGRADER_DIR = COURSE_ROOT / "instructor" / "nbgrader"
STUDENT_README = COURSE_ROOT / "instructor" / "student-README.md"
COPIED = ("course", "pyproject.toml", "constraints.txt", "environment.yml", "conftest.py",
          ".gitignore", "tutorial", "benchmarks")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
# Left out of a student release: reading that hands over an exercise's answer. The L05 Hopper
# appendix is a complete Triton FlashAttention forward and backward (L05.2's exercise for a subset
# of shapes); hand the folder out once L05 is graded.
INSTRUCTOR_ONLY = ("tutorial/L05_flash_attention/hopper", "benchmarks/flash_attention_hopper_gpu.py",
                   "benchmarks/flash_attention_hopper_sass.py")


def release_ignore(directory, names):
    """copytree's ignore: SKIP's patterns, and the INSTRUCTOR_ONLY paths."""
    skipped = set(SKIP(directory, names))
    try:
        folder = Path(directory).resolve().relative_to(COURSE_ROOT.resolve())
    except ValueError:
        return skipped
    return skipped | {name for name in names if (folder / name).as_posix() in INSTRUCTOR_ONLY}
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
BLOCK = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", re.DOTALL)


def nbgrader(*args, check=True, course_dir=None):
    """Run an nbgrader command in the instructor's course folder (or
    `course_dir`). Kernels it starts import the tooling from a copy without
    solutions/ next to it, so student code cannot reach the reference through
    coursekit. Autograding also: grades from a private snapshot of submitted/,
    starts every kernel in the grader's sandbox (coursekit.nbsandbox: the
    gradebook, the course folder, other students and the network out of reach;
    every process it starts dies with it), runs each notebook's answer cells
    and graded cells in two kernels (coursekit.nbcarry, set in the course's
    nbgrader_config.py), and afterwards puts back any change to the gradebook
    other than the graded submissions' scores."""
    from coursekit import gradebook, nbsandbox, sandbox
    from coursekit.kernel import jupyter_env, use_course_kernel
    course_dir = Path(course_dir or NBGRADER_DIR)
    use_course_kernel()  # the notebooks ask for it by name
    with tempfile.TemporaryDirectory(prefix="nbgrader-path-") as tmp:
        tooling = Path(tmp) / "tooling"  # the kernels' PYTHONPATH (and, in the sandbox, all they see of tmp)
        copy_coursekit(tooling)
        env = dict(jupyter_env(), PYTHONPATH=str(tooling),
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        autograde = bool(args) and args[0] == "autograde"
        database = course_dir / "gradebook.db"
        if autograde:
            if (course_dir / "submitted").is_dir():
                # Grade from a private snapshot: a notebook run earlier cannot rewrite
                # a later student's submission through ../../submitted.
                snapshot = Path(tmp) / "submitted"
                shutil.copytree(course_dir / "submitted", snapshot)
                args = (*args, f"--CourseDirectory.submitted_directory={snapshot}")
            jupyter = Path(tmp) / "jupyter"
            nbsandbox.install_kernelspec(jupyter)
            ipc = jupyter / "runtime"  # connection files and the kernels' unix sockets
            ipc.mkdir(parents=True)
            prefix = f"coursegrade-nb{os.getpid()}-"
            env.update(JUPYTER_PATH=str(jupyter), JUPYTER_RUNTIME_DIR=str(ipc), COURSE_NB_IPC_DIR=str(ipc),
                       **{nbsandbox.CGROUP_PREFIX_ENV: prefix})
            # ZeroMQ over unix sockets in ipc/: the kernel's network namespace has no route to the grader.
            args = (*args, "--KernelManager.transport=ipc", f"--KernelManager.ip={ipc}/k")
            print(f"isolation: {sandbox.detect().detail}")
            if database.exists():
                shutil.copyfile(database, Path(tmp) / "gradebook-before.db")
        try:
            returncode = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"],
                                        cwd=course_dir, env=env, check=False).returncode
        finally:
            if autograde:
                sandbox.Cgroup.remove_all(prefix)
        if autograde and (Path(tmp) / "gradebook-before.db").exists() and database.exists():
            students = _option_values(args, "--student")
            assignment = next((a for a in args[1:] if not a.startswith("-")), None)
            for problem in gradebook.undo_foreign_changes(Path(tmp) / "gradebook-before.db", database,
                                                          students, assignment):
                print(f"gradebook: undone a change autograding may not make: {problem}")
        if check and returncode:
            raise subprocess.CalledProcessError(returncode, ["nbgrader", *args])
        return returncode


def _option_values(args, name):
    """The values of --name=V / --name V in args; None if the option is absent (all students)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    values += [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return set(values) if values else None


def generate_assignment(lesson) -> Path:
    """nbgrader generate_assignment for one lesson; returns the released notebook."""
    source = NBGRADER_DIR / "source" / lesson.id
    source.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lesson.notebook, source / lesson.notebook.name)
    nbgrader("generate_assignment", lesson.id, "--force")
    return NBGRADER_DIR / "release" / lesson.id / lesson.notebook.name


def student_readme() -> str:
    """The release's README: instructor/student-README.md with the lesson
    table of the course's README (one table to keep up to date)."""
    text = (COURSE_ROOT / "README.md").read_text()
    match = re.search(r"^## Lessons\n.*?(?=^## )", text, re.DOTALL | re.MULTILINE)
    lessons = match.group(0).strip() if match else ""
    return STUDENT_README.read_text().replace("{lessons}", lessons)


def build_release(out: Path):
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(student_readme())
    (out / RELEASE_MARKER).write_text("A student release of the course (./course release): no solutions/, "
                                      "no instructor commands.\n")
    for name in COPIED:
        source = COURSE_ROOT / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=release_ignore)
        elif source.exists() and name not in INSTRUCTOR_ONLY:
            shutil.copy2(source, out / name)
    copy_coursekit(out)
    (out / "model").mkdir()
    for name, text in stubs.expected_stubs(COURSE_ROOT / "solutions").items():
        (out / "model" / name).write_text(text)
    (out / "notebooks").mkdir()
    shutil.copyfile(COURSE_ROOT / "notebooks" / "00_start.ipynb", out / "notebooks" / "00_start.ipynb")
    for lesson in lesson_folders():  # a lesson in parts: one folder, one notebook
        if not lesson.available:
            continue
        from coursekit.grade import lesson_files
        (out / "testcases" / lesson.tests.name).mkdir(parents=True, exist_ok=True)
        for test in lesson_files(lesson):  # the suites and a shared helper module (_*.py), if any
            shutil.copyfile(test, out / "testcases" / lesson.tests.name / test.name)
        if lesson.notebook.exists():
            shutil.copyfile(generate_assignment(lesson), out / "notebooks" / lesson.notebook.name)


def secret_blocks():
    """The substantial lines of every solution block and hidden test, block by
    block, from the reference modules and the source notebooks."""
    texts = [p.read_text() for p in (COURSE_ROOT / "solutions").glob("*.py")]
    for path in (COURSE_ROOT / "notebooks").glob("*.ipynb"):
        texts += [cell.source for cell in nbformat.read(str(path), as_version=4).cells]
    blocks = []
    for text in texts:
        for kind, body in BLOCK.findall(text):
            lines = {line.strip() for line in body.splitlines() if _substantial(line)}
            if lines:
                blocks.append((kind.lower(), lines))
    return blocks


def _substantial(line):
    # Short lines ("return out", "pass", a bracket) and comments prove nothing.
    stripped = line.strip()
    return len(stripped) >= 24 and not stripped.startswith("#")


def _leaked(block, lines):
    """A file gives a block away if it holds all of its lines, or at least
    three and half of them; one shared idiom is not a leak."""
    found = len(block & lines)
    return found == len(block) or (found >= 3 and 2 * found >= len(block))


def find_leaks(out: Path):
    """Problems that would hand a student the answers."""
    problems = [f"{path.relative_to(out)} exists" for path in
                [out / "solutions", *out.glob("testcases/*/known_wrong")] if path.exists()]
    blocks = secret_blocks()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if path.suffix == ".ipynb":
            text = "\n".join(cell.source for cell in nbformat.reads(text, as_version=4).cells)
        where = path.relative_to(out)
        if where.parts[0] in ("model", "notebooks", "testcases"):  # the tooling and docs name the markers
            problems += [f"{where} contains {marker!r}" for marker in MARKERS if marker in text]
        lines = {line.strip() for line in text.splitlines()}
        for kind, block in blocks:
            if _leaked(block, lines):
                sample = sorted(block & lines)[0]
                problems.append(f"{where} holds a {kind} block ({len(block & lines)}/{len(block)} lines, "
                                f"e.g. {sample!r})")
    return problems
