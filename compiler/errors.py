"""The compiler's one exception type.

Everything the user can get wrong (a missing file, a spec that does not
validate, an unwritable output folder) becomes a `CompilerError` whose
message is written for the user, so the CLI can print it and exit with a
documented code instead of a traceback.
"""

from __future__ import annotations


class CompilerError(Exception):
    """A problem the user can fix; `message` says what, where and how."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
