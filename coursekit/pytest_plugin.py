"""The course's pytest plugin (loaded by the root conftest.py).

- `--impl PKG` (or $COURSE_IMPL; default `model`) picks the implementation
  package under test; the `impl` fixture hands it to tests. A comma-separated
  list runs every test once per package (the known-wrong check uses this).
- Markers: `basic` / `advanced` come from the file name (test_basic.py,
  test_advanced.py); `gpu` tests skip without CUDA; `triton` tests skip without
  Triton, and run on CPU tensors under the Triton interpreter when there is no
  GPU; `slow` marks tests a student may deselect with -m "not slow".
- `device` parametrises a test over cpu and (when present) cuda.
- `--course-report FILE` writes every test's outcome as JSON, for the
  self-checks, `course progress` and the grader.
"""
import json
import os

import pytest
import torch

from coursekit.impl import ENV_VAR, Implementation, impl_name

MARKERS = {
    "basic": "the lesson's basic suite (run it first)",
    "advanced": "the lesson's advanced suite: dtypes, edge cases, gradients, bad input",
    "gpu": "needs a CUDA GPU; skipped without one",
    "triton": "runs a Triton kernel: on CUDA, or on CPU under TRITON_INTERPRET=1",
    "slow": "takes more than a few seconds; deselect with -m 'not slow'",
}
SUITE_BY_FILE = {"test_basic.py": "basic", "test_advanced.py": "advanced"}


def pytest_addoption(parser):
    group = parser.getgroup("course")
    group.addoption("--impl", default=None,
                    help=f"implementation package(s) under test, comma-separated (default: ${ENV_VAR} or 'model')")
    group.addoption("--course-report", default=None, metavar="FILE",
                    help="write each test's outcome to FILE as JSON")


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
    """Collects {nodeid: {"outcome", "message"}} and writes it at the end."""

    def __init__(self, path):
        self.path = path
        self.results = {}

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

    def pytest_sessionfinish(self, session):
        with open(self.path, "w") as f:
            json.dump(self.results, f, indent=1, sort_keys=True)


def _short_message(report):
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2]
    crash = getattr(report.longrepr, "reprcrash", None)
    return crash.message if crash else str(report.longrepr)[-2000:]
