"""`course progress`: which lessons' basic and advanced suites the student's
model/ passes, as a table. One pytest run over every lesson that has landed."""

from coursekit.lessons import LESSONS
from coursekit.runner import run_with_report


def _tally(results, lesson, suite):
    """(passed, total) over the tests of one suite that ran (skips excluded);
    for a part of a lesson, only the tests its `select` keeps."""
    prefix = f"testcases/{lesson.folder}/test_{suite}.py::"
    ran = [r for node, r in results.items() if node.startswith(prefix) and r["outcome"] != "skipped"
           and lesson.selects(r.get("markers", ()))]
    return sum(r["outcome"] == "passed" for r in ran), len(ran)


def _cell(passed, total):
    if total == 0:
        return "-"
    mark = "done" if passed == total else "    "
    return f"{passed:3d}/{total:<3d} {mark}"


def show_progress(impl) -> int:
    landed = [lesson for lesson in LESSONS if lesson.available]
    folders = list(dict.fromkeys(lesson.tests for lesson in landed))  # the parts of a lesson share one folder
    _, results = run_with_report(folders, impl, "-q", "--tb=no")
    if not results:
        print(f"could not run the tests for {impl!r}: try ./course test L01 to see why")
        return 1
    print(f"progress of {impl!r}\n")
    print(f"{'lesson':32s} {'basic':12s} {'advanced':12s}")
    for lesson in LESSONS:
        if not lesson.available:
            print(f"{lesson.id:32s} {'(not yet released)':25s}")
            continue
        print(f"{lesson.id:32s} {_cell(*_tally(results, lesson, 'basic')):12s} "
              f"{_cell(*_tally(results, lesson, 'advanced')):12s}")
    print("\nnext: ./course test LESSON (basic first), then ./course test LESSON --advanced")
    return 0
