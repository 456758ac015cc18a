"""Progress of a training stage: a bar with ETA on a terminal, concise lines elsewhere.

On a terminal (stdout is a TTY) people expect a live bar: one line redrawn in place with the
step, percentage, last loss, elapsed time and an ETA from the mean step time so far. In CI
logs and files a redrawn line is noise, so there the stage logs the same concise lines it
always did (``step 12/40 loss 1.2345``), about ten per stage. Only the main process shows
progress; the others train silently.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from transformers import TrainerCallback

BAR_WIDTH = 24


def clock(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour)."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the mean pace so far (None before the first step)."""
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(0, total - done)


def bar_line(
    label: str, done: int, total: int, elapsed: float, metrics: dict[str, float] | None = None
) -> str:
    """One redrawable line: ``[sft] |#####-----| 12/40  30% loss 1.2345 0:12<0:28``."""
    share = min(1.0, done / total) if total > 0 else 0.0
    filled = int(share * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    left = eta(done, total, elapsed)
    shown = " ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items())
    timing = f"{clock(elapsed)}<{clock(left) if left is not None else '?'}"
    return f"[{label}] |{bar}| {done}/{total} {share:4.0%} {shown} {timing}".replace("  ", " ")


class Progress:
    """Progress of `total` steps: a bar on a terminal, a log line every ~10% otherwise."""

    def __init__(
        self,
        label: str,
        total: int,
        log: Callable[[str], None],
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.log = label, total, log
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.bar = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.every = max(1, total // 10)
        self.metrics: dict[str, float] = {}

    def update(self, done: int, metrics: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        if metrics:
            self.metrics = dict(metrics)
        if self.bar:
            line = bar_line(
                self.label, done, self.total, time.monotonic() - self.start, self.metrics
            )
            self.stream.write("\r" + line)
            self.stream.flush()
        elif metrics and (done % self.every == 0 or done == self.total):
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.log(f"step {done}/{self.total} {shown}".rstrip())

    def close(self) -> None:
        if self.enabled and self.bar:
            self.stream.write("\n")
            self.stream.flush()


class ProgressCallback(TrainerCallback):
    """`Progress` for the HF Trainer (SFT, reward model, DPO)."""

    def __init__(self, log: Callable[[str], None], label: str, stream: TextIO | None = None):
        self.log, self.label, self.stream = log, label, stream
        self.progress: Progress | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress = Progress(
            self.label, int(state.max_steps), self.log, self.stream, state.is_world_process_zero
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None and self.progress.bar:
            self.progress.update(int(state.global_step))

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.progress is None or not logs or "loss" not in logs:
            return
        if self.progress.bar:
            self.progress.metrics = {"loss": float(logs["loss"])}
        elif self.progress.enabled:
            self.log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.close()


def progress_callback(log: Callable[[str], None], label: str) -> ProgressCallback:
    return ProgressCallback(log, label)
