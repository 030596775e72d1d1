"""coursekit.check: the rule that every graded notebook cell ends in a check."""
import pytest

from coursekit.check import _ends_in_assert


@pytest.mark.parametrize("source", [
    "assert x == 1",
    "y = f()\nassert y, 'message'",
    "torch.testing.assert_close(a, b)",
    "for d in (1, 2):\n    got = f(d)\n    assert got == d",
    "with torch.no_grad():\n    assert_close(a, b)",
    "x = 1\n### BEGIN HIDDEN TESTS\nassert x == 1\n### END HIDDEN TESTS",
])
def test_cells_ending_in_a_check_pass(source):
    assert _ends_in_assert(source)


@pytest.mark.parametrize("source", [
    "x == 1",                           # evaluates to False, raises nothing: nbgrader would give full marks
    "assert x\nprint('done')",
    "for d in (1, 2):\n    f(d)",
    "torch.allclose(a, b)",
    "",
    "assert (",                         # not valid Python
])
def test_cells_that_would_score_without_checking_fail(source):
    assert not _ends_in_assert(source)
