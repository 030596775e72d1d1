"""The parent side of a pytest run: start it, read what it reports.

Two ways, by how far the code under test is trusted:

- `run_with_report` (the course's own checks, `course progress`, the
  known-wrong harness): pytest in the course folder, the plugin's JSON report
  file read afterwards.
- `run_graded` (the grader): pytest in a sandbox (coursekit.sandbox), its
  outcomes streamed over a pipe whose read end only the grader holds. Nothing
  the run leaves on disk is read back; for each test the first outcome on the
  pipe counts.
"""
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from coursekit import COURSE_ROOT
from coursekit import sandbox as sandboxing

MESSAGE_LIMIT = 4000          # characters of a failure message kept
CHANNEL_LIMIT = 8 * 2**20     # bytes read from one run's pipe


def read_report(path):
    """The report as written by --course-report: {"collected": [nodeid],
    "running": the test that started and did not finish (or None), "results":
    {nodeid: {"outcome", "message", "points", "markers"}}}; empty if none was written."""
    report = {"collected": [], "running": None, "results": {}}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return report
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # the last line of a process killed mid-write
            continue
        if "collected" in record:
            report["collected"] = record["collected"]
        elif "start" in record:
            report["running"] = record["start"]
        elif "result" in record:
            report["results"][record["result"]] = record["entry"]
        elif "finish" in record:
            report["running"] = None
    return report


def run_with_report(targets, impl, *args, pythonpath=None, capture=True, threads=None):
    """pytest on `targets` (paths) with `impl` in a subprocess from the course
    folder, `pythonpath` (where impl lives) first on the path, `threads` torch
    threads (default: torch's choice); returns (the finished process, {nodeid: result})."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(COURSE_ROOT)])
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        run = subprocess.run([sys.executable, "-m", "pytest", *map(str, targets), f"--impl={impl}",
                              "-p", "no:cacheprovider", "--course-report", report, *args],
                             cwd=COURSE_ROOT, env=env, capture_output=capture, text=True)
        return run, read_report(report)["results"]


# ---------------------------------------------------------------------------
# Graded runs
# ---------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one graded pytest process said over its pipe."""
    started: bool = False                           # the plugin said hello
    collected: list = field(default_factory=list)
    results: dict = field(default_factory=dict)     # nodeid -> {"outcome", "message", "points"}
    running: str = None                             # the test that had started and not finished
    flags: list = field(default_factory=list)       # reasons the run looked tampered with
    killed: str = None                              # why the grader killed it, if it did

    token: str = ""                                 # what every genuine record carries

    def take(self, record):
        if record.get("token") != self.token:
            reason = "a forged record on the report channel (written by the code under test)"
            if reason not in self.flags:
                self.flags.append(reason)
            return
        kind = record.get("kind")
        if kind == "hello":
            self.started = True
        elif kind == "collected" and not self.collected:
            self.collected = [str(n) for n in record.get("nodes", [])]
        elif kind == "start":
            self.running = str(record.get("node"))
        elif kind == "result":
            node = str(record.get("node"))
            if node not in self.results:  # the first record per test wins
                self.results[node] = {"outcome": str(record.get("outcome")),
                                      "message": str(record.get("message", ""))[:MESSAGE_LIMIT],
                                      "points": record.get("points", 1)}
        elif kind == "finish":
            self.running = None
        elif kind == "flag":
            reason = str(record.get("reason", ""))[:500]
            if reason not in self.flags:
                self.flags.append(reason)


# Source run by the sandboxed interpreter: the run's folder first on the path,
# then pytest with the course plugin given by name (no conftest is loaded).
ENTRY = "import sys; sys.path.insert(0, sys.argv.pop(1)); import pytest; sys.exit(pytest.main(sys.argv[1:]))"


def pytest_argv(root, tests, report_fd, token_fd, limits, deselect=(), select=None):
    argv = [sys.executable, "-I", "-c", ENTRY, str(root), tests,
            "-p", "coursekit.pytest_plugin", "-p", "no:cacheprovider", "--noconftest",
            f"--rootdir={root}", "-c", f"{root}/pyproject.toml", f"--confcutdir={root}/testcases",
            "--impl=model", f"--course-report-fd={report_fd}", f"--course-token-fd={token_fd}", f"--course-timeout={limits.seconds_per_test}",
            "-q", "--tb=short"]
    try:
        import _hypothesis_pytestplugin  # noqa: F401 (autoloading is off: name the one plugin the tests use)
        argv[argv.index("--noconftest"):argv.index("--noconftest")] = ["-p", "_hypothesis_pytestplugin"]
    except ImportError:
        pass
    if select:
        argv.append(f"-m={select}")
    argv += [f"--deselect={node}" for node in deselect]
    return argv


READ_ONLY = ("coursekit", "testcases", "model", "pyproject.toml")


def run_graded(folder: Path, tests: str, limits, isolation, deselect=(), select=None) -> RunRecord:
    """One pytest process over `tests` (a path relative to `folder`) in the
    sandbox `folder`, its report read from the grader's pipe."""
    read_end, write_end = os.pipe()
    # The plugin reads a fresh token from this pipe at start-up, before any
    # student code is imported, and signs every record with it: records the
    # code under test writes to the report pipe itself are recognised as forged.
    token_read, token_write = os.pipe()
    token = secrets.token_hex(16)
    os.write(token_write, token.encode())
    os.close(token_write)
    if isolation.level == "bwrap":
        root = sandboxing.SANDBOX_ROOT
        argv = sandboxing.bwrap_command(folder, READ_ONLY, limits,
                                        pytest_argv(root, tests, write_end, token_read, limits, deselect, select))
        cwd = "/"
    else:
        root, cwd = str(folder), folder
        argv = pytest_argv(root, tests, write_end, token_read, limits, deselect, select)
    env = {"PATH": "/usr/bin:/bin", "HOME": root, "LANG": "C.UTF-8", "COURSE_IMPL": "model",
           "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "TMPDIR": "/tmp" if isolation.level == "bwrap" else str(folder)}
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    cgroup = None
    if isolation.cgroup:
        cgroup = sandboxing.Cgroup(isolation.cgroup, limits)
    record = RunRecord(token=token)
    reader = threading.Thread(target=_read_channel, args=(read_end, record), daemon=True)
    try:
        try:
            shown = None if os.environ.get("COURSE_GRADE_DEBUG") else subprocess.DEVNULL  # the run's own output
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=shown, stderr=shown,
                                       pass_fds=(write_end, token_read), preexec_fn=sandboxing.preexec(limits, cgroup))
        finally:
            os.close(write_end)
            os.close(token_read)
        reader.start()
        try:
            process.wait(timeout=limits.seconds_per_run)
        except subprocess.TimeoutExpired:
            record.killed = "run time limit"
        _kill_all(process, cgroup)
        reader.join(timeout=5)  # the namespace is gone: the pipe is at EOF (level none: a daemon may hold it)
        if cgroup is not None and cgroup.memory_exceeded() and record.running:
            record.killed = record.killed or "the run's memory limit"
    finally:
        if cgroup is not None:
            cgroup.kill()
            cgroup.remove()
    return record


def _kill_all(process, cgroup):
    try:
        os.killpg(process.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    if cgroup is not None:
        cgroup.kill()


def _read_channel(fd, record: RunRecord):
    """JSON lines from the run's pipe into `record`, at most CHANNEL_LIMIT bytes."""
    total, buffer = 0, b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > CHANNEL_LIMIT:
                record.flags.append("the report channel carried more than the limit (flooded)")
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    record.take({"kind": "flag", "reason": "a malformed record on the report channel"})
                    continue
                if isinstance(message, dict):
                    record.take(message)
    finally:
        os.close(fd)

