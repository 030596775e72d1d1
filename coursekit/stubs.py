"""model/ is generated from solutions/: one source of truth.

Inside a function, the lines between `### BEGIN SOLUTION` and `### END SOLUTION`
become one `raise NotImplementedError(...)` naming the lesson, the function and
the lesson text. A block at module or class level (private helpers that are
part of the answer) is dropped whole. Files without blocks are copied as they are.
"""
import re
from pathlib import Path

from coursekit import COURSE_ROOT
from coursekit.lessons import lesson_of_module

BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
SCOPE = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+(\w+)")


def strip_solutions(source: str, module: str) -> str:
    """The stub text for one solution module's source."""
    out, block_indent, block_start, after_dropped_block = [], None, 0, False
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        if block_indent is None:
            if after_dropped_block and not line.strip():
                continue  # a dropped module-level block leaves no gap
            after_dropped_block = False
            begin = BEGIN.match(line)
            if begin:
                block_indent, block_start = begin.group(1), number
            elif END.match(line):
                raise ValueError(f"{module}.py:{number}: END SOLUTION without BEGIN")
            else:
                out.append(line)
        elif BEGIN.match(line):
            raise ValueError(f"{module}.py:{number}: BEGIN SOLUTION inside the block opened at line {block_start}")
        elif END.match(line):
            function = _enclosing_function(out, block_indent)
            if function:
                out.append(f"{block_indent}{_not_implemented(function, module)}\n")
            after_dropped_block = function is None
            block_indent = None
    if block_indent is not None:
        raise ValueError(f"{module}.py:{block_start}: BEGIN SOLUTION never ends")
    return "".join(out)


def _enclosing_function(emitted, indent):
    """Qualified name ("f", "Class.method") of the function whose body holds a
    block indented by `indent`, or None at module or class level. Walks back
    over the lines emitted so far, each time to the nearest line indented less
    than the scope so far."""
    width, names = len(indent), []
    for line in reversed(emitted):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#") or len(line) - len(stripped) >= width:
            continue
        width = len(line) - len(stripped)  # an if/for/with inside the scope: keep climbing
        scope = SCOPE.match(line)
        if scope and (names or scope.group(2) == "def"):
            names.insert(0, scope.group(3))
        elif scope:
            return None  # directly in a class body
    return ".".join(names) or None


def _not_implemented(function, module):
    lesson = lesson_of_module(module)
    return (f'raise NotImplementedError("{lesson.code}: implement {function} in model/{module}.py '
            f'(see tutorial/{lesson.folder}/README.md)")')


def expected_stubs(solutions: Path) -> dict:
    """{file name: stub text} for every .py file of solutions/."""
    stubs = {}
    for path in sorted(solutions.glob("*.py")):
        text = path.read_text()
        stubs[path.name] = strip_solutions(text, path.stem) if "### BEGIN SOLUTION" in text else text
    return stubs


def drift(root: Path = COURSE_ROOT) -> list:
    """Files of model/ that differ from what solutions/ generates (or are extra)."""
    model, stubs = root / "model", expected_stubs(root / "solutions")
    problems = []
    for name, text in stubs.items():
        target = model / name
        if not target.exists():
            problems.append(f"model/{name} is missing")
        elif target.read_text() != text:
            problems.append(f"model/{name} differs from solutions/{name} with its solution blocks stripped")
    for extra in sorted(set(p.name for p in model.glob("*.py")) - set(stubs)):
        problems.append(f"model/{extra} has no counterpart in solutions/")
    return problems


def write_stubs(root: Path = COURSE_ROOT) -> list:
    """Regenerate model/ from solutions/ (and delete model/ files that have no
    counterpart there); returns what changed, e.g. ["softmax.py", "removed old.py"]."""
    model = root / "model"
    model.mkdir(exist_ok=True)
    expected = expected_stubs(root / "solutions")
    changed = []
    for name, text in expected.items():
        target = model / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            changed.append(name)
    for extra in sorted(p for p in model.glob("*.py") if p.name not in expected):
        extra.unlink()
        changed.append(f"removed {extra.name}")
    return changed
