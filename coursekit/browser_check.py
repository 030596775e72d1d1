"""The course in a real browser, as a student meets it (a step of `course check`).

    python -m coursekit.browser_check       # the same, alone

`./course lab` starts on a workspace in a temporary folder (COURSE_WORKSPACE),
with COURSE_IMPL=solutions; headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium) then checks that:

1. the start page opens, on the course kernel;
2. nbgrader's instructor menu is absent (the menu bar itself is there);
3. a lesson notebook, answered (its answer cells filled in, as a student who
   has finished would have them) and already in the workspace, is kept as it
   is, and runs every cell on the reference with no error;
4. afterwards the course folder's `git status --porcelain` is what it was.

It skips, saying why, where Selenium, Chromium or chromedriver is missing
(.ci/run installs them with apt where it can).
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

from coursekit import COURSE_ROOT
from coursekit.kernel import DISPLAY_NAME, KERNEL_NAME
from coursekit.lessons import find_lesson

LESSON = "L01"  # quick to run on a CPU, and it has answer cells and graded cells
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
STARTUP_SECONDS = 90
RUN_SECONDS = 240


def _find(*names):
    return next((path for path in map(shutil.which, names) if path), None)


def unavailable():
    """Why the browser test cannot run here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "Selenium is not installed (./course installs it from pyproject.toml)"
    if not _find("chromium", "chromium-browser"):
        return "no Chromium (Debian: apt-get install chromium chromium-driver; .ci/run does it as root)"
    if not _find("chromedriver"):
        return "no chromedriver (Debian: apt-get install chromium-driver)"
    return None


def _git_status():
    if not (COURSE_ROOT / ".git").exists():
        return None
    return subprocess.run(["git", "status", "--porcelain"], cwd=COURSE_ROOT, capture_output=True,
                          text=True).stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _answered(lesson):
    """The lesson's notebook with its answers in, hidden tests out."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput

    from coursekit.workspace import LINKS
    nb = nbformat.read(str(lesson.notebook), as_version=4)
    for step in (ClearHiddenTests(), ClearOutput()):
        nb, _ = step.preprocess(nb, {})
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for folder in LINKS:
                cell.source = cell.source.replace(f"](../{folder}/", f"]({folder}/")
    for cell in nb.cells:
        cell.source = cell.source.replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION\n", "")
        cell.source = cell.source.replace("### BEGIN SOLUTION", "").replace("### END SOLUTION", "")
    return nb


class Failure(Exception):
    pass


def _wait(what, condition, seconds, every=0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the page is still loading
            value = None
        if value:
            return value
        time.sleep(every)
    raise Failure(f"timed out after {seconds:.0f} s waiting for {what}")


def _browser(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(_find("chromedriver")), options=options)


def _menu_labels(driver):
    return [e.text.strip() for e in driver.find_elements("css selector", ".lm-MenuBar-itemLabel")]


def _kernel_label(driver):
    labels = [e.text.strip() for e in driver.find_elements("css selector", ".jp-KernelName, .jp-Toolbar-kernelName")]
    return next((label for label in labels if label), "")


# JavaScript run in the page (the lab exposes itself as window.jupyterapp with
# --LabApp.expose_app_in_browser): `w` is the current notebook if it is arguments[0].
_CURRENT = ("const app = window.jupyterapp; let w = app && app.shell.currentWidget;"
            "if (!w || !w.context || w.context.path !== arguments[0]) w = null;")
# Done when the kernel is idle and every code cell has run, or one has failed
# (JupyterLab stops "run all" at the first error).
_FINISHED = _CURRENT + """
if (!w || w.sessionContext.session.kernel.status !== 'idle') return false;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
const failed = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
return failed || cells.every(c => c.model.executionCount);
"""


def run(log=print) -> bool:
    lesson = find_lesson(LESSON)
    before = _git_status()
    with tempfile.TemporaryDirectory(prefix="course-browser-") as tmp:
        tmp = Path(tmp)
        workspace = tmp / "workspace"
        workspace.mkdir()
        answered = _answered(lesson)
        nbformat.write(answered, str(workspace / lesson.notebook.name))
        port, token = _free_port(), secrets.token_hex(16)
        env = dict(os.environ, COURSE_WORKSPACE=str(workspace), COURSE_IMPL="solutions",
                   JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
                   JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-settings"))
        server_log = tmp / "lab.log"
        start = time.perf_counter()
        with open(server_log, "w") as out:
            server = subprocess.Popen(
                [str(COURSE_ROOT / "course"), "lab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
                 "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                 "--LabApp.expose_app_in_browser=True"],
                cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        driver = None
        base = f"http://127.0.0.1:{port}"
        try:
            _wait("the lab server", lambda: _get_json(f"{base}/api/status?token={token}"), STARTUP_SECONDS)
            log(f"  ./course lab is up ({time.perf_counter() - start:.0f} s)")
            driver = _browser(tmp / "chromium-profile")
            driver.get(f"{base}/?token={token}")  # / lands on the start page (default_url)
            _wait("the start page's notebook", lambda: "00_start.ipynb" in driver.current_url
                  and driver.find_elements("css selector", ".jp-NotebookPanel .jp-Cell"), STARTUP_SECONDS)
            label = _wait("the kernel's name in the toolbar", lambda: _kernel_label(driver)
                          if _kernel_label(driver) not in ("", "No Kernel") else None, STARTUP_SECONDS)
            sessions = _get_json(f"{base}/api/sessions?token={token}")
            kernels = [s["kernel"]["name"] for s in sessions]
            if label != DISPLAY_NAME or kernels != [KERNEL_NAME]:
                raise Failure(f"the start page runs kernel {label!r} (sessions: {kernels}), not {DISPLAY_NAME!r}")
            log(f"  start page open, kernel {label!r}")
            menus = _menu_labels(driver)
            if "Kernel" not in menus or any("nbgrader" in m.lower() for m in menus):
                raise Failure(f"menu bar: {menus} (wanted the lab's menus and no nbgrader menu)")
            log(f"  menu bar {menus}: no nbgrader menu")

            target = workspace / lesson.notebook.name
            from coursekit.workspace import fingerprint
            if fingerprint(nbformat.read(str(target), as_version=4)) != fingerprint(answered):
                raise Failure(f"./course lab overwrote the student's {target.name}")
            # Open it in the running lab (the page would restore the start page's tab first, and
            # "run all" acts on whichever notebook is current), then run it there.
            driver.execute_script(f"window.jupyterapp.commands.execute('docmanager:open', {{path: {target.name!r}}})")
            _wait(f"{target.name} and its kernel", lambda: driver.execute_script(
                _CURRENT + "return !!(w && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle')", target.name), STARTUP_SECONDS)
            started = time.perf_counter()
            driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            _wait(f"every cell of {target.name} to run (or one to fail)",
                  lambda: driver.execute_script(_FINISHED, target.name), RUN_SECONDS, every=1)
            ran = time.perf_counter() - started
            driver.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
            _wait("the notebook to be saved", lambda: driver.execute_script(
                _CURRENT + "return !!w && !w.context.model.dirty", target.name), 30)
            time.sleep(1)
            nb = nbformat.read(str(target), as_version=4)
            code = [cell for cell in nb.cells if cell.cell_type == "code"]
            errors = [(i, o.get("ename"), o.get("evalue")) for i, cell in enumerate(code)
                      for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            not_run = [i for i, cell in enumerate(code) if not cell.get("execution_count")]
            if errors or not_run:
                raise Failure(f"{target.name} on the reference: errors in code cells {errors}, "
                              f"cells that did not run: {not_run}")
            log(f"  {target.name}: all {len(code)} code cells ran on the reference, no error ({ran:.0f} s)")
        except Failure as err:
            log(f"  FAILED: {err}")
            log("  lab output (last lines):\n    " + "\n    ".join(server_log.read_text().splitlines()[-30:]))
            return False
        finally:
            if driver is not None:
                driver.quit()
            _stop(server)
        warnings = [line for line in server_log.read_text().splitlines()
                    if "nbgrader_config" in line or "TCP" in line or "frozen modules" in line]
        if warnings:
            log("  unwanted lines in the lab's output:\n    " + "\n    ".join(warnings))
            return False
    after = _git_status()
    if before is not None and after != before:
        log(f"  the course folder's git status changed:\n{after}")
        return False
    log("  git status of the course folder unchanged" + (" (clean)" if before == "" else ""))
    return True


def _stop(server):
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and the kernels it started
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> int:
    reason = unavailable()
    if reason:
        print(f"browser test skipped: {reason}")
        return 0
    return 0 if run() else 1


if __name__ == "__main__":
    sys.exit(main())
