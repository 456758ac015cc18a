"""Checks the schema cannot express: cross-references, feasibility, drift, files.

These run on a schema-valid spec with defaults resolved, so every rule sees
the values that will actually run; positions come from the user's file, and
a check about a defaulted value points at the block that would hold it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.model_ref import hub_parts, kind_of, model_files
from rlhfspec.common.patterns import regex_problem
from rlhfspec.compiler.compute import TRAINING_STAGES, stage_compute
from rlhfspec.compiler.diagnostics import Diagnostic, json_path, make
from rlhfspec.compiler.gold_versions import gold_version_diagnostics
from rlhfspec.compiler.lockfile import (
    LockEntry,
    criteria_hash,
    describe_changes,
    lock_path_for,
    read_lock,
    version_key,
)
from rlhfspec.compiler.memory import GIB, parse_size, stage_memory
from rlhfspec.compiler.schema_check import Locator
from rlhfspec.compiler.schemas import JsonPath, walk

RECOMMENDED_VALIDATION_SHARE = (0.10, 0.15)
RECOMMENDED_GOLD_SHARE = (0.05, 0.10)
RECOMMENDED_SESSION_MINUTES = 90
# the seed: "kappa above 0.6 is a reasonable target; below 0.4, your criteria document
# likely has ambiguity that needs resolution before you continue"
GUIDANCE_AGREEMENT = {"target": 0.6, "floor": 0.4}
# a correlation limit this high never trips on real data: the guard is decorative
LOOSE_CORRELATION = 0.9


class Checker:
    def __init__(
        self,
        spec: dict[str, Any],
        raw: dict[str, Any],
        schema: dict[str, Any],
        locator: Locator,
        *,
        file: str,
        spec_path: Path | None,
    ) -> None:
        self.spec = spec
        self.raw = raw
        self.schema = schema
        self.locator = locator
        self.file = file
        self.spec_path = spec_path
        self.out: list[Diagnostic] = []

    def emit(
        self, code: str, message: str, path: JsonPath, *, hint: str | None = None, key: bool = False
    ) -> None:
        line, col = self.locator.key(path) if key else self.locator.value(path)
        self.out.append(
            make(code, message, file=self.file, line=line, col=col, path=json_path(path), hint=hint)
        )

    def run(self) -> list[Diagnostic]:
        self.criteria()
        self.lock()
        self.out += gold_version_diagnostics(self.spec, self.spec_path, self.file)
        self.prompts()
        self.annotation()
        self.reward_model()
        self.policy()
        self.evaluation()
        self.compute()
        self.files()
        return self.out

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

    # Stage 4 ---------------------------------------------------------------
    def reward_model(self) -> None:
        gates = self.spec["reward_model"]["gates"]
        gate_path: JsonPath = ("reward_model", "gates")
        if gates["min_validation_accuracy"] <= 0.5:
            self.emit(
                "R002",
                f"min_validation_accuracy {gates['min_validation_accuracy']} is at or below "
                "chance (0.5) for pairwise preferences: the gate cannot fail",
                gate_path + ("min_validation_accuracy",),
            )
        if gates["max_length_correlation"] >= LOOSE_CORRELATION:
            self.emit(
                "R002",
                f"max_length_correlation {gates['max_length_correlation']} never trips: a reward "
                "model that mostly rewards length passes",
                gate_path + ("max_length_correlation",),
                hint="the example uses 0.3",
            )
        if gates["min_shorter_preferred_accuracy"] <= 0:
            self.emit(
                "R002",
                "min_shorter_preferred_accuracy 0 cannot fail",
                gate_path + ("min_shorter_preferred_accuracy",),
            )
        share = self.spec["reward_model"]["validation_share"]
        low, high = RECOMMENDED_VALIDATION_SHARE
        if self.spec["policy"]["method"] == "ppo" and not low <= share <= high:
            self.emit(
                "R001",
                f"reward-model validation share {share} is outside the recommended 10-15%",
                ("reward_model", "validation_share"),
            )

    # Stage 5 ---------------------------------------------------------------
    def policy(self) -> None:
        policy = self.spec["policy"]
        if policy["kl"]["mode"] == "adaptive":
            self._adaptive_kl(policy)
        else:
            self._fixed_kl(policy)
        self._start_points_and_code(policy)
        if policy["method"] == "ppo":
            self._ppo_schedule(policy)

    def _adaptive_kl(self, policy: dict[str, Any]) -> None:
        """O002/O006: an adaptive KL controller needs a target, a start and a guard above it."""
        kl = policy["kl"]
        kl_path: JsonPath = ("policy", "kl")
        if "target" not in kl:
            self.emit(
                "O002",
                "adaptive KL needs a target",
                kl_path,
                key=True,
                hint="add target: (e.g. 6.0)",
            )
        if kl["coef"] == 0:
            self.emit(
                "O002",
                "adaptive KL cannot start from coef 0: the controller only scales it",
                kl_path + ("coef",),
            )
        if policy["method"] == "dpo":
            self.emit(
                "O002",
                "DPO has no adaptive KL controller; its constraint is dpo.beta",
                kl_path + ("mode",),
            )
        guard = self.spec["evaluation"]["select"]["guards"]["max_kl"]
        if "target" in kl and guard < kl["target"]:
            self.emit(
                "O006",
                f"guard max_kl {guard} is below the KL target {kl['target']}",
                ("evaluation", "select", "guards", "max_kl"),
            )

    def _fixed_kl(self, policy: dict[str, Any]) -> None:
        """O002/O003: a fixed KL has no target, and PPO with coef 0 has no tether at all."""
        kl = policy["kl"]
        kl_path: JsonPath = ("policy", "kl")
        if "target" in kl:
            self.emit(
                "O002",
                "kl.target only applies in adaptive mode",
                kl_path + ("target",),
                hint="set mode: adaptive or remove target",
            )
        if kl["coef"] == 0 and policy["method"] == "ppo":
            self.emit(
                "O003",
                "KL coefficient 0: nothing keeps the policy near its reference",
                kl_path + ("coef",),
                hint="start with a moderate penalty such as 0.05 and adjust at checkpoints",
            )

    def _start_points_and_code(self, policy: dict[str, Any]) -> None:
        """O005/O007/O008: start_from_sft without SFT, remote code, the other method's block."""
        for section in ("policy", "reward_model"):
            if self.spec[section]["start_from_sft"] and not self.spec["sft"]["enabled"]:
                self.emit(
                    "O005",
                    f"{section}.start_from_sft is set but sft.enabled is false",
                    (section, "start_from_sft"),
                )
        for section in ("sft", "reward_model", "policy"):
            if self.spec[section].get("trust_remote_code"):
                self.emit(
                    "O007",
                    f"{section} lets the model run code shipped with it",
                    (section, "trust_remote_code"),
                )
        other = "dpo" if policy["method"] == "ppo" else "ppo"
        if other in self.raw.get("policy", {}):
            self.emit(
                "O008",
                f"policy.{other} is ignored because method is {policy['method']}",
                ("policy", other),
                key=True,
            )

    def _ppo_schedule(self, policy: dict[str, Any]) -> None:
        """O004/O001: minibatches that split the rollout, and checkpoints the run will reach."""
        ppo = policy["ppo"]
        if ppo["rollout_batch_size"] % ppo["mini_batches"]:
            self.emit(
                "O004",
                f"rollout_batch_size {ppo['rollout_batch_size']} does not split into "
                f"{ppo['mini_batches']} equal minibatches",
                ("policy", "ppo", "mini_batches"),
            )
        updates = ppo["total_episodes"] // ppo["rollout_batch_size"]
        if updates < 1:
            self.emit(
                "O001",
                f"total_episodes {ppo['total_episodes']} is less than one rollout batch "
                f"({ppo['rollout_batch_size']})",
                ("policy", "ppo", "total_episodes"),
            )
        elif policy["checkpoint_every"] > updates:
            self.emit(
                "O001",
                f"checkpoint_every {policy['checkpoint_every']} exceeds the {updates} PPO updates "
                f"({ppo['total_episodes']} episodes / {ppo['rollout_batch_size']} per update)",
                ("policy", "checkpoint_every"),
                hint=f"use at most {updates}",
            )

    # Evaluation ------------------------------------------------------------
    def evaluation(self) -> None:
        kinds = {s["kind"] for s in self.spec["prompts"]["sources"]}
        sets = self.spec["evaluation"]["prompt_sets"]
        if "adversarial" in kinds and "adversarial" not in sets:
            self.emit(
                "E003",
                "an adversarial prompt source exists but evaluation.prompt_sets leaves "
                "'adversarial' out",
                ("evaluation", "prompt_sets"),
                hint="add adversarial to prompt_sets: reward hacking shows there first",
            )
        guards = self.spec["evaluation"]["select"]["guards"]
        guard_path: JsonPath = ("evaluation", "select", "guards")
        if guards["max_length_correlation"] >= LOOSE_CORRELATION:
            self.emit(
                "E002",
                f"guard max_length_correlation {guards['max_length_correlation']} never trips",
                guard_path + ("max_length_correlation",),
                hint="set it a little above the SFT model's own length-reward correlation",
            )
        if guards["max_disqualifier_rate"] >= 1:
            self.emit(
                "E002",
                "guard max_disqualifier_rate 1 passes a checkpoint whose every reply is disqualified",
                guard_path + ("max_disqualifier_rate",),
            )
        for i, name in enumerate(sets):
            if name == "adversarial" and "adversarial" not in kinds:
                self.emit(
                    "E001",
                    "prompt set 'adversarial' needs a source of kind adversarial",
                    ("evaluation", "prompt_sets", i),
                    hint="add adversarial prompts: reward hacking shows there first",
                )
            if name == "production_holdout" and (
                "usage_logs" not in kinds
                or self.spec["prompts"]["production_holdout"]["share"] <= 0
            ):
                self.emit(
                    "E001",
                    "prompt set 'production_holdout' is empty: no usage-log prompts are held out",
                    ("evaluation", "prompt_sets", i),
                )

    # Compute -----------------------------------------------------------------
    def compute(self) -> None:
        stages = [s for s in TRAINING_STAGES if s != "sft" or self.spec["sft"]["enabled"]]
        limit = self.spec["compute"].get("memory_per_device")
        spec_dir = self.spec_path.parent if self.spec_path is not None else None
        for stage in stages:
            compute = stage_compute(self.spec, stage)
            overrides = self.spec["compute"]["stages"].get(stage, {})
            where: JsonPath = ("compute", "stages", stage) if overrides else ("compute",)
            lora = compute["lora"]
            if lora["enabled"] and lora["quantize"] == "4bit" and compute["device"] == "cpu":
                self.emit(
                    "M001",
                    f"{stage}: QLoRA (lora.quantize 4bit) needs a CUDA GPU, but compute.device is cpu",
                    where,
                    key=True,
                    hint="use quantize: none on CPU, or device: cuda",
                )
            trl_stage = stage != "policy" or self.spec["policy"]["method"] == "dpo"
            if compute["strategy"] == "fsdp" and compute["device"] == "cpu" and trl_stage:
                self.emit(
                    "M003",
                    f"{stage}: strategy fsdp on CPU runs as DDP (accelerate shards only on "
                    "accelerators: on CPU it drops its FSDP plugin, accelerate/state.py:986-1016)",
                    where,
                    key=True,
                    hint="use device: cuda for FSDP of this stage, or strategy: ddp to say what "
                    "runs (docs/scale.md, FSDP on CPU)",
                )
            if limit is None:
                continue
            memory = stage_memory(self.spec, stage, compute, spec_dir)
            estimate = memory["estimate"]
            if estimate is not None and estimate["total"] > parse_size(limit):
                parts = ", ".join(
                    f"{k} {estimate[k] / GIB:.2f}"
                    for k in ("weights", "gradients", "optimizer", "activations", "rollout")
                    if estimate[k] is not None
                )
                self.emit(
                    "M002",
                    f"{stage}: about {estimate['total_gib']:.2f} GiB per device ({parts} GiB) "
                    f"exceeds compute.memory_per_device {limit}",
                    ("compute", "memory_per_device"),
                    hint="enable LoRA, gradient checkpointing or FSDP, add processes, or lower the batch size",
                )

    # Files -----------------------------------------------------------------
    def files(self) -> None:
        sft = self.spec["sft"]
        if sft["enabled"] and "data" not in sft:
            self.emit(
                "F003",
                "sft is enabled but sft.data is missing",
                ("sft",),
                key=True,
                hint="point sft.data at a JSONL of prompt/response demonstrations",
            )
        ann = self.spec["annotation"]
        if ann["batches"] and "responses" not in ann:
            self.emit(
                "F003",
                "annotation batches are listed but annotation.responses is missing, so votes "
                "cannot become preference pairs",
                ("annotation",),
                key=True,
                hint="point annotation.responses at the JSONL of compared responses (id, prompt_id, system, text)",
            )
        base_dir = None if self.spec_path is None else self.spec_path.parent.resolve()
        for section in used_base_models(self.spec):
            ref = self.spec[section]["base_model"]
            kind = kind_of(ref, base_dir)
            if kind == "hub" and hub_parts(ref)[1] is None:
                self.emit(
                    "O009",
                    f"{section}.base_model '{ref}' names no revision",
                    (section, "base_model"),
                )
            elif kind == "local" and base_dir is not None:
                problem = check_model_folder(base_dir, ref)
                if problem is not None:
                    code, message, hint = problem
                    self.emit(code, message, (section, "base_model"), hint=hint)
        if base_dir is None:
            return
        for path, value in iter_paths(self.schema, self.spec):
            problem = check_path(base_dir, value)
            if problem is not None:
                code, message, hint = problem
                self.emit(code, message, path, hint=hint)


def used_base_models(spec: dict[str, Any]) -> list[str]:
    """The sections whose ``base_model`` a run loads (not the ones starting from SFT)."""
    used = ["sft"] if spec["sft"]["enabled"] else []
    for section in ("reward_model", "policy"):
        if not spec[section]["start_from_sft"]:
            used.append(section)
    return used


def iter_paths(schema: dict[str, Any], data: Any) -> Iterator[tuple[JsonPath, str]]:
    """Every file path the spec references (fields marked `x-path` in the schema, except the
    keywords a field lists in `x-path-except`, such as ``prompts.chat_template: auto``)."""
    for path, sub, value in walk(schema, data):
        if (
            sub.get("x-path")
            and isinstance(value, str)
            and value not in sub.get("x-path-except", ())
        ):
            yield path, value


def check_path(base: Path, value: str) -> tuple[str, str, str] | None:
    """Refuse paths that leave the spec's folder; then require a readable file.

    Every OS error a path can raise (a NUL byte, a name too long, a loop of
    symlinks, no permission) is a diagnostic here, never an internal error.
    """
    try:
        return _check_path(base, value)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return (
            "F004",
            f"'{value[:80]}' cannot be used as a path: {reason}",
            "give a short relative path of ordinary characters inside the spec's folder",
        )


def _check_path(base: Path, value: str) -> tuple[str, str, str] | None:
    candidate = Path(value)
    if candidate.is_absolute():
        return (
            "F002",
            f"'{value}' is an absolute path; spec paths are relative to the spec's folder",
            "move the file under the spec's folder and give a relative path",
        )
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base):
        return (
            "F002",
            f"'{value}' leaves the spec's folder {base.name}/",
            "keep data inside the spec's folder, so the spec and its data move together",
        )
    if not resolved.is_file():
        return (
            "F001",
            f"file '{value}' does not exist (looked in {base.name}/)",
            "check the path; it is relative to the spec's folder",
        )
    if not os.access(resolved, os.R_OK):
        raise PermissionError(13, "permission denied")
    return None


def check_model_folder(spec_dir: Path, ref: str) -> tuple[str, str, str] | None:
    """A problem with a local base model, as (code, message, hint), or None."""
    base = spec_dir.resolve()
    candidate = Path(ref).expanduser()
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base):
        return (
            "F002",
            f"base model '{ref}' leaves the spec's folder {base.name}/",
            "put the model folder under the spec's folder and give a relative path",
        )
    if not resolved.is_dir():
        return (
            "F005",
            f"base model folder '{ref}' does not exist (looked in {base.name}/); a hub id is "
            "org/name[@revision]",
            "check the path (relative to the spec's folder), or give a hub id",
        )
    names = model_files(resolved)
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        missing.append("*.safetensors weights")
    if missing:
        return (
            "F006",
            f"base model folder '{ref}' lacks {' and '.join(missing)}",
            "save the model with save_pretrained(..., safe_serialization=True)",
        )
    return None
