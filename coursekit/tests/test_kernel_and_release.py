"""The course kernel per checkout, the notebooks' frame (kernelspec, banner),
the student release's behaviour, and the benchmarks' imports."""
import ast
import json
import shutil
import sys

import nbformat

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from coursekit import COURSE_ROOT, cli, impl, kernel, notebooks


@pytest.fixture
def local_kernel(tmp_path, monkeypatch):
    """COURSE_NO_VENV's case: no virtual environment, a course-local Jupyter path."""
    monkeypatch.setattr(kernel, "in_virtualenv", lambda: False)
    monkeypatch.setattr(kernel, "LOCAL_JUPYTER", tmp_path / "jupyter")
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    return tmp_path / "jupyter"


def test_without_a_venv_the_kernel_is_registered_in_the_course_folder(local_kernel, monkeypatch):
    folder = kernel.ensure_kernel()
    assert folder == local_kernel / "kernels" / kernel.KERNEL_NAME
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert spec["metadata"]["course_root"] == str(COURSE_ROOT)
    assert kernel.jupyter_env({})["JUPYTER_PATH"].split(":")[0] == str(local_kernel)
    ok, detail, _ = kernel.check_kernel()
    assert ok, detail
    before = (folder / "kernel.json").stat().st_mtime_ns
    kernel.ensure_kernel()
    assert (folder / "kernel.json").stat().st_mtime_ns == before, "registering again changes nothing"


def test_doctor_fails_a_kernel_of_another_checkout(local_kernel):
    folder = kernel.ensure_kernel()
    spec = json.loads((folder / "kernel.json").read_text())
    spec["metadata"]["course_root"] = "/elsewhere/course"
    (folder / "kernel.json").write_text(json.dumps(spec))
    ok, detail, fix = kernel.check_kernel()
    assert not ok and "/elsewhere/course" in detail and "./course lab" in fix
    spec["argv"][0] = "/elsewhere/.venv/bin/python"
    (folder / "kernel.json").write_text(json.dumps(spec))
    ok, detail, _ = kernel.check_kernel()
    assert not ok and "/elsewhere/.venv/bin/python" in detail
    kernel.ensure_kernel()
    assert kernel.check_kernel()[0], "ensure_kernel repairs it"


def test_the_kernel_is_never_registered_user_wide():
    assert "share/jupyter" in str(kernel.data_dir()) or kernel.data_dir() == kernel.LOCAL_JUPYTER
    from jupyter_core.paths import jupyter_data_dir
    assert not str(kernel.kernel_dir()).startswith(jupyter_data_dir())


def test_standardize_sets_kernel_and_banner_once():
    first = new_code_cell('from coursekit.impl import Implementation\nimpl = Implementation()\n'
                          'print(f"implementation under test: {impl.name}")')
    nb = new_notebook(cells=[first], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    assert len(notebooks.standardize(nb)) == 2
    assert nb.metadata.kernelspec["name"] == kernel.KERNEL_NAME
    assert notebooks.BANNER in nb.cells[0].source
    assert notebooks.standardize(nb) == [], "idempotent"
    source = "from coursekit.impl import Implementation\nimpl = Implementation()\nx = 1"
    bare = new_notebook(cells=[new_code_cell(source)])
    notebooks.standardize(bare)
    assert bare.cells[0].source.split("\n")[2] == notebooks.BANNER, "inserted right after impl is made"


def test_committed_notebooks_have_the_course_frame():
    assert notebooks.sync_notebooks(check=True) == [], "run ./course sync-notebooks"


def test_the_banner_prints_the_implementations_folder():
    assert impl.Implementation("model").path == str(COURSE_ROOT / "model")


@pytest.fixture
def release(monkeypatch):
    monkeypatch.setattr(impl, "is_release", lambda: True)
    monkeypatch.setattr(cli, "is_release", lambda: True)


def test_in_a_release_the_reference_is_refused_with_the_reason(release, capsys):
    with pytest.raises(ModuleNotFoundError, match="student release .* no reference solutions"):
        impl.Implementation("solutions").module("softmax")
    with pytest.raises(ModuleNotFoundError, match="student release"):
        impl.Implementation("solutions").path
    assert cli.main(["test", "L01", "--impl", "solutions"]) == 2
    assert cli.main(["progress", "--impl", "solutions"]) == 2
    assert "no reference solutions" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["check"], ["release", "out"], ["sync-stubs"], ["sync-notebooks"],
                                     ["nbgrader", "autograde", "L01"], ["grade", "subs", "--lessons", "L01"]])
def test_in_a_release_instructor_commands_say_so(release, capsys, command):
    assert cli.main(command) == 2
    assert "instructor command" in capsys.readouterr().err


def test_a_release_lists_only_the_students_commands(release):
    text = cli.build_parser().format_help()
    assert "lab" in text and "test LESSON" in text
    assert "sync-stubs [--check]" not in text and "release OUT" not in text


def test_the_release_readme_is_the_students():
    from coursekit.release import student_readme
    text = student_readme()
    assert "./course lab" in text and "./course test L01" in text
    assert "L01_scaled_dot_product" in text, "the lesson table is filled in"
    for phrase in ("course check", "solutions/", "--impl solutions", "{lessons}"):
        assert phrase not in text


def test_lab_help_says_other_options_go_to_jupyterlab(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lab", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "goes to JupyterLab" in out and "--sources" in out and "--refresh" in out


@pytest.mark.parametrize("script", sorted(p.name for p in (COURSE_ROOT / "benchmarks").glob("*.py")
                                          if p.name != "_path.py"))
def test_each_benchmark_finds_coursekit_without_an_install(script):
    """`python benchmarks/x.py` has benchmarks/ on sys.path, not the course folder:
    benchmarks/_path.py adds it, and must be imported before coursekit."""
    tree = ast.parse((COURSE_ROOT / "benchmarks" / script).read_text())
    lines = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                lines.setdefault(alias.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module:
            lines.setdefault(node.module.split(".")[0], node.lineno)
    assert "_path" in lines, f"{script} does not import _path"
    assert lines["_path"] < lines.get("coursekit", 10**9), f"{script} imports coursekit before _path"


@pytest.fixture
def lab_command(monkeypatch, tmp_path):
    """What `course lab` would exec: (argv, env), the workspace in tmp_path."""
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setattr(kernel, "use_course_kernel", lambda: None)
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(cli.os, "execve", lambda exe, argv, env: seen.update(argv=argv, env=env))
    monkeypatch.setattr(cli.os, "chdir", lambda path: seen.update(cwd=path))

    def run(*args):
        seen.clear()
        cli.main(["lab", *args])
        return seen
    return run


def test_the_students_lab_opens_the_workspace_without_nbgrader(lab_command, tmp_path):
    seen = lab_command("--no-browser")
    argv, env = seen["argv"], seen["env"]
    assert f"--ServerApp.root_dir={tmp_path / 'workspace'}" in argv and seen["cwd"] == tmp_path / "workspace"
    assert "--LabApp.default_url=/lab/tree/00_start.ipynb" in argv
    assert f"--MultiKernelManager.default_kernel_name={kernel.KERNEL_NAME}" in argv
    assert argv[-1] == "--no-browser", "other options go to JupyterLab"
    off = next(a for a in argv if a.startswith("--ServerApp.jpserver_extensions="))
    for name in cli.NBGRADER_SERVER_EXTENSIONS:
        assert f'"nbgrader.server_extensions.{name}": False' in off
    assert str(cli.STUDENT_LAB_CONFIG) in env["JUPYTER_CONFIG_PATH"].split(":")
    assert str(COURSE_ROOT) in env["PYTHONPATH"].split(":"), "kernels import coursekit from this folder"
    assert (tmp_path / "workspace" / "00_start.ipynb").exists()


def test_the_sources_lab_is_the_course_folder_with_nbgrader(lab_command):
    argv = lab_command("--sources")["argv"]
    assert f"--ServerApp.root_dir={COURSE_ROOT}" in argv
    assert "--LabApp.default_url=/lab/tree/notebooks/00_start.ipynb" in argv
    assert not any(a.startswith("--ServerApp.jpserver_extensions=") for a in argv)


def test_the_student_lab_config_disables_the_installed_nbgrader_labextension():
    import nbgrader
    from pathlib import Path
    disabled = json.loads((cli.STUDENT_LAB_CONFIG / "labconfig" / "page_config.json").read_text())
    labextension = Path(nbgrader.__file__).parent / "labextension" / "package.json"
    names = [json.loads(labextension.read_text())["name"]] if labextension.exists() else ["@jupyter/nbgrader"]
    assert all(disabled["disabledExtensions"].get(name) is True for name in names)


def test_in_a_release_lab_sources_is_refused(release, lab_command, capsys):
    assert lab_command("--sources") == {}
    assert "no source notebooks" in capsys.readouterr().err


def test_a_release_leaves_out_the_instructor_only_reading(tmp_path):
    """The L05 Hopper appendix is a complete Triton FlashAttention: not in a student release."""
    from coursekit import release as rel
    for path in rel.INSTRUCTOR_ONLY:
        assert (COURSE_ROOT / path).exists(), f"INSTRUCTOR_ONLY names {path}, which does not exist"
    for top in ("tutorial", "benchmarks"):
        shutil.copytree(COURSE_ROOT / top, tmp_path / top, ignore=rel.release_ignore)
    for path in rel.INSTRUCTOR_ONLY:
        assert not (tmp_path / path).exists(), f"{path} was copied into the release"
    assert (tmp_path / "tutorial" / "L05_flash_attention" / "README.md").exists()
    assert (tmp_path / "benchmarks" / "flash_attention_gpu.py").exists()
