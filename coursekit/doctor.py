"""`course doctor`: is this machine ready for the course? One line per item,
OK or FAIL, and for each FAIL what to do about it."""
import importlib
import platform
import sys

from coursekit import COURSE_ROOT


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def _requirement(name):
    """The version range pyproject.toml asks for, as a packaging SpecifierSet."""
    from packaging.requirements import Requirement
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads((COURSE_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d).specifier for d in deps if Requirement(d).name == name)


def _package(name, module, fix):
    version = _version(module)
    if version is None:
        return False, "not installed", fix
    wanted = _requirement(name)
    if not wanted.contains(version.split("+")[0], prereleases=True):
        return False, f"{version}, but the course needs {wanted}", fix
    return True, version, ""


def check_python():
    ok = sys.version_info >= (3, 10)
    return ok, platform.python_version(), "" if ok else "install Python 3.10 or newer and set COURSE_PYTHON"


def check_gpu():
    import torch
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return True, f"{props.name} (sm_{props.major}{props.minor}, CUDA {torch.version.cuda})", ""
    return True, ("none: GPU tests skip; Triton kernels run on CPU under TRITON_INTERPRET=1 "
                  "(slow, small shapes only)"), ""


def check_triton():
    if platform.system() != "Linux":
        return True, "not available off Linux: Triton exercises skip", ""
    return _package("triton", "triton", "./course reinstalls it; or: pip install -c constraints.txt triton")


def check_model():
    from coursekit.impl import Implementation
    impl = Implementation("model")
    try:
        impl.module("softmax")
    except Exception as err:  # a student's syntax error lands here
        return False, f"cannot import model/: {err}", "fix the error above in your model/ code"
    return True, str(COURSE_ROOT / "model"), ""


def check_kernel():
    from coursekit.kernel import check_kernel as kernel_points_here
    return kernel_points_here()


def check_isolation():
    """What `course grade` can wall a submission off with here (instructors)."""
    from coursekit.sandbox import detect
    found = detect()
    fix = "" if found.strict else "for grading a class: apt-get install bubblewrap, and grade as root (cgroups)"
    return True, found.detail, fix


CHECKS = [
    ("python", check_python),
    ("torch", lambda: _package("torch", "torch", "./course reinstalls it; or: pip install -c constraints.txt torch")),
    ("triton", check_triton),
    ("jupyterlab", lambda: _package("jupyterlab", "jupyterlab", "pip install -c constraints.txt jupyterlab")),
    ("nbgrader", lambda: _package("nbgrader", "nbgrader", "pip install -c constraints.txt nbgrader")),
    ("pytest", lambda: _package("pytest", "pytest", "pip install -c constraints.txt pytest")),
    ("gpu", check_gpu),
    ("model/", check_model),
    ("kernel", check_kernel),
    ("isolation", check_isolation),
]


def run_doctor() -> int:
    failures = 0
    for name, check in CHECKS:
        try:
            ok, detail, fix = check()
        except Exception as err:  # a broken install must not stop the report
            ok, detail, fix = False, f"{type(err).__name__}: {err}", "reinstall: rm -rf .venv && ./course doctor"
        failures += not ok
        print(f"{'OK  ' if ok else 'FAIL'}  {name:11s} {detail}")
        if fix:
            print(f"      fix: {fix}")
    print("ready" if not failures else f"{failures} problem(s) found")
    return 1 if failures else 0
