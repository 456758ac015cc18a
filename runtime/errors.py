"""The runtime's one exception type: a message for the user, and an exit code."""

from __future__ import annotations


class RunError(Exception):
    """A problem with data, a stage's gates or the run directory that the user can act on."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
