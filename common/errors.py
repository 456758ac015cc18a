"""One error base class for everything a user can get wrong, carrying its exit code.

Every problem the user can act on (a spec that does not validate, a bad
annotation row, a stage whose gates failed, a busy run directory) is an
`RlhfspecError` whose message says what, where and how to fix it. The CLI
prints the message and exits with `exit_code`, so no user error ever
surfaces as a traceback or as exit 3 (reserved for internal errors).
"""

from __future__ import annotations

#: Exit codes, documented in docs/cli.md.
EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130


class RlhfspecError(Exception):
    """A problem the user can fix; `message` says what, where and how."""

    def __init__(self, message: str, *, exit_code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class CompilerError(RlhfspecError):
    """Raised while loading, validating or compiling a spec."""


class RunError(RlhfspecError):
    """A problem with data, a stage's gates or the run directory."""
