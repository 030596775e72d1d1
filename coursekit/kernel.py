"""The course's Jupyter kernel, one per checkout.

Every notebook asks for the kernel named `efficient-attention`. It runs this
checkout's Python, whose `coursekit` is this checkout's tooling, so a notebook
always imports this checkout's model/. The kernel is registered inside the
environment, never user-wide (a user-wide kernel would be shared, and
overwritten, by every checkout on the machine):

- in the course's virtual environment (.venv/), under its sys.prefix, where
  every Jupyter started from that environment finds it first;
- with COURSE_NO_VENV=1 (a conda env, a system Python, a GPU image: possibly
  shared by several checkouts), in the course folder itself, .course-work/jupyter,
  which the course's commands put first on JUPYTER_PATH.

`ensure_kernel()` (re)writes the kernelspec only when it differs from what this
checkout needs; `course lab`, the notebook checks and `course nbgrader` call it.
"""
import json
import os
import sys
from pathlib import Path

from coursekit import COURSE_ROOT

KERNEL_NAME = "efficient-attention"
DISPLAY_NAME = "Python (Efficient Attention)"
KERNELSPEC = {"name": KERNEL_NAME, "display_name": DISPLAY_NAME, "language": "python"}  # notebooks' metadata
LOCAL_JUPYTER = COURSE_ROOT / ".course-work" / "jupyter"  # git-ignored


def in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def data_dir() -> Path:
    """The Jupyter data folder that holds this checkout's kernelspec."""
    return Path(sys.prefix) / "share" / "jupyter" if in_virtualenv() else LOCAL_JUPYTER


def kernel_dir() -> Path:
    return data_dir() / "kernels" / KERNEL_NAME


def wanted_spec() -> dict:
    """The kernel.json this checkout needs: this Python, and (in metadata, for
    `course doctor`) this course folder."""
    from ipykernel.kernelspec import get_kernel_dict
    # -Xfrozen_modules=off: without it Python 3.11+ warns at every kernel start
    # that the debugger may miss breakpoints. ipykernel's metadata declares
    # CurveZMQ support, which `course lab` turns on (no plain-TCP warning).
    spec = get_kernel_dict(python_arguments=["-Xfrozen_modules=off"])
    spec["display_name"] = DISPLAY_NAME
    spec["metadata"] = {**spec.get("metadata", {}), "course_root": str(COURSE_ROOT)}
    return spec


def transport_options() -> list:
    """JupyterLab options that encrypt the kernel's connection where pyzmq can
    (ipykernel warns at every start of a kernel over plain TCP)."""
    import zmq
    return ["--KernelManager.transport_encryption=auto"] if zmq.has("curve") else []


def ensure_kernel() -> Path:
    """Register (or repair) the course kernel; returns its folder. Idempotent."""
    folder = kernel_dir()
    spec_file = folder / "kernel.json"
    try:
        current = json.loads(spec_file.read_text())
    except (OSError, ValueError):
        current = None
    if current != wanted_spec():
        from ipykernel.kernelspec import install
        # ipykernel's own installer (it also copies the logos), into this prefix.
        prefix = sys.prefix if in_virtualenv() else str(LOCAL_JUPYTER.parent / "jupyter-prefix")
        installed = Path(install(kernel_name=KERNEL_NAME, display_name=DISPLAY_NAME, prefix=prefix))
        if installed != folder:  # the course-local case: move it under LOCAL_JUPYTER
            import shutil
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(installed), folder)
            shutil.rmtree(prefix, ignore_errors=True)
        spec_file.write_text(json.dumps(wanted_spec(), indent=1) + "\n")
    return folder


def jupyter_env(env=None) -> dict:
    """`env` (default: this process's environment) with what a Jupyter process
    started by the course needs to find the kernel."""
    env = dict(os.environ if env is None else env)
    if not in_virtualenv():
        parts = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
        if str(LOCAL_JUPYTER) not in parts:
            env["JUPYTER_PATH"] = os.pathsep.join([str(LOCAL_JUPYTER), *parts])
    return env


def use_course_kernel():
    """Make this process (and what it starts) find the course kernel."""
    ensure_kernel()
    os.environ.update(jupyter_env())


def check_kernel():
    """For `course doctor`: (ok, detail, fix). The kernel that a Jupyter started
    here would pick for the notebooks must run this Python, from this folder."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    fix = "./course lab registers it (or: python -m coursekit.kernel)"
    manager = KernelSpecManager()
    manager.kernel_dirs = [str(Path(d) / "kernels") for d in _jupyter_path()]
    try:
        spec = manager.get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        return False, f"kernel {KERNEL_NAME!r} is not registered", fix
    python = spec.argv[0] if spec.argv else "?"
    root = (spec.metadata or {}).get("course_root")
    where = spec.resource_dir
    if Path(python).resolve() != Path(sys.executable).resolve():
        return False, f"{where} runs {python}, not this checkout's {sys.executable}", fix
    if root != str(COURSE_ROOT):
        return False, f"{where} belongs to the course folder {root}, not {COURSE_ROOT}", fix
    return True, f"{KERNEL_NAME} in {where} (this Python, this folder)", ""


def _jupyter_path():
    from jupyter_core.paths import jupyter_path
    saved = os.environ.get("JUPYTER_PATH")
    os.environ.update(jupyter_env())
    try:
        return jupyter_path()
    finally:
        if saved is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = saved


if __name__ == "__main__":
    print(f"registered {KERNEL_NAME} in {ensure_kernel()}")
