"""Puts this course folder first on sys.path, so that `python benchmarks/<script>.py`
imports coursekit (and through it model/ or solutions/) from this checkout,
with nothing installed. Each script imports it before coursekit."""
import sys
from pathlib import Path

COURSE_ROOT = str(Path(__file__).resolve().parent.parent)
if COURSE_ROOT not in sys.path:
    sys.path.insert(0, COURSE_ROOT)
