"""coursekit.pytest_plugin, exercised in inner pytest runs (pytester)."""
import json
import os

import pytest
import torch

from coursekit import COURSE_ROOT
from coursekit.impl import ENV_VAR

pytest_plugins = ["pytester"]


@pytest.fixture
def run_course_pytest(pytester, monkeypatch):
    """Run pytest in-process on pytester's folder with the course plugin loaded
    (the root conftest.py that loads it is outside that folder)."""
    # The plugin's pytest_configure writes these into os.environ; re-setting
    # them through monkeypatch restores the outer run's values afterwards.
    for var in (ENV_VAR, "TRITON_INTERPRET"):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)
    pytester.syspathinsert(COURSE_ROOT)

    def run(*args):
        # Without hypothesis's plugin: it re-imports hypothesis in every inner run (~1 s).
        return pytester.inline_run("-p", "coursekit.pytest_plugin", "-p", "no:cacheprovider",
                                   "-p", "no:hypothesispytest", "--strict-markers", *args)
    return run


def nodeids(reports):
    return sorted(report.nodeid for report in reports)


@pytest.fixture
def suite_files(pytester):
    pytester.makepyfile(test_basic="def test_b(): pass",
                        test_advanced="def test_a(): pass",
                        test_other="def test_o(): pass")


@pytest.mark.parametrize("suite, selected", [("basic", "test_basic.py::test_b"),
                                             ("advanced", "test_advanced.py::test_a")])
def test_suite_marker_comes_from_the_file_name(run_course_pytest, suite_files, suite, selected):
    passed, skipped, failed = run_course_pytest("-m", suite).listoutcomes()
    assert nodeids(passed) == [selected]


def test_impl_option_runs_impl_tests_once_per_package(run_course_pytest, pytester):
    pytester.makepyfile(test_switch="""
        def test_uses_impl(impl):
            assert impl.name in ("pkg_a", "pkg_b")

        def test_without_impl():
            pass
    """)
    passed, skipped, failed = run_course_pytest("--impl", "pkg_a,pkg_b").listoutcomes()
    assert nodeids(passed) == ["test_switch.py::test_uses_impl[pkg_a]",
                               "test_switch.py::test_uses_impl[pkg_b]",
                               "test_switch.py::test_without_impl"]
    assert not failed


def test_single_impl_is_not_parametrised(run_course_pytest, pytester):
    pytester.makepyfile(test_switch="""
        def test_uses_impl(impl):
            assert impl.name == "pkg_a"
    """)
    passed, skipped, failed = run_course_pytest("--impl", "pkg_a").listoutcomes()
    assert nodeids(passed) == ["test_switch.py::test_uses_impl"]


def test_course_report_records_each_outcome(run_course_pytest, pytester):
    pytester.makepyfile(test_report="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        def test_passes():
            pass

        def test_fails():
            assert 1 == 2

        def test_skips():
            pytest.skip("not today")

        def test_errors(broken):
            pass
    """)
    report = pytester.path / "report.json"
    run_course_pytest("--course-report", str(report))
    results = json.loads(report.read_text())
    assert {node: r["outcome"] for node, r in results.items()} == {
        "test_report.py::test_passes": "passed",
        "test_report.py::test_fails": "failed",
        "test_report.py::test_skips": "skipped",
        "test_report.py::test_errors": "error",
    }
    assert "not today" in results["test_report.py::test_skips"]["message"]
    assert "assert 1 == 2" in results["test_report.py::test_fails"]["message"]


cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without a GPU")


@cpu_only
def test_gpu_test_is_skipped_without_cuda(run_course_pytest, pytester):
    pytester.makepyfile(test_gpu="""
        import pytest

        @pytest.mark.gpu
        def test_needs_gpu():
            pass
    """)
    passed, skipped, failed = run_course_pytest().listoutcomes()
    assert nodeids(skipped) == ["test_gpu.py::test_needs_gpu"]
    assert "CUDA" in skipped[0].longrepr[2]


@cpu_only
def test_device_fixture_runs_cpu_and_skips_cuda(run_course_pytest, pytester):
    pytester.makepyfile(test_device="""
        def test_on_device(device):
            assert device in ("cpu", "cuda")
    """)
    passed, skipped, failed = run_course_pytest().listoutcomes()
    assert nodeids(passed) == ["test_device.py::test_on_device[cpu]"]
    assert nodeids(skipped) == ["test_device.py::test_on_device[cuda]"]
