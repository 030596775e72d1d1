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
- `--course-timeout SECONDS` fails a test (setup, call or teardown) that runs
  longer, so one infinite loop costs one test, not the run.
- Tampering guard: code under test that replaces torch's comparison functions
  or the course's test helpers (say, `torch.allclose = lambda *a, **k: True`)
  fails the test it ran in, and the originals are put back.
"""
import importlib
import json
import os
import signal
import sys
import threading

import pytest
import torch

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


def impl_names(config):
    return impl_name(config.getoption("--impl")).split(",")


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # Notebooks and subprocesses started by tests see the same choice.
    os.environ[ENV_VAR] = impl_names(config)[0]
    # Triton reads this when a kernel is decorated, so it must be set before any
    # implementation module is imported (tests import them lazily, in fixtures).
    if not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if config.getoption("--course-report"):
        config.pluginmanager.register(OutcomeRecorder(config.getoption("--course-report")))
        _skip_hypothesis_shrinking()
    config.pluginmanager.register(TamperGuard(), "course-tamper-guard")
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
    settings.register_profile("course-batch", phases=[Phase.explicit, Phase.reuse, Phase.generate])
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


class OutcomeRecorder:
    """Writes {"collected": [nodeid], "running": nodeid or null, "results":
    {nodeid: {"outcome", "message", "points", "markers"}}} to `path` after
    every test."""

    def __init__(self, path):
        self.path = path
        self.collected = []
        self.results = {}
        self.running = None

    def pytest_collection_finish(self, session):
        self.collected = [item.nodeid for item in session.items]
        self._write()

    def pytest_runtest_logstart(self, nodeid, location):
        self.running = nodeid
        self._write()

    def pytest_runtest_logreport(self, report):
        # A test's outcome is its call phase, unless setup or teardown failed
        # or it was skipped at setup.
        if report.when == "call" or report.outcome != "passed":
            entry = self.results.setdefault(report.nodeid, {})
            if entry.get("outcome") in ("failed", "error"):
                return
            outcome = report.outcome
            if report.when != "call" and report.outcome == "failed":
                outcome = "error"
            entry["outcome"] = outcome
            entry["message"] = _short_message(report)
            entry["markers"] = sorted(m for m in MARKERS if m in report.keywords)
            entry["points"] = dict(report.user_properties).get("points", 1)

    def pytest_runtest_logfinish(self, nodeid, location):
        self.running = None
        self._write()

    def pytest_sessionfinish(self, session):
        self._write()

    def _write(self):
        # Write then rename: a process killed mid-write leaves the last full report.
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"collected": self.collected, "running": self.running, "results": self.results},
                      f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def read_report(path):
    """The report as written by --course-report; empty if none was written."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"collected": [], "running": None, "results": {}}


def run_with_report(targets, impl, *args, pythonpath=None, capture=True):
    """pytest on `targets` (paths) with `impl` in a subprocess from the course
    folder, `pythonpath` (where impl lives) first on the path; returns
    (the finished process, {nodeid: result})."""
    import subprocess
    import tempfile

    from coursekit import COURSE_ROOT
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(COURSE_ROOT)])
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        run = subprocess.run([sys.executable, "-m", "pytest", *map(str, targets), "--impl", impl,
                              "-p", "no:cacheprovider", "--course-report", report, *args],
                             cwd=COURSE_ROOT, env=env, capture_output=capture, text=True)
        return run, read_report(report)["results"]


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("points")
    if marker:
        item.user_properties.append(("points", marker.args[0]))


class TamperGuard:
    """Remembers what the comparison functions are before any student code runs
    and checks them after every test phase. Protects torch's and numpy's
    comparisons, coursekit's helpers and references, and each test module's own
    names for them. (Code in the same process can always dig deeper; this
    stops the patches that make a wrong answer look right.)"""

    def __init__(self):
        import coursekit.reference
        import coursekit.testing
        self.bindings = {}  # (namespace dict, name) -> original object
        for module_name, names in coursekit.testing.COMPARISONS.items():
            module = importlib.import_module(module_name)
            for name in names:
                self._watch(vars(module), name)
        for module in (coursekit.testing, coursekit.reference):
            for name, value in vars(module).items():
                if callable(value) and not name.startswith("_"):
                    self._watch(vars(module), name)
        self.originals = {id(obj) for _, obj in self.bindings.values()}

    def _watch(self, namespace, name):
        self.bindings[(id(namespace), name)] = (namespace, namespace[name])

    def pytest_collection_finish(self, session):
        # A test module's own reference to assert_close etc. is guarded too.
        for item in session.items:
            module = getattr(item, "module", None)
            for name, value in vars(module).items() if module else ():
                if id(value) in self.originals:
                    self._watch(vars(module), name)

    def _restore_tampered(self):
        tampered = []
        for (_, name), (namespace, original) in self.bindings.items():
            if namespace.get(name) is not original:
                namespace[name] = original
                tampered.append(f"{namespace.get('__name__', '?')}.{name}")
        return tampered

    # try/finally: the check runs (and restores) even when the phase failed.
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item):
        try:
            return (yield)
        finally:
            self._check()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        try:
            return (yield)
        finally:
            self._check()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item):
        try:
            return (yield)
        finally:
            self._check()

    def _check(self):
        tampered = self._restore_tampered()
        if tampered:
            raise AssertionError(
                f"the code under test replaced {', '.join(sorted(tampered))}: a test's comparisons are not "
                "the code's to change (restored for the next test)")


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
