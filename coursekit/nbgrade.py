"""nbgrader's Execute step, with the answers and the graded cells in two
kernels (coursekit.nbcarry says why and how).

instructor/nbgrader/nbgrader_config.py puts `SeparateKernels` where nbgrader's
`Execute` stands in `Autograde.autograde_preprocessors`; everything around it
(the sanitize steps, the checksums, IgnorePattern, LimitOutput, SaveAutoGrades,
the feedback) is nbgrader's own and sees the submission's cells only. The
options of `Execute` (timeout, interrupt_on_timeout, ...) apply to both kernels.
"""
import copy
import os

import nbformat
from nbgrader.preprocessors import Execute

from coursekit import nbcarry


class SeparateKernels(Execute):

    def _source_notebook(self, resources):
        """The instructor's source notebook of this assignment, or None."""
        info = resources.get("nbgrader", {})
        assignment, notebook = info.get("assignment"), info.get("notebook")
        if not assignment or not notebook:
            return None
        try:
            from nbgrader.coursedir import CourseDirectory
            coursedir = CourseDirectory(config=self.config)
            folder = coursedir.format_path(coursedir.source_directory, ".", assignment)
        except Exception:
            folder = os.path.join("source", assignment)
        path = os.path.join(folder, f"{notebook}.ipynb")
        if not os.path.isfile(path):
            self.log.warning("no source notebook %s: the submitted instructor cells run in the graded kernel", path)
            return None
        return nbformat.read(path, as_version=4)

    _before_cell = None

    def preprocess_cell(self, cell, resources, index):
        if self._before_cell is not None:
            self._before_cell(cell)
        return super().preprocess_cell(cell, resources, index)

    def preprocess(self, nb, resources=None, km=None):
        resources = resources or {}
        path = resources.get("metadata", {}).get("path") or os.getcwd()
        language = {}

        def in_folder(folder):
            return dict(resources, metadata=dict(resources.get("metadata", {}), path=folder))

        def run_answers(notebook, folder):
            # Its own client (this one runs kernel B meanwhile), with the same options, and with IPC its
            # own sockets' folder: kernels starting together would pick the same socket names, and the
            # answers' sandbox must not see the graded kernel's sockets (coursekit.nbsandbox).
            config = copy.deepcopy(self.config)
            if config.get("KernelManager", {}).get("transport") == "ipc" and config.KernelManager.get("ip"):
                sockets = os.path.join(os.path.dirname(config.KernelManager.ip), "answers")
                os.makedirs(sockets, exist_ok=True)
                config.KernelManager.ip = os.path.join(sockets, "k")
            client = Execute(config=config, log=self.log)
            return client.preprocess(notebook, in_folder(folder))[0]

        def run_graded(notebook, folder, before_cell):
            self._before_cell = before_cell
            try:
                executed, _ = super(SeparateKernels, self).preprocess(notebook, in_folder(folder))
            finally:
                self._before_cell = None
                language.update(self.nb.metadata.get("language_info", {}))
            return executed

        merged = nbcarry.run_separately(nb, self._source_notebook(resources), run_answers, run_graded, path)
        if language:
            merged.metadata["language_info"] = language
        self.nb = merged
        return merged, resources
