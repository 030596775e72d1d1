# nbgrader course folder for Efficient Attention. Run nbgrader from here.
# Each lesson is an assignment named by its id (L01_scaled_dot_product, ...);
# `./course release OUT` copies notebooks/<id>.ipynb to source/<id>/ and runs
# generate_assignment, which records the graded cells' checksums in gradebook.db.
c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "efficient-attention"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
