"""Tooling for the Efficient Attention course: the lesson table, the
implementation switch, test helpers and references, the pytest plugin, the
stub generator, the self-checks and the `course` command line."""
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent.parent
RELEASE_MARKER = ".course-release"  # `course release` puts it at the top of a student release


def is_release(root=None) -> bool:
    """Is this course folder a student release (no solutions/, no instructor tools)?"""
    return (Path(root or COURSE_ROOT) / RELEASE_MARKER).is_file()


def copy_coursekit(dest):
    """Copy the tooling, without its self-tests, to dest/coursekit (grading
    sandboxes, nbgrader kernels, the student release)."""
    import shutil
    shutil.copytree(COURSE_ROOT / "coursekit", Path(dest) / "coursekit",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
