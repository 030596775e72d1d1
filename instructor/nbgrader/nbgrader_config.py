# nbgrader course folder for Efficient Attention. Run nbgrader through
# `./course nbgrader ARGS` (from the course folder): it runs here, with the
# student code's imports limited to a solutions-free copy of the tooling.
# Each lesson is an assignment named by its id (L01_scaled_dot_product, ...);
# `./course release OUT` copies notebooks/<id>.ipynb to source/<id>/ and runs
# generate_assignment, which records the graded cells' checksums in gradebook.db.
c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "efficient-attention"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# A cell that runs longer than this is interrupted and scores 0; the rest of
# the notebook still runs. Each lesson notebook takes under a minute in all.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True

# nbgrader gives 0 to a graded cell that writes anything to stderr. Harmless
# warnings (a UserWarning from torch, a DeprecationWarning) must not zero a
# correct answer: stderr output matching this pattern is dropped first.
c.IgnorePattern.pattern = r"\w*Warning: "

# Keep runaway prints from bloating the gradebook and feedback.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 60

# Answer cells must not rig the graded cells. nbgrader's Execute step is
# replaced by one that runs the answer cells in one kernel and the graded cells
# in another, fresh kernel that gets the answers as data only and the
# instructor's own versions of the other cells; that kernel restores the
# comparison functions and IPython's cell machinery before every graded cell
# (coursekit/nbcarry.py, coursekit/nbgrade.py, coursekit/nbguard.py).
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput,
                                    SaveAutoGrades)

c.Autograde.autograde_preprocessors = ["coursekit.nbgrade.SeparateKernels", IgnorePattern,
                                       ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
                                       AssignLatePenalties, CheckCellMetadata]
