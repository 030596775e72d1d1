"""A Jupyter kernel in the grader's sandbox (the kernel autograding starts).

    python -P -m coursekit.nbsandbox CONNECTION_FILE

The kernelspec that `course nbgrader autograde` installs for the run points
here. It starts ipykernel under bubblewrap (coursekit.sandbox) when the machine
has it: the kernel sees read-only system and Python paths and the tooling, its
own notebook folder (nbgrader's autograded/<student>/<assignment>, writable),
the connection file and the folder of its ZeroMQ sockets (IPC, so the network
stays off), and a private /tmp. The gradebook, the course folder, other
students' folders and the network are out of its view; it runs in its own PID
namespace, so every process it starts dies with it, and in a cgroup (memory,
processes) when the grader may create one. Without bwrap it runs ipykernel
as it is (isolation none), with the same rlimits.
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

from coursekit import sandbox

CGROUP_PREFIX_ENV = "COURSE_NB_CGROUP_PREFIX"


def ipykernel(argv):
    """The kernel itself (`python -P -m coursekit.nbsandbox --ipykernel -f FILE`).
    The notebook's folder comes *last* on sys.path (-P keeps Python from putting
    it first): it holds the student's model/, and a torch.py, coursekit/ or
    sitecustomize.py a submission ships there must not shadow the real ones."""
    sys.path.append(os.getcwd())
    from ipykernel import kernelapp
    kernelapp.launch_new_instance(argv=argv)


def _socket_folder(connection_file):
    """The folder of an IPC kernel's sockets (its connection's ip is a path
    prefix there), or None for TCP. Only that folder is bound in: the
    answers' kernel of coursekit.nbcarry has its own, so it cannot reach the
    sockets and connection file of the graded kernel running beside it."""
    import json
    try:
        with open(connection_file) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if info.get("transport") != "ipc" or not info.get("ip"):
        return None
    return os.path.dirname(os.path.abspath(info["ip"]))


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    if argv and argv[0] == "--ipykernel":
        return ipykernel(argv[1:])
    connection_file = os.path.abspath(argv[0])
    isolation = sandbox.detect()
    limits = sandbox.Limits()
    group = None
    if isolation.cgroup:
        try:
            group = sandbox.Cgroup(isolation.cgroup, limits, prefix=os.environ.get(CGROUP_PREFIX_ENV, "coursegrade-"))
        except OSError:
            group = None
    sandbox.preexec(limits, group, new_session=False)()
    # The notebook's folder first on the path (model/ lives there), then the
    # tooling copy the grader put on PYTHONPATH.
    inner = [sys.executable, "-P", "-m", "coursekit.nbsandbox", "--ipykernel", "-f", connection_file]
    if isolation.level != "bwrap":
        # IPython's profile (startup files, config) in a fresh folder: not one a notebook could write.
        os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="ipython-")
        os.execv(inner[0], inner)
    cwd = os.getcwd()
    binds = []
    for path in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if path and os.path.isdir(path):
            binds += ["--ro-bind", path, path]
    # The sockets' folder must be writable (the kernel binds its sockets there);
    # it holds only connection files and sockets. The connection file may lie
    # anywhere (nbclient puts it in the system's /tmp): the kernel gets a copy.
    ipc = _socket_folder(connection_file) or os.environ.get("COURSE_NB_IPC_DIR") or tempfile.mkdtemp(prefix="kernel-")
    copy = os.path.join(ipc, "connection-" + os.path.basename(connection_file))
    shutil.copyfile(connection_file, copy)
    inner[inner.index(connection_file)] = copy
    binds += ["--bind", ipc, ipc, "--bind", cwd, cwd]
    # HOME and IPython's profile in the kernel's private /tmp, not in the notebook's folder: a
    # submission's .ipython/profile_default/startup/ (or .jupyter/) there is never read.
    command = sandbox.bwrap_base(limits) + binds + ["--chdir", cwd, "--setenv", "HOME", "/tmp",
                                                    "--setenv", "IPYTHONDIR", "/tmp/.ipython",
                                                    "--setenv", "TMPDIR", "/tmp",
                                                    # its parent is the namespace's init (pid 1): no parent poller
                                                    "--unsetenv", "JPY_PARENT_PID"] + inner
    if os.environ.get("COURSE_GRADE_DEBUG"):
        print("nbsandbox:", command, file=sys.stderr)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()


def install_kernelspec(folder: Path):
    """Kernelspecs in folder/kernels that start kernels here, under every name a
    notebook may ask for: the course kernel's and `python3`. folder goes first on
    JUPYTER_PATH, so a notebook naming the course kernel gets the sandboxed one,
    never the unsandboxed kernel registered in the environment."""
    import json

    from coursekit.kernel import KERNEL_NAME
    for name in (KERNEL_NAME, "python3"):
        spec = folder / "kernels" / name
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({
            # -P: the notebook's folder (the launcher's working folder, a student's files) is not
            # on sys.path, so a coursekit/ shipped there is not what runs here, outside the sandbox.
            "argv": [sys.executable, "-P", "-m", "coursekit.nbsandbox", "{connection_file}"],
            "display_name": "Python 3 (grading sandbox)", "language": "python",
            "interrupt_mode": "message", "metadata": {"debugger": False}}, indent=1))
    return folder
