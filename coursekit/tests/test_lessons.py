"""coursekit.lessons: finding a lesson by any of the names students type."""
import pytest

from coursekit.lessons import LESSONS, find_lesson


@pytest.mark.parametrize("name", ["L03", "3", "03", "l03", "L03_masks", "masks", " masks "])
def test_find_lesson_accepts_every_spelling(name):
    assert find_lesson(name).id == "L03_masks"


def test_find_lesson_two_digit_numbers():
    assert find_lesson("8").id == "L08_fused_ops"


def test_unknown_lesson_error_lists_the_lessons():
    with pytest.raises(ValueError, match="unknown lesson 'L99'") as err:
        find_lesson("L99")
    assert all(lesson.id in str(err.value) for lesson in LESSONS)
