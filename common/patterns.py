"""Detector regexes from a spec: compiled with bounds, every failure a message.

A disqualifier's `detect.regex` is user input that the evaluation compiles
and runs on every sampled reply. `re.compile` fails in more ways than
`re.error`: a pattern nested thousands deep raises RecursionError, a
repeat count past 2**32 OverflowError. The validator checks every pattern
with `regex_problem` so that each failure is a located diagnostic and the
runtime only ever compiles patterns that passed.
"""

from __future__ import annotations

import re

MAX_PATTERN_LENGTH = 2000
MAX_GROUP_DEPTH = 20
#: sre's own repeat bound is 2**32 - 1; a detector never needs more than this
MAX_REPEAT = 1000
_REPEAT = re.compile(r"(?<!\\)\{(\d*),?(\d*)\}")


def _group_depth(pattern: str) -> int:
    depth = deepest = 0
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` is refused as a detector, or None when it compiles within the bounds."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"it is {len(pattern):,} characters long (at most {MAX_PATTERN_LENGTH:,})"
    depth = _group_depth(pattern)
    if depth > MAX_GROUP_DEPTH:
        return f"its groups nest {depth} deep (at most {MAX_GROUP_DEPTH})"
    for match in _REPEAT.finditer(pattern):
        if any(n and (len(n) > 6 or int(n) > MAX_REPEAT) for n in match.groups()):
            return f"repeat count {match.group(0)[:20]} is above {MAX_REPEAT}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    except (RecursionError, OverflowError, ValueError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def compile_detector(pattern: str) -> re.Pattern[str]:
    """Compile a detector the validator accepted; refuse anything else with ValueError."""
    problem = regex_problem(pattern)
    if problem is not None:
        raise ValueError(f"detector regex refused: {problem}")
    return re.compile(pattern)
