"""coursekit.known_wrong.describe: reading a known-wrong implementation's header."""
import pytest

from coursekit.known_wrong import describe, known_wrong_files
from coursekit.lessons import LESSONS


def test_describe_reads_module_suite_and_first_docstring_line(tmp_path):
    path = tmp_path / "global_max.py"
    path.write_text(
        '"""Subtracts the global max, not the row max.\n'
        "\n"
        'Rows far below it underflow to 0/0."""\n'
        'MODULE = "softmax"\n'
        'CAUGHT_BY = "advanced"\n'
        "\n"
        "\n"
        "def stable_softmax(x, dim=-1):\n"
        "    return x\n"
    )
    assert describe(path) == ("softmax", "advanced", "Subtracts the global max, not the row max.")


def test_describe_defaults_to_the_basic_suite(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text('"""A bug."""\nMODULE = "softmax"\n')
    assert describe(path) == ("softmax", "basic", "A bug.")


def test_describe_without_module_raises(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text('"""A bug."""\nCAUGHT_BY = "basic"\n')
    with pytest.raises(ValueError, match="no MODULE"):
        describe(path)


KNOWN_WRONG = [(lesson, path) for lesson in LESSONS for path in known_wrong_files(lesson)]


@pytest.mark.parametrize("lesson, path", KNOWN_WRONG, ids=[f"{l.number}-{p.stem}" for l, p in KNOWN_WRONG])
def test_repo_known_wrong_files_are_well_formed(lesson, path):
    module, suite, summary = describe(path)
    assert module in lesson.modules
    assert suite in ("basic", "advanced")
    assert summary, "no docstring"
