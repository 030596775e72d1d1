"""coursekit.pytest_plugin, exercised in inner pytest runs (pytester)."""
import os
import subprocess
import sys

import pytest
import torch

from coursekit import COURSE_ROOT
from coursekit.impl import ENV_VAR
from coursekit.runner import read_report

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
    written = read_report(report)
    assert written["running"] is None, "no test is running once the session is over"
    results = written["results"]
    assert {node: r["outcome"] for node, r in results.items()} == {
        "test_report.py::test_passes": "passed",
        "test_report.py::test_fails": "failed",
        "test_report.py::test_skips": "skipped",
        "test_report.py::test_errors": "error",
    }
    assert "not today" in results["test_report.py::test_skips"]["message"]
    assert "assert 1 == 2" in results["test_report.py::test_fails"]["message"]


def test_course_report_records_points(run_course_pytest, pytester):
    pytester.makepyfile(test_points="""
        import pytest

        @pytest.mark.points(3)
        def test_heavy():
            pass

        def test_default():
            pass
    """)
    report = pytester.path / "report.json"
    run_course_pytest("--course-report", str(report))
    results = read_report(report)["results"]
    assert results["test_points.py::test_heavy"]["points"] == 3
    assert results["test_points.py::test_default"]["points"] == 1


def test_time_limit_fails_only_the_looping_test(run_course_pytest, pytester):
    pytester.makepyfile(test_loop="""
        def test_loops_forever():
            while True:
                try:
                    pass
                except Exception:  # a student's catch-all must not swallow the time limit
                    pass

        def test_after_the_loop():
            pass
    """)
    passed, skipped, failed = run_course_pytest("--course-timeout", "0.5").listoutcomes()
    assert nodeids(passed) == ["test_loop.py::test_after_the_loop"]
    assert nodeids(failed) == ["test_loop.py::test_loops_forever"]
    assert "limit" in str(failed[0].longrepr)


def test_report_names_the_test_a_dead_process_was_running(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["coursekit.pytest_plugin"]\n')
    (tmp_path / "test_crash.py").write_text(
        "import os\n\ndef test_first():\n    pass\n\ndef test_dies():\n    os._exit(3)\n\ndef test_never_runs():\n    pass\n")
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(COURSE_ROOT))
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--course-report", str(report)],
                   cwd=tmp_path, env=env, capture_output=True)
    written = read_report(report)
    assert written["running"] == "test_crash.py::test_dies"
    assert written["results"] == {"test_crash.py::test_first": {
        "outcome": "passed", "message": "", "markers": [], "points": 1}}


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


def test_tampering_with_comparisons_fails_the_test_and_is_undone(run_course_pytest, pytester):
    pytester.makepyfile(test_tamper="""
        import torch
        import coursekit.testing
        from coursekit.testing import assert_close

        def test_patches_allclose():
            torch.allclose = lambda *args, **kwargs: True

        def test_patches_assert_close_everywhere():
            # Only this run's modules: the outer run's guard watches its own.
            import sys
            for module in (sys.modules[__name__], coursekit.testing):
                module.assert_close = lambda *args, **kwargs: None

        def test_comparisons_are_back():
            assert not torch.allclose(torch.zeros(1), torch.ones(1))
            assert coursekit.testing.assert_close is assert_close
    """)
    passed, skipped, failed = run_course_pytest().listoutcomes()
    assert nodeids(failed) == ["test_tamper.py::test_patches_allclose",
                               "test_tamper.py::test_patches_assert_close_everywhere"]
    assert "torch.allclose" in str(failed[0].longrepr)
    assert "assert_close" in str(failed[1].longrepr)
    assert nodeids(passed) == ["test_tamper.py::test_comparisons_are_back"]
