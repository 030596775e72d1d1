"""Keep a student's model/ code from rigging the graded cells that call it.

Answer cells never run in the kernel of the graded cells (coursekit.nbcarry),
but the student's model/ does: the graded cells call it. Graded cells compare
its results with torch.allclose, torch.testing.assert_close, torch.equal... A
module that replaces one of those (`torch.allclose = lambda *a, **k: True`), or
adds an IPython input/AST transformer or a `pre_run_cell` callback, or wraps
the shell's `run_cell`, would turn every later check into a pass. The graded
kernel's notebook (coursekit.nbcarry.graded_notebook) therefore starts with a
cell that records all of these before any student code is imported, and puts
them back in a cell before every graded cell. This is a guard inside the
kernel, so code running there can defeat it (see instructor/README.md); it
stops the direct patches. `guard_graded_cells` inserts the same cells into a
one-kernel run (an nbgrader sanitize step, for a config without
SeparateKernels).
"""
import importlib

from nbformat.v4 import new_code_cell

from coursekit.testing import COMPARISONS

_originals = {}
_shell = {}
# The shell's cell machinery: methods an instance attribute or a class patch can replace.
SHELL_METHODS = ("run_cell", "run_cell_async", "transform_cell", "transform_ast", "run_ast_nodes", "run_code",
                 "should_run_async", "_run_cell", "showtraceback", "_showtraceback", "ex", "ev")
SHELL_LISTS = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers")
EVENTS = ("pre_run_cell", "pre_execute")  # callbacks that run before a cell (post_* run after it: harmless)


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def capture():
    """Record the comparison functions and the shell's machinery (run before
    any student code)."""
    for module_name, names in COMPARISONS.items():
        module = importlib.import_module(module_name)
        for name in names:
            _originals[module_name, name] = getattr(module, name)
    shell = _ipython()
    if shell is not None:
        _shell["instance"] = {name: shell.__dict__[name] for name in SHELL_METHODS if name in shell.__dict__}
        _shell["classes"] = {(cls, name): cls.__dict__[name] for cls in type(shell).__mro__
                             for name in SHELL_METHODS if name in cls.__dict__}
        _shell["lists"] = {name: list(getattr(shell, name)) for name in SHELL_LISTS}
        _shell["events"] = {name: list(shell.events.callbacks.get(name, [])) for name in EVENTS}
        _shell["compile"] = shell.compile


def restore():
    """Put back anything of the above replaced since capture()."""
    for (module_name, name), original in _originals.items():
        module = importlib.import_module(module_name)
        if getattr(module, name) is not original:
            setattr(module, name, original)
    shell = _ipython()
    if shell is None or not _shell:
        return
    for name in SHELL_METHODS:
        if name in shell.__dict__ and shell.__dict__[name] is not _shell["instance"].get(name):
            del shell.__dict__[name]
        if name in _shell["instance"]:
            shell.__dict__[name] = _shell["instance"][name]
    for cls in type(shell).__mro__:
        for name in SHELL_METHODS:
            original = _shell["classes"].get((cls, name))
            if cls.__dict__.get(name) is not original:
                if original is None:
                    delattr(cls, name)
                else:
                    setattr(cls, name, original)
    for name, items in _shell["lists"].items():
        getattr(shell, name)[:] = items
    for name, items in _shell["events"].items():
        shell.events.callbacks[name][:] = items
    shell.compile = _shell["compile"]


CAPTURE = '__import__("coursekit.nbguard").nbguard.capture()  # inserted by the grader'
RESTORE = '__import__("coursekit.nbguard").nbguard.restore()  # inserted by the grader'


def guard_graded_cells(nb, resources):
    """nbgrader/nbconvert preprocessor (a plain callable is registered as is)."""
    cells = [new_code_cell(CAPTURE)]
    for cell in nb.cells:
        metadata = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and metadata.get("grade") and not metadata.get("solution"):
            cells.append(new_code_cell(RESTORE))
        cells.append(cell)
    nb.cells = cells
    return nb, resources
