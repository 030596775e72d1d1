"""The student's workspace: the folder `course lab` opens.

notebooks/ holds nbgrader *source* notebooks (answers, hidden tests), which a
student must not see, and which JupyterLab's autosave would dirty. The lab
opens workspace/ instead (git ignores it): each notebook as a student receives
it (nbgrader's ClearSolutions and ClearHiddenTests, outputs cleared), made once
and then the student's own:

- a notebook that is not there yet is added (a lesson has appeared);
- a notebook the student has is never overwritten, except when its cells are
  still the ones the student got, it has never been run (no outputs), and the
  course's version has changed: then nothing is lost;
- a notebook the student has changed, whose course version has changed too,
  is kept and reported, with the command that takes the new version
  (`course lab --refresh L03`, which first moves the student's copy to
  workspace/backups/).

`.course-workspace.json` remembers which version of each notebook the student
got (a fingerprint of its cells' sources). model/ and tutorial/ appear inside
the workspace as links, so the lab's file browser reaches the code a student
edits and the lesson texts. The notebooks' kernels run in workspace/, next to
notebooks/, so their relative paths (../benchmarks/results/...) still hold.
COURSE_WORKSPACE moves the workspace elsewhere (the browser test uses it).
"""
import hashlib
import json
import os
import time
from pathlib import Path

import nbformat

from coursekit import COURSE_ROOT
from coursekit.lessons import LESSONS, find_lesson
from coursekit.notebooks import NOTEBOOKS, has_outputs, load, release_version

START = "00_start.ipynb"
MANIFEST = ".course-workspace.json"
BACKUPS = "backups"
LINKS = ("model", "tutorial")  # shown inside the workspace; notebooks link to tutorial/


def workspace_dir() -> Path:
    return Path(os.environ.get("COURSE_WORKSPACE") or COURSE_ROOT / "workspace").resolve()


def sources() -> dict:
    """{notebook file name: source notebook} for the start page and every landed lesson."""
    found = {START: NOTEBOOKS / START}
    found.update({lesson.notebook.name: lesson.notebook for lesson in LESSONS
                  if lesson.available and lesson.notebook.exists()})
    return {name: path for name, path in found.items() if path.exists()}


def student_version(path):
    """The notebook as a student receives it, with its links to the lesson
    texts pointing into the workspace."""
    nb = release_version(load(path))
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for folder in LINKS:
                cell.source = cell.source.replace(f"](../{folder}/", f"]({folder}/")
    return nb


def fingerprint(nb) -> str:
    """What a student would call the notebook's content: its cells' sources
    (outputs, execution counts and metadata change by merely running it)."""
    cells = [[cell.cell_type, cell.source] for cell in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def refresh_names(requested) -> set:
    """Notebook names for `--refresh` arguments: a lesson (L03, 3, masks),
    `start`, or `all`."""
    available = sources()
    names = set()
    for item in requested:
        if item.lower() == "all":
            names |= set(available)
        elif item.lower() in ("start", "00", "00_start"):
            names.add(START)
        else:
            name = find_lesson(item).notebook.name  # ValueError names the lessons
            if name not in available:
                raise ValueError(f"{item}: the lesson has no notebook yet")
            names.add(name)
    return names


def _link(workspace: Path):
    for folder in LINKS:
        link = workspace / folder
        if not link.exists() and not link.is_symlink():
            try:
                link.symlink_to(os.path.relpath(COURSE_ROOT / folder, workspace), target_is_directory=True)
            except OSError:  # no symlinks here (some Windows setups): the lab still works
                pass


def _write(nb, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    try:  # the course made it: trusted (else the lab warns "not trusted" at every open)
        from nbformat.sign import NotebookNotary
        NotebookNotary().sign(nb)
    except Exception:  # no writable Jupyter data folder: only the warning stays
        pass


def sync(refresh=()) -> list:
    """Bring the workspace up to date; returns one line per thing a student
    should know. `refresh`: names from refresh_names(), replaced after a backup."""
    workspace = workspace_dir()
    first_time = not workspace.exists()
    workspace.mkdir(parents=True, exist_ok=True)
    _link(workspace)
    manifest_path = workspace / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    added, notes = [], []
    for name, source in sources().items():
        fresh = student_version(source)
        new = fingerprint(fresh)
        target = workspace / name
        if name in refresh and target.exists():
            backup = workspace / BACKUPS / f"{target.stem}-{stamp}.ipynb"
            backup.parent.mkdir(exist_ok=True)
            target.rename(backup)
            _write(fresh, target)
            notes.append(f"{name}: replaced by the course's current version; yours is in "
                         f"{backup.relative_to(workspace.parent)}")
        elif not target.exists():
            _write(fresh, target)
            added.append(name)
        else:
            try:
                theirs = load(target)
                untouched = fingerprint(theirs) if not has_outputs(theirs) else None
            except Exception:  # unreadable: treat as the student's, never overwrite it
                untouched = None
            got = manifest.get(name)
            if got is None or got == new:
                pass  # the student's notebook; the course's version has not changed since
            elif untouched == got:
                _write(fresh, target)  # the same cells as they got, never run: nothing to lose
                notes.append(f"{name}: updated to the course's new version (you had not changed or run it)")
            else:
                lesson = name.split("_")[0] if name != START else "start"
                notes.append(f"{name}: the course's version has changed since you got it; yours is kept. "
                             f"To take the new one: ./course lab --refresh {lesson} "
                             f"(your copy moves to {workspace.name}/{BACKUPS}/)")
                continue  # keep the old fingerprint: remind again next time
        manifest[name] = new
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if first_time:
        notes.insert(0, f"made your workspace {workspace} ({len(added)} notebooks): your work stays there")
    elif added:
        notes.insert(0, f"new in your workspace: {', '.join(added)}")
    return notes
