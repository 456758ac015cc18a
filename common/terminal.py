"""Text bound for a terminal, with control characters made visible.

Annotator ids, file names and spec values reach the terminal in messages;
an escape sequence inside one could retitle the terminal, move the cursor,
hide a line or reorder text (bidirectional overrides). Every line the CLI
prints passes through `terminal_safe`, which keeps newlines and tabs and
writes every other control character as a visible escape.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """`text` with C0/C1 control characters (but newline and tab) and bidi controls escaped."""
    return _CONTROL.sub(_escape, text)
