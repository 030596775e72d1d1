"""Tooling for the Efficient Attention course: the lesson table, the
implementation switch, test helpers and references, the pytest plugin, the
stub generator, the self-checks and the `course` command line."""
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent.parent
