"""Run and score the lesson notebooks the way nbgrader does.

The committed notebooks are nbgrader *source* notebooks: answer cells hold
`### BEGIN SOLUTION` blocks, graded test cells are locked and carry points.
`release_version` applies nbgrader's own preprocessors to get what a student
receives; `score` applies nbgrader's own grading rule (a graded cell earns its
points unless its output holds an error or anything on stderr).
"""
import contextlib
import os

import nbformat
from nbclient import NotebookClient

from coursekit import COURSE_ROOT
from coursekit.impl import ENV_VAR

NOTEBOOKS = COURSE_ROOT / "notebooks"


def load(path):
    return nbformat.read(str(path), as_version=4)


def has_outputs(nb) -> bool:
    return any(cell.get("outputs") or cell.get("execution_count")
               for cell in nb.cells if cell.cell_type == "code")


def release_version(nb):
    """The student's notebook: solutions replaced by stubs, hidden tests removed."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

    nb = nbformat.from_dict(nb)  # a copy
    resources = {}
    for step in (ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        nb, resources = step.preprocess(nb, resources)
    return nb


@contextlib.contextmanager
def _environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(nb, impl, *, allow_errors=False, timeout=300, extra_path=None):
    """Run every cell in a fresh kernel (cwd notebooks/) with COURSE_IMPL=impl,
    `extra_path` (where impl lives, if not in the course folder) on PYTHONPATH.
    Returns the executed copy; raises nbclient's CellExecutionError on the
    first failing cell unless allow_errors."""
    nb = nbformat.from_dict(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    env = {ENV_VAR: impl, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")])
    with _environment(**env):
        client.execute()
    return nb


def graded_cells(nb):
    return [cell for cell in nb.cells if cell.get("metadata", {}).get("nbgrader", {}).get("grade")]


def score(nb):
    """(points, max_points, [(grade_id, points, max_points)]) by nbgrader's rule."""
    from nbgrader.utils import determine_grade

    rows = []
    for cell in graded_cells(nb):
        points, max_points = determine_grade(cell)
        rows.append((cell.metadata.nbgrader["grade_id"], points or 0.0, max_points))
    return sum(r[1] for r in rows), sum(r[2] for r in rows), rows
