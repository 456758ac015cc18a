"""Located diagnostics and their stable codes.

Codes are part of the public interface: CI configurations and suppressions
refer to them, so a code is never reused for another meaning. The registry
below is the single source for the documentation (docs/diagnostics.md is
generated from it and a test keeps the two in sync).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class CodeInfo:
    severity: Severity
    title: str
    explanation: str


CODES: dict[str, CodeInfo] = {
    # YAML loading
    "Y001": CodeInfo("error", "yaml-syntax", "The file is not well-formed YAML (or not UTF-8)."),
    "Y002": CodeInfo(
        "error",
        "duplicate-key",
        "A mapping has the same key twice; YAML keeps only one silently elsewhere.",
    ),
    "Y003": CodeInfo(
        "error",
        "non-string-key",
        "A mapping key is a number, boolean, null or collection; quote it.",
    ),
    "Y004": CodeInfo(
        "error",
        "limit-exceeded",
        "The file is too large, too deeply nested or expands too many aliases.",
    ),
    "Y005": CodeInfo(
        "error",
        "unsupported-tag",
        "A YAML tag other than the standard !!str/!!int/!!float/!!bool/!!null/!!map/!!seq.",
    ),
    "Y006": CodeInfo("error", "multiple-documents", "The file holds more than one YAML document."),
    "Y007": CodeInfo(
        "error", "not-a-mapping", "The spec is empty or its top level is not a mapping."
    ),
    "Y008": CodeInfo(
        "error",
        "non-finite-number",
        "A number is NaN or infinite (`.nan`, `.inf`, `1e400`); every comparison with NaN is "
        "false, so it would switch a check off.",
    ),
    # JSON Schema
    "S001": CodeInfo(
        "error",
        "unknown-key",
        "A key the schema does not define (typos are caught, never dropped).",
    ),
    "S002": CodeInfo("error", "missing-key", "A required key is absent."),
    "S003": CodeInfo(
        "error",
        "wrong-type",
        "A value has the wrong type (for example `yes` where a boolean is expected).",
    ),
    "S004": CodeInfo("error", "not-allowed-value", "A value outside the allowed set."),
    "S005": CodeInfo("error", "out-of-range", "A number or list length outside its bounds."),
    "S006": CodeInfo(
        "error", "bad-format", "A string that does not match its required pattern or is empty."
    ),
    "S007": CodeInfo("error", "duplicate-item", "A list that must hold unique items repeats one."),
    "S008": CodeInfo("error", "schema-violation", "Any other schema rule."),
    # Criteria (stage 1) and the lock file
    "C001": CodeInfo("error", "duplicate-id", "Two dimensions or disqualifiers share an id."),
    "C002": CodeInfo(
        "error",
        "unknown-reference",
        "A worked example names a dimension or disqualifier that does not exist.",
    ),
    "C003": CodeInfo(
        "error",
        "criteria-changed-without-version-bump",
        "The criteria differ from the locked content of the same version.",
    ),
    "C004": CodeInfo(
        "error",
        "criteria-version-went-backwards",
        "The criteria version is older than the newest locked version.",
    ),
    "C005": CodeInfo(
        "error",
        "unknown-criteria-version",
        "An annotation batch names a criteria version that is neither locked nor current.",
    ),
    "C006": CodeInfo(
        "warning",
        "no-lock-file",
        "No lock file beside the spec, so criteria drift cannot be checked.",
    ),
    "C007": CodeInfo(
        "warning",
        "criteria-version-not-locked",
        "The current criteria version is newer than the lock file's; run `rlhfspec lock`.",
    ),
    "C008": CodeInfo(
        "error",
        "bad-detector-regex",
        "A disqualifier's detector is not a valid regular expression.",
    ),
    "C009": CodeInfo("error", "bad-lock-file", "The lock file is not a valid rlhfspec lock file."),
    # Prompts (stage 2)
    "P001": CodeInfo(
        "error",
        "mix-infeasible",
        "The mix ranges cannot add up to 1 (sum of minimums > 1 or sum of maximums < 1).",
    ),
    "P002": CodeInfo(
        "error", "mix-kind-without-source", "The mix gives a range to a kind no source has."
    ),
    "P003": CodeInfo(
        "warning",
        "source-kind-not-in-mix",
        "A source kind has no mix range, so its share is unconstrained.",
    ),
    "P004": CodeInfo("error", "duplicate-source-id", "Two prompt sources share an id."),
    "P005": CodeInfo(
        "error", "missing-privacy-review", "A usage-log source has no approved privacy review."
    ),
    "P006": CodeInfo("error", "bad-length-bins", "Length-bin edges are not strictly ascending."),
    "P007": CodeInfo(
        "warning",
        "no-production-holdout",
        "No usage-log prompts are reserved to catch a prompt-distribution mismatch.",
    ),
    "V001": CodeInfo("error", "inverted-range", "A [min, max] range has min above max."),
    # Annotation (stage 3)
    "A001": CodeInfo(
        "warning", "gold-share-outside-recommended", "Gold share outside the recommended 5-10%."
    ),
    "A002": CodeInfo(
        "error", "agreement-floor-not-below-target", "The agreement floor must be below the target."
    ),
    "A003": CodeInfo("error", "duplicate-batch-id", "Two annotation batches share an id."),
    "A008": CodeInfo(
        "warning",
        "agreement-below-guidance",
        "The agreement target is below 0.6 or the floor below 0.4, weaker than the seed's "
        "guidance (kappa above 0.6 is a reasonable target; below 0.4 the criteria are ambiguous).",
    ),
    "A009": CodeInfo(
        "warning",
        "check-cannot-fail",
        "An annotation threshold is set so that its QC check can never fire "
        "(gold min_accuracy 0, max_first_share 1, fatigue max_drop 1, max_split_vote_share 1).",
    ),
    "A004": CodeInfo(
        "warning",
        "long-sessions",
        "Sessions longer than 90 minutes: preference quality degrades with fatigue.",
    ),
    "A005": CodeInfo(
        "warning", "no-overlap", "Fewer than 2 annotators per item: agreement cannot be measured."
    ),
    "A006": CodeInfo(
        "error",
        "no-annotation-batches",
        "The policy method needs preference data but no batch is listed.",
    ),
    "A007": CodeInfo(
        "warning",
        "order-not-randomized",
        "Output order is not randomised, so position bias goes unchecked.",
    ),
    # Reward model (stage 4)
    "R001": CodeInfo(
        "warning",
        "validation-share-outside-recommended",
        "Reward-model holdout outside the recommended 10-15%.",
    ),
    "R002": CodeInfo(
        "warning",
        "gate-cannot-fail",
        "A reward-model gate is set so loosely it cannot fail (accuracy at or below chance, "
        "a length correlation limit of 0.9 or more).",
    ),
    # Policy (stage 5)
    "O001": CodeInfo(
        "error",
        "checkpoint-interval-too-large",
        "The checkpoint interval exceeds the number of updates, so no checkpoint is evaluated.",
    ),
    "O002": CodeInfo("error", "kl-inconsistent", "The KL block's settings contradict each other."),
    "O003": CodeInfo(
        "warning",
        "no-kl-constraint",
        "KL coefficient 0 with a fixed controller: nothing stops reward hacking.",
    ),
    "O004": CodeInfo(
        "error", "bad-batch-split", "The rollout batch does not split evenly into minibatches."
    ),
    "O005": CodeInfo(
        "error", "sft-reference-missing", "`start_from_sft` is set but the SFT stage is disabled."
    ),
    "O006": CodeInfo(
        "warning",
        "guard-below-kl-target",
        "The KL guard is below the adaptive KL target, so every converged checkpoint fails the guard.",
    ),
    "O007": CodeInfo(
        "warning", "trust-remote-code", "A model may run Python code shipped with it."
    ),
    "O008": CodeInfo(
        "warning", "settings-for-other-method", "Settings for the method not selected are ignored."
    ),
    # Evaluation
    "E001": CodeInfo(
        "error",
        "prompt-set-without-source",
        "An evaluation prompt set has no prompts to draw from.",
    ),
    "E002": CodeInfo(
        "warning",
        "guard-cannot-fail",
        "A selection guard is set so loosely it cannot fail (max_length_correlation of 0.9 or "
        "more, max_disqualifier_rate 1).",
    ),
    "E003": CodeInfo(
        "warning",
        "adversarial-not-evaluated",
        "An adversarial prompt source exists but evaluation leaves the adversarial set out, "
        "where reward hacking shows first.",
    ),
    # Export targets (`rlhfspec compile SPEC --target verl`)
    "X001": CodeInfo(
        "error",
        "export-refused-setting",
        "A setting the target engine cannot express, not acknowledged under export.<target>.acknowledge.",
    ),
    "X002": CodeInfo(
        "error",
        "export-stale-acknowledgement",
        "An acknowledgement names a setting that maps after all, or no setting of the spec.",
    ),
    "X003": CodeInfo(
        "error",
        "export-unsupported",
        "The target engine cannot run this stage at all (for example DPO on verl's main_ppo).",
    ),
    # Files
    "F001": CodeInfo("error", "file-not-found", "A referenced file does not exist."),
    "F002": CodeInfo(
        "error",
        "path-escapes-spec-folder",
        "A referenced path leaves the spec's folder (`../`, absolute, or a symlink out).",
    ),
    "F003": CodeInfo("error", "missing-data-path", "A stage is enabled without the data it needs."),
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    file: str
    line: int
    col: int
    path: str = ""
    hint: str | None = None

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.col, self.code, self.message)


def make(
    code: str,
    message: str,
    *,
    file: str,
    line: int,
    col: int,
    path: str = "",
    hint: str | None = None,
) -> Diagnostic:
    """Build a diagnostic with the code's registered severity."""
    return Diagnostic(code, CODES[code].severity, message, file, line, col, path, hint)


def json_path(parts: Iterable[str | int]) -> str:
    """Render a JSON path the way users write it: `a.b[2].c`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def strictify(diags: Sequence[Diagnostic]) -> list[Diagnostic]:
    """`--strict`: every warning becomes an error, keeping its code."""
    return [replace(d, severity="error") for d in diags]


def count(diags: Sequence[Diagnostic]) -> tuple[int, int]:
    errors = sum(1 for d in diags if d.severity == "error")
    return errors, len(diags) - errors


def format_text(diags: Sequence[Diagnostic]) -> str:
    lines = []
    for d in diags:
        lines.append(f"{d.file}:{d.line}:{d.col}: {d.severity}[{d.code}]: {d.message}")
        if d.path:
            lines.append(f"    at {d.path}")
        if d.hint:
            lines.append(f"    hint: {d.hint}")
    errors, warnings = count(diags)
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(lines)


def _gh_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def format_github(diags: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands, so problems show inline on the PR diff."""
    lines = []
    for d in diags:
        msg = (
            d.message
            + (f" (at {d.path})" if d.path else "")
            + (f" Hint: {d.hint}" if d.hint else "")
        )
        lines.append(
            f"::{d.severity} file={_gh_escape(d.file, prop=True)},line={d.line},col={d.col},"
            f"title={d.code}::{_gh_escape(msg)}"
        )
    errors, warnings = count(diags)
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(lines)


def format_json(diags: Sequence[Diagnostic], *, file: str) -> str:
    errors, warnings = count(diags)
    doc = {
        "file": file,
        "valid": errors == 0,
        "errors": errors,
        "warnings": warnings,
        "diagnostics": [asdict(d) for d in diags],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)
