"""The `course` command line (run it as ./course COMMAND from the course folder).

    lab [--refresh L03]       open your workspace in JupyterLab (--sources: the nbgrader sources, maintainers)
    check                     all tests against the reference + the self-checks (CI runs this)
    doctor                    is this machine ready? each item OK / FAIL with a fix
    test LESSON [--advanced]  one lesson's tests against your model/ (or --impl PKG)
    progress                  which lessons' basic and advanced suites your model/ passes
    sync-stubs [--check]      regenerate model/ from solutions/ (maintainers), or check drift
    sync-notebooks [--check]  give every notebook the course kernel and banner (maintainers)
    release OUT               build the student version into OUT and check nothing leaks (instructors)
    grade SUBMISSIONS         grade every student's model/ with the test suites (instructors)
    nbgrader ARGS             nbgrader in instructor/nbgrader, student code kept away from solutions/
"""
import argparse
import os
import subprocess
import sys

from coursekit import COURSE_ROOT, is_release
from coursekit.impl import NO_REFERENCE, impl_name, missing_reference
from coursekit.lessons import LESSONS, find_lesson

PASSTHROUGH = ("lab", "test", "nbgrader")  # commands that hand unknown options on (to jupyter lab, to pytest)
INSTRUCTOR_ONLY = ("check", "sync-stubs", "sync-notebooks", "release", "grade", "nbgrader")
STUDENT_LAB_CONFIG = COURSE_ROOT / "coursekit" / "student_lab"  # labconfig/: the nbgrader labextension off
NBGRADER_SERVER_EXTENSIONS = ("formgrader", "validate_assignment", "assignment_list", "course_list")


def pytest_command(*args):
    return [sys.executable, "-m", "pytest", *args]


def _no_reference(name):
    """In a student release, --impl solutions gets one clear line, not a traceback."""
    if missing_reference(name):
        print(f"course: {NO_REFERENCE}", file=sys.stderr)
        return True
    return False


def cmd_lab(args):
    from coursekit import workspace
    from coursekit.kernel import KERNEL_NAME, transport_options, use_course_kernel

    if _no_reference(impl_name()):
        return 2
    use_course_kernel()
    env = dict(os.environ)
    # The kernels import coursekit (and through it model/) from this folder, with or without .venv/.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(COURSE_ROOT)) if p)
    options = transport_options()
    if args.sources and is_release():
        print("course lab --sources: a student release has no source notebooks; ./course lab opens yours",
              file=sys.stderr)
        return 2
    if args.sources:  # maintainers: the nbgrader sources, nbgrader's instructor UI on
        root, start = COURSE_ROOT, "notebooks/00_start.ipynb"
    else:
        try:
            notes = workspace.sync(workspace.refresh_names(args.refresh or ()))
        except ValueError as err:
            print(f"course lab: {err}", file=sys.stderr)
            return 2
        for note in notes:
            print(f"course lab: {note}", flush=True)
        root, start = workspace.workspace_dir(), workspace.START
        # A student's lab: nbgrader's instructor UI (menu, Create Assignment, formgrader) off,
        # its server extensions not loaded (nor their "No nbgrader_config.py" warnings).
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            p for p in (str(STUDENT_LAB_CONFIG), env.get("JUPYTER_CONFIG_PATH")) if p)
        off = ", ".join(f'"nbgrader.server_extensions.{name}": False' for name in NBGRADER_SERVER_EXTENSIONS)
        options.append(f"--ServerApp.jpserver_extensions={{{off}}}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.append("--allow-root")  # containers often run as root
    os.chdir(root)
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
               f"--LabApp.default_url=/lab/tree/{start}",  # where the browser (and /) lands
               f"--MultiKernelManager.default_kernel_name={KERNEL_NAME}",  # for new notebooks too
               *options, *args.passthrough]
    os.execve(sys.executable, command, env)


def cmd_check(args):
    from coursekit.check import run_all
    return run_all(quick=args.quick)


def cmd_doctor(args):
    from coursekit.doctor import run_doctor
    return run_doctor()


def cmd_test(args):
    lesson = find_lesson(args.lesson)
    if not lesson.available:
        print(f"{lesson.id} has no tests yet.")
        return 1
    if _no_reference(impl_name(args.impl)):
        return 2
    own, passthrough = split_marker_options(args.passthrough)
    suites = lesson.marker_expression("basic or advanced" if args.advanced else "basic")
    for expression in own:  # a student's -m narrows the suite further; it never replaces it
        suites = f"({suites}) and ({expression})"
    command = pytest_command(str(lesson.tests), "-m", suites, "--impl", impl_name(args.impl), *passthrough)
    return subprocess.run(command, cwd=COURSE_ROOT).returncode


def split_marker_options(options):
    """([-m expressions], the other options) from pytest options: -m EXPR, -mEXPR, --markexpr[=]EXPR."""
    expressions, rest, options = [], [], list(options)
    while options:
        option = options.pop(0)
        if option in ("-m", "--markexpr") and options:
            expressions.append(options.pop(0))
        elif option.startswith("--markexpr="):
            expressions.append(option.split("=", 1)[1])
        elif option.startswith("-m") and len(option) > 2 and not option.startswith("--"):
            expressions.append(option[2:])
        else:
            rest.append(option)
    return expressions, rest


def cmd_progress(args):
    from coursekit.progress import show_progress
    if _no_reference(impl_name(args.impl)):
        return 2
    return show_progress(impl_name(args.impl))


def cmd_sync_stubs(args):
    from coursekit import stubs
    if not (COURSE_ROOT / "solutions").is_dir():
        print("no solutions/ here: stubs are generated by the course maintainers")
        return 1
    if args.check:
        problems = stubs.drift()
        for problem in problems:
            print(f"  {problem}")
        print("model/ is in sync with solutions/" if not problems
              else "model/ is out of sync: run ./course sync-stubs")
        return 1 if problems else 0
    changed = stubs.write_stubs()
    print(f"model/: {', '.join(changed)}" if changed else "model/ already in sync")
    return 0


def cmd_sync_notebooks(args):
    from coursekit.notebooks import sync_notebooks
    changes = sync_notebooks(check=args.check)
    for change in changes:
        print(f"  {change}")
    if args.check:
        print("notebooks/ have the course kernel and banner" if not changes
              else "notebooks/ need it: run ./course sync-notebooks")
        return 1 if changes else 0
    print(f"updated {len(changes)} item(s)" if changes else "notebooks/ already in sync")
    return 0


def cmd_release(args):
    from pathlib import Path

    from coursekit.release import build_release, find_leaks
    out = Path(args.out)
    build_release(out)
    leaks = find_leaks(out)
    for leak in leaks:
        print(f"  LEAK: {leak}")
    print(f"released the course into {out}" if not leaks else f"{len(leaks)} leak(s): do not hand {out} out")
    return 1 if leaks else 0


def cmd_nbgrader(args):
    from coursekit.release import nbgrader
    return nbgrader(*args.passthrough, check=False)


def cmd_grade(args):
    from pathlib import Path

    from coursekit.grade import IsolationError, Limits, grade_class
    lessons = [find_lesson(name) for name in args.lessons]
    limits = Limits(args.seconds_per_test, args.seconds_per_run, args.memory_mb, args.processes, args.disk_mb)
    try:
        grade_class(Path(args.submissions), lessons, Path(args.out), limits, gradescope=args.gradescope,
                    jobs=args.jobs, isolation=args.isolation)
    except IsolationError as err:
        print(f"refusing to grade: {err}")
        return 2
    print(f"wrote {args.out}/grades.csv, {args.out}/feedback/ and {args.out}/instructor_report.md")
    return 0


def _description():
    """The command list; a student release lists only the student's commands."""
    if not is_release():
        return __doc__
    return "\n".join(line for line in __doc__.splitlines()
                     if not line.strip() or line.split()[0] not in INSTRUCTOR_ONLY)


def build_parser():
    parser = argparse.ArgumentParser(prog="course", description=_description(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if is_release():  # a student release hides the instructor commands from the list (main() explains them)
        add_parser = sub.add_parser
        sub.add_parser = lambda name, **kw: add_parser(  # argparse lists a command only if it has a help
            name, **{k: v for k, v in kw.items() if k != "help" or name not in INSTRUCTOR_ONLY})

    p = sub.add_parser(
        "lab", help="open your workspace in JupyterLab (other options go to jupyter lab)",
        description="Open the course in JupyterLab, on your workspace: workspace/ in the course folder "
                    "(git ignores it), one notebook per lesson as a student receives it. Your notebooks are "
                    "yours: new lessons are added, one you changed or ran is never overwritten; when the course's version of "
                    "one you changed is newer, this says so, and --refresh takes it.",
        epilog="Every other option goes to JupyterLab as it is, e.g. --no-browser, --port 8890, "
               "--ServerApp.ip=0.0.0.0 (python -m jupyterlab --help-all lists them).")
    p.add_argument("--refresh", nargs="+", metavar="LESSON",
                   help="replace these notebooks (L03, start, all) by the course's current version; "
                        "yours move to workspace/backups/ first")
    p.add_argument("--sources", action="store_true",
                   help="maintainers: open the nbgrader source notebooks (answers, hidden tests) instead")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("check", help="every test against the reference, plus the self-checks")
    p.add_argument("--quick", action="store_true",
                   help="only checks 1-6: skip known-wrong, notebooks, release, simulated class, browser")
    p.set_defaults(func=cmd_check)

    sub.add_parser("doctor", help="check this machine").set_defaults(func=cmd_doctor)

    lesson_ids = ", ".join(lesson.id for lesson in LESSONS)
    p = sub.add_parser("test", help="run one lesson's tests (other options go to pytest, e.g. -x -k scale; "
                       "-m EXPR narrows the suite)",
                       epilog=f"LESSON: L01..L08, a number, or a full id ({lesson_ids}); a lesson in parts "
                              "runs one part (L05.1, L05.2) or all of them (L05)")
    p.add_argument("lesson")
    p.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    p.add_argument("--advanced", action="store_true", help="run the advanced suite too")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("progress", help="which lessons your model/ passes")
    p.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    p.set_defaults(func=cmd_progress)

    p = sub.add_parser("sync-stubs", help="regenerate model/ from solutions/ (overwrites model/!)")
    p.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    p.set_defaults(func=cmd_sync_stubs)

    p = sub.add_parser("sync-notebooks", help="give every notebook the course kernel and banner (maintainers)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 if a notebook needs it")
    p.set_defaults(func=cmd_sync_notebooks)

    p = sub.add_parser("release", help="build the student version of the course into OUT")
    p.add_argument("out")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("grade", help="grade a folder of submissions (one sub-folder per student)")
    p.add_argument("submissions")
    p.add_argument("--lessons", nargs="+", required=True, help="e.g. L01 L02")
    p.add_argument("--out", default="grades", help="where grades.csv and feedback/ go (default: grades/)")
    from coursekit.sandbox import Limits
    defaults = Limits()
    p.add_argument("--seconds-per-test", type=float, default=defaults.seconds_per_test)
    p.add_argument("--seconds-per-run", type=float, default=defaults.seconds_per_run)
    p.add_argument("--memory-mb", type=int, default=defaults.memory_mb, help="memory of one run")
    p.add_argument("--processes", type=int, default=defaults.processes, help="processes and threads of one run")
    p.add_argument("--disk-mb", type=int, default=defaults.disk_mb, help="writable space of one run")
    p.add_argument("--isolation", choices=("auto", "strict", "none"), default="auto",
                   help="strict: refuse to grade without bwrap and a cgroup; none: plain subprocesses "
                        "(trusted code only); auto (default): the best this machine offers")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs side by side (default: one per core)")
    p.add_argument("--gradescope", action="store_true", help="also write Gradescope results.json per student")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("nbgrader", help="run nbgrader in instructor/nbgrader (e.g. autograde L01_scaled_dot_product)")
    p.set_defaults(func=cmd_nbgrader)

    sub.add_parser("help", help="show this help").set_defaults(func=lambda a: parser.print_help())
    return parser


def main(argv=None):
    parser = build_parser()
    args, args.passthrough = parser.parse_known_args(argv)
    if args.passthrough and args.command not in PASSTHROUGH:
        parser.error(f"unrecognized arguments: {' '.join(args.passthrough)}")
    if not args.command:
        parser.print_help()
        return 0
    if args.command in INSTRUCTOR_ONLY and is_release():
        print(f"course {args.command}: an instructor command; this student release of the course has no "
              "solutions/ or instructor tools. Run it in the instructor's course repository. "
              "Your commands: ./course help", file=sys.stderr)
        return 2
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
