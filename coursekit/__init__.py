"""Tooling for the Efficient Attention course: the lesson table, the
implementation switch, test helpers and references, the pytest plugin, the
stub generator, the self-checks and the `course` command line."""
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent.parent


def copy_coursekit(dest):
    """Copy the tooling, without its self-tests, to dest/coursekit (grading
    sandboxes, nbgrader kernels, the student release)."""
    import shutil
    shutil.copytree(COURSE_ROOT / "coursekit", Path(dest) / "coursekit",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
