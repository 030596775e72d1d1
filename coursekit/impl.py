"""The implementation switch.

Tests, notebooks and benchmarks never import `model` or `solutions` by name.
They ask for an implementation package chosen at run time:

    pytest --impl solutions ...        # or COURSE_IMPL=solutions
    impl = Implementation()            # default: $COURSE_IMPL, else "model"
    impl.softmax.stable_softmax(x)     # imports <package>.softmax on first use

Any importable package with model/'s module names can be graded this way.
"""
import importlib
import importlib.util
import os
import sys

from coursekit import COURSE_ROOT, is_release

DEFAULT_IMPL = "model"
ENV_VAR = "COURSE_IMPL"


REFERENCE = "solutions"
NO_REFERENCE = ("this is the student release of the course: it has no reference solutions, so "
                f"--impl {REFERENCE} / {ENV_VAR}={REFERENCE} cannot run here. Leave both unset to use your model/.")


def impl_name(explicit=None) -> str:
    return explicit or os.environ.get(ENV_VAR) or DEFAULT_IMPL


def missing_reference(name) -> bool:
    """True when `name` asks for the reference in a student release."""
    return REFERENCE in str(name).split(",") and is_release()


def _ensure_course_root_importable():
    # Appended, not prepended: an explicit PYTHONPATH (a grader's sandbox) wins.
    root = str(COURSE_ROOT)
    if root not in sys.path:
        sys.path.append(root)


class Implementation:
    """Attribute access imports one module of the chosen package."""

    def __init__(self, name=None):
        self.name = impl_name(name)

    def module(self, module: str):
        _ensure_course_root_importable()
        qualified = f"{self.name}.{module}"
        if missing_reference(self.name):
            raise ModuleNotFoundError(NO_REFERENCE, name=qualified)
        try:
            return importlib.import_module(qualified)
        except ModuleNotFoundError as err:
            if err.name not in (self.name, qualified):
                raise  # the module exists but imports something missing
            raise ModuleNotFoundError(
                f"implementation package {self.name!r} has no module {module!r} "
                f"(set --impl / ${ENV_VAR}; the course's own packages are 'model' and 'solutions')",
                name=qualified,
            ) from err

    @property
    def path(self) -> str:
        """The folder the package is imported from (notebook banners print it)."""
        _ensure_course_root_importable()
        if missing_reference(self.name):
            raise ModuleNotFoundError(NO_REFERENCE, name=self.name)
        spec = importlib.util.find_spec(self.name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"no implementation package {self.name!r} (set --impl / ${ENV_VAR})",
                                      name=self.name)
        return list(spec.submodule_search_locations)[0]

    def __getattr__(self, module: str):
        if module.startswith("_"):
            raise AttributeError(module)
        try:
            return self.module(module)
        except ModuleNotFoundError as err:
            if err.name != f"{self.name}.{module}":
                raise
            # getattr(impl, name, default) must work as for any object
            raise AttributeError(str(err)) from err

    def __repr__(self):
        return f"Implementation({self.name!r})"
