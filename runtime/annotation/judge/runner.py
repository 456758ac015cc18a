"""`rlhfspec judge SPEC -o DIR`: label pairs with an AI judge, in both orders, resumably.

Every pair is judged twice, once in each order, because judges prefer the
first-shown response often enough to matter; the two answers are combined
in canonical order and a disagreement becomes a tie or a flag (no AI label,
the pair goes to human review), as the spec says.

Requests run `judge.concurrency` at a time, each with a timeout; timeouts,
rate limits (429), server errors (5xx) and malformed answers are retried up
to `judge.max_attempts` with exponential backoff (a server's Retry-After
wins when longer). Every finished request is appended to
`judgements.jsonl` (flushed and fsynced) before the next starts counting, so
a killed run resumes where it stopped and never asks for a recorded answer
again. `run.json` pins the judge, prompt and items a folder belongs to: a
resumed run with another judge or prompt is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import canonical_json, sha256_text
from rlhfspec.runtime.annotation.judge.backends import (
    Backend,
    ChatCompletionsBackend,
    HuggingFaceBackend,
    Permanent,
    Transient,
)
from rlhfspec.runtime.annotation.judge.items import AI_PREFIX, Item
from rlhfspec.runtime.annotation.judge.prompt import JudgePrompt, parse_answer
from rlhfspec.runtime.project import Project

RUN_FORMAT = "rlhfspec.judge-run/1"
SUMMARY_FORMAT = "rlhfspec.judge-summary/1"
JOURNAL = "judgements.jsonl"
RAW_CHARS = 2000
CONFIDENCE_RANK = {"low": 0, "medium": 1, "high": 2}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_backend(project: Project) -> Backend:
    """The spec's backend; a local model is resolved relative to the spec's folder."""
    settings = project.spec["judge"]
    if settings["backend"] == "openai_chat":
        return ChatCompletionsBackend(settings)
    if "model" not in settings:
        raise RunError("judge.backend is huggingface: set judge.model (a folder or builtin:tiny)")
    from rlhfspec.runtime.train.common import cache_dir, corpus_texts
    from rlhfspec.runtime.train.models import resolve_model

    model = str(settings["model"])
    ref: str | Path = model
    if model != "builtin:tiny":
        ref = (project.folder / model).resolve()
        if not ref.is_relative_to(project.folder.resolve()) or not ref.is_dir():
            raise RunError(
                f"judge.model: '{model}' must be a model folder inside the spec's folder"
            )
    else:
        # corpus_texts reads a stage context's settings and folder; the judge has the whole spec
        ctx = cast(Any, SimpleNamespace(settings=project.spec, spec=project.spec, project=project))
        ref = resolve_model(
            model, texts_for_builtin=lambda: corpus_texts(ctx), seed=project.seed,
            cache_dir=cache_dir(),
        )  # fmt: skip
    return HuggingFaceBackend(settings, ref, model)


@dataclass
class Journal:
    """Append-only record of finished requests; a torn last line (a kill) is cut off."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> dict[tuple[str, int], dict[str, Any]]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as handle:
                handle.truncate(len(data))
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
                rows[(str(row["item_id"]), int(row["order"]))] = row
            except (ValueError, KeyError, TypeError):
                raise RunError(
                    f"{self.path}: line {number} is not a judgement; the folder was edited or "
                    "belongs to something else: judge into a fresh folder"
                ) from None
        return rows

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


@dataclass(frozen=True)
class Retry:
    attempts: int
    backoff: float
    sleep: Callable[[float], None] = time.sleep

    def wait(self, retry: int, hint: float | None) -> None:
        delay = self.backoff * (2**retry)
        self.sleep(max(delay, hint or 0.0))


def judge_order(
    backend: Backend, prompt: JudgePrompt, item: Item, order: int, retry: Retry
) -> dict[str, Any]:
    """One pair in one order, retried as the spec allows; the journal row."""
    shown = (item.first, item.second) if order == 0 else (item.second, item.first)
    texts = (
        (item.text_first, item.text_second) if order == 0 else (item.text_second, item.text_first)
    )
    messages = prompt.messages(item.prompt, *texts)
    row: dict[str, Any] = {
        "item_id": item.item_id, "order": order, "shown": list(shown), "prompt_sha256": prompt.sha256,
        "request_sha256": sha256_text(canonical_json(messages)), "started_at": now(),
        "status": "failed", "attempts": 0, "events": [], "tokens_in": 0, "tokens_out": 0,
    }  # fmt: skip
    for attempt in range(retry.attempts):
        row["attempts"] = attempt + 1
        last = attempt + 1 == retry.attempts
        try:
            completion = backend.complete(messages, prompt.answer_schema())
        except Transient as exc:
            row["events"].append(exc.kind)
            row["error"] = str(exc)
            if not last:
                retry.wait(attempt, exc.retry_after)
            continue
        except Permanent as exc:
            row["events"].append(exc.kind)
            row["error"] = str(exc)
            break
        row["tokens_in"] += completion.tokens_in
        row["tokens_out"] += completion.tokens_out
        answer = parse_answer(completion.text, prompt)
        if isinstance(answer, str):
            row["events"].append("malformed")
            row.update(status="unparseable", error=answer, raw=completion.text[:RAW_CHARS])
            if not last:
                retry.wait(attempt, None)
            continue
        row.update(status="ok", choice=answer.choice, confidence=answer.confidence,
                   dimensions=answer.dimensions, reason=answer.reason)  # fmt: skip
        row.pop("error", None)
        row.pop("raw", None)
        break
    row["submitted_at"] = now()
    return row


def canonical(choice: str, order: int) -> str:
    """A choice in the order shown -> first/second/tie in canonical order."""
    if choice == "tie":
        return "tie"
    return "first" if (choice == "A") == (order == 0) else "second"


@dataclass
class Combined:
    item: Item
    status: str  # labelled, tie_by_rule, flagged, unparseable, failed
    label: str | None = None  # first/second/tie, canonical
    confidence: str = "low"
    dimensions: dict[str, str] = field(default_factory=dict)
    orders_agree: bool | None = None
    rows: tuple[dict[str, Any], ...] = ()


def combine(item: Item, rows: tuple[dict[str, Any], dict[str, Any]], mode: str) -> Combined:
    """Both orders' answers -> one canonical label, a tie or a flag."""
    bad = [r["status"] for r in rows if r["status"] != "ok"]
    if bad:
        return Combined(item, "unparseable" if "unparseable" in bad else "failed", rows=rows)
    labels = [canonical(r["choice"], r["order"]) for r in rows]
    agree = labels[0] == labels[1]
    dims: dict[str, str] = {}
    for dim in rows[0]["dimensions"]:
        pair = {canonical(r["dimensions"][dim], r["order"]) for r in rows}
        dims[dim] = pair.pop() if len(pair) == 1 else "tie"
    confidence = min((r["confidence"] for r in rows), key=CONFIDENCE_RANK.__getitem__)
    if agree:
        return Combined(item, "labelled", labels[0], confidence, dims, True, rows)
    if mode == "tie":
        return Combined(item, "tie_by_rule", "tie", "low", dims, False, rows)
    return Combined(item, "flagged", None, "low", dims, False, rows)


def run_stats(combined: list[Combined]) -> dict[str, int]:
    """Order agreement and first-shown picks over every pair judged in both orders."""
    both = [c for c in combined if c.orders_agree is not None]
    answers = [r for c in both for r in c.rows if r["choice"] != "tie"]
    return {
        "pairs": len(both),
        "orders_agree": sum(bool(c.orders_agree) for c in both),
        "decided_answers": len(answers),
        "first_shown_picks": sum(r["choice"] == "A" for r in answers),
    }


def judge_pairs(
    project: Project,
    items: list[Item],
    journal: Journal,
    backend: Backend,
    prompt: JudgePrompt,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _: None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Judge every (pair, order) the journal lacks, `concurrency` at a time."""
    settings = project.spec["judge"]
    done = journal.read()
    todo = [(i, o) for i in items for o in (0, 1) if (i.item_id, o) not in done]
    if done:
        log(f"resuming: {len(done)} answer(s) recorded, {len(todo)} to go")
    retry = Retry(int(settings["max_attempts"]), float(settings["backoff_seconds"]), sleep)

    def work(task: tuple[Item, int]) -> dict[str, Any]:
        row = judge_order(backend, prompt, task[0], task[1], retry)
        journal.append(row)
        return row

    with ThreadPoolExecutor(max_workers=int(settings["concurrency"])) as pool:
        futures = [pool.submit(work, t) for t in todo]
        try:
            for index, future in enumerate(futures, start=1):
                row = future.result()
                done[(row["item_id"], row["order"])] = row
                if index % 200 == 0:
                    log(f"  {index}/{len(todo)} answers")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return done


def usage(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    events = Counter(e for r in rows for e in r["events"])
    return {
        "requests": sum(r["attempts"] for r in rows),
        "retries": sum(r["attempts"] - 1 for r in rows),
        "tokens_in": sum(r["tokens_in"] for r in rows),
        "tokens_out": sum(r["tokens_out"] for r in rows),
        "events": dict(sorted(events.items())),
        "seconds_this_run": round(seconds, 3),
    }


def manifest(
    project: Project, identity: dict[str, Any], prompt: JudgePrompt, items: list[Item]
) -> dict[str, Any]:
    """What a judge folder belongs to; the key is never part of it (only its variable's name)."""
    body = {
        "format": RUN_FORMAT,
        "spec": project.name,
        "judge": identity,
        "annotator": AI_PREFIX + str(identity["model"]),
        "criteria_version": str(project.spec["criteria"]["version"]),
        "prompt_sha256": prompt.sha256,
        "order_disagreement": project.spec["judge"]["order_disagreement"],
        "items_sha256": sha256_text("\n".join(f"{i.item_id} {i.first} {i.second}" for i in items)),
        "items": len(items),
    }
    body["id"] = sha256_text(canonical_json(body))[:16]
    return body


def check_folder(out_dir: Path, run: dict[str, Any]) -> None:
    """Refuse to resume into a folder of another judge, prompt or item set."""
    path = out_dir / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("id") != run["id"]:
            changed = [k for k in ("judge", "criteria_version", "prompt_sha256", "items_sha256",
                                   "order_disagreement") if old.get(k) != run.get(k)]  # fmt: skip
            raise RunError(
                f"{out_dir} holds judgements of another run (changed: {', '.join(changed) or 'format'}); "
                "judge into a fresh folder so that answers of two prompts or judges never mix"
            )
    atomic_write_text(path, json.dumps(run, indent=2, sort_keys=True) + "\n")
