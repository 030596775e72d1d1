"""Where a graded run executes, and what it can reach.

One (student, lesson) run is one pytest process. How much it is walled off
depends on what the machine offers; `detect()` says, and the grader and
`course doctor` print it:

- `bwrap` (strict): bubblewrap puts the run in its own user, mount, PID, IPC,
  UTS and network namespaces. It sees read-only system and Python paths, its
  own copies of the tests and tooling and the student's snapshot (read-only),
  a writable working folder and /tmp (size-limited tmpfs: filling them stops
  at the limit, inside the run), and no network. Other sandboxes, snapshots,
  the output folder, the gradebook and the course folder are not in its view.
  It cannot signal the grader (another PID namespace), and when pytest exits
  the namespace's init dies and the kernel kills every descendant, double-
  forked daemons included. GPUs (/dev/nvidia*) are bound in when present.
- `none`: a plain subprocess in a temporary folder, as user running the
  grader. Limits and timeouts still hold, and the report still comes over the
  grader's pipe, but the run can read and write whatever that user can (other
  sandboxes, the output folder), can signal the grader, and a daemon it
  forks may outlive it. Use it only for trusted code.

Limits per run, on top of either level: a cgroup (v2, or the v1 memory and
pids hierarchies) caps the run's memory and process count when the grader
may create one (root, or a delegated cgroup); otherwise RLIMIT_DATA caps each
process's memory and RLIMIT_NPROC the user's processes. RLIMIT_AS is never
used: CUDA reserves huge address ranges, and under it torch sees no GPU.
RLIMIT_FSIZE caps each file, RLIMIT_CORE forbids core dumps.
"""
import glob
import os
import resource
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

LEVELS = ("bwrap", "none")
SANDBOX_ROOT = "/course"  # where the run's folder appears inside bwrap


@dataclass
class Limits:
    """The grader's limits: the one place their defaults live (`course grade`
    takes its option defaults from here)."""
    seconds_per_test: float = 30.0
    seconds_per_run: float = 900.0   # a backstop for loops inside C code, which SIGALRM cannot interrupt
    memory_mb: int = 4096            # the run's memory (cgroup), else each process's data segment
    processes: int = 256             # processes and threads of the run
    disk_mb: int = 512               # the run's writable folder and /tmp, each
    file_mb: int = 256               # any one file the run writes


@dataclass
class Isolation:
    level: str        # "bwrap" or "none"
    cgroup: str       # "v2", "v1" or "" (rlimits only)
    detail: str       # one line for people

    @property
    def strict(self) -> bool:
        return self.level == "bwrap" and bool(self.cgroup)


def _bwrap_works(bwrap):
    import subprocess
    try:
        run = subprocess.run([bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                             capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0


_detected = None


def detect(refresh=False) -> Isolation:
    """What this machine offers (probed once per process)."""
    global _detected
    if _detected is not None and not refresh:
        return _detected
    bwrap = shutil.which("bwrap")
    level = "bwrap" if bwrap and _bwrap_works(bwrap) else "none"
    cgroup = Cgroup.available()
    if level == "bwrap":
        detail = "bwrap: namespaces (user, mount, pid, net, ipc), read-only system, private tmpfs per run"
    elif bwrap:
        detail = "none: bwrap is installed but cannot create namespaces here"
    else:
        detail = "none: bubblewrap not found (apt-get install bubblewrap)"
    detail += (f"; limits by cgroup {cgroup}" if cgroup
               else "; limits by rlimits per process (no writable cgroup: run as root or delegate one)")
    _detected = Isolation(level, cgroup, detail)
    return _detected


# ---------------------------------------------------------------------------
# cgroups: memory and process count for the run as a whole
# ---------------------------------------------------------------------------
class Cgroup:
    V2 = Path("/sys/fs/cgroup")
    V1 = {"memory": Path("/sys/fs/cgroup/memory"), "pids": Path("/sys/fs/cgroup/pids")}

    @staticmethod
    def _v2_root():
        for root in (Cgroup.V2, Cgroup.V2 / "unified"):
            controllers = root / "cgroup.controllers"
            if controllers.exists() and {"memory", "pids"} <= set(controllers.read_text().split()):
                return root
        return None

    @classmethod
    def available(cls) -> str:
        for kind in ("v2", "v1"):
            try:
                group = cls(kind, Limits())
            except OSError:
                continue
            group.remove()
            return kind
        return ""

    def __init__(self, kind, limits: Limits, prefix="coursegrade-"):
        self.kind, self.paths = kind, []
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            if kind == "v2":
                root = self._v2_root()
                if root is None:
                    raise OSError("no cgroup v2 hierarchy with memory and pids")
                path = root / name
                path.mkdir()
                self.paths = [path]
                (path / "memory.max").write_text(str(limits.memory_mb * 2**20))
                (path / "memory.swap.max").write_text("0") if (path / "memory.swap.max").exists() else None
                (path / "pids.max").write_text(str(limits.processes))
            else:
                for controller, root in self.V1.items():
                    if not root.is_dir():
                        raise OSError(f"no cgroup v1 {controller} hierarchy")
                    path = root / name
                    path.mkdir()
                    self.paths.append(path)
                memory, pids = self.paths
                (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mb * 2**20))
                (pids / "pids.max").write_text(str(limits.processes))
        except OSError:
            self.remove()
            raise

    def enter(self):
        """Move the calling process in (from preexec_fn: before exec)."""
        for path in self.paths:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self):
        found = set()
        for path in self.paths:
            try:
                found |= {int(p) for p in (path / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def kill(self):
        if self.kind == "v2" and self.paths and (self.paths[0] / "cgroup.kill").exists():
            try:
                (self.paths[0] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def memory_exceeded(self) -> bool:
        try:
            if self.kind == "v2":
                events = dict(line.split() for line in (self.paths[0] / "memory.events").read_text().splitlines())
                return int(events.get("oom_kill", 0)) > 0
            return int((self.paths[0] / "memory.failcnt").read_text()) > 0
        except (OSError, IndexError, ValueError):
            return False

    @classmethod
    def remove_all(cls, prefix):
        """Kill and remove every cgroup whose name starts with prefix (the
        notebook kernels' groups, made by coursekit.nbsandbox)."""
        roots = [r for r in (cls._v2_root(),) if r] + [r for r in cls.V1.values() if r.is_dir()]
        for root in roots:
            for path in root.glob(f"{prefix}*"):
                group = cls.__new__(cls)
                group.kind, group.paths = ("v2" if root not in cls.V1.values() else "v1"), [path]
                group.kill()
                group.remove()

    def remove(self):
        for path in reversed(self.paths):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.paths = []


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
def _python_paths():
    """Read-only paths the interpreter, the venv and their libraries live in."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for name in ("torch", "triton", "numpy", "pytest"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        paths.add(os.path.dirname(os.path.dirname(os.path.realpath(module.__file__))))
    return sorted(p for p in paths if p and os.path.isdir(p))


SYSTEM = ("/usr", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
          "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/fonts", "/opt/conda")
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def gpu_devices():
    return sorted(set(glob.glob("/dev/nvidia*")) | set(glob.glob("/dev/dri/*")))


def bwrap_base(limits: Limits):
    """bwrap's options for every sandbox: new namespaces, no capabilities,
    read-only system and Python paths, GPUs, a size-limited private /tmp."""
    command = [shutil.which("bwrap"), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--uid", "65534", "--gid", "65534", "--hostname", "grading",
               "--proc", "/proc", "--dev", "/dev",
               # the private /tmp first: the binds below may lie under /tmp (a venv in a clone there)
               "--size", str(limits.disk_mb * 2**20), "--tmpfs", "/tmp"]
    for name in TOP_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            command += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            command += ["--ro-bind", str(path), str(path)]
    for path in SYSTEM:
        command += ["--ro-bind-try", path, path]
    for path in _python_paths():
        command += ["--ro-bind", path, path]
    for path in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):  # driver libraries outside /usr
        if path and os.path.isabs(path):
            command += ["--ro-bind-try", path, path]
    for device in gpu_devices():
        command += ["--dev-bind-try", device, device]
    if os.path.isdir("/sys"):  # CUDA reads PCI topology from /sys
        command += ["--ro-bind-try", "/sys/bus", "/sys/bus", "--ro-bind-try", "/sys/devices", "/sys/devices",
                    "--ro-bind-try", "/sys/module", "/sys/module"]
    return command


def bwrap_command(folder: Path, read_only, limits: Limits, argv):
    """bwrap around `argv`: `folder`'s entries `read_only` (names) appear
    read-only under SANDBOX_ROOT, the rest of SANDBOX_ROOT is a fresh,
    size-limited tmpfs (the run's working folder)."""
    command = bwrap_base(limits) + ["--size", str(limits.disk_mb * 2**20), "--tmpfs", SANDBOX_ROOT]
    for name in read_only:
        command += ["--ro-bind", str(folder / name), f"{SANDBOX_ROOT}/{name}"]
    command += ["--chdir", SANDBOX_ROOT, "--setenv", "HOME", SANDBOX_ROOT, "--setenv", "TMPDIR", "/tmp"]
    return command + list(argv)


def preexec(limits: Limits, cgroup, new_session=True):
    """Runs in the child before exec: own session, cgroup, rlimits."""
    def apply():
        if new_session:
            os.setsid()  # its own process group, so a timeout kills its children too
        if cgroup is not None:
            cgroup.enter()
        else:
            memory = limits.memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
            if os.getuid() != 0:  # root is exempt from RLIMIT_NPROC
                resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        file_size = limits.file_mb * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply
