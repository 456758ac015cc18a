"""Checks the schema cannot express: cross-references, feasibility, drift, files.

These run on a schema-valid spec with defaults resolved, so every rule sees
the values that will actually run; positions come from the user's file, and
a check about a defaulted value points at the block that would hold it.
"""

from __future__ import annotations

from rlhfspec.common.model_ref import hub_parts, kind_of
from rlhfspec.compiler.diagnostics import Diagnostic
from rlhfspec.compiler.gold_versions import gold_version_diagnostics
from rlhfspec.compiler.semantic_data import DataChecks
from rlhfspec.compiler.semantic_training import TrainingChecks
from rlhfspec.compiler.spec_paths import (
    check_model_folder,
    check_path,
    iter_paths,
    used_base_models,
)

__all__ = [
    "Checker",
    "check_model_folder",
    "check_path",
    "iter_paths",
    "used_base_models",
]


class Checker(DataChecks, TrainingChecks):
    """Every semantic check, in the order a reader meets the spec's sections."""

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
