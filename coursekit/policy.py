"""Forbidden shortcuts: what an exercise must not call, lesson by lesson.

An exercise that asks for attention written by hand is not done by calling
PyTorch's own attention. While a test runs, a TorchFunctionMode sees every
torch function called; when one listed here for the lesson is called and the
nearest caller outside torch is the implementation under test (model/), the
call is recorded and the test fails with a message naming it. The tests' own
reference computations call the same functions freely: their callers are
test files and coursekit, not model/.

A call can reach PyTorch's kernels without passing a torch function:
`torch.ops.aten._softmax(...)`, or any call under `torch._C.DisableTorchFunction()`.
Every such call still dispatches an aten op, so for the lessons in
FORBIDDEN_OPS a TorchDispatchMode (OpWatch) watches one level down, with the
same rule for who the caller is. The ops are the fused kernels themselves
(an SDPA backend, `_softmax`), never the primitives a hand-written version is
made of (matmul, exp, max, sum).

The course's references (coursekit.reference) are forbidden to the code
under test in every lesson. The table is the instructor's to edit: keys are
lesson numbers, values dotted names of torch functions or Tensor methods.
Functions a name does not resolve to on this PyTorch are skipped.
"""
import os
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SDPA = ("torch.nn.functional.scaled_dot_product_attention", "torch._C._nn.scaled_dot_product_attention",
        "torch.nn.functional.multi_head_attention_forward")
FLEX = ("torch.nn.attention.flex_attention.flex_attention",)
SOFTMAX = ("torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax", "torch.special.softmax",
           "torch._softmax", "torch.Tensor.logsumexp", "torch.logsumexp", "torch.special.logsumexp")

FORBIDDEN = {
    "L01": SDPA,
    "L02": SOFTMAX,
    "L05": SDPA + FLEX,
}
# The same shortcuts as aten ops (torch.ops.aten.<name>): what the calls above dispatch to.
SDPA_OPS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
            "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward",
            "_efficient_attention_forward")
SOFTMAX_OPS = ("_softmax", "_log_softmax", "_safe_softmax", "logsumexp")
FORBIDDEN_OPS = {
    "L01": SDPA_OPS,
    "L02": SOFTMAX_OPS,
    "L05": SDPA_OPS,
}
EVERYWHERE = ()  # torch functions forbidden in every lesson (the references are handled below)
REFERENCE_MODULE = "coursekit.reference"


def _resolve(dotted):
    module_name, _, attr = dotted.rpartition(".")
    try:
        owner = torch
        for part in module_name.split(".")[1:]:
            owner = getattr(owner, part)
        return getattr(owner, attr)
    except AttributeError:
        try:
            import importlib
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            return None


def forbidden_for(lesson_number):
    """{function: dotted name} forbidden in the lesson (L01, L02, ...)."""
    found = {}
    for dotted in (*FORBIDDEN.get(lesson_number, ()), *EVERYWHERE):
        fn = _resolve(dotted)
        if fn is not None:
            found[fn] = dotted
            wrapped = getattr(fn, "__wrapped__", None)
            if wrapped is not None:
                found[wrapped] = dotted
    return found


def forbidden_ops_for(lesson_number):
    """{aten op packet: "aten.<name>"} forbidden in the lesson; names this PyTorch lacks are skipped."""
    found = {}
    for name in FORBIDDEN_OPS.get(lesson_number, ()):
        try:
            found[getattr(torch.ops.aten, name)] = f"aten.{name}"
        except (AttributeError, RuntimeError):
            pass
    return found


TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS_FILE = os.path.abspath(__file__)


def _student_caller(frame, student_dirs):
    """The file of the nearest caller outside torch (and outside this module's watches), if it
    lies in student_dirs."""
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or os.path.abspath(frame.f_code.co_filename) == _THIS_FILE):
        frame = frame.f_back
    if frame is None:
        return None
    filename = frame.f_code.co_filename
    return filename if filename.startswith(student_dirs) else None


_TORCH_TYPES = (torch.Tensor, torch.nn.Parameter)


class ForbiddenCall(BaseException):
    """Raised in the code under test when it calls a forbidden function (a
    BaseException, so `except Exception:` in that code does not swallow it)."""


def _refuse_from_student(name, frame, student_dirs, calls):
    """Both watches' rule: a forbidden `name` reached from `frame` is recorded in `calls` and
    refused (ForbiddenCall) when the nearest caller outside torch lies in student_dirs."""
    where = _student_caller(frame, student_dirs)
    if where:
        calls.append(f"{name} (called from {os.path.basename(where)})")
        raise ForbiddenCall(f"{name} is not allowed in this exercise: write it by hand")


class ShortcutWatch(TorchFunctionMode):
    """Records forbidden calls made from `student_dirs` while active."""

    def __init__(self, forbidden, student_dirs):
        super().__init__()
        self.forbidden = forbidden
        self.student_dirs = tuple(student_dirs)
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for kind in types:
            # A Tensor subclass of the code under test can answer every
            # comparison as it likes: results must be torch's own tensors.
            if kind not in _TORCH_TYPES and not kind.__module__.startswith("torch"):
                note = f"a torch.Tensor subclass of the code under test ({kind.__qualname__})"
                if note not in self.calls:
                    self.calls.append(note)
        name = self.forbidden.get(func)
        if name is not None:
            _refuse_from_student(name, sys._getframe(1), self.student_dirs, self.calls)
        return func(*args, **(kwargs or {}))


class OpWatch(TorchDispatchMode):
    """Records forbidden aten ops dispatched from `student_dirs` while active (see the module's
    docstring: the calls that skip the TorchFunctionMode)."""

    def __init__(self, forbidden_ops, student_dirs):
        super().__init__()
        self.forbidden = forbidden_ops
        self.student_dirs = tuple(student_dirs)
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = self.forbidden.get(func.overloadpacket)
        if name is not None:
            _refuse_from_student(name, sys._getframe(1), self.student_dirs, self.calls)
        return func(*args, **(kwargs or {}))


_REFERENCE_WATCH = {"dirs": ("\0",), "calls": None}


def guard_references(student_dirs, calls):
    """Make coursekit.reference's public functions refuse callers in
    `student_dirs`, recording each refused call in `calls`. The functions are
    wrapped once per process; later calls only change whom they refuse."""
    import functools
    import importlib
    _REFERENCE_WATCH.update(dirs=tuple(student_dirs), calls=calls)
    module = importlib.import_module(REFERENCE_MODULE)
    for name, fn in list(vars(module).items()):
        if (name.startswith("_") or isinstance(fn, type) or not callable(fn)
                or getattr(fn, "__module__", "") != module.__name__ or getattr(fn, "__course_guarded__", False)):
            continue

        def wrapper(*args, __fn=fn, __name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(_REFERENCE_WATCH["dirs"]):
                if _REFERENCE_WATCH["calls"] is not None:
                    _REFERENCE_WATCH["calls"].append(f"{REFERENCE_MODULE}.{__name} (called from "
                                                     f"{os.path.basename(caller)})")
                raise ForbiddenCall(f"the course's reference {__name} is not the exercise's to call")
            return __fn(*args, **kwargs)
        wrapped = functools.wraps(fn)(wrapper)
        wrapped.__course_guarded__ = True
        setattr(module, name, wrapped)


_cache = {}


def cached_forbidden_for(lesson_number):
    if lesson_number not in _cache:
        _cache[lesson_number] = forbidden_for(lesson_number)
    return _cache[lesson_number]


def cached_forbidden_ops_for(lesson_number):
    key = ("ops", lesson_number)
    if key not in _cache:
        _cache[key] = forbidden_ops_for(lesson_number)
    return _cache[key]
