"""Keep a notebook's answer cells from rigging its graded cells.

Graded cells compare the student's results with torch.allclose,
torch.testing.assert_close, torch.equal... An answer cell that replaces one of
those (`torch.allclose = lambda *a, **k: True`) would turn every later check
into a pass. At autograding, `guard_graded_cells` (an nbgrader sanitize step,
see instructor/nbgrader/nbgrader_config.py) inserts two kinds of ungraded
cells: one at the top that records the comparison functions before any student
code runs, and one before every graded cell that puts them back. The graded
cells themselves are not touched, so their checksums still match.
"""
import importlib

from nbformat.v4 import new_code_cell

from coursekit.testing import COMPARISONS

_originals = {}


def capture():
    """Record the comparison functions (run before any student code)."""
    for module_name, names in COMPARISONS.items():
        module = importlib.import_module(module_name)
        for name in names:
            _originals[module_name, name] = getattr(module, name)


def restore():
    """Put back any comparison function replaced since capture()."""
    for (module_name, name), original in _originals.items():
        module = importlib.import_module(module_name)
        if getattr(module, name) is not original:
            setattr(module, name, original)


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
