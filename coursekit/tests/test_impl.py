"""coursekit.impl: the implementation switch (--impl / $COURSE_IMPL / "model")."""
import importlib

import pytest

from coursekit.impl import ENV_VAR, Implementation, impl_name


def test_attribute_is_the_module_of_the_chosen_package():
    assert Implementation("solutions").softmax is importlib.import_module("solutions.softmax")


def test_missing_module_error_names_package_and_module():
    with pytest.raises(ModuleNotFoundError, match="package 'solutions' has no module 'nope'"):
        Implementation("solutions").module("nope")


def test_missing_package_error_names_package_and_module():
    with pytest.raises(ModuleNotFoundError, match="package 'no_such_package' has no module 'softmax'"):
        Implementation("no_such_package").module("softmax")


def test_getattr_default_works_for_a_missing_module():
    impl = Implementation("solutions")
    assert getattr(impl, "nope", 42) == 42
    assert not hasattr(impl, "_private")


def test_explicit_name_wins_over_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "from_env")
    assert impl_name("explicit") == "explicit"
    assert Implementation("explicit").name == "explicit"


def test_environment_is_used_without_explicit_name(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "from_env")
    assert impl_name() == "from_env"
    assert Implementation().name == "from_env"


def test_default_is_model(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert impl_name() == "model"
    assert Implementation().name == "model"
