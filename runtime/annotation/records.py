"""Annotation records in: our JSONL and Label Studio exports, checked row by row (their
columnar view for QC is `table.AnnotationTable`).

A batch with a bad row is refused whole by default: a silently dropped row
changes agreement and the training data without anyone noticing. With
`skip_bad=True` bad rows are skipped and listed instead. Every problem
names the file, the line (or Label Studio task) and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.jsonl import JsonProblem, parse_json, refusal

CHOICES = ("A", "B", "tie")
REQUIRED = (
    "item_id",
    "prompt_id",
    "response_a",
    "response_b",
    "choice",
    "annotator",
    "session",
    "started_at",
    "submitted_at",
    "criteria_version",
    "batch",
    "gold",
)
OPTIONAL = ("justification", "dimension_choices", "task_id", "judge")
STRING_FIELDS = (
    "item_id",
    "prompt_id",
    "response_a",
    "response_b",
    "annotator",
    "session",
    "batch",
)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
VERSION = re.compile(r"^\d+\.\d+\.\d+$")
SESSION_GAP_MINUTES = 30
#: Timestamps outside these years are typos or forged (year 1 overflows on conversion).
YEARS = (1970, 2999)
#: One comparison taking longer than a day is not a duration a person spent on it.
MAX_TASK_SECONDS = 24 * 3600
SKIP_HINT = "fix the rows, or pass --skip-bad-rows to skip and list them"


@dataclass(frozen=True)
class RowProblem:
    file: str
    where: str  # "line 12" or "task 4 (id 981), annotation 1"
    field: str | None
    message: str

    def __str__(self) -> str:
        field_part = f" field '{self.field}':" if self.field else ""
        return f"{self.file}: {self.where}:{field_part} {self.message}"


@dataclass
class BatchRead:
    batch: str
    file: str
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    cancelled: int = 0
    where: list[str] = field(default_factory=list)  # each record's line or task, in order

    def add(self, record: dict[str, Any], where: str) -> None:
        self.records.append(record)
        self.where.append(where)


def parse_time(text: str) -> datetime:
    return datetime.strptime(
        text.replace("Z", "+0000"),
        "%Y-%m-%dT%H:%M:%S%z" if "." not in text else "%Y-%m-%dT%H:%M:%S.%f%z",
    )


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_record(record: Any, *, batch: str) -> list[tuple[str | None, str]]:
    """Field-level problems of one record, as (field, message)."""
    if not isinstance(record, dict):
        return [(None, f"expected a JSON object, got {type(record).__name__}")]
    problems: list[tuple[str | None, str]] = []
    for name in record:
        if name not in REQUIRED and name not in OPTIONAL:
            problems.append((name, "unknown field (see schemas/annotation-record.v1.schema.json)"))
    for name in REQUIRED:
        if name not in record:
            problems.append((name, "missing"))
    for name in STRING_FIELDS:
        value = record.get(name)
        if name in record and (not isinstance(value, str) or not value):
            problems.append((name, f"must be a non-empty string, got {value!r}"))
    if "choice" in record and record["choice"] not in CHOICES:
        problems.append(("choice", f"must be one of A, B, tie; got {record['choice']!r}"))
    if "gold" in record and not isinstance(record["gold"], bool):
        problems.append(("gold", f"must be true or false, got {record['gold']!r}"))
    if "criteria_version" in record and not (
        isinstance(record["criteria_version"], str) and VERSION.match(record["criteria_version"])
    ):
        problems.append(
            ("criteria_version", f"must look like 1.2.0, got {record['criteria_version']!r}")
        )
    just = record.get("justification")
    if just is not None and not isinstance(just, str):
        problems.append(("justification", "must be a string or null"))
    dims = record.get("dimension_choices")
    if dims is not None and (
        not isinstance(dims, dict) or any(v not in CHOICES for v in dims.values())
    ):
        problems.append(("dimension_choices", "must map dimension ids to A, B or tie"))
    judge = record.get("judge")
    if judge is not None and not (
        isinstance(judge, dict)
        and all(isinstance(judge.get(k), str) for k in ("model", "prompt_sha256"))
    ):
        problems.append(("judge", "must be an object naming the judge's model and prompt_sha256"))
    times: dict[str, datetime] = {}
    for name in ("started_at", "submitted_at"):
        value = record.get(name)
        if name in record:
            if not isinstance(value, str) or not TIMESTAMP.match(value):
                problems.append(
                    (name, f"must be a UTC timestamp like 2026-11-02T09:14:05Z, got {value!r}")
                )
            else:
                try:
                    times[name] = parse_time(value)
                except ValueError:
                    problems.append((name, f"is not a real date and time: {value!r}"))
                    continue
                if not YEARS[0] <= times[name].year <= YEARS[1]:
                    problems.append((name, f"year outside {YEARS[0]}-{YEARS[1]}: {value!r}"))
                    del times[name]
    if len(times) == 2 and times["submitted_at"] < times["started_at"]:
        problems.append(("submitted_at", "is earlier than started_at"))
    elif len(times) == 2 and (
        (times["submitted_at"] - times["started_at"]).total_seconds() > MAX_TASK_SECONDS
    ):
        problems.append(("submitted_at", "is more than a day after started_at"))
    if record.get("response_a") is not None and record.get("response_a") == record.get(
        "response_b"
    ):
        problems.append(("response_b", "is the same response as response_a"))
    if isinstance(record.get("batch"), str) and record["batch"] != batch:
        problems.append(
            ("batch", f"is '{record['batch']}' but the spec lists this file as batch '{batch}'")
        )
    return problems


Resolve = Callable[[dict[str, Any]], list[tuple[str | None, str]]]
"""Maps a record's shown ids to the real ones in place (blinding.Unblinder.resolve)."""


@dataclass(frozen=True)
class TaskMap:
    """How a task made from one of Label Studio's stock templates becomes one of ours
    (`annotation.stock`): `data` maps its `data` to our item, prompt and response ids (or
    the problems that keep the task out), `choices` names the A/B values of a Choices tag."""

    data: Callable[[dict[str, Any]], tuple[dict[str, Any] | None, list[tuple[str | None, str]]]]
    choices: dict[str, str]


def read_jsonl(
    path: Path, *, batch: str, display: str, resolve: Resolve | None = None
) -> BatchRead:
    out = BatchRead(batch, display)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunError(f"{display}: cannot open: {exc.strerror or exc}") from None
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = parse_json(line)
        except JsonProblem as exc:
            out.problems.append(RowProblem(display, where, None, str(exc)))
            continue
        problems = resolve(record) if resolve and isinstance(record, dict) else []
        problems = problems or check_record(record, batch=batch)
        if problems:
            out.problems.extend(RowProblem(display, where, f, m) for f, m in problems)
            continue
        record.setdefault("justification", None)
        out.add(record, where)
    return out


Problems = list[tuple[str | None, str]]


def _ls_annotator(completed_by: Any, problems: Problems) -> str | None:
    """`completed_by` is a user id (an integer) or a user object with an email or id."""
    if isinstance(completed_by, dict):
        email = completed_by.get("email")
        if isinstance(email, str) and email.strip():
            return email
        completed_by = completed_by.get("id")
    if isinstance(completed_by, bool) or not isinstance(completed_by, int | str):
        problems.append(("completed_by", f"must be a user id or object, got {completed_by!r}"))
        return None
    if isinstance(completed_by, str) and not completed_by.strip():
        problems.append(("completed_by", "missing annotator"))
        return None
    return f"ls-user-{completed_by}"


def _strings(value: Any) -> list[str] | None:
    """A Label Studio list of strings (`choices`, `text`); None when it is not one."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _ls_choice(
    results: Any,
    problems: Problems,
    dims: dict[str, str] | None = None,
    aliases: dict[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """The overall choice and justification; per-dimension choices (`dim_<id>`) into `dims`.

    A Choices value is A, B or tie in any case, or one of `aliases` (lower-cased value -> A or
    B: a stock-template project's `left`/`right` or `answer1`/`answer2`)."""
    choice = justification = None
    before = len(problems)
    if not isinstance(results, list):
        problems.append(("result", f"must be a list of results, got {type(results).__name__}"))
        return None, None
    for index, result in enumerate(results):
        field_name = f"result[{index}]"
        if not isinstance(result, dict):
            problems.append((field_name, "must be an object"))
            continue
        value, kind = result.get("value"), result.get("type")
        if not isinstance(value, dict):
            problems.append((f"{field_name}.value", f"must be an object, got {value!r:.40}"))
            continue
        if kind == "choices":
            picked = _strings(value.get("choices"))
            if not picked:
                problems.append(
                    (f"{field_name}.value.choices", "must be a non-empty list of strings")
                )
                continue
            names = {"a": "A", "b": "B", "tie": "tie", **(aliases or {})}
            value_of = names.get(picked[0].strip().lower(), picked[0])
            from_name = str(result.get("from_name", ""))
            if from_name.startswith("dim_") and dims is not None:
                dims[from_name[len("dim_") :]] = value_of
            else:
                choice = value_of
        elif kind == "pairwise" and value.get("selected") in ("left", "right"):
            choice = "A" if value["selected"] == "left" else "B"
        elif kind == "textarea":
            text = _strings(value.get("text"))
            if text is None:
                problems.append((f"{field_name}.value.text", "must be a list of strings"))
            elif text:
                justification = " ".join(text)
    if choice is None and len(problems) == before:
        problems.append(("result", "no A/B/tie choice or pairwise left/right selection"))
    return choice, justification


def _ls_time(text: Any, problems: Problems) -> datetime | None:
    """`created_at` as an aware UTC time within YEARS."""
    moment = None
    if isinstance(text, str):
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            moment = None
    if moment is None or not YEARS[0] <= moment.year <= YEARS[1]:
        problems.append(
            ("created_at", f"must be an ISO timestamp in {YEARS[0]}-{YEARS[1]}, got {text!r:.60}")
        )
        return None
    return moment


def _ls_lead(lead: Any, problems: Problems) -> float | None:
    """`lead_time`: finite seconds spent, at most a day."""
    if (
        isinstance(lead, bool)
        or not isinstance(lead, int | float)
        or not math.isfinite(lead)
        or not 0 <= lead <= MAX_TASK_SECONDS
    ):
        problems.append(
            ("lead_time", f"must be seconds spent, got {lead!r:.40} (0 to {MAX_TASK_SECONDS})")
        )
        return None
    return float(lead)


def _ls_record(
    task: dict[str, Any],
    index: int,
    ann: dict[str, Any],
    batch: str,
    criteria_version: str,
    resolve: Resolve | None = None,
    aliases: dict[str, str] | None = None,
) -> tuple[dict[str, Any] | None, Problems]:
    """One annotation as a record, or the problems that keep it out."""
    problems: Problems = []
    data = task["data"]
    annotator = _ls_annotator(ann.get("completed_by"), problems)
    dims: dict[str, str] = {}
    choice, justification = _ls_choice(ann.get("result", []), problems, dims, aliases)
    submitted = _ls_time(ann.get("created_at"), problems)
    lead = _ls_lead(ann.get("lead_time"), problems)
    if problems or annotator is None or submitted is None or lead is None:
        return None, problems
    item_id = data.get("item_id", f"ls-task-{task.get('id', index)}")
    record = {
        # Label Studio users may key items by number; a boolean is never an id
        "item_id": str(item_id) if type(item_id) is int else item_id,
        "prompt_id": data.get("prompt_id"),
        "response_a": data.get("response_a"),
        "response_b": data.get("response_b"),
        "choice": choice,
        "annotator": annotator,
        "session": "pending",
        "started_at": format_time(submitted - timedelta(seconds=lead)),
        "submitted_at": format_time(submitted),
        "justification": justification,
        "criteria_version": data.get("criteria_version", criteria_version),
        "batch": batch,
        "gold": data.get("gold", False),
    }
    if dims:
        record["dimension_choices"] = dims
    meta: dict[str, Any] = task["meta"] if isinstance(task.get("meta"), dict) else {}
    if data.get("task_id") or meta.get("task_id"):
        record["task_id"] = data.get("task_id") or meta.get("task_id")
    errors = resolve(record) if resolve else []
    errors = errors or check_record(record, batch=batch)
    return (None if errors else record), [(f"data.{f}" if f else None, m) for f, m in errors]


def _ls_tasks(path: Path, display: str) -> list[Any]:
    try:
        tasks = parse_json(path.read_bytes())
    except OSError as exc:
        raise RunError(f"{display}: cannot read: {exc.strerror or exc}") from None
    except JsonProblem as exc:
        raise RunError(
            f"{display}: not a Label Studio JSON export: {exc}; CSV and TSV exports are not "
            "read: export the project as JSON (Export > JSON)"
        ) from None
    if not isinstance(tasks, list):
        raise RunError(f"{display}: a Label Studio export is a JSON list of tasks")
    return tasks


def read_label_studio(
    path: Path,
    *,
    batch: str,
    criteria_version: str,
    display: str,
    resolve: Resolve | None = None,
    task_map: TaskMap | None = None,
) -> BatchRead:
    """Read a Label Studio JSON export (our Choices config, or the `<Pairwise>` tag).

    Label Studio has no sessions: an annotator's tasks are cut into sessions
    at gaps of more than 30 minutes. The task's start is its submission time
    minus `lead_time`. Cancelled (skipped) annotations are counted, not read.
    Every field is type- and range-checked before use: a string "false" is
    not a boolean, `true` is not a user id, a lead time of 1e20 is no duration.
    With `task_map` (a stock template's export) each task's data is mapped to
    our ids first; a task it cannot map is one problem, its annotations unread.
    """
    out = BatchRead(batch, display)
    for t_index, task in enumerate(_ls_tasks(path, display), start=1):
        task_where = f"task {t_index}" + (
            f" (id {task.get('id')!r:.40})" if isinstance(task, dict) else ""
        )
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            out.problems.append(RowProblem(display, task_where, "data", _no_data(task)))
            continue
        if task_map is None and not OUR_DATA.intersection(task["data"]):
            out.problems.append(RowProblem(display, task_where, "data", _not_ours(task["data"])))
            continue
        if task_map is not None:
            mapped, problems = task_map.data(task["data"])
            out.problems.extend(RowProblem(display, task_where, f, m) for f, m in problems)
            if mapped is None:
                continue
            task = {**task, "data": {**task["data"], **mapped}}
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            out.problems.append(RowProblem(display, task_where, "annotations", "must be a list"))
            continue
        for a_index, ann in enumerate(annotations):
            where = f"{task_where}, annotation {a_index}"
            aliases = task_map.choices if task_map else None
            _ls_annotation(out, task, t_index, ann, where, criteria_version, resolve, aliases)
    assign_sessions(out.records)
    return out


OUR_DATA = frozenset(("task_id", "item_id", "prompt_id", "response_a", "response_b"))
"""Task data fields of which a task made by `rlhfspec tasks` (or by hand for us) has some."""


def _not_ours(data: dict[str, Any]) -> str:
    """A task with none of our ids: most likely a project made from a stock template."""
    fields = ", ".join(sorted(map(str, data))[:8]) or "none"
    return (
        f"has none of task_id, item_id, prompt_id, response_a, response_b (its fields: {fields}); "
        "an export of a project made from a stock Label Studio template is read with "
        "`format: label_studio_pairwise` (and `fields` naming its prompt and answer fields)"
    )


def _no_data(task: Any) -> str:
    """Why a task without `data` is unread; a JSON-MIN or CSV-like row says which export."""
    if isinstance(task, dict) and "annotator" in task:
        return (
            "a task needs a 'data' object; this is a JSON-MIN export (one flattened row per "
            "annotation: no task meta, no skipped annotations, the task's data mixed with the "
            "results), which is not read: export the project as JSON (Export > JSON)"
        )
    return "a task needs a 'data' object"


def _ls_annotation(
    out: BatchRead,
    task: dict[str, Any],
    t_index: int,
    ann: Any,
    where: str,
    criteria_version: str,
    resolve: Resolve | None,
    aliases: dict[str, str] | None,
) -> None:
    """Read one annotation of a task into `out`: a record, a cancellation or problems."""
    display = out.file
    if not isinstance(ann, dict):
        out.problems.append(RowProblem(display, where, None, "an annotation must be an object"))
        return
    cancelled = ann.get("was_cancelled", False)
    if not isinstance(cancelled, bool):
        out.problems.append(
            RowProblem(
                display, where, "was_cancelled", f"must be true or false, got {cancelled!r:.40}"
            )
        )
        return
    if cancelled:
        out.cancelled += 1
        return
    record, problems = _ls_record(task, t_index, ann, out.batch, criteria_version, resolve, aliases)
    out.problems.extend(RowProblem(display, where, f, m) for f, m in problems)
    if record is not None:
        out.add(record, where)


def assign_sessions(records: list[dict[str, Any]]) -> None:
    """Cut each annotator's records into sessions at gaps over SESSION_GAP_MINUTES."""
    by_annotator: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_annotator.setdefault(record["annotator"], []).append(record)
    for annotator, items in by_annotator.items():
        items.sort(key=lambda r: r["started_at"])
        session = 0
        last_end: datetime | None = None
        for record in items:
            start = parse_time(record["started_at"])
            if last_end is None or (start - last_end) > timedelta(minutes=SESSION_GAP_MINUTES):
                session += 1
            record["session"] = f"{annotator}-ls{session:03d}"
            last_end = parse_time(record["submitted_at"])


def _read(
    path: Path,
    *,
    batch: str,
    fmt: str,
    criteria_version: str,
    display: str,
    resolve: Resolve | None = None,
    task_map: TaskMap | None = None,
) -> BatchRead:
    if fmt == "jsonl":
        return read_jsonl(path, batch=batch, display=display, resolve=resolve)
    return read_label_studio(
        path,
        batch=batch,
        criteria_version=criteria_version,
        display=display,
        resolve=resolve,
        task_map=task_map,
    )


def drop_duplicates(read: BatchRead, seen: dict[tuple[str, str], str]) -> None:
    """One vote per item and annotator: a later vote is a problem naming both places.

    `seen` maps (item, annotator) to where its vote was read, and is shared
    across the batches of a campaign so that a vote repeated in another batch
    or another format (our JSONL, a Label Studio export) is caught too. Under
    --skip-bad-rows the first vote is kept and the later one listed.
    """
    kept: list[dict[str, Any]] = []
    kept_where: list[str] = []
    for record, where in zip(read.records, read.where, strict=True):
        key = (record["item_id"], record["annotator"])
        here = f"{read.file}: {where}"
        if key in seen:
            read.problems.append(
                RowProblem(
                    read.file,
                    where,
                    "item_id",
                    f"annotator {record['annotator']} already voted on item {record['item_id']} "
                    f"at {seen[key]}; one vote per item and annotator",
                )
            )
            continue
        seen[key] = here
        kept.append(record)
        kept_where.append(where)
    read.records, read.where = kept, kept_where


def read_batch(
    path: Path, *, batch: str, fmt: str, criteria_version: str, display: str, skip_bad: bool = False
) -> BatchRead:
    """Read one batch; refuse it whole on a bad row unless `skip_bad`."""
    read = _read(path, batch=batch, fmt=fmt, criteria_version=criteria_version, display=display)
    drop_duplicates(read, {})
    if read.problems and not skip_bad:
        raise refusal(f"batch '{batch}' refused", read.problems, SKIP_HINT)
    return read


def read_batches(
    entries: Sequence[dict[str, Any]],
    folder: Path,
    *,
    skip_bad: bool = False,
    resolvers: dict[str, Resolve] | None = None,
    task_maps: dict[str, TaskMap] | None = None,
) -> list[BatchRead]:
    """Read a spec's `annotation.batches` in order, with one vote per item and annotator
    across all of them; a batch with a bad (or repeated) row is refused unless `skip_bad`.
    `resolvers` un-blind a batch's records, `task_maps` map a stock template's tasks."""
    seen: dict[tuple[str, str], str] = {}
    reads = []
    for entry in entries:
        read = _read(
            folder / entry["path"],
            batch=entry["id"],
            fmt=entry["format"],
            criteria_version=entry["criteria_version"],
            display=entry["path"],
            resolve=(resolvers or {}).get(entry["id"]),
            task_map=(task_maps or {}).get(entry["id"]),
        )
        drop_duplicates(read, seen)
        if read.problems and not skip_bad:
            raise refusal(f"batch '{entry['id']}' refused", read.problems, SKIP_HINT)
        reads.append(read)
    return reads
