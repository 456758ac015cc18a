"""Run untrusted work (user templates) in a child process with time and memory limits.

Jinja's sandbox stops attribute tricks but not a template that loops for
hours, recurses, or builds a string of gigabytes (`range(10**9)` is refused,
`'x' * 10**10` or nested loops are not). So user templates render in a
forked child with an address-space limit, a CPU-time limit and an alarm;
an exception there comes back as a message with the template's file and
line (Jinja maps its frames to the template source), and a child killed by
a limit is reported as such. Nothing the child does reaches the parent's
memory or files.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

SECONDS = 20
MEMORY_BYTES = 1024 * 1024 * 1024  # on top of what the process already maps


class LimitedError(Exception):
    """The work failed or went over a limit; the message says where and why."""


class _Alarm(Exception):
    pass


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _Alarm


def template_location(exc: BaseException) -> str:
    """`file:line` of the innermost template frame in the traceback ('' when none)."""
    name, line = getattr(exc, "filename", None), getattr(exc, "lineno", None)
    if isinstance(name, str) and isinstance(line, int):
        return f"{name}:{line}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _describe(exc: BaseException, seconds: int) -> str:
    where = template_location(exc)
    prefix = f"{where}: " if where else ""
    if isinstance(exc, _Alarm):
        return f"{prefix}took longer than {seconds}s"
    if isinstance(exc, MemoryError):
        return f"{prefix}needed more memory than the {MEMORY_BYTES // 2**20} MiB allowed"
    if isinstance(exc, RecursionError):
        return f"{prefix}recursed too deeply (a macro or include calling itself?)"
    return f"{prefix}{type(exc).__name__}: {str(exc)[:500]}"


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _child(write: int, work: Callable[[], Any], seconds: int) -> None:
    limit = _mapped_bytes() + MEMORY_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds + 2, seconds + 4))
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(seconds)
    try:
        outcome: tuple[str, Any] = ("ok", work())
    except BaseException as exc:  # noqa: BLE001 - every failure goes back as a message
        outcome = ("error", _describe(exc, seconds))
    signal.alarm(0)
    try:
        data = pickle.dumps(outcome)
    except (MemoryError, pickle.PicklingError, TypeError) as exc:
        data = pickle.dumps(("error", f"the result could not be returned: {exc}"))
    with os.fdopen(write, "wb") as handle:
        handle.write(data)


def run_limited(work: Callable[[], Any], *, seconds: int | None = None, what: str = "work") -> Any:
    """`work()` in a forked child with limits (SECONDS by default); its result, or LimitedError."""
    seconds = SECONDS if seconds is None else seconds
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage does not follow forks
        os.close(read)
        try:
            _child(write, work, seconds)
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + seconds + 10
    with os.fdopen(read, "rb") as handle:
        while True:
            ready, _, _ = select.select([handle], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = handle.read1(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        cause = (
            f"was stopped by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else "failed"
        )
        raise LimitedError(f"{what} {cause} (limits: {seconds}s, {MEMORY_BYTES // 2**20} MiB)")
    kind, value = pickle.loads(b"".join(chunks))
    if kind != "ok":
        raise LimitedError(str(value))
    return value
