"""The course's pytest plugin (loaded by the root conftest.py).

- `--impl PKG` (or $COURSE_IMPL; default `model`) picks the implementation
  package under test; the `impl` fixture hands it to tests. A comma-separated
  list runs every test once per package (the known-wrong check uses this).
- Markers: `basic` / `advanced` come from the file name (test_basic.py,
  test_advanced.py); `gpu` tests skip without CUDA; `triton` tests skip without
  Triton, and run on CPU tensors under the Triton interpreter when there is no
  GPU; `slow` marks tests a student may deselect with -m "not slow".
- `device` parametrises a test over cpu and (when present) cuda.
- `--course-report FILE` writes every test's outcome (and its points, from
  the `points(n)` marker, default 1) as JSON, rewritten after each test, so a
  run that dies still leaves what it had, plus the test that was running.
- `--course-report-fd N` (the grader) streams the same outcomes as JSON lines
  to file descriptor N, a pipe the grader reads (coursekit.runner).
- `--course-timeout SECONDS` fails a test (setup, call or teardown) that runs
  longer, so one infinite loop costs one test, not the run.
- Tampering guard (coursekit.guard): code under test that rebinds or rewrites
  (`__code__`, defaults, closures) what the tests rely on, in torch, numpy,
  math, builtins, the course's helpers, pytest or pluggy, or registers a pytest
  plugin or hook, fails the test it ran in, and the originals are put back.
- Forbidden shortcuts (coursekit.policy): a call from the code under test to
  what the lesson's exercise replaces fails the test, naming the call.

This module runs inside pytest; the parent side (starting runs, reading their
reports) is coursekit.runner.
"""
import contextlib
import importlib
import json
import os
import signal
import sys
import threading

from pathlib import Path

import pytest
import torch

from coursekit import guard, policy
from coursekit.impl import ENV_VAR, Implementation, impl_name

MARKERS = {
    "basic": "the lesson's basic suite (run it first)",
    "advanced": "the lesson's advanced suite: dtypes, edge cases, gradients, bad input",
    "gpu": "needs a CUDA GPU; skipped without one",
    "triton": "runs a Triton kernel: on CUDA, or on CPU under TRITON_INTERPRET=1",
    "slow": "takes more than a few seconds; deselect with -m 'not slow'",
    "points": "points(n): what the test is worth when graded (default 1)",
}
SUITE_BY_FILE = {"test_basic.py": "basic", "test_advanced.py": "advanced"}


def pytest_addoption(parser):
    group = parser.getgroup("course")
    group.addoption("--impl", default=None,
                    help=f"implementation package(s) under test, comma-separated (default: ${ENV_VAR} or 'model')")
    group.addoption("--course-report", default=None, metavar="FILE",
                    help="write each test's outcome to FILE as JSON")
    group.addoption("--course-report-fd", default=None, type=int, metavar="N",
                    help="stream each test's outcome to file descriptor N as JSON lines")
    group.addoption("--course-token-fd", default=None, type=int, metavar="N",
                    help="read the token that signs the --course-report-fd records from file descriptor N")
    group.addoption("--course-timeout", default=None, type=float, metavar="SECONDS",
                    help="fail any test phase that runs longer than SECONDS")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


IMPL_NAMES = pytest.StashKey[list]()


def impl_names(config):
    """The implementation package(s) under test, resolved once per run."""
    if IMPL_NAMES not in config.stash:
        config.stash[IMPL_NAMES] = impl_name(config.getoption("--impl")).split(",")
    return config.stash[IMPL_NAMES]


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # Notebooks and subprocesses started by tests see the same choice.
    os.environ[ENV_VAR] = impl_names(config)[0]
    # Triton reads this when a kernel is decorated, so it must be set before any
    # implementation module is imported (tests import them lazily, in fixtures).
    if not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    channel = None
    if config.getoption("--course-report-fd") is not None:
        channel = Channel(config.getoption("--course-report-fd"), config.getoption("--course-token-fd"))
        config.pluginmanager.register(OutcomeStreamer(channel), "course-outcome-streamer")
    if config.getoption("--course-report"):
        config.pluginmanager.register(OutcomeRecorder(config.getoption("--course-report")))
    if channel or config.getoption("--course-report"):
        _skip_hypothesis_shrinking()
    config.pluginmanager.register(TamperGuard(config, channel), "course-tamper-guard")
    if config.getoption("--course-timeout"):
        config.pluginmanager.register(TimeLimit(config.getoption("--course-timeout")))


def _skip_hypothesis_shrinking():
    """Batch runs (the self-checks, progress, grading) need to know that a
    property fails, not its smallest counterexample, which can take seconds
    to find for every wrong implementation. Test modules build their settings
    after this, so they inherit it."""
    try:
        from hypothesis import Phase, settings
    except ImportError:
        return
    settings.register_profile("course-batch", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
    settings.load_profile("course-batch")


def pytest_report_header(config):
    where = "cuda" if cuda_available() else "cpu only"
    return f"course implementation: {', '.join(impl_names(config))}  |  torch {torch.__version__}  |  {where}"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    skip_triton = pytest.mark.skip(reason="needs Triton (pip install triton; Linux only)")
    for item in items:
        suite = SUITE_BY_FILE.get(item.path.name)
        if suite:
            item.add_marker(suite)
        if "gpu" in item.keywords and not cuda_available():
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and not triton_available():
            item.add_marker(skip_triton)


def pytest_generate_tests(metafunc):
    names = impl_names(metafunc.config)
    if len(names) > 1 and "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", [Implementation(n) for n in names], ids=names, scope="session")


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test: `impl.softmax.stable_softmax(...)`."""
    return Implementation(impl_names(request.config)[0])


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device the machine has: cpu always, cuda when present."""
    return request.param


@pytest.fixture
def triton_device():
    """Where Triton kernels run here: cuda, or cpu under the interpreter."""
    if cuda_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU, and TRITON_INTERPRET=1 was not set before Triton was imported")
    return "cpu"


def record_outcome(results, report):
    """Fold one phase's report into results[nodeid]. A test's outcome is its
    call phase, unless setup or teardown failed or it was skipped at setup."""
    if report.when == "call" or report.outcome != "passed":
        entry = results.setdefault(report.nodeid, {})
        if entry.get("outcome") in ("failed", "error"):
            return
        outcome = report.outcome
        if report.when != "call" and report.outcome == "failed":
            outcome = "error"
        entry["outcome"] = outcome
        entry["message"] = _short_message(report)
        entry["markers"] = sorted(m for m in MARKERS if m in report.keywords)
        entry["points"] = dict(report.user_properties).get("points", 1)


class Channel:
    """JSON lines to the grader's pipe (one os.write per record, so records
    from one process never interleave)."""

    def __init__(self, fd, token_fd=None):
        self.fd, self._token = fd, ""
        if token_fd is not None:  # read once, before any code under test is imported, and closed
            self._token = os.read(token_fd, 64).decode()
            os.close(token_fd)

    def send(self, **record):
        data = (json.dumps({**record, "token": self._token}, sort_keys=True) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass


class OutcomeStreamer:
    """hello, collected, start/result/finish per test, over a Channel."""

    def __init__(self, channel):
        self.channel = channel
        self.results = {}
        channel.send(kind="hello")

    def pytest_collection_finish(self, session):
        self.channel.send(kind="collected", nodes=[item.nodeid for item in session.items])

    def pytest_runtest_logstart(self, nodeid, location):
        self.channel.send(kind="start", node=nodeid)

    def pytest_runtest_logreport(self, report):
        record_outcome(self.results, report)

    def pytest_runtest_logfinish(self, nodeid, location):
        entry = self.results.get(nodeid, {"outcome": "error", "message": "no outcome was recorded"})
        self.channel.send(kind="result", node=nodeid, outcome=entry["outcome"],
                          message=entry["message"][:4000], points=entry.get("points", 1))
        self.channel.send(kind="finish", node=nodeid)


class OutcomeRecorder:
    """Appends one JSON line per event to `path` (collected, start, result,
    finish), flushed at once, so a run that dies leaves everything up to the
    test it was running. coursekit.runner.read_report folds the lines into
    {"collected", "running", "results"}."""

    def __init__(self, path):
        self.results = {}
        self.file = open(path, "w", buffering=1)

    def _line(self, **record):
        self.file.write(json.dumps(record, sort_keys=True) + "\n")

    def pytest_collection_finish(self, session):
        self._line(collected=[item.nodeid for item in session.items])

    def pytest_runtest_logstart(self, nodeid, location):
        self._line(start=nodeid)

    def pytest_runtest_logreport(self, report):
        record_outcome(self.results, report)

    def pytest_runtest_logfinish(self, nodeid, location):
        if nodeid in self.results:
            self._line(result=nodeid, entry=self.results[nodeid])
        self._line(finish=nodeid)

    def pytest_unconfigure(self, config):
        self.file.close()


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("points")
    if marker:
        item.user_properties.append(("points", marker.args[0]))


_TOOLING_TESTS = Path(__file__).resolve().parent / "tests"


class TamperGuard:
    """Checks after every test phase that nothing the tests rely on was
    replaced (coursekit.guard), that no plugin or hook was registered, and that
    the code under test called nothing its lesson forbids (coursekit.policy).
    A finding fails the test with a message naming it, is undone, and is
    reported on the grader's channel as a flag."""

    def __init__(self, config, channel):
        import coursekit.reference  # noqa: F401 (watched below)
        import coursekit.testing  # noqa: F401
        self.config, self.channel = config, channel
        self.student_dirs = _package_dirs(impl_names(config))
        self.forbidden_calls = []
        policy.guard_references(self.student_dirs, self.forbidden_calls)
        self.snapshot = guard.Snapshot()
        self.plugins = None

    def pytest_collection_finish(self, session):
        # A test module's own names for the watched objects are guarded too.
        modules = {id(m): m for m in (getattr(item, "module", None) for item in session.items) if m is not None}
        for module in modules.values():
            self.snapshot.watch_module_globals(module.__name__, module)
        self.plugins = guard.PluginWatch(self.config.pluginmanager)

    # try/finally: the check runs (and restores) even when the phase failed. The
    # code under test runs in the call phase (imported on first use there);
    # anything it does elsewhere (a __del__ at teardown) is found at the end of
    # the next test's call.
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        if _TOOLING_TESTS in item.path.parents:
            # The course's own tooling tests patch coursekit and torch on purpose
            # (monkeypatch); they run no student code. Everything else is guarded.
            return (yield)
        lesson = _lesson_number(item)
        watch = policy.ShortcutWatch(policy.cached_forbidden_for(lesson), self.student_dirs)
        ops = policy.cached_forbidden_ops_for(lesson)
        # one level down, only where the lesson forbids an op (a dispatch mode costs every op a Python call)
        op_watch = policy.OpWatch(ops, self.student_dirs) if ops else contextlib.nullcontext()
        try:
            with op_watch, watch:
                return (yield)
        finally:
            self.forbidden_calls += watch.calls + getattr(op_watch, "calls", [])
            self._check(item)

    def _check(self, item):
        replaced = self.snapshot.check()
        registered = self.plugins.check() if self.plugins else []
        calls, self.forbidden_calls[:] = list(self.forbidden_calls), []
        problems = []
        if replaced:
            problems.append(f"the code under test replaced {', '.join(replaced)}: what a test relies on "
                            "is not the code's to change (restored for the next test)")
        if registered:
            problems.append(f"the code under test {', '.join(registered)}: pytest is not the code's to steer "
                            "(removed for the next test)")
        if calls:
            problems.append(f"forbidden in this exercise (coursekit/policy.py): {', '.join(dict.fromkeys(calls))}: "
                            "compute it by hand, with plain torch tensors")
        if problems:
            if self.channel:
                self.channel.send(kind="flag", reason=f"{item.nodeid}: {'; '.join(problems)}"[:500])
            raise AssertionError("\n".join(problems))


def _package_dirs(names):
    """Folders of the implementation packages (without importing them)."""
    import importlib.util
    from coursekit.impl import _ensure_course_root_importable
    _ensure_course_root_importable()
    dirs = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.realpath(location), ""))
            dirs.append(os.path.join(location, ""))
    return tuple(dict.fromkeys(dirs)) or ("\0",)


def _lesson_number(item):
    for part in item.path.parts:
        if len(part) >= 3 and part[0] == "L" and part[1:3].isdigit():
            return part[:3]
    return ""


class TestTimeLimitExceeded(BaseException):
    """Raised by SIGALRM in a test that ran too long. A BaseException, so a
    student's `except Exception:` cannot swallow it."""


class TimeLimit:
    """Arms SIGALRM around each test phase (Unix, main thread only)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def _limited(self, phase):
        usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        if not usable:
            yield
            return

        def expire(signum, frame):
            raise TestTimeLimitExceeded(
                f"{phase} took longer than the {self.seconds:g} s limit per test: an infinite loop, "
                "or far more work than the exercise needs?")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        yield from self._limited("setup")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        yield from self._limited("the test")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item):
        yield from self._limited("teardown")


def _short_message(report):
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2]
    crash = getattr(report.longrepr, "reprcrash", None)
    from coursekit.testing import cap_message  # the same cap as the helpers' messages
    return cap_message(crash.message) if crash else str(report.longrepr)[-2000:]


# The parent side lives in coursekit.runner; these names stay importable here.
from coursekit.runner import read_report, run_with_report  # noqa: E402,F401
