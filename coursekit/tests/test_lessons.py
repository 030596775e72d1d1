"""coursekit.lessons: finding a lesson by any of the names students type."""
import pytest

from coursekit.cli import split_marker_options
from coursekit.lessons import LESSONS, find_lesson, lesson_folders


@pytest.mark.parametrize("name", ["L03", "3", "03", "l03", "L03_masks", "masks", " masks "])
def test_find_lesson_accepts_every_spelling(name):
    assert find_lesson(name).id == "L03_masks"


def test_find_lesson_two_digit_numbers():
    assert find_lesson("8").id == "L08_fused_ops"


def test_unknown_lesson_error_lists_the_lessons():
    with pytest.raises(ValueError, match="unknown lesson 'L99'") as err:
        find_lesson("L99")
    assert all(lesson.id in str(err.value) for lesson in LESSONS)


# -- a lesson in parts (L05: PyTorch, then Triton) ------------------------------

@pytest.mark.parametrize("name, part", [("L05.1", "L05.1_flash_attention_pytorch"), ("5.1", "L05.1_flash_attention_pytorch"),
                                        ("05.2", "L05.2_flash_attention_triton"),
                                        ("flash_attention_triton", "L05.2_flash_attention_triton"),
                                        ("L05.2_flash_attention_triton", "L05.2_flash_attention_triton")])
def test_find_lesson_names_a_part(name, part):
    lesson = find_lesson(name)
    assert lesson.id == part and lesson.select and lesson.folder == "L05_flash_attention"


@pytest.mark.parametrize("name", ["L05", "5", "L05_flash_attention", "flash_attention"])
def test_the_whole_lesson_is_every_part(name):
    lesson = find_lesson(name)
    assert lesson.id == "L05_flash_attention" and lesson.select is None
    assert set(lesson.modules) == {"flash_attention", "flash_attention_triton"}


def test_parts_share_the_folder_and_split_its_tests():
    parts = [lesson for lesson in LESSONS if lesson.folder == "L05_flash_attention"]
    assert [p.code for p in parts] == ["L05.1", "L05.2"]
    assert len({p.tests for p in parts}) == 1 and parts[0].tests.name == "L05_flash_attention"
    for markers in (["basic"], ["basic", "triton"], ["advanced", "triton", "gpu"], ["advanced"]):
        assert sum(p.selects(markers) for p in parts) == 1, f"a test with {markers} belongs to exactly one part"
    assert parts[1].marker_expression("basic or advanced") == "(basic or advanced) and (triton)"
    assert find_lesson("L03").marker_expression("basic") == "basic"


def test_every_module_belongs_to_one_exercise_and_folders_are_unique():
    modules = [m for lesson in LESSONS for m in lesson.modules]
    assert len(modules) == len(set(modules))
    folders = [lesson.folder for lesson in lesson_folders()]
    assert len(folders) == len(set(folders)) == len({lesson.folder for lesson in LESSONS})


@pytest.mark.parametrize("options, expressions, rest", [
    (["-x", "-m", "slow"], ["slow"], ["-x"]),
    (["-mnot slow", "-k", "scale"], ["not slow"], ["-k", "scale"]),
    (["--markexpr=gpu", "-q"], ["gpu"], ["-q"]),
    (["--markexpr", "a", "-m", "b"], ["a", "b"], []),
])
def test_a_students_marker_is_split_off_to_be_combined(options, expressions, rest):
    assert split_marker_options(options) == (expressions, rest)
