"""`rlhfspec prompts SPEC`: check the prompt distribution before anyone annotates it.

The checks, one function per family; the prompt pool and the holdout rule live in
`rlhfspec.runtime.prompts.pool`.

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
  batch, a gold item or an SFT demonstration is a leak, an error; blinded
  batches are read through their unblinding key (`prompts.batch_ids`).

Unreadable prompt rows and duplicate prompt ids are refused with a
`RunError` naming file, line and field: every later number (shares,
holdout, leaks) would silently be wrong otherwise. Everything else is a
finding with a stable code, so CI can gate on it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rlhfspec.common.codes import Code, family
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.findings import Finding, FindingsReport
from rlhfspec.common.templating import markdown_inline as md
from rlhfspec.runtime.annotation.blinding import Unblinder
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.prompts.batch_ids import PromptsByText, read_prompt_ids
from rlhfspec.runtime.prompts.pool import (  # re-exported: the pool used to live here
    HOLDOUT_FILE,
    Prompt,
    PromptPool,
    holdout_count,
    holdout_row,
    load_prompt_pool,
    pool_with_holdout,
    production_holdout,
    read_holdout,
)

__all__ = [
    "HOLDOUT_FILE",
    "PROMPT_CODES",
    "Prompt",
    "PromptPool",
    "PromptReport",
    "check_prompts",
    "holdout_count",
    "load_prompt_pool",
    "pool_with_holdout",
    "production_holdout",
    "read_holdout",
    "write_prompt_report",
]

KIND_ORDER = ("usage_logs", "synthetic", "expert", "adversarial")

# The prompt check's codes (registered in common/codes.py with every other family's).
PROMPT_CODES: dict[str, Code] = family("PR")
JSON_KEYS = ("code", "severity", "title", "message", "hint")
"""The keys of one finding in prompts/report.json, in order."""


def _bin_label(low: int, high: int) -> str:
    return f"[{low}, {high})"


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
            "format": "rlhfspec.prompt_report/1",
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
        # every value from the spec or the prompt data is escaped: the report ships in the
        # handoff package, where a `<script>` in a topic must stay text
        out = [f"# Prompt distribution: {md(self.spec)}", ""]
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
                f"| {md(kind)} | {info['available']} | {info['share']:.3f} | "
                + (f"{rng[0]:.2f}-{rng[1]:.2f}" if rng else "none")
                + f" | {'' if ann is None else f'{ann:.3f}'} |"
            )
        out += ["", "## Strata", "", "| stratum | prompts |", "|---|---:|"]
        for b in m["strata"]["length_bins"]:
            out.append(f"| words {b['bin']} | {b['count']} |")
        for name, values in m["strata"]["fields"].items():
            for value, count in values.items():
                out.append(f"| {md(name)} = {md(value)} | {count} |")
        h = m["holdout"]
        out += [
            "",
            "## Production holdout",
            "",
            f"{h['count']} prompts (share {h['share']:g} of each usage-log source, its last rows).",
            "",
        ]
        if h["ids"]:
            out.append(", ".join(md(i) for i in h["ids"]))
            out.append("")
        out += ["## Findings", ""]
        if not self.findings:
            out.append("None.")
        for f in self.findings:
            out.append(
                f"- **{f.code}** {f.severity} ({md(f.title)}): {md(f.message)}"
                + (f" *Hint: {md(f.hint)}*" if f.hint else "")
            )
        return "\n".join(out) + "\n"


def check_prompts(project: Project) -> PromptReport:
    """Check the spec's prompt distribution against its sources, batches and SFT data.

    One function per check family; each appends its findings and returns its metrics.
    """
    spec = project.spec
    prompts_spec = spec["prompts"]
    pool = load_prompt_pool(project)
    findings: list[Finding] = []
    kinds = _kinds_present(spec)
    mix: dict[str, list[float]] = prompts_spec["mix"]
    sources = _check_sources(prompts_spec["sources"], pool, findings)
    kinds_metrics = _check_mix(pool, kinds, mix, findings)
    strata = _check_strata(prompts_spec["strata"], pool, findings)
    holdout = _check_holdout(float(prompts_spec["production_holdout"]["share"]), pool, findings)
    scan = _LeakScan()
    _check_batch_leaks(project, pool, scan, findings)
    _check_file_leaks(project, pool, scan, findings)
    _report_unchecked(scan, findings)
    annotated = _check_annotated_mix(pool, scan.annotated, kinds, mix, findings)
    multi_turn = _check_multi_turn(spec.get("criteria", {}).get("scope", {}), pool, findings)
    order = {code: i for i, code in enumerate(PROMPT_CODES)}
    findings.sort(key=lambda f: (PROMPT_CODES[f.code].severity != "error", order[f.code]))  # stable
    metrics = {
        "total": len(pool.prompts),
        "available": len(pool.available),
        "sources": sources,
        "kinds": kinds_metrics,
        "strata": strata,
        "holdout": holdout,
        "annotated": annotated,
        "leaks": scan.leaks,
        "multi_turn": multi_turn,
    }
    return PromptReport(project.name, findings, metrics, [holdout_row(p) for p in pool.holdout])


def _in_range(share: float, rng: list[float]) -> bool:
    return rng[0] - 1e-9 <= share <= rng[1] + 1e-9


def _check_sources(
    sources: list[dict[str, Any]], pool: PromptPool, findings: list[Finding]
) -> list[dict[str, Any]]:
    """Per-source counts, and an approved privacy review on every usage-log source (PR006)."""
    metrics = []
    for source in sources:
        rows = [p for p in pool.prompts if p.source == source["id"]]
        held = sum(1 for p in rows if p.id in pool.holdout_ids)
        review = source.get("privacy_review")
        metrics.append(
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
    return metrics


def _check_mix(
    pool: PromptPool, kinds: list[str], mix: dict[str, list[float]], findings: list[Finding]
) -> dict[str, Any]:
    """Each kind's share of the prompts available for annotation against its range (PR001)."""
    available = pool.available
    counts = Counter(p.kind for p in available)
    shares = _shares(counts, kinds)
    metrics: dict[str, Any] = {}
    for kind in kinds:
        rng = mix.get(kind)
        metrics[kind] = {
            "available": counts[kind],
            "holdout": sum(1 for p in pool.holdout if p.kind == kind),
            "share": round(shares[kind], 6),
            "range": list(rng) if rng else None,
        }
        if rng and not _in_range(shares[kind], rng):
            findings.append(
                Finding(
                    "PR001",
                    f"{kind} prompts are {shares[kind]:.3f} of the {len(available)} prompts available for "
                    f"annotation; the spec allows [{rng[0]:g}, {rng[1]:g}]",
                    "add or remove prompts of that kind, or change prompts.mix deliberately",
                )
            )
    return metrics


def _check_strata(
    strata: dict[str, Any], pool: PromptPool, findings: list[Finding]
) -> dict[str, Any]:
    """Coverage of the length bins (PR003, PR005) and of the strata fields' values (PR004)."""
    minimum = int(strata["min_per_stratum"])
    bins, outside = _check_length_bins(list(strata["length_words"]), minimum, pool, findings)
    return {
        "min_per_stratum": minimum,
        "length_bins": bins,
        "outside_bins": outside,
        "fields": _check_fields(strata["fields"], minimum, pool, findings),
    }


def _check_length_bins(
    edges: list[int], minimum: int, pool: PromptPool, findings: list[Finding]
) -> tuple[list[dict[str, Any]], int]:
    bins = []
    outside: list[str] = []
    bin_counts = [0] * (len(edges) - 1)
    for prompt in pool.available:
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
    return bins, len(outside)


def _check_fields(
    fields: list[str], minimum: int, pool: PromptPool, findings: list[Finding]
) -> dict[str, dict[str, int]]:
    metrics: dict[str, dict[str, int]] = {}
    for name in fields:
        observed = sorted({str(p.row[name]) for p in pool.prompts})
        per_value = Counter(str(p.row[name]) for p in pool.available)
        metrics[name] = {value: per_value[value] for value in observed}
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
    return metrics


MULTI_TURN_WORDS = re.compile(r"(?i)multi[- ]?turn|conversation")


def _check_multi_turn(scope: dict[str, Any], pool: PromptPool, findings: list[Finding]) -> int:
    """Multi-turn prompts that the criteria's scope declares out of scope (PR013); returns
    how many prompts are multi-turn."""
    multi = [p for p in pool.prompts if p.messages is not None]
    excluded = [s for s in scope.get("out_of_scope", []) if MULTI_TURN_WORDS.search(s)]
    if multi and excluded:
        findings.append(
            Finding(
                "PR013",
                f"{len(multi)} prompt(s) are multi-turn ({_ids_text(p.id for p in multi)}) but "
                f"criteria.scope.out_of_scope lists {excluded[0]!r}",
                "admit multi-turn conversations in criteria.scope.in_scope, or drop those rows",
            )
        )
    return len(multi)


def _check_holdout(share: float, pool: PromptPool, findings: list[Finding]) -> dict[str, Any]:
    """The production holdout exists (PR007)."""
    holdout_ids = [p.id for p in pool.holdout]
    if not holdout_ids:
        findings.append(
            Finding(
                "PR007",
                "no production prompts are held out",
                "add a usage-log source and set production_holdout.share (e.g. 0.1)",
            )
        )
    return {"share": share, "count": len(holdout_ids), "ids": holdout_ids}


@dataclass
class _LeakScan:
    """What the leak checks found in the batches, gold items and demonstrations."""

    leaks: dict[str, Any] = field(default_factory=lambda: {"batches": {}, "gold": [], "sft": []})
    unknown: dict[str, set[str]] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    annotated: set[str] = field(default_factory=set)

    def read(
        self,
        project: Project,
        rel: str,
        fmt: str,
        pool: PromptPool,
        key: str | None = None,
        by_text: PromptsByText | None = None,
    ) -> list[str]:
        """The prompt ids a file names (through its unblinding `key` when it has one, by text
        for a stock template's export); its unreadable rows and unknown ids are noted."""
        unblinder = Unblinder.read(project.path(key), key) if key else None
        ids, bad = read_prompt_ids(project.path(rel), rel, fmt, key=unblinder, by_text=by_text)
        if bad:
            self.unreadable[rel] = bad
        self.unknown.setdefault(rel, set()).update(i for i in ids if i not in pool.by_id)
        return ids


def _check_batch_leaks(
    project: Project, pool: PromptPool, scan: _LeakScan, findings: list[Finding]
) -> None:
    """No annotation batch annotates a production-holdout prompt (PR008)."""
    # imported here: annotation.stock reads the prompt pool, whose package imports this module
    from rlhfspec.runtime.annotation.stock import FORMAT as STOCK_FORMAT
    from rlhfspec.runtime.annotation.stock import StockMatcher, batch_fields

    matcher: StockMatcher | None = None
    for batch in project.spec["annotation"]["batches"]:
        by_text = None
        if batch["format"] == STOCK_FORMAT:  # texts only: matched to the prompts by text
            matcher = matcher or StockMatcher.build(project)
            by_text = partial(matcher.prompt_ids, fields=batch_fields(batch))
        # blinded batches name their prompts only through the unblinding key
        ids = scan.read(project, batch["path"], batch["format"], pool, batch.get("key"), by_text)
        scan.annotated.update(ids)
        leaked = sorted({i for i in ids if i in pool.holdout_ids})
        if leaked:
            scan.leaks["batches"][batch["id"]] = leaked
            findings.append(
                Finding(
                    "PR008",
                    f"batch '{batch['id']}' ({batch['path']}) annotates {len(leaked)} "
                    f"production-holdout prompt(s): {_ids_text(leaked)}",
                    "drop those records; holdout prompts are for validation only",
                )
            )


def _check_file_leaks(
    project: Project, pool: PromptPool, scan: _LeakScan, findings: list[Finding]
) -> None:
    """No gold item (PR010) or SFT demonstration (PR009) uses a production-holdout prompt."""
    gold = project.spec["annotation"].get("gold")
    sft = project.spec["sft"]
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
        ids = scan.read(project, rel, "jsonl", pool)
        scan.leaks[key] = sorted({i for i in ids if i in pool.holdout_ids})
        if scan.leaks[key]:
            findings.append(
                Finding(
                    code,
                    f"{what} ({rel}) use {len(scan.leaks[key])} "
                    f"production-holdout prompt(s): {_ids_text(scan.leaks[key])}",
                    fix,
                )
            )


def _report_unchecked(scan: _LeakScan, findings: list[Finding]) -> None:
    """Prompt ids no source has (PR011) and rows without a readable prompt id (PR012)."""
    for where, missing in scan.unknown.items():
        if not missing:
            continue
        findings.append(
            Finding(
                "PR011",
                f"{where} names {len(missing)} prompt id(s) that no prompt source has: "
                + _ids_text(missing),
                "add the prompts to a source, so the mix and leak checks see them",
            )
        )
    for where, bad in scan.unreadable.items():
        findings.append(
            Finding(
                "PR012",
                f"{where}: {bad} row(s) without a readable prompt_id were not "
                "checked for holdout leaks",
            )
        )


def _check_annotated_mix(
    pool: PromptPool,
    annotated: set[str],
    kinds: list[str],
    mix: dict[str, list[float]],
    findings: list[Finding],
) -> dict[str, Any]:
    """The mix of what was actually annotated (PR002, a warning: batches are history)."""
    counts = Counter(
        pool.by_id[i].kind for i in annotated if i in pool.by_id and i not in pool.holdout_ids
    )
    shares = _shares(counts, kinds) if counts else {}
    for kind, kind_share in shares.items():
        rng = mix.get(kind)
        if rng and not _in_range(kind_share, rng):
            findings.append(
                Finding(
                    "PR002",
                    f"{kind} prompts are {kind_share:.3f} of the {sum(counts.values())} "
                    f"distinct prompts annotated so far; the spec allows [{rng[0]:g}, {rng[1]:g}]",
                    "steer the next batches towards the under-represented kinds",
                )
            )
    return {
        "prompts": sum(counts.values()),
        "counts": {k: counts[k] for k in kinds} if counts else {},
        "shares": {k: round(v, 6) for k, v in shares.items()},
    }


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
