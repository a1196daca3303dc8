"""Error types that decide the CLI's exit status.

`InputError` is bad input from the user (spec, image, weights): the CLI prints one line
``error: <what>, <where>`` and exits with status 2. Anything else is an internal error (status 1).
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input. The message is one line naming what is wrong and where."""

    def __init__(self, what: str, where: str | None = None) -> None:
        self.what = what
        self.where = where
        super().__init__(f"{what}, {where}" if where else what)

    def in_spec(self, spec_where: str) -> InputError:
        """This error with the spec file named after its field (``image in spec.json``); an
        error whose place already names a file (``in ...``) is kept as it is."""
        if self.where and not self.where.startswith("in "):
            return InputError(self.what, f"{self.where} {spec_where}")
        return self
