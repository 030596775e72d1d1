"""nbgrader's Execute step, with the answers and the graded cells in two
kernels (coursekit.nbcarry says why and how).

instructor/nbgrader/nbgrader_config.py puts `SeparateKernels` where nbgrader's
`Execute` stands in `Autograde.autograde_preprocessors`; everything around it
(the sanitize steps, the checksums, IgnorePattern, LimitOutput, SaveAutoGrades,
the feedback) is nbgrader's own and sees the submission's cells only. The
options of `Execute` (timeout, interrupt_on_timeout, ...) apply to both kernels.
"""
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

    def preprocess(self, nb, resources=None, km=None):
        resources = resources or {}
        path = resources.get("metadata", {}).get("path") or os.getcwd()
        language = {}

        def run(notebook, folder):
            own = dict(resources, metadata=dict(resources.get("metadata", {}), path=folder))
            try:
                executed, _ = super(SeparateKernels, self).preprocess(notebook, own)
            finally:
                language.update(self.nb.metadata.get("language_info", {}))
            return executed

        merged = nbcarry.run_separately(nb, self._source_notebook(resources), run, path)
        if language:
            merged.metadata["language_info"] = language
        self.nb = merged
        return merged, resources
