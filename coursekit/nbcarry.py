"""Grade a notebook's test cells in a kernel that no answer cell ran in.

An answer cell runs in the same Python as everything after it. In one kernel
it can rewrite what comes later: an IPython input or AST transformer that
turns the graded cells into `pass`, a wrapped `run_cell`, a `pre_run_cell`
callback, `torch` / `isinstance` / `AssertionError` rebound in the notebook's
namespace, the grader's own restore function patched, the kernel killed. No
guard inside that kernel can be trusted once student code has run there.

So autograding (`SeparateKernels`, the Execute step of
instructor/nbgrader/nbgrader_config.py) runs two kernels per notebook:

- kernel A, in a throw-away copy of the notebook's folder, runs the submitted
  answer cells and the other submitted cells they need (by name: the cells
  that bind what the answer cells read, transitively, and the first code
  cell; a graded cell only if an answer reads a name it binds: its outputs
  there are dropped). After each answer cell a generated cell
  saves that answer's names as data: numbers, strings, bools, None, lists,
  tuples and dicts of these, exact `torch.Tensor`s (torch.save). The names
  are those the instructor's answer binds (the source notebook's cell with
  the same grade_id); the student's own helpers, functions, lambdas, classes
  and objects are not carried.
- kernel B, in the real autograded folder, runs the *instructor's* cells (the
  source notebook's, not the submitted copies, which a student may edit), one
  generated cell per answer that binds the carried data (torch.load with
  weights_only=True, then every value's type checked exactly), and the graded
  cells. Nothing a student wrote in the notebook ever runs in B.

The executed notebook nbgrader saves and scores is the submission as it came
in: graded cells with kernel B's outputs, answer cells with kernel A's; the
generated cells are in neither. A graded cell that kernel B did not run (it
died) gets an error output, so it scores 0 instead of nbgrader's full marks
for a cell with no output.

What still runs in kernel B is the student's model/ code, which the graded
cells call: against it the comparison guard (coursekit.nbguard) puts
torch.allclose & co. and IPython's cell machinery back before every graded
cell; see instructor/README.md for what that does not stop.
"""
import ast
import base64
import builtins
import copy
import io
import os
import shutil
import tempfile
import threading
import time
import warnings

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_output

from coursekit import nbguard

HARVEST_DIR = ".course-answers"
MAX_BYTES = 16 * 2**20  # one answer's data; larger is not carried
MARK = "course_generated"  # metadata key of the generated cells


# ---------------------------------------------------------------------------
# Cells and names
# ---------------------------------------------------------------------------
def kind(cell):
    """'answer', 'graded', 'other' for a code cell; None for markdown."""
    if cell.cell_type != "code":
        return None
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if meta.get("solution"):
        return "answer"
    if meta.get("grade"):
        return "graded"
    return "other"


def grade_id(cell):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _tree(source):
    """The cell as Python (magics turned into calls), or None."""
    from IPython.core.inputtransformer2 import TransformerManager
    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except (SyntaxError, ValueError, TypeError):
        return None


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda,
           ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def bound_names(source):
    """Names a cell binds in the notebook's namespace (module level: not the
    locals of its functions, classes or comprehensions); None if unparsable."""
    tree = _tree(source)
    if tree is None:
        return None
    names = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        if not isinstance(node, _SCOPES):
            for child in ast.iter_child_nodes(node):
                visit(child)
    visit(tree)
    return names


def used_names(source):
    """Names a cell reads before it binds them (so it needs them from an
    earlier cell); anything read inside a function, class or comprehension
    counts. An approximation by position: a superset only makes kernel A run
    more cells. None if unparsable."""
    tree = _tree(source)
    if tree is None:
        return None
    events = []  # (line, column, name, binds?)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            events.append((node.lineno, node.col_offset, node.id, isinstance(node.ctx, ast.Store)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            events += [(node.lineno, node.col_offset, (a.asname or a.name).split(".")[0], True) for a in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            events.append((node.lineno, node.col_offset, node.name, True))
        elif isinstance(node, ast.arg):  # a parameter: bound before its function's body reads it
            events.append((node.lineno, node.col_offset, node.arg, True))
    for node in ast.walk(tree):  # x += 1 reads x first
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            events.append((node.lineno, node.col_offset - 1, node.target.id, False))
    first = {}
    for _, _, name, binds in sorted(events):
        first.setdefault(name, binds)
    return {name for name, binds in first.items() if not binds}


def carried_names(submitted_cell, source_nb, trusted_names):
    """The names one answer carries to kernel B: those the instructor's answer
    cell (same grade_id) binds; without a source notebook, those the
    submitted cell binds, less builtins and names the other cells bind."""
    gid = grade_id(submitted_cell)
    if source_nb is not None:
        for cell in source_nb.cells:
            if kind(cell) == "answer" and grade_id(cell) == gid:
                return sorted(bound_names(cell.source) or ())
    names = bound_names(submitted_cell.source) or set()
    return sorted(names - trusted_names - set(dir(builtins)))


# ---------------------------------------------------------------------------
# Kernel A: the answers
# ---------------------------------------------------------------------------
def _generated(source, **marks):
    cell = new_code_cell(source)
    cell.metadata[MARK] = marks or True
    return cell


def answers_notebook(submitted, source_nb=None):
    """(notebook for kernel A, {A cell index: submitted index},
    {answer's submitted index: (harvest file, names)}), or None when the
    notebook has no answer cell (then there is no kernel A)."""
    cells = submitted.cells
    kinds = [kind(c) for c in cells]
    answers = [i for i, k in enumerate(kinds) if k == "answer"]
    if not answers:
        return None
    code = [i for i, k in enumerate(kinds) if k is not None]
    trusted = set()
    for i in code:
        if kinds[i] != "answer":
            trusted |= bound_names(cells[i].source) or set()
    # Which non-answer cells the answers need: walk back from the last answer.
    include, wanted, everything = set(), set(), False
    for i in reversed(range(answers[-1] + 1)):
        if kinds[i] is None:
            continue
        needed = kinds[i] == "answer" or i == code[0] or everything
        if not needed:
            binds = bound_names(cells[i].source)
            needed = binds is None or bool(binds & wanted)
        if needed:
            include.add(i)
            uses = used_names(cells[i].source)
            if uses is None:
                everything = True  # cannot tell what it needs: run all before it
            else:
                wanted |= uses
    nb_a = copy.deepcopy(submitted)
    nb_a.cells, where, harvests = [], {}, {}
    for i in sorted(include):
        where[len(nb_a.cells)] = i
        nb_a.cells.append(copy.deepcopy(cells[i]))
        if kinds[i] == "answer":
            names = carried_names(cells[i], source_nb, trusted)
            path = f"{HARVEST_DIR}/{len(harvests)}.pt"
            harvests[i] = (path, names)
            nb_a.cells.append(_generated(
                f'__import__("coursekit.nbcarry").nbcarry.dump({path!r}, {names!r}, globals())'
                "  # inserted by the grader", harvest=path))
    return nb_a, where, harvests


class NotData(TypeError):
    pass


_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _as_data(value, depth=0):
    """A copy of value made of plain data only, or NotData."""
    import torch
    if depth > 32:
        raise NotData("nested too deeply")
    kind_ = type(value)
    if kind_ in _SCALARS:
        return value
    if kind_ in (list, tuple):
        return kind_(_as_data(v, depth + 1) for v in value)
    if kind_ is dict:
        copied = {}
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise NotData(f"a dict key of type {type(key).__name__}")
            copied[key] = _as_data(item, depth + 1)
        return copied
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_meta:
            raise NotData(f"a {value.layout} tensor")
        return value.as_subclass(torch.Tensor).detach().cpu().clone()
    for base in (bool, int, float, complex, str):  # a numpy float64, an IntEnum: as the plain number
        if isinstance(value, base):
            return base(value)
    raise NotData(kind_.__name__)


def dump(path, names, namespace):
    """In kernel A, after an answer cell: save the answer's names that hold
    data (the rest are not carried: kernel B will not have them)."""
    import torch
    values, skipped = {}, []
    for name in names:
        if name not in namespace:
            continue
        try:
            values[name] = _as_data(namespace[name])
        except NotData as why:
            skipped.append(f"{name} ({why})")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(values, path)
    if skipped:
        print("not carried to the graded cells (only data is):", ", ".join(skipped))


# ---------------------------------------------------------------------------
# Kernel B: the graded cells
# ---------------------------------------------------------------------------
def _check(value, depth=0):
    import torch
    if depth > 32:
        raise NotData("nested too deeply")
    kind_ = type(value)
    if kind_ in _SCALARS or kind_ is torch.Tensor:
        return
    if kind_ in (list, tuple):
        for v in value:
            _check(v, depth + 1)
        return
    if kind_ is dict:
        for k, v in value.items():
            if type(k) not in _SCALARS:
                raise NotData(f"a dict key of type {type(k).__name__}")
            _check(v, depth + 1)
        return
    raise NotData(kind_.__name__)


def load(blob):
    """The carried values of one answer ({name: value}); {} if the blob is
    missing or anything but plain data."""
    import torch
    if not blob:
        return {}
    try:
        with warnings.catch_warnings():  # a forged file's odd pickle protocol
            warnings.simplefilter("ignore")
            values = torch.load(io.BytesIO(base64.b64decode(blob)), weights_only=True)
        if type(values) is not dict or any(type(k) is not str for k in values):
            return {}
        _check(values)
    except Exception:  # a forged or corrupt file: nothing is carried
        return {}
    return values


def bind(namespace, blob, names):
    """In kernel B, where the answer cell stood: bind its carried names, and
    unbind those it did not carry (as if the answer had not bound them)."""
    values = load(blob)
    for name in names:
        if name in values:
            namespace[name] = values[name]
        else:
            namespace.pop(name, None)


def graded_notebook(submitted, source_nb, names):
    """(notebook for kernel B, {B cell index: submitted index}). The
    instructor's cells come from source_nb when given (else the submitted
    ones), the graded cells from the submission (nbgrader has restored them
    from the gradebook), each answer is a generated bind cell whose data
    `fill_bind_cell` puts in just before it runs (kernel A may still run)."""
    base = source_nb if source_nb is not None else submitted
    graded_at = {grade_id(c): i for i, c in enumerate(submitted.cells) if kind(c) == "graded"}
    answer_at = {grade_id(c): i for i, c in enumerate(submitted.cells) if kind(c) == "answer"}
    others = [i for i, c in enumerate(submitted.cells) if kind(c) == "other"]
    nb_b = copy.deepcopy(submitted)
    nb_b.cells, where = [_generated(nbguard.CAPTURE)], {}
    for cell in base.cells:
        k = kind(cell)
        if k == "other":
            # the instructor's cell; its outputs go to an identical submitted cell, if any
            same = next((i for i in others if submitted.cells[i].source == cell.source), None)
            if same is not None:
                others.remove(same)
                where[len(nb_b.cells)] = same
            nb_b.cells.append(_generated(cell.source, trusted=True))
        elif k == "answer":
            gid = grade_id(cell)
            i = answer_at.get(gid)
            carried = names.get(i) if i is not None else sorted(bound_names(cell.source) or ())
            nb_b.cells.append(_generated(_bind_source(None, carried), answer=gid, index=i, names=carried))
        elif k == "graded" and grade_id(cell) in graded_at:
            i = graded_at.pop(grade_id(cell))
            nb_b.cells.append(_generated(nbguard.RESTORE))
            where[len(nb_b.cells)] = i
            nb_b.cells.append(copy.deepcopy(submitted.cells[i]))
    return nb_b, where


def _bind_source(blob, names):
    return (f'__import__("coursekit.nbcarry").nbcarry.bind(globals(), {blob!r}, {names!r})'
            "  # inserted by the grader")


def fill_bind_cell(cell, blobs):
    """Put the carried data into a bind cell of kernel B's notebook (no-op for
    any other cell). `blobs` is called (it waits for kernel A) only here."""
    marks = cell.get("metadata", {}).get(MARK)
    if isinstance(marks, dict) and "answer" in marks:
        cell.source = _bind_source(blobs().get(marks["index"]), list(marks["names"]))


def merge(submitted, runs):
    """The submission with each cell's outputs from the kernel that ran it:
    runs is [(executed notebook, {its index: submitted index})], later runs
    win. A graded cell no kernel ran gets an error (0 points)."""
    result = copy.deepcopy(submitted)
    ran = set()
    for nb, where in runs:
        for j, i in where.items():
            executed = nb.cells[j]
            result.cells[i].outputs = executed.get("outputs", [])
            result.cells[i].execution_count = executed.get("execution_count")
            if executed.get("execution_count") is not None or executed.get("outputs"):
                ran.add(i)
    for i, cell in enumerate(result.cells):
        if kind(cell) == "graded" and i not in ran:
            cell.outputs = [new_output("error", ename="NotRun", evalue="the grader could not run this cell",
                                       traceback=["NotRun: the grading kernel stopped before this cell ran"])]
    return result


def read_blobs(folder, harvests):
    """{answer's submitted index: base64 data} from kernel A's folder."""
    blobs = {}
    for i, (path, _) in harvests.items():
        full = os.path.join(folder, path)
        try:
            # kernel A wrote it: a link out of its folder (the gradebook, say) is not followed
            if os.path.realpath(full) != os.path.join(os.path.realpath(folder), path) \
                    or not os.path.isfile(full) or os.path.getsize(full) > MAX_BYTES:
                continue
            with open(full, "rb") as f:
                blobs[i] = base64.b64encode(f.read(MAX_BYTES + 1)).decode()
        except OSError:
            continue
    return blobs


def run_separately(submitted, source_nb, run_answers, run_graded, path):
    """The whole scheme. `run_answers(nb, folder)` executes a notebook in a
    fresh kernel whose working folder is `folder` and returns it (it may
    raise); `run_graded(nb, folder, before_cell)` does the same, calling
    `before_cell(cell)` before it executes each cell. Kernel A runs in a
    thread while kernel B starts and runs the cells before the first answer;
    B waits for A only at its first bind cell. Returns the merged notebook."""
    plan = answers_notebook(submitted, source_nb)
    runs, names, done = [], {}, {}
    thread = None
    if plan is not None:
        nb_a, where_a, harvests = plan
        names = {i: n for i, (_, n) in harvests.items()}
        scratch = tempfile.mkdtemp(prefix="course-answers-")
        # Three levels down, as autograded/<student>/<lesson>: a path walk up from it ends in scratch.
        folder = os.path.join(scratch, "answers", "kernel", os.path.basename(os.path.abspath(path)) or "nb")

        def kernel_a():
            started = time.perf_counter()
            executed = nb_a
            try:
                shutil.copytree(path, folder, symlinks=True, ignore=shutil.ignore_patterns(HARVEST_DIR))
                executed = run_answers(nb_a, folder)
            except Exception as err:  # the student's kernel died or failed: what it saved so far counts
                print(f"nbcarry: the answers' kernel stopped: {type(err).__name__}: {str(err)[-500:]}")
            finally:
                done["blobs"] = read_blobs(folder, harvests)
                done["run"] = (executed, where_a)
                shutil.rmtree(scratch, ignore_errors=True)
                _debug(f"answers' kernel: {len(nb_a.cells)} cells, {time.perf_counter() - started:.1f} s")

        thread = threading.Thread(target=kernel_a, name="nbcarry-answers", daemon=True)
        thread.start()

    def blobs():
        if thread is not None:
            thread.join()
        return done.get("blobs", {})

    nb_b, where_b = graded_notebook(submitted, source_nb, names)
    started = time.perf_counter()
    try:
        nb_b = run_graded(nb_b, path, lambda cell: fill_bind_cell(cell, blobs))
    except (DeadKernelError, CellTimeoutError) as err:  # the cells it did not reach score 0 (merge)
        print(f"nbcarry: the graded cells' kernel stopped: {type(err).__name__}: {str(err)[:200]}")
    finally:
        blobs()  # kernel A is done before anything returns
    _debug(f"graded cells' kernel: {len(nb_b.cells)} cells, {time.perf_counter() - started:.1f} s")
    if "run" in done:
        runs.append(done["run"])
    runs.append((nb_b, where_b))
    return merge(submitted, runs)


def _debug(line):
    if os.environ.get("COURSE_GRADE_DEBUG"):
        print("nbcarry:", line)
