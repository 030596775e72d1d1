"""coursekit.stubs: model/ generated from solutions/ by stripping solution blocks."""
from pathlib import Path

import pytest

from coursekit import COURSE_ROOT
from coursekit.stubs import drift, strip_solutions, write_stubs


def raise_line(function, indent="    "):
    return (f'{indent}raise NotImplementedError("L02: implement {function} in model/softmax.py '
            f'(see tutorial/L02_stable_softmax/README.md)")\n')


def test_block_in_function_becomes_one_raise_and_everything_else_is_kept():
    source = (
        '"""Module docstring."""\n'
        "import torch\n"
        "\n"
        "\n"
        "def stable_softmax(x, dim=-1):\n"
        '    """Function docstring, kept."""\n'
        "    x = x.double()\n"
        "    ### BEGIN SOLUTION\n"
        "    e = torch.exp(x - x.amax(dim, keepdim=True))\n"
        "    return e / e.sum(dim, keepdim=True)\n"
        "    ### END SOLUTION\n"
        "\n"
        "\n"
        "CONSTANT = 1\n"
    )
    assert strip_solutions(source, "softmax") == (
        '"""Module docstring."""\n'
        "import torch\n"
        "\n"
        "\n"
        "def stable_softmax(x, dim=-1):\n"
        '    """Function docstring, kept."""\n'
        "    x = x.double()\n"
        + raise_line("stable_softmax") +
        "\n"
        "\n"
        "CONSTANT = 1\n"
    )


def test_raise_keeps_the_indentation_of_the_block():
    source = (
        "def f(x):\n"
        "    if x:\n"
        "        ### BEGIN SOLUTION\n"
        "        return 1\n"
        "        ### END SOLUTION\n"
        "    return 0\n"
    )
    assert strip_solutions(source, "softmax") == (
        "def f(x):\n"
        "    if x:\n"
        + raise_line("f", indent="        ") +
        "    return 0\n"
    )


def test_module_level_block_is_dropped_with_the_blank_lines_after_it():
    source = (
        "import torch\n"
        "\n"
        "\n"
        "### BEGIN SOLUTION\n"
        "def _helper(x):\n"
        "    return x\n"
        "### END SOLUTION\n"
        "\n"
        "\n"
        "def f(x):\n"
        "    return x\n"
    )
    assert strip_solutions(source, "softmax") == (
        "import torch\n"
        "\n"
        "\n"
        "def f(x):\n"
        "    return x\n"
    )


def test_block_in_a_method_names_class_and_method_not_an_earlier_one():
    source = (
        "class Softmax:\n"
        "    def first(self):\n"
        "        return 1\n"
        "\n"
        "    def forward(self, x):\n"
        "        ### BEGIN SOLUTION\n"
        "        return x\n"
        "        ### END SOLUTION\n"
    )
    assert raise_line("Softmax.forward", indent="        ") in strip_solutions(source, "softmax")


def test_block_in_a_nested_function_names_the_nesting():
    source = (
        "def outer(x):\n"
        "    def inner(y):\n"
        "        ### BEGIN SOLUTION\n"
        "        return y\n"
        "        ### END SOLUTION\n"
        "    return inner(x)\n"
    )
    assert raise_line("outer.inner", indent="        ") in strip_solutions(source, "softmax")


def test_block_after_a_nested_helper_names_the_enclosing_function():
    source = (
        "def outer(x):\n"
        "    def helper(y):\n"
        "        return y\n"
        "    ### BEGIN SOLUTION\n"
        "    return helper(x)\n"
        "    ### END SOLUTION\n"
    )
    assert raise_line("outer") in strip_solutions(source, "softmax")


def test_block_inside_an_if_names_the_function():
    source = "def f(x):\n    if x:\n        ### BEGIN SOLUTION\n        return 1\n        ### END SOLUTION\n    return 0\n"
    assert raise_line("f", indent="        ") in strip_solutions(source, "softmax")


def test_class_level_block_is_dropped_not_turned_into_a_raise():
    source = (
        "class Attention:\n"
        "    def forward(self, x):\n"
        "        return self._project(x)\n"
        "\n"
        "    ### BEGIN SOLUTION\n"
        "    def _project(self, x):\n"
        "        return x\n"
        "    ### END SOLUTION\n"
    )
    stub = strip_solutions(source, "softmax")
    assert stub == "class Attention:\n    def forward(self, x):\n        return self._project(x)\n\n"
    compile(stub, "<stub>", "exec")


@pytest.mark.parametrize("source, message", [
    ("def f():\n    return 1\n    ### END SOLUTION\n",
     "softmax.py:3: END SOLUTION without BEGIN"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n",
     "softmax.py:3: BEGIN SOLUTION inside the block opened at line 2"),
    ("def f():\n    pass\n    ### BEGIN SOLUTION\n    return 1\n",
     "softmax.py:3: BEGIN SOLUTION never ends"),
], ids=["end-without-begin", "nested-begin", "unterminated"])
def test_malformed_blocks_raise_naming_the_line(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source, "softmax")


@pytest.mark.parametrize("path", sorted((COURSE_ROOT / "solutions").glob("*.py")), ids=lambda p: p.name)
def test_stripped_solutions_compile(path):
    compile(strip_solutions(path.read_text(), path.stem), f"model/{path.name}", "exec")


def test_repo_model_is_in_sync_with_solutions():
    assert drift() == []


SOLUTION = (
    "def stable_softmax(x, dim=-1):\n"
    "    ### BEGIN SOLUTION\n"
    "    return x.softmax(dim)\n"
    "    ### END SOLUTION\n"
)
STUB = "def stable_softmax(x, dim=-1):\n" + raise_line("stable_softmax")


@pytest.fixture
def course(tmp_path) -> Path:
    """A course folder whose model/ matches its solutions/."""
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "__init__.py").write_text("# no blocks: copied as is\n")
    (tmp_path / "solutions" / "softmax.py").write_text(SOLUTION)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("# no blocks: copied as is\n")
    (tmp_path / "model" / "softmax.py").write_text(STUB)
    return tmp_path


def test_drift_is_empty_for_a_synced_course(course):
    assert drift(root=course) == []


def test_drift_reports_missing_changed_and_extra_files(course):
    (course / "model" / "__init__.py").unlink()
    (course / "model" / "softmax.py").write_text(STUB + "# edited\n")
    (course / "model" / "extra.py").write_text("")
    assert drift(root=course) == [
        "model/__init__.py is missing",
        "model/softmax.py differs from solutions/softmax.py with its solution blocks stripped",
        "model/extra.py has no counterpart in solutions/",
    ]


def test_write_stubs_restores_missing_and_changed_files(course):
    (course / "model" / "__init__.py").unlink()
    (course / "model" / "softmax.py").write_text(SOLUTION)
    assert write_stubs(root=course) == ["__init__.py", "softmax.py"]
    assert (course / "model" / "softmax.py").read_text() == STUB
    assert drift(root=course) == []
    assert write_stubs(root=course) == []  # nothing left to rewrite


def test_write_stubs_removes_files_without_a_solution(course):
    (course / "model" / "extra.py").write_text("")
    assert write_stubs(root=course) == ["removed extra.py"]
    assert not (course / "model" / "extra.py").exists()
    assert drift(root=course) == []


def test_write_stubs_creates_model_folder(course):
    for path in (course / "model").iterdir():
        path.unlink()
    (course / "model").rmdir()
    assert write_stubs(root=course) == ["__init__.py", "softmax.py"]
    assert drift(root=course) == []
