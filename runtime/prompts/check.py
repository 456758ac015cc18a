"""`rlhfspec prompts SPEC`: check the prompt distribution before anyone annotates it.

A reward model generalises only as far as its prompts reach, so this check
compares the prompts a team actually has with what the spec promised:

* the mix of source kinds (usage logs, synthetic, expert, adversarial)
  against `prompts.mix`, measured on the prompts *available for
  annotation*, i.e. after the production holdout is taken out (and, as a
  warning, on the distinct prompts the listed batches actually annotated);
* coverage of the strata: every word-count bin of
  `prompts.strata.length_words` and every observed value of each field in
  `prompts.strata.fields` needs `min_per_stratum` prompts in that pool;
* an approved privacy review on every usage-log source;
* the production holdout: the last `holdout_count(n, share)` rows of each
  usage-log source in file order (the most recent logs: new logs are
  appended), reserved for validation. A holdout prompt id in an annotation
  batch, a gold item or an SFT demonstration is a leak, an error.

Unreadable prompt rows and duplicate prompt ids are refused with a
`RunError` naming file, line and field: every later number (shares,
holdout, leaks) would silently be wrong otherwise. Everything else is a
finding with a stable code, so CI can gate on it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.codes import Code, family
from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.findings import Finding, FindingsReport
from rlhfspec.common.jsonl import missing_strings, read_objects, read_rows, refusal
from rlhfspec.runtime.project import Project

KIND_ORDER = ("usage_logs", "synthetic", "expert", "adversarial")
#: Where the prompts stage writes the reserved production holdout in a run directory.
HOLDOUT_FILE = "prompts/holdout.jsonl"

# The prompt check's codes (registered in common/codes.py with every other family's).
PROMPT_CODES: dict[str, Code] = family("PR")
JSON_KEYS = ("code", "severity", "title", "message", "hint")
"""The keys of one finding in prompts/report.json, in order."""


@dataclass(frozen=True)
class Prompt:
    """One prompt row and where it came from (file and line, for messages)."""

    id: str
    text: str
    source: str
    kind: str
    file: str
    line: int
    row: dict[str, Any]

    @property
    def words(self) -> int:
        return len(self.text.split())


OUTSIDE_FOCUS = "outside_focus"
"""The evaluation set of prompts `prompts.focus` leaves out: scored, reported, never pooled."""


@dataclass
class PromptPool:
    """Every prompt of every source, in source then file order, and the holdout."""

    prompts: list[Prompt]
    holdout_ids: frozenset[str]
    by_id: dict[str, Prompt] = field(default_factory=dict)
    focus: dict[str, list[str]] = field(default_factory=dict)
    """`prompts.focus`: field -> allowed values (narrow fine-tuning); empty keeps every prompt."""

    def __post_init__(self) -> None:
        self.by_id = {p.id: p for p in self.prompts}

    @property
    def available(self) -> list[Prompt]:
        """Prompts that may be annotated or trained on: everything but the holdout."""
        return [p for p in self.prompts if p.id not in self.holdout_ids]

    def in_focus(self, prompt: Prompt) -> bool:
        """Whether `prompts.focus` keeps the prompt: `source` is the source's id, `kind` its
        kind, any other key a field of the prompt's row; every key must match."""
        for key, allowed in self.focus.items():
            value = {"source": prompt.source, "kind": prompt.kind}.get(key, prompt.row.get(key))
            if str(value) not in allowed:
                return False
        return True

    @property
    def focused(self) -> list[Prompt]:
        """Available prompts inside the focus: what is annotated and trained on."""
        return [p for p in self.available if self.in_focus(p)]

    @property
    def outside_focus(self) -> list[Prompt]:
        """Available prompts the focus leaves out: still evaluated, never trained on."""
        return [p for p in self.available if not self.in_focus(p)]

    def keep_in_focus(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Rows (with a `prompt_id`) whose prompt the focus keeps, and how many it left out;
        rows of an unknown prompt are kept for their consumer to report."""
        kept = [
            r
            for r in rows
            if r["prompt_id"] not in self.by_id or self.in_focus(self.by_id[r["prompt_id"]])
        ]
        return kept, len(rows) - len(kept)

    @property
    def holdout(self) -> list[Prompt]:
        return [p for p in self.prompts if p.id in self.holdout_ids]


def holdout_count(n: int, share: float) -> int:
    """Rows of an n-row usage-log source held out: n - floor((1 - share) * n).

    The epsilon keeps float noise from flipping the floor (0.9 * 390 must be
    351, not 350.99999...), so the count matches the schema's formula
    exactly as a person would compute it.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    return n - math.floor((1.0 - share) * n + 1e-9)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value != ""


def _read_source(
    project: Project, source: dict[str, Any], fields: list[str], problems: list[str]
) -> list[Prompt]:
    display = source["path"]
    prompts: list[Prompt] = []
    for number, row in read_objects(project.path(source["path"]), display, problems):
        where = f"{display}: line {number}:"
        missing = missing_strings(row, ("id", "text"))
        problems.extend(f"{where} field '{f}': {m}" for f, m in missing)
        bad = bool(missing)
        for name in fields:
            if name not in row:
                problems.append(f"{where} field '{name}': missing (it is a strata field)")
                bad = True
            elif not _scalar(row[name]):
                problems.append(
                    f"{where} field '{name}': must be a string or number, got {row[name]!r}"
                )
                bad = True
        if not bad:
            prompts.append(
                Prompt(row["id"], row["text"], source["id"], source["kind"], display, number, row)
            )
    return prompts


def _read_sources(
    project: Project, sources: list[dict[str, Any]], fields: list[str]
) -> list[list[Prompt]]:
    """Every source's prompts, in file order; bad rows and duplicate ids refuse them all."""
    problems: list[str] = []
    per_source = [_read_source(project, source, fields, problems) for source in sources]
    first: dict[str, Prompt] = {}
    for prompt in (p for rows in per_source for p in rows):
        if prompt.id in first:
            seen = first[prompt.id]
            problems.append(
                f"{prompt.file}: line {prompt.line}: field 'id': prompt id '{prompt.id}' "
                f"already used at {seen.file}: line {seen.line}"
            )
        else:
            first[prompt.id] = prompt
    if problems:
        raise refusal("prompt sources refused", problems)
    return per_source


def load_prompt_pool(project: Project) -> PromptPool:
    """Read every prompt source and reserve the production holdout by the spec's rule.

    Shared by the prompt check and task generation so both use one holdout
    rule and one notion of which prompts exist. Later stages read the holdout
    the prompts stage wrote instead (`pool_with_holdout`).
    """
    spec = project.spec["prompts"]
    share = float(spec["production_holdout"]["share"])
    per_source = _read_sources(project, spec["sources"], list(spec["strata"]["fields"]))
    holdout: set[str] = set()
    for source, rows in zip(spec["sources"], per_source, strict=True):
        if source["kind"] == "usage_logs":
            count = holdout_count(len(rows), share)
            holdout.update(p.id for p in rows[len(rows) - count :])
    return PromptPool(
        [p for rows in per_source for p in rows], frozenset(holdout), focus=dict(spec["focus"])
    )


def pool_with_holdout(project: Project, holdout: list[dict[str, Any]]) -> PromptPool:
    """The prompt sources with the holdout the prompts stage reserved (`read_holdout`)."""
    spec = project.spec["prompts"]
    per_source = _read_sources(project, spec["sources"], [])
    return PromptPool(
        [p for rows in per_source for p in rows],
        frozenset(r["id"] for r in holdout),
        focus=dict(spec["focus"]),
    )


def read_holdout(path: Path) -> list[dict[str, Any]]:
    """The reserved production holdout as the prompts stage wrote it (`HOLDOUT_FILE`)."""
    return read_rows(path, HOLDOUT_FILE, ("id", "text"))


def production_holdout(project: Project) -> list[dict[str, Any]]:
    """The held-out prompt rows (as in their files), in source then file order."""
    return [dict(p.row) for p in load_prompt_pool(project).holdout]


def _bin_label(low: int, high: int) -> str:
    return f"[{low}, {high})"


def _read_ids(path: Path, display: str, fmt: str) -> tuple[list[str], int]:
    """Prompt ids a batch/gold/demonstration file names, and its unreadable rows.

    Read loosely on purpose: this is a leak check, not the annotation
    reader, so a row that only lacks other fields still has its prompt id
    checked. A Label Studio export is read per task (`data.prompt_id`), so
    tasks whose annotations were cancelled or are broken count too: their
    prompt was shown to someone.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{display}: cannot read: {exc}") from None
    ids: list[str] = []
    bad = 0
    if fmt == "label_studio":
        try:
            tasks = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunError(f"{display}: not a Label Studio JSON export: {exc.msg}") from None
        if not isinstance(tasks, list):
            raise RunError(f"{display}: a Label Studio export is a JSON list of tasks")
        for task in tasks:
            data = task.get("data") if isinstance(task, dict) else None
            value = data.get("prompt_id") if isinstance(data, dict) else None
            if isinstance(value, str) and value:
                ids.append(value)
            else:
                bad += 1
        return ids, bad
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        value = row.get("prompt_id") if isinstance(row, dict) else None
        if isinstance(value, str) and value:
            ids.append(value)
        else:
            bad += 1
    return ids, bad


def _kinds_present(spec: dict[str, Any]) -> list[str]:
    kinds = {s["kind"] for s in spec["prompts"]["sources"]} | set(spec["prompts"]["mix"])
    return [k for k in KIND_ORDER if k in kinds]


def _shares(counts: Counter[str], kinds: list[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: (counts[k] / total if total else 0.0) for k in kinds}


def _ids_text(ids: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(set(ids))
    shown = ", ".join(ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")


@dataclass
class PromptReport(FindingsReport):
    """Findings and the numbers behind them; `to_json` is byte-stable for a given input."""

    spec: str
    findings: list[Finding]
    metrics: dict[str, Any]
    holdout: list[dict[str, Any]]

    def exit_code(self, *, strict: bool = False) -> int:
        """0 when the distribution passes, 1 on an error (or any warning under strict)."""
        return 1 if self.errors or (strict and self.warnings) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "report": "rlhfspec.prompts",
            "version": 1,
            "spec": self.spec,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict(JSON_KEYS) for f in self.findings],
            "metrics": self.metrics,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"

    def _summary_lines(self) -> list[str]:
        m = self.metrics
        lines = [
            f"{m['available']} prompts available for annotation "
            f"({m['total']} in {len(m['sources'])} sources, {m['holdout']['count']} held out)"
        ]
        for kind, info in m["kinds"].items():
            rng = info["range"]
            rng_text = f"[{rng[0]:.2f}, {rng[1]:.2f}]" if rng else "no range"
            lines.append(
                f"  {kind:<12} {info['available']:>6}  share {info['share']:.3f}  {rng_text}"
            )
        lines.append(
            "length bins (words): "
            + ", ".join(f"{b['bin']} {b['count']}" for b in m["strata"]["length_bins"])
        )
        for name, values in m["strata"]["fields"].items():
            lines.append(f"{name}: " + ", ".join(f"{v} {c}" for v, c in values.items()))
        return lines

    def format_text(self) -> str:
        """The terminal report: summary, then one line per finding."""
        lines = [f"prompts check for {self.spec}"]
        lines += self._summary_lines()
        for f in self.findings:
            lines.append(f"{f.severity} {f.code} {f.title}: {f.message}")
            if f.hint:
                lines.append(f"  hint: {f.hint}")
        verdict = "passed" if self.ok else "failed"
        lines.append(f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines) + "\n"

    def format_markdown(self) -> str:
        """The report as Markdown, for the run directory and the handoff package."""
        m = self.metrics
        out = [f"# Prompt distribution: {self.spec}", ""]
        out.append(
            f"**{'Passed' if self.ok else 'Failed'}**: {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)."
        )
        out += [
            "",
            "## Mix",
            "",
            "| kind | available | share | range | annotated share |",
            "|---|---:|---:|---|---:|",
        ]
        for kind, info in m["kinds"].items():
            rng = info["range"]
            ann = m["annotated"]["shares"].get(kind)
            out.append(
                f"| {kind} | {info['available']} | {info['share']:.3f} | "
                + (f"{rng[0]:.2f}-{rng[1]:.2f}" if rng else "none")
                + f" | {'' if ann is None else f'{ann:.3f}'} |"
            )
        out += ["", "## Strata", "", "| stratum | prompts |", "|---|---:|"]
        for b in m["strata"]["length_bins"]:
            out.append(f"| words {b['bin']} | {b['count']} |")
        for name, values in m["strata"]["fields"].items():
            for value, count in values.items():
                out.append(f"| {name} = {value} | {count} |")
        h = m["holdout"]
        out += [
            "",
            "## Production holdout",
            "",
            f"{h['count']} prompts (share {h['share']:g} of each usage-log source, its last rows).",
            "",
        ]
        if h["ids"]:
            out.append(", ".join(f"`{i}`" for i in h["ids"]))
            out.append("")
        out += ["## Findings", ""]
        if not self.findings:
            out.append("None.")
        for f in self.findings:
            out.append(
                f"- **{f.code}** {f.severity} ({f.title}): {f.message}"
                + (f" *Hint: {f.hint}*" if f.hint else "")
            )
        return "\n".join(out) + "\n"


def check_prompts(project: Project) -> PromptReport:
    """Check the spec's prompt distribution against its sources, batches and SFT data."""
    spec = project.spec
    prompts_spec = spec["prompts"]
    pool = load_prompt_pool(project)
    available = pool.available
    findings: list[Finding] = []
    kinds = _kinds_present(spec)
    mix: dict[str, list[float]] = prompts_spec["mix"]

    # Sources and privacy -------------------------------------------------
    sources_metrics = []
    for source in prompts_spec["sources"]:
        rows = [p for p in pool.prompts if p.source == source["id"]]
        held = sum(1 for p in rows if p.id in pool.holdout_ids)
        review = source.get("privacy_review")
        sources_metrics.append(
            {
                "id": source["id"],
                "kind": source["kind"],
                "path": source["path"],
                "rows": len(rows),
                "holdout": held,
                "available": len(rows) - held,
                "privacy_review": review if source["kind"] == "usage_logs" else None,
            }
        )
        if source["kind"] == "usage_logs" and not (review and review.get("approved")):
            what = (
                "has no privacy review"
                if not review
                else "has a privacy review that did not approve it"
            )
            findings.append(
                Finding(
                    "PR006",
                    f"usage-log source '{source['id']}' {what}; its prompts may not be used",
                    "add privacy_review: {approved: true, by: ..., on: YYYY-MM-DD} once the review passed",
                )
            )

    # Mix -----------------------------------------------------------------
    counts = Counter(p.kind for p in available)
    shares = _shares(counts, kinds)
    kinds_metrics: dict[str, Any] = {}
    for kind in kinds:
        rng = mix.get(kind)
        kinds_metrics[kind] = {
            "available": counts[kind],
            "holdout": sum(1 for p in pool.holdout if p.kind == kind),
            "share": round(shares[kind], 6),
            "range": list(rng) if rng else None,
        }
        if rng and not (rng[0] - 1e-9 <= shares[kind] <= rng[1] + 1e-9):
            findings.append(
                Finding(
                    "PR001",
                    f"{kind} prompts are {shares[kind]:.3f} of the {len(available)} prompts available for "
                    f"annotation; the spec allows [{rng[0]:g}, {rng[1]:g}]",
                    "add or remove prompts of that kind, or change prompts.mix deliberately",
                )
            )

    # Strata --------------------------------------------------------------
    strata = prompts_spec["strata"]
    minimum = int(strata["min_per_stratum"])
    edges: list[int] = list(strata["length_words"])
    bins = []
    outside: list[str] = []
    bin_counts = [0] * (len(edges) - 1)
    for prompt in available:
        words = prompt.words
        for i in range(len(edges) - 1):
            if edges[i] <= words < edges[i + 1]:
                bin_counts[i] += 1
                break
        else:
            outside.append(prompt.id)
    for i, count in enumerate(bin_counts):
        label = _bin_label(edges[i], edges[i + 1])
        bins.append({"bin": label, "low": edges[i], "high": edges[i + 1], "count": count})
        if count < minimum:
            findings.append(
                Finding(
                    "PR003",
                    f"length bin {label} words holds {count} prompt(s) available for "
                    f"annotation; at least {minimum} needed",
                    "add prompts of that length (skewing to short prompts over-rewards shallow answers)",
                )
            )
    if outside:
        findings.append(
            Finding(
                "PR005",
                f"{len(outside)} prompt(s) fall outside the length bins {edges}: "
                + _ids_text(outside),
                "widen prompts.strata.length_words",
            )
        )
    field_metrics: dict[str, dict[str, int]] = {}
    for name in strata["fields"]:
        observed = sorted({str(p.row[name]) for p in pool.prompts})
        per_value = Counter(str(p.row[name]) for p in available)
        field_metrics[name] = {value: per_value[value] for value in observed}
        for value in observed:
            if per_value[value] < minimum:
                findings.append(
                    Finding(
                        "PR004",
                        f"{name} = {value!r} holds {per_value[value]} prompt(s) available "
                        f"for annotation; at least {minimum} needed",
                        f"add prompts with {name} = {value!r}",
                    )
                )

    # Holdout and leaks ---------------------------------------------------
    share = float(prompts_spec["production_holdout"]["share"])
    holdout_ids = [p.id for p in pool.holdout]
    if not holdout_ids:
        findings.append(
            Finding(
                "PR007",
                "no production prompts are held out",
                "add a usage-log source and set production_holdout.share (e.g. 0.1)",
            )
        )
    unknown: dict[str, set[str]] = {}
    unreadable: dict[str, int] = {}
    leaks: dict[str, Any] = {"batches": {}, "gold": [], "sft": []}
    annotated: set[str] = set()
    annotation = spec["annotation"]
    for batch in annotation["batches"]:
        ids, bad = _read_ids(project.path(batch["path"]), batch["path"], batch["format"])
        if bad:
            unreadable[batch["path"]] = bad
        annotated.update(ids)
        leaked = sorted({i for i in ids if i in pool.holdout_ids})
        unknown.setdefault(batch["path"], set()).update(i for i in ids if i not in pool.by_id)
        if leaked:
            leaks["batches"][batch["id"]] = leaked
            findings.append(
                Finding(
                    "PR008",
                    f"batch '{batch['id']}' ({batch['path']}) annotates {len(leaked)} "
                    f"production-holdout prompt(s): {_ids_text(leaked)}",
                    "drop those records; holdout prompts are for validation only",
                )
            )
    gold = annotation.get("gold")
    sft = spec["sft"]
    checked_files = [
        (
            "gold",
            "PR010",
            gold["path"] if gold else None,
            "gold items",
            "replace those gold items with prompts outside the holdout",
        ),
        (
            "sft",
            "PR009",
            sft.get("data") if sft["enabled"] else None,
            "SFT demonstrations",
            "drop those demonstrations; holdout prompts are never trained on",
        ),
    ]
    for key, code, rel, what, fix in checked_files:
        if not rel:
            continue
        ids, bad = _read_ids(project.path(rel), rel, "jsonl")
        if bad:
            unreadable[rel] = bad
        unknown.setdefault(rel, set()).update(i for i in ids if i not in pool.by_id)
        leaks[key] = sorted({i for i in ids if i in pool.holdout_ids})
        if leaks[key]:
            findings.append(
                Finding(
                    code,
                    f"{what} ({rel}) use {len(leaks[key])} "
                    f"production-holdout prompt(s): {_ids_text(leaks[key])}",
                    fix,
                )
            )
    unknown = {k: v for k, v in unknown.items() if v}
    for where, missing in unknown.items():
        findings.append(
            Finding(
                "PR011",
                f"{where} names {len(missing)} prompt id(s) that no prompt source has: "
                + _ids_text(missing),
                "add the prompts to a source, so the mix and leak checks see them",
            )
        )
    for where, bad in unreadable.items():
        findings.append(
            Finding(
                "PR012",
                f"{where}: {bad} row(s) without a readable prompt_id were not "
                "checked for holdout leaks",
            )
        )

    # Mix of what was actually annotated (a warning: batches are history).
    annotated_counts = Counter(
        pool.by_id[i].kind for i in annotated if i in pool.by_id and i not in pool.holdout_ids
    )
    annotated_shares = _shares(annotated_counts, kinds) if annotated_counts else {}
    for kind, kind_share in annotated_shares.items():
        rng = mix.get(kind)
        if rng and not (rng[0] - 1e-9 <= kind_share <= rng[1] + 1e-9):
            findings.append(
                Finding(
                    "PR002",
                    f"{kind} prompts are {kind_share:.3f} of the {sum(annotated_counts.values())} "
                    f"distinct prompts annotated so far; the spec allows [{rng[0]:g}, {rng[1]:g}]",
                    "steer the next batches towards the under-represented kinds",
                )
            )

    order = {code: i for i, code in enumerate(PROMPT_CODES)}
    findings.sort(key=lambda f: (PROMPT_CODES[f.code].severity != "error", order[f.code]))  # stable
    metrics = {
        "total": len(pool.prompts),
        "available": len(available),
        "sources": sources_metrics,
        "kinds": kinds_metrics,
        "strata": {
            "min_per_stratum": minimum,
            "length_bins": bins,
            "outside_bins": len(outside),
            "fields": field_metrics,
        },
        "holdout": {"share": share, "count": len(holdout_ids), "ids": holdout_ids},
        "annotated": {
            "prompts": sum(annotated_counts.values()),
            "counts": {k: annotated_counts[k] for k in kinds} if annotated_counts else {},
            "shares": {k: round(v, 6) for k, v in annotated_shares.items()},
        },
        "leaks": leaks,
    }
    return PromptReport(project.name, findings, metrics, [dict(p.row) for p in pool.holdout])


def write_prompt_report(report: PromptReport, out_dir: Path) -> list[Path]:
    """Write report.json, report.md and holdout.jsonl atomically; return the paths.

    holdout.jsonl is the reserved production set itself (rows as in their
    source files), so the evaluation stage reads exactly what was held out.
    """
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "holdout.jsonl"]
    atomic_write_text(paths[0], report.to_json())
    atomic_write_text(paths[1], report.format_markdown())
    atomic_write_text(
        paths[2], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in report.holdout)
    )
    return paths
