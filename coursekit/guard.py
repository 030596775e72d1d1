"""Notice (and undo) code under test that rewires what the tests rely on.

`Snapshot` records, before any student code runs, every name of the watched
namespaces (torch, torch.Tensor, torch.nn.functional, torch.testing, numpy,
math, builtins, the course's helpers and references, pytest's and pluggy's
internals, the grading plugin) and, for each Python function among them, its
code object, defaults, keyword defaults and closure cells. `check()` compares,
puts every original back and returns what was replaced, so a test that ran
tampered code fails with a message naming it.

Code in the same process can always dig deeper than a check written in
Python; this closes the easy routes (rebinding, swapping `__code__`, shadowing
a Tensor method, replacing a module in sys.modules), and the static scan
(coursekit.scan) flags the code that tries.
"""
import importlib
import sys
import types

MODULES = ("torch", "torch.nn.functional", "torch.testing", "torch.linalg", "torch.special", "torch.autograd",
           "torch.nn.init", "numpy", "numpy.testing", "math", "builtins", "operator", "functools",
           "coursekit.testing", "coursekit.reference", "coursekit.impl", "coursekit.guard", "coursekit.policy",
           "coursekit.pytest_plugin", "pluggy")
PREFIXES = ("_pytest.", "pluggy.", "coursekit.")
# Names pytest itself rebinds around every test.
MUTABLE = {("_pytest.assertion.util", "_reprcompare"), ("_pytest.assertion.util", "_assertion_pass"),
           ("_pytest.assertion.util", "_config")}
CLASSES = ("torch.Tensor", "torch.nn.Module", "torch.autograd.Function")
FUNCTION_PARTS = ("__code__", "__defaults__", "__kwdefaults__")


def _resolve(dotted):
    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _function_state(fn):
    cells = tuple(cell.cell_contents if _filled(cell) else _EMPTY for cell in (fn.__closure__ or ()))
    return tuple(getattr(fn, part) for part in FUNCTION_PARTS) + (cells,)


class _Empty:
    pass


_EMPTY = _Empty()


def _filled(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _inner_function(value):
    """The Python function behind a watched value, if any."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    elif isinstance(value, property):
        value = value.fget
    return value if isinstance(value, types.FunctionType) else None


# Names that well-kept libraries add to a watched namespace when a test imports
# them: not tampering, and deleting them would break the library.
# transformers' modeling utilities add torch.nn.Module.smart_apply (the walk its
# weight initialisation uses) the first time a model is built.
LIBRARY_ADDITIONS = frozenset({"torch.nn.Module.smart_apply"})


class Snapshot:
    def __init__(self, extra_modules=()):
        self.namespaces = []   # (label, dict, {name: value}, watch additions)
        self.functions = {}    # id(fn) -> (label, fn, state)
        self.modules = {}      # sys.modules name -> module
        self.fast = []         # (fn, code, defaults, kwdefaults, closure, cell contents): the quick check
        self._ids = None
        seen = set()
        names = [m for m in (*MODULES, *extra_modules) if m]
        names += [m for m in list(sys.modules) if m.startswith(PREFIXES)]
        for name in dict.fromkeys(names):
            try:
                module = importlib.import_module(name)
            except Exception:
                continue
            self.modules[name] = module
            self._watch(name, module, vars(module), additions=False, seen=seen)
            if name.startswith(PREFIXES) or name in ("pluggy",):
                for attr, value in list(vars(module).items()):
                    if isinstance(value, type) and value.__module__ == name:
                        self._watch(f"{name}.{attr}", value, value.__dict__, additions=True, seen=seen)
        for dotted in CLASSES:
            cls = _resolve(dotted)
            self._watch(dotted, cls, cls.__dict__, additions=True, seen=seen)

    def _watch(self, label, owner, namespace, additions, seen):
        if id(owner) in seen:  # (owner, not the namespace: a class's mappingproxy is a fresh object)
            return
        seen.add(id(owner))
        saved = {name: value for name, value in namespace.items()
                 if _watched(value) and (label, name) not in MUTABLE}
        self.namespaces.append((label, owner, saved, frozenset(namespace) if additions else None))
        for name, value in namespace.items():
            fn = _inner_function(value)
            if fn is not None and id(fn) not in self.functions:
                self.functions[id(fn)] = (f"{label}.{name}", fn, _function_state(fn))
                kwdefaults = fn.__kwdefaults__
                self.fast.append((fn, fn.__code__, fn.__defaults__, dict(kwdefaults) if kwdefaults else kwdefaults,
                                  fn.__closure__, self.functions[id(fn)][2][-1]))

    def watch_module_globals(self, label, module):
        """Also watch a test module's own names for the watched objects."""
        if self._ids is None:
            self._ids = {id(value) for _, _, saved, _ in self.namespaces for value in saved.values()}
        saved = {n: v for n, v in vars(module).items() if id(v) in self._ids}
        self.namespaces.append((label, module, saved, None))

    def check(self):
        """Put back whatever changed; returns what was replaced (sorted names)."""
        changed = []
        for name, module in self.modules.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module
                changed.append(f"sys.modules[{name!r}]")
        for label, owner, saved, known in self.namespaces:
            current = owner.__dict__ if isinstance(owner, type) else vars(owner)
            get = current.get
            for name, value in saved.items():
                now = get(name, _EMPTY)
                if now is not value:
                    if _torch_wrapper_of(now, value):
                        saved[name] = now  # torch's own lazy wrapping (torch._dynamo wraps manual_seed)
                        continue
                    changed.append(f"{label}.{name}")
                    _set(owner, name, value)
            if known is not None:
                for name in current.keys() - known:
                    if _watched(current[name]) and f"{label}.{name}" not in LIBRARY_ADDITIONS:
                        changed.append(f"{label}.{name} (added)")
                        _delete(owner, name)
        suspects = set()
        for fn, code, defaults, kwdefaults, closure, contents in self.fast:
            if fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ != kwdefaults:
                suspects.add(id(fn))
            elif closure:
                for cell, value in zip(closure, contents):
                    try:
                        if cell.cell_contents is not value:
                            suspects.add(id(fn))
                    except ValueError:
                        if value is not _EMPTY:
                            suspects.add(id(fn))
        for label, fn, state in (self.functions[i] for i in suspects):
            if _function_state(fn) != state:
                changed.append(f"{label} (its code, defaults or closure)")
                *parts, cells = state
                for part, value in zip(FUNCTION_PARTS, parts):
                    try:
                        setattr(fn, part, value)
                    except (TypeError, ValueError):
                        pass
                for cell, value in zip(fn.__closure__ or (), cells):
                    if value is not _EMPTY:
                        cell.cell_contents = value
        return sorted(set(changed))


_TORCH_DIR = None


def _torch_wrapper_of(new, original):
    """Is `new` a wrapper that torch itself put around `original`?"""
    global _TORCH_DIR
    if _TORCH_DIR is None:
        import os
        import torch
        _TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
    code = getattr(new, "__code__", None)
    return (getattr(new, "__wrapped__", None) is original and code is not None
            and code.co_filename.startswith(_TORCH_DIR))


def _watched(value):
    """Functions, classes and descriptors: what a test calls. Plain data
    (caches, settings) changes legitimately and is left alone."""
    return callable(value) or isinstance(value, (staticmethod, classmethod, property, types.ModuleType))


def _set(owner, name, value):
    try:
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)
    except (TypeError, AttributeError):
        pass


def _delete(owner, name):
    try:
        delattr(owner, name)
    except (TypeError, AttributeError):
        pass



class PluginWatch:
    """The plugins and hook implementations registered when collection ends;
    anything registered later came from code under test."""

    def __init__(self, pluginmanager):
        self.pm = pluginmanager
        self.plugins = {id(p) for p in pluginmanager.get_plugins()}
        self.hooks = self._hookimpls()

    def _hookimpls(self):
        found = {}
        for name in dir(self.pm.hook):
            caller = getattr(self.pm.hook, name, None)
            get = getattr(caller, "get_hookimpls", None)
            if get:
                found[name] = tuple(id(impl.function) for impl in get())
        return found

    def check(self):
        changed = []
        for plugin in list(self.pm.get_plugins()):
            if id(plugin) not in self.plugins:
                changed.append(f"registered a pytest plugin ({type(plugin).__name__})")
                try:
                    self.pm.unregister(plugin)
                except Exception:
                    pass
        now = self._hookimpls()
        for name, impls in now.items():
            if impls != self.hooks.get(name, ()):
                changed.append(f"changed the implementations of pytest hook {name}")
        return changed
