"""``UserError``: the base of every error that is the input's fault, not the program's (a bad
config, data row, weights file, run folder...). The CLI prints such an error as one
``error: ...`` line and exits 2; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """An error the user can fix; its message says what and where."""
