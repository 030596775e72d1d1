"""model/ is generated from solutions/: one source of truth.

Inside a function, the lines between `### BEGIN SOLUTION` and `### END SOLUTION`
become one `raise NotImplementedError(...)` naming the lesson, the function and
the lesson text. A block at module level (private helpers that are part of the
answer) is dropped whole. Files without blocks are copied as they are.
"""
import re
from pathlib import Path

from coursekit import COURSE_ROOT
from coursekit.lessons import lesson_of_module

BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+(\w+)")


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
            if block_indent:
                out.append(f"{block_indent}{_not_implemented(out, module)}\n")
            after_dropped_block = not block_indent
            block_indent = None
    if block_indent is not None:
        raise ValueError(f"{module}.py:{block_start}: BEGIN SOLUTION never ends")
    return "".join(out)


def _not_implemented(emitted, module):
    function = next((m.group(2) for m in map(DEF.match, reversed(emitted)) if m), None)
    lesson = lesson_of_module(module)
    where = f"{function} in model/{module}.py" if function else f"model/{module}.py"
    return (f'raise NotImplementedError("{lesson.number}: implement {where} '
            f'(see tutorial/{lesson.id}/README.md)")')


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
    """Regenerate model/ from solutions/; returns the names of files rewritten."""
    model = root / "model"
    model.mkdir(exist_ok=True)
    written = []
    for name, text in expected_stubs(root / "solutions").items():
        target = model / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            written.append(name)
    return written
