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
from coursekit.kernel import KERNEL_NAME, KERNELSPEC, use_course_kernel

NOTEBOOKS = COURSE_ROOT / "notebooks"
# The banner (first code cell) names the implementation and the folder it is
# imported from, so a notebook cannot silently run another checkout's model/.
NAME_FIELD, PATH_FIELD = "{impl.name}", "{impl.path}"
BANNER_START = "implementation under test: " + NAME_FIELD
BANNER = f'print(f"{BANNER_START} ({PATH_FIELD})")'


def load(path):
    return nbformat.read(str(path), as_version=4)


def has_outputs(nb) -> bool:
    return any(cell.get("outputs") or cell.get("execution_count")
               for cell in nb.cells if cell.cell_type == "code")


def standardize(nb) -> list:
    """Give a notebook the course's frame, in place: the course kernel in its
    metadata, and the banner line in its first code cell (after the line that
    makes `impl`). Idempotent; returns what it changed (empty: nothing)."""
    changes = []
    if dict(nb.metadata.get("kernelspec", {})) != KERNELSPEC:
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        changes.append(f"kernelspec -> {KERNEL_NAME}")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if code and "Implementation(" in code[0].source and PATH_FIELD not in code[0].source:
        lines = code[0].source.split("\n")
        named = [i for i, line in enumerate(lines) if BANNER_START in line]
        if named:  # the banner exists: add the path after the name
            lines[named[0]] = lines[named[0]].replace(NAME_FIELD, f"{NAME_FIELD} ({PATH_FIELD})", 1)
        else:
            at = next((i for i, line in enumerate(lines) if "= Implementation(" in line), len(lines) - 1)
            lines.insert(at + 1, BANNER)
        code[0].source = "\n".join(lines)
        changes.append("banner prints the implementation's path")
    return changes


def sync_notebooks(check=False) -> list:
    """Apply `standardize` to every notebook in notebooks/ (or, with check,
    only report). Returns ["<file>: <change>", ...]."""
    problems = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = load(path)
        changes = standardize(nb)
        problems += [f"notebooks/{path.name}: {change}" for change in changes]
        if changes and not check:
            nbformat.write(nb, str(path))
    return problems


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


def execute(nb, impl, *, allow_errors=False, timeout=300, extra_path=None, separate=False):
    """Run every cell in a fresh kernel (cwd notebooks/) with COURSE_IMPL=impl,
    `extra_path` (where impl lives, if not in the course folder) on PYTHONPATH.
    Returns the executed copy; raises nbclient's CellExecutionError on the
    first failing cell unless allow_errors. With `separate`, as autograding
    runs it (coursekit.nbcarry): the answer cells in one kernel, the graded
    cells in another that gets the answers as data."""
    nb = nbformat.from_dict(nb)
    use_course_kernel()
    import zmq
    from traitlets.config import Config
    # An encrypted connection where pyzmq can (ipykernel warns about plain TCP at every start).
    config = Config({"KernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}})
    env = {ENV_VAR: impl, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")])

    class Client(NotebookClient):
        before_cell = None

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            if self.before_cell is not None:
                self.before_cell(cell)
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    def run(notebook, folder, before_cell=None):
        client = Client(notebook, config=config, timeout=timeout, kernel_name=KERNEL_NAME,
                        allow_errors=allow_errors, resources={"metadata": {"path": str(folder)}})
        client.before_cell = before_cell
        client.execute()
        return notebook

    with _environment(**env):
        if separate:
            from coursekit import nbcarry
            return nbcarry.run_separately(nb, nb, run, run, NOTEBOOKS)
        return run(nb, NOTEBOOKS)


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
