"""Read a submission's code for what an honest exercise never needs.

A flag does not change a score: it goes into grades.csv (the `flags`
column) and the instructor's report, never into the student's feedback, and
says what to look at. Reasons, each with file and line:

- frame or code-object introspection (sys._getframe, inspect frames,
  f_back / f_globals / f_locals, __code__, __closure__, gc.get_objects/referrers)
- pytest's or pluggy's internals (_pytest, pluggy, pytest hooks or plugins)
- signal, ctypes, atexit, faulthandler
- processes: fork, exec*, spawn*, os.system, os.kill, subprocess, multiprocessing, pty
- writes to sys.modules, to attributes of imported modules (torch.x = ...,
  setattr(module, ...)), or to builtins
- get_ipython() and IPython machinery
- exec / eval / compile of strings, __import__ / importlib of computed names
- paths outside the working folder ("..", absolute paths, Path.parents, __file__ walks)
- torch internals that switch off dispatch (torch._C, torch.overrides, _python_dispatch)
- raw file descriptors (os.write, os.dup2, /proc)
"""
import ast
from pathlib import Path

MODULES = {
    "_pytest": "pytest internals", "pluggy": "pluggy (pytest's plugin system)", "pytest": "pytest itself",
    "signal": "signals", "ctypes": "ctypes", "atexit": "atexit handlers", "faulthandler": "faulthandler",
    "subprocess": "subprocesses", "multiprocessing": "processes", "pty": "processes", "inspect": "introspection",
    "gc": "the garbage collector's object lists", "IPython": "IPython machinery", "sqlite3": "databases",
    "socket": "the network", "shutil": "file-tree operations", "importlib": "imports by computed name",
    "builtins": "builtins", "threading": "threads", "sys": None, "os": None,
}
ATTRIBUTES = {
    "_getframe": "frame introspection", "f_back": "frame introspection", "f_globals": "frame introspection",
    "f_locals": "frame introspection", "f_code": "frame introspection", "tb_frame": "frame introspection",
    "__code__": "code objects", "__closure__": "closures", "__globals__": "function globals",
    "__defaults__": "function defaults", "__kwdefaults__": "function defaults", "__wrapped__": "unwrapping guards",
    "fork": "fork", "forkpty": "fork", "system": "os.system", "popen": "os.popen", "kill": "signals",
    "killpg": "signals", "execv": "exec", "execve": "exec", "execvp": "exec", "execl": "exec", "spawnv": "spawn",
    "posix_spawn": "spawn", "setsid": "sessions", "dup2": "raw file descriptors", "write": None,
    "modules": None, "get_ipython": "IPython machinery", "_C": "torch internals",
    "overrides": "torch function overrides", "_python_dispatch": "torch dispatch internals",
    "_exit": "os._exit",
}
CALLS = {"exec": "exec of code", "eval": "eval of code", "compile": "compile of code",
         "__import__": "imports by computed name", "get_ipython": "IPython machinery",
         "globals": "writes to globals", "breakpoint": "the debugger"}


def scan_source(source: str, filename: str):
    """[reason] for one file."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as err:
        return [f"{filename}:{err.lineno}: does not parse"]
    found = []

    def flag(node, reason):
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {reason}")

    imported = set()
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                imported.add(top)
                if MODULES.get(top):
                    flag(node, f"imports {name} ({MODULES[top]})")
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                flag(node, "imports from outside its package")
        elif isinstance(node, ast.Attribute):
            reason = ATTRIBUTES.get(node.attr)
            if reason:
                flag(node, f"uses .{node.attr} ({reason})")
            elif node.attr == "write" and isinstance(node.value, ast.Name) and node.value.id == "os":
                flag(node, "uses os.write (raw file descriptors)")
            elif node.attr == "modules" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                flag(node, "touches sys.modules")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name in CALLS:
                flag(node, f"calls {name}() ({CALLS[name]})")
            if name in ("setattr", "delattr") and node.args and not _is_self(node.args[0]):
                flag(node, f"calls {name}() on something other than self (patching?)")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and _root_name(sub) in imported | {"torch", "math", "numpy",
                                                                                           "np", "F", "builtins"}:
                        flag(sub, f"assigns to {ast.unparse(sub)} (an attribute of an imported module)")
                    elif isinstance(sub, ast.Subscript) and ast.unparse(sub.value).endswith("modules"):
                        flag(sub, "writes to sys.modules")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if "\n" not in text and (text.startswith(("/", "~")) and len(text) > 1 or "../" in text or text == ".."):
                flag(node, f"names a path outside the working folder ({text[:40]!r})")
            elif any(word in text for word in ("/proc/", "gradebook", "solutions", "submitted", "snapshots")):
                flag(node, f"names {text[:40]!r}")
        if isinstance(node, ast.Attribute) and node.attr in ("parents", "parent") and "__file__" in ast.unparse(node):
            flag(node, "walks up from __file__ (paths outside the working folder)")
    return sorted(set(found), key=lambda r: (r.split(":")[0], int(r.split(":")[1]) if r.split(":")[1].isdigit()
                                             else 0, r))


def _is_self(node):
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _root_name(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def scan_package(folder: Path, baseline: Path = None):
    """Flags for every .py file of a student's model/ folder. Lines the
    reference or the stubs also have (baseline folder) are not flagged."""
    baseline = baseline or (Path(__file__).resolve().parent.parent / "solutions")
    flags = []
    for path in sorted(Path(folder).glob("*.py")):
        known = set()
        for reference in (baseline / path.name,):
            if reference.exists():
                known |= {r.split(":", 2)[2] for r in scan_source(reference.read_text(), path.name)}
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError):
            flags.append(f"{path.name}: unreadable")
            continue
        flags += [r for r in scan_source(source, path.name) if r.split(":", 2)[2] not in known]
    return flags


def scan_notebook_sources(sources, label="notebook"):
    flags = []
    for index, source in enumerate(sources):
        flags += [f"cell {index}: {r.split(':', 1)[1]}" for r in scan_source(_strip_magics(source), label)]
    return flags


def _strip_magics(source):
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
