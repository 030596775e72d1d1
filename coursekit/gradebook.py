"""Autograding may change the scores of the students it graded, and nothing else.

`course nbgrader autograde` copies nbgrader's gradebook.db before it starts;
afterwards `undo_foreign_changes` compares the two row by row. Rows of the
submissions just graded (submitted_assignment, submitted_notebook, grade,
comment, and a new student row) may change; any other change (another
student's grade, a cell's checksum or points, an assignment) is reported and
put back as it was.
"""
import sqlite3

OWNED = ("submitted_assignment", "submitted_notebook", "grade", "comment")


def _rows(db):
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    rows = {}
    for table in tables:
        cursor = db.execute(f'SELECT * FROM "{table}"')
        columns = [c[0] for c in cursor.description]
        if "id" not in columns:
            continue
        rows[table] = (columns, {row[columns.index("id")]: row for row in cursor})
    return rows


def _owner(rows, table, row_id):
    """(student, assignment name) a row belongs to, or None."""
    def get(t, i):
        columns, by_id = rows.get(t, ([], {}))
        row = by_id.get(i)
        return dict(zip(columns, row)) if row else None
    if table in ("grade", "comment"):
        row = get(table, row_id)
        return _owner(rows, "submitted_notebook", row["notebook_id"]) if row else None
    if table == "submitted_notebook":
        row = get(table, row_id)
        return _owner(rows, "submitted_assignment", row["assignment_id"]) if row else None
    if table == "submitted_assignment":
        row = get(table, row_id)
        assignment = get("assignment", row["assignment_id"]) if row else None
        return (row["student_id"], assignment["name"]) if assignment else None
    return None


def undo_foreign_changes(before_path, after_path, students, assignment):
    """Put back every change of `after_path` not belonging to (one of
    `students`, `assignment`); returns one line per change undone. `students`
    None means every student."""
    with sqlite3.connect(before_path) as before_db:
        before = _rows(before_db)
    problems = []
    with sqlite3.connect(after_path) as db:
        after = _rows(db)
        # Who owns a row: the submission tables as they are now (new rows
        # included), everything they point to (assignments) as it was.
        view = {table: (columns, {**rows, **after.get(table, (columns, {}))[1]}) if table in OWNED
                else (columns, rows) for table, (columns, rows) in before.items()}

        def allowed(table, row_id, student=None):
            if table == "student":
                return row_id not in before.get("student", ([], {}))[1] and (students is None or row_id in students)
            if table not in OWNED:
                return False
            owner = _owner(view, table, row_id)
            return bool(owner) and owner[1] == assignment and (students is None or owner[0] in students)

        for table, (columns, old_rows) in before.items():
            new_columns, new_rows = after.get(table, (columns, {}))
            marks = ", ".join("?" for _ in columns)
            for row_id, row in old_rows.items():
                if new_rows.get(row_id) != row and not allowed(table, row_id):
                    problems.append(f"{table} {row_id}: {'changed' if row_id in new_rows else 'deleted'}")
                    db.execute(f'INSERT OR REPLACE INTO "{table}" ({", ".join(columns)}) VALUES ({marks})', row)
            for row_id in [i for i in new_rows if i not in old_rows]:
                if not allowed(table, row_id):
                    problems.append(f"{table} {row_id}: added")
                    db.execute(f'DELETE FROM "{table}" WHERE id = ?', (row_id,))
        db.commit()
    return problems
