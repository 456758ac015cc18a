"""Taking over a dead run's lock is atomic (issue 15, class 7).

Several runners that find the same stale run.lock (its owner died) must
never own the run directory at the same time. flock locks belong to an
open file description, so threads in one process contend exactly as
processes do; the slow test repeats the race with real processes.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from pathlib import Path

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.run import LOCK_FILE, run_lock

DEAD_PID = 2**22 + 12345  # above pid_max on Linux: never a live process


def stale_lock(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = {"pid": DEAD_PID, "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}
    (run_dir / LOCK_FILE).write_text(json.dumps(owner), encoding="utf-8")


def contend(run_dir: Path, start: threading.Barrier | None, owners: list[int]) -> str:
    if start is not None:
        start.wait()
    try:
        with run_lock(run_dir, lambda _m: None):
            owners.append(1)
            overlap = len(owners) > 1
            time.sleep(0.02)
            owners.pop()
            return "overlap" if overlap else "owner"
    except RunError as exc:
        assert exc.exit_code == 4
        return "busy"


def one(run_dir: Path, start: threading.Barrier, owners: list[int], results: list[str]) -> None:
    results.append(contend(run_dir, start, owners))


def test_stale_lock_taken_over_by_exactly_one_thread(tmp_path: Path) -> None:
    for trial in range(30):
        run_dir = tmp_path / f"run{trial}"
        stale_lock(run_dir)
        start = threading.Barrier(6)
        owners: list[int] = []
        results: list[str] = []

        threads = [
            threading.Thread(target=one, args=(run_dir, start, owners, results)) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert "overlap" not in results, f"trial {trial}: two owners at once: {results}"
        assert results.count("owner") >= 1
        assert not (run_dir / LOCK_FILE).exists()  # the last owner cleans up


def test_live_owner_keeps_the_lock(tmp_path: Path) -> None:
    with run_lock(tmp_path, lambda _m: None):
        with pytest.raises(RunError) as info, run_lock(tmp_path, lambda _m: None):
            pass
        assert info.value.exit_code == 4
        assert "is in use by another run" in info.value.message


def _process(
    run_dir: str, start: float, queue: multiprocessing.Queue[tuple[str, float, float]]
) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        with run_lock(Path(run_dir), lambda _m: None):
            began = time.time()
            time.sleep(0.05)
            queue.put(("owner", began, time.time()))
    except RunError:
        queue.put(("busy", 0.0, 0.0))


@pytest.mark.slow
def test_stale_lock_taken_over_by_one_process(tmp_path: Path) -> None:
    """100 trials, 4 processes each: main took the lock twice at once in 15 of them."""
    context = multiprocessing.get_context("fork")
    for trial in range(100):
        run_dir = tmp_path / f"run{trial}"
        stale_lock(run_dir)
        queue = context.Queue()
        start = time.time() + 0.05
        procs = [
            context.Process(target=_process, args=(str(run_dir), start, queue)) for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        spans = sorted((b, e) for kind, b, e in (queue.get() for _ in procs) if kind == "owner")
        assert spans, f"trial {trial}: nobody took over the dead run's lock"
        for (_, end), (begin, _) in zip(spans, spans[1:], strict=False):
            assert begin >= end, f"trial {trial}: two processes owned the run at once"
