"""coursekit.nbcarry without kernels: which names an answer carries, what
counts as data, what a forged answer file gets, which cells kernel A needs."""
import base64
import io
import os
import pickle

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from coursekit import nbcarry


def cell(source, **nbgrader):
    c = new_code_cell(source)
    if nbgrader:
        c.metadata["nbgrader"] = {"schema_version": 3, **nbgrader}
    return c


def answer(source, gid):
    return cell(source, solution=True, grade=False, locked=False, grade_id=gid)


def graded(source, gid, points=1):
    return cell(source, solution=False, grade=True, locked=True, grade_id=gid, points=points)


def blob(values):
    buffer = io.BytesIO()
    torch.save(values, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def test_bound_names_are_module_level_only():
    source = ("%matplotlib inline\nimport torch.nn.functional as F\nx, (y, z) = 1, (2, 3)\n"
              "def f(a):\n    inner = a\n    return inner\nsq = [k * k for k in range(3)]\n"
              "g = lambda b: b\nfor i in range(2):\n    total = i\n")
    assert nbcarry.bound_names(source) == {"F", "x", "y", "z", "f", "sq", "g", "i", "total"}
    assert nbcarry.bound_names("x = (") is None


def test_used_names_are_those_read_before_bound():
    assert nbcarry.used_names("y = x + 1\nz = y") == {"x"}
    assert nbcarry.used_names("x += 1") == {"x"}
    assert nbcarry.used_names("f = lambda base, D=128: base ** D") == set()
    assert nbcarry.used_names("def g(a):\n    return a * configs[a]") == {"configs"}


def test_only_plain_data_is_carried():
    class Sneaky:
        def __eq__(self, other):
            return True

    class Tensorish(torch.Tensor):
        pass

    t = torch.arange(3.0).as_subclass(Tensorish)
    values = {"n": 3, "x": 1.5, "s": "a", "b": True, "none": None, "nested": [1, (2.0, {"k": "v"})],
              "t": t, "np_like": type("F64", (float,), {})(2.5)}
    carried = {name: nbcarry._as_data(value) for name, value in values.items()}
    assert type(carried["t"]) is torch.Tensor and torch.equal(carried["t"], torch.arange(3.0))
    assert type(carried["np_like"]) is float and carried["np_like"] == 2.5
    loaded = nbcarry.load(blob(carried))
    assert torch.equal(loaded.pop("t"), carried.pop("t")) and loaded == carried
    for bad in (Sneaky(), lambda: 1, [1, Sneaky()], {Sneaky: 1}, torch.nn.Linear(2, 2)):
        with pytest.raises(nbcarry.NotData):
            nbcarry._as_data(bad)


def test_a_forged_pickle_is_not_loaded():
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    forged = base64.b64encode(pickle.dumps({"x": Payload()})).decode()
    assert nbcarry.load(forged) == {}
    assert nbcarry.load("not base64 at all!") == {}
    assert nbcarry.load(blob([1, 2])) == {}            # not a dict of names
    assert nbcarry.load(blob({"x": 1, "y": [2.0]})) == {"x": 1, "y": [2.0]}


def test_bind_mirrors_the_answer():
    namespace = {"x": "instructor's", "helper": 1}
    nbcarry.bind(namespace, blob({"y": 2}), ["x", "y"])
    assert namespace == {"y": 2, "helper": 1}          # x was not carried: unbound, as if never set


def test_kernel_a_gets_answers_and_what_they_need_not_graded_cells(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("intro"), cell("import math\nimport torch"), cell("configs = {'a': 2}"),
        cell("unrelated = torch.randn(1000)"), answer("### BEGIN SOLUTION\nv = configs['a'] * math.pi\n"
                                                  "helper = 3\n### END SOLUTION", "ans"),
        graded("assert abs(v - 2 * math.pi) < 1e-9", "test_ans")])
    source = nbformat.from_dict(nb)
    source.cells[4].source = "v = configs['a'] * math.pi"   # the instructor's answer binds v only
    nb_a, where, harvests = nbcarry.answers_notebook(nb, source)
    assert sorted(where.values()) == [1, 2, 4]
    assert list(harvests.values()) == [(f"{nbcarry.HARVEST_DIR}/0.pt", ["v"])]
    nb_b, where_b = nbcarry.graded_notebook(nb, source, {4: ["v"]})
    data = blob({"v": 6.28})
    for c in nb_b.cells:
        nbcarry.fill_bind_cell(c, lambda: {4: data})
    text = "\n".join(c.source for c in nb_b.cells)
    assert data in text
    assert "helper = 3" not in text and "BEGIN SOLUTION" not in text
    assert list(where_b.values()) == [1, 2, 3, 5]       # the trusted cells' outputs and the graded cell


def test_graded_cells_no_kernel_ran_score_zero():
    nb = new_notebook(cells=[graded("assert True", "t1"), graded("assert True", "t2")])
    ran = nbformat.from_dict(nb)
    ran.cells[0].execution_count = 1
    merged = nbcarry.merge(nb, [(ran, {0: 0})])
    assert merged.cells[0].outputs == [] and merged.cells[1].outputs[0].output_type == "error"


def test_a_linked_answer_file_is_not_followed(tmp_path):
    folder = tmp_path / "a"
    (folder / nbcarry.HARVEST_DIR).mkdir(parents=True)
    secret = tmp_path / "gradebook.db"
    secret.write_bytes(b"secret")
    os.symlink(secret, folder / nbcarry.HARVEST_DIR / "0.pt")
    (folder / nbcarry.HARVEST_DIR / "1.pt").write_bytes(b"data")
    blobs = nbcarry.read_blobs(str(folder), {0: (f"{nbcarry.HARVEST_DIR}/0.pt", []),
                                             1: (f"{nbcarry.HARVEST_DIR}/1.pt", [])})
    assert list(blobs) == [1]
