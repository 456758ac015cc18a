"""Semantic checks of the data stages: criteria, the criteria lock, prompts and annotation."""

from __future__ import annotations

from typing import Any

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.patterns import regex_problem
from rlhfspec.compiler.diagnostics import json_path
from rlhfspec.compiler.lockfile import (
    LockEntry,
    criteria_hash,
    describe_changes,
    lock_path_for,
    read_lock,
    version_key,
)
from rlhfspec.compiler.schemas import JsonPath
from rlhfspec.compiler.semantic_base import (
    GUIDANCE_AGREEMENT,
    RECOMMENDED_GOLD_SHARE,
    RECOMMENDED_SESSION_MINUTES,
    CheckerBase,
)


class DataChecks(CheckerBase):
    """Criteria, lock drift, the prompt mix and the annotation design."""

    # Stage 1 ---------------------------------------------------------------
    def criteria(self) -> None:
        crit = self.spec["criteria"]
        seen: dict[str, JsonPath] = {}
        for kind in ("dimensions", "disqualifiers"):
            for i, item in enumerate(crit[kind]):
                path: JsonPath = ("criteria", kind, i, "id")
                if item["id"] in seen:
                    first = json_path(seen[item["id"]])
                    self.emit(
                        "C001",
                        f"id '{item['id']}' is used twice (first at {first})",
                        path,
                        hint="dimension and disqualifier ids share one namespace; rename one",
                    )
                else:
                    seen[item["id"]] = path
        for i, item in enumerate(crit["disqualifiers"]):
            regex = item.get("detect", {}).get("regex")
            if regex is not None:
                problem = regex_problem(regex)
                if problem is not None:
                    self.emit(
                        "C008",
                        f"detector for '{item['id']}' is not a valid regular expression: {problem}",
                        ("criteria", "disqualifiers", i, "detect", "regex"),
                        hint="keep detectors short and simple: they run on every sampled reply",
                    )
        for i, example in enumerate(crit["examples"]):
            ref = example.get("decided_by")
            if ref is not None and ref not in seen:
                self.emit(
                    "C002",
                    f"example names '{ref}', which is neither a dimension nor a disqualifier",
                    ("criteria", "examples", i, "decided_by"),
                    hint="known ids: " + ", ".join(seen),
                )

    def lock(self) -> None:
        if self.spec_path is None:
            return
        lock_path = lock_path_for(self.spec_path)
        version = self.spec["criteria"]["version"]
        batches = self.spec["annotation"]["batches"]
        if not lock_path.exists():
            self.emit(
                "C006",
                f"no lock file {lock_path.name} beside the spec, so criteria drift is not checked",
                ("criteria", "version"),
                hint=f"run `rlhfspec lock {self.spec_path.name}` and commit the lock file",
            )
            return
        try:
            entries = read_lock(lock_path)
        except CompilerError as exc:
            self.emit(
                "C009",
                exc.message,
                ("criteria", "version"),
                hint="regenerate it with `rlhfspec lock`",
            )
            return
        known = {e.version for e in entries} | {version}
        for i, batch in enumerate(batches):
            if batch["criteria_version"] not in known:
                self.emit(
                    "C005",
                    f"batch '{batch['id']}' follows criteria version {batch['criteria_version']}, "
                    f"which is not in the lock file's history ({', '.join(sorted(known, key=version_key))})",
                    ("annotation", "batches", i, "criteria_version"),
                    hint="tag the batch with the version its annotators actually used",
                )
        if not entries:
            return
        self._compare_with_lock(entries, version)

    def _compare_with_lock(self, entries: list[LockEntry], version: str) -> None:
        latest = max(entries, key=lambda e: version_key(e.version))
        current = criteria_hash(self.spec["criteria"])
        by_version = {e.version: e for e in entries}
        path: JsonPath = ("criteria", "version")
        if version in by_version:
            entry = by_version[version]
            if entry.sha256 != current:
                changes = describe_changes(entry.content, self.spec["criteria"])
                self.emit(
                    "C003",
                    f"criteria changed but version {version} was kept: "
                    + "; ".join(changes or ["content changed"]),
                    path,
                    hint="bump criteria.version (a criteria change is a breaking change), "
                    "then run `rlhfspec lock` and re-tag new annotation batches",
                )
            elif entry is not latest:
                self.emit(
                    "C004",
                    f"criteria version {version} is older than the newest locked version {latest.version}",
                    path,
                    hint=f"restore version {latest.version}'s criteria or publish a newer version",
                )
        elif version_key(version) < version_key(latest.version):
            self.emit(
                "C004",
                f"criteria version {version} is older than the newest locked version {latest.version}",
                path,
                hint="versions only move forward; choose a version above " + latest.version,
            )
        else:
            self.emit(
                "C007",
                f"criteria version {version} is not in the lock file yet (newest: {latest.version})",
                path,
                hint="run `rlhfspec lock` and commit the lock file",
            )

    # Stage 2 ---------------------------------------------------------------
    def prompts(self) -> None:
        prompts = self.spec["prompts"]
        seen: set[str] = set()
        kinds: set[str] = set()
        for i, source in enumerate(prompts["sources"]):
            kinds.add(source["kind"])
            if source["id"] in seen:
                self.emit(
                    "P004",
                    f"prompt source id '{source['id']}' is used twice",
                    ("prompts", "sources", i, "id"),
                )
            seen.add(source["id"])
            review = source.get("privacy_review")
            if source["kind"] == "usage_logs" and (review is None or not review["approved"]):
                what = (
                    "has no privacy review"
                    if review is None
                    else "has a privacy review that did not approve it"
                )
                self.emit(
                    "P005",
                    f"usage-log source '{source['id']}' {what}",
                    ("prompts", "sources", i),
                    hint="add privacy_review: {approved: true, by: ..., on: YYYY-MM-DD} once the review passed",
                )
        mix = prompts["mix"]
        if mix:
            lows = highs = 0.0
            for kind, (low, high) in mix.items():
                lows += low
                highs += high
                if low > high:
                    self.emit(
                        "V001",
                        f"mix range for {kind} is [{low}, {high}]: minimum above maximum",
                        ("prompts", "mix", kind),
                    )
                if kind not in kinds:
                    self.emit(
                        "P002",
                        f"mix gives a range to '{kind}' but no source has that kind",
                        ("prompts", "mix", kind),
                        key=True,
                        hint="add a source of that kind or remove the range",
                    )
            for kind in sorted(kinds - set(mix)):
                self.emit(
                    "P003",
                    f"sources of kind '{kind}' have no mix range",
                    ("prompts", "mix"),
                    key=True,
                )
            if lows > 1 + 1e-9 or highs < 1 - 1e-9:
                self.emit(
                    "P001",
                    f"mix ranges cannot sum to 1: minimums sum to {lows:g}, maximums to {highs:g}",
                    ("prompts", "mix"),
                    key=True,
                    hint="the minimums must sum to at most 1 and the maximums to at least 1",
                )
        edges = prompts["strata"]["length_words"]
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            self.emit(
                "P006",
                f"length bins {edges} are not strictly ascending",
                ("prompts", "strata", "length_words"),
            )
        if prompts["production_holdout"]["share"] <= 0 or "usage_logs" not in kinds:
            self.emit(
                "P007",
                "no production prompts are held out, so a mismatch between annotated and real traffic goes unseen",
                ("prompts", "production_holdout"),
                key=True,
                hint="add a usage-log source and set production_holdout.share (e.g. 0.1)",
            )

    # Stage 3 ---------------------------------------------------------------
    def annotation(self) -> None:
        ann = self.spec["annotation"]
        gold = ann.get("gold")
        if gold:
            low, high = gold["share"]
            if low > high:
                self.emit(
                    "V001",
                    f"gold share range [{low}, {high}] has its minimum above its maximum",
                    ("annotation", "gold", "share"),
                )
            elif low < RECOMMENDED_GOLD_SHARE[0] or high > RECOMMENDED_GOLD_SHARE[1]:
                self.emit(
                    "A001",
                    f"gold share [{low}, {high}] is outside the recommended 5-10%",
                    ("annotation", "gold", "share"),
                    hint="spot-check 5-10% of annotations against gold items",
                )
        agreement = ann["agreement"]
        if agreement["floor"] >= agreement["target"]:
            self.emit(
                "A002",
                f"agreement floor {agreement['floor']} is not below the target {agreement['target']}",
                ("annotation", "agreement", "floor"),
                hint="typical values: target 0.6, floor 0.4",
            )
        self._agreement_guidance(agreement)
        self._annotation_cannot_fail(ann)
        seen: set[str] = set()
        for i, batch in enumerate(ann["batches"]):
            if batch["id"] in seen:
                self.emit(
                    "A003",
                    f"batch id '{batch['id']}' is used twice",
                    ("annotation", "batches", i, "id"),
                )
            seen.add(batch["id"])
        if ann["session_max_minutes"] > RECOMMENDED_SESSION_MINUTES:
            self.emit(
                "A004",
                f"sessions of up to {ann['session_max_minutes']} minutes are longer than the recommended 90",
                ("annotation", "session_max_minutes"),
            )
        if ann["annotators_per_item"] < 2:
            self.emit(
                "A005",
                "with one annotator per item, inter-annotator agreement cannot be measured",
                ("annotation", "annotators_per_item"),
                hint="use 2 or 3 annotators per item",
            )
        if not ann["randomize_order"]:
            self.emit(
                "A007",
                "output order is not randomised, so annotators can develop a position bias",
                ("annotation", "randomize_order"),
            )
        if not ann["batches"]:
            self.emit(
                "A006",
                f"policy method '{self.spec['policy']['method']}' needs preference data, "
                "but annotation.batches is empty",
                ("annotation",),
                key=True,
                hint="list the annotation batches (id, path, criteria_version)",
            )

    def _agreement_guidance(self, agreement: dict[str, Any]) -> None:
        for key, guide in GUIDANCE_AGREEMENT.items():
            if agreement[key] < guide:
                self.emit(
                    "A008",
                    f"agreement {key} {agreement[key]} is below the seed's guidance of {guide}",
                    ("annotation", "agreement", key),
                    hint="target 0.6, floor 0.4: below 0.4 the criteria are likely ambiguous",
                )

    def _annotation_cannot_fail(self, ann: dict[str, Any]) -> None:
        loose: list[tuple[JsonPath, bool, str]] = [
            (("annotation", "position_bias", "max_first_share"),
             ann["position_bias"]["max_first_share"] >= 1, "no annotator can exceed it"),
            (("annotation", "fatigue", "max_drop"),
             ann["fatigue"]["max_drop"] >= 1, "no drop in agreement can exceed it"),
            (("annotation", "max_split_vote_share"),
             ann["max_split_vote_share"] >= 1, "no split-vote share can exceed it"),
        ]  # fmt: skip
        gold = ann.get("gold")
        if gold:
            loose.append(
                (("annotation", "gold", "min_accuracy"), gold["min_accuracy"] <= 0,
                 "every annotator meets it")
            )  # fmt: skip
        for path, cannot_fail, why in loose:
            if cannot_fail:
                self.emit("A009", f"{path[-1]} is set so that {why}: the check is off", path)
