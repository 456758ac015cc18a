"""Multi-turn prompts: a prompt row's ``messages`` list, checked the same everywhere.

A prompt-file row may hold ``messages`` (``[{role, content}, ...]``) instead of, or as well
as, ``text``. The conversation so far ends with the user's turn the model answers; a
``system`` turn may open it. Where a prompt is shown as one string (annotation tasks, the
playbook, word counts, strata by length) it is `transcript` of its messages unless the row
has its own ``text``. No torch here: the compiler's and the runtime's checks share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhfspec.common.jsonl import read_objects, refusal

ROLES = ("system", "user", "assistant")
#: How a role is labelled in a transcript (and in the plain model format, runtime/train/formatting.py).
LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def messages_problem(value: Any) -> str | None:
    """What is wrong with a ``messages`` value, or None when it is a valid conversation."""
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of {role, content} objects"
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            return f"item {index}: must be an object with 'role' and 'content'"
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            return f"item {index}: unknown key(s) {', '.join(map(repr, extra))}"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"item {index}: 'role' must be one of {', '.join(ROLES)}, got {role!r}"
        if not isinstance(content, str) or not content.strip():
            return f"item {index}: 'content' must be a non-empty string"
        if role == "system" and index != 0:
            return f"item {index}: a 'system' turn may only come first"
    if value[-1]["role"] != "user":
        return "the last turn must be the user's (the turn the model answers)"
    return None


def transcript(messages: list[Mapping[str, str]]) -> str:
    """A conversation as one readable string: ``User: ...`` / ``Assistant: ...`` lines."""
    return "\n".join(f"{LABELS[m['role']]}: {m['content'].strip()}" for m in messages)


def row_problems(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for a prompt row's ``text``/``messages``: at least one of them, each
    well formed (``text`` a non-empty string, ``messages`` per `messages_problem`)."""
    has_text, has_messages = "text" in row, "messages" in row
    if not has_text and not has_messages:
        return [("text", "missing (a prompt row needs 'text' or 'messages')")]
    problems = []
    if has_text and (not isinstance(row["text"], str) or not row["text"].strip()):
        problems.append(("text", f"must be a non-empty string, got {row['text']!r}"))
    if has_messages and (problem := messages_problem(row["messages"])):
        problems.append(("messages", problem))
    return problems


def row_text(row: Mapping[str, Any]) -> str:
    """A (valid) prompt row's display text: its ``text``, else its messages' transcript."""
    if isinstance(row.get("text"), str):
        return str(row["text"])
    return transcript(row["messages"])


def row_messages(row: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """A (valid) prompt row's conversation, or None for a one-turn ``text`` prompt."""
    messages = row.get("messages")
    if not messages:
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_messages_file(path: Path, display: str) -> None:
    """Refuse a JSONL file (SFT demonstrations, rows to score) whose ``messages`` fields are
    not well-formed conversations, naming file, line and problem."""
    problems: list[str] = []
    for number, row in read_objects(path, display, problems):
        if "messages" in row and (problem := messages_problem(row["messages"])):
            problems.append(f"{display}: line {number}: field 'messages': {problem}")
    if problems:
        raise refusal(f"{display} refused", problems)
