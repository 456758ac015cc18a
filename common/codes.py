"""Every diagnostic code rlhfspec emits, in one registry: severity, name, meaning, hint.

Codes are public: CI gates, suppressions and dashboards refer to them, so a code never changes
meaning or severity and is never reused. The compiler (`validate`/`compile`), the prompt check
and annotation QC all take severity, name and meaning from here, and docs/diagnostics.md is
generated from this table (`python -m rlhfspec.compiler.reference`; a test fails when the page
is stale).

Adding a code is one `Code(...)` line in `REGISTRY` below, in its group's block, numbered after
the group's last code. A new family gets a `Group` entry too (its prefix must be new).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Group:
    """A family of codes sharing a prefix, and where they come from."""

    prefix: str
    title: str
    source: str


@dataclass(frozen=True)
class Code:
    code: str
    severity: Severity
    name: str
    meaning: str
    hint: str
    excludes: bool = False
    """QC only: an error with this code leaves the annotator's votes out of aggregation."""


GROUPS: tuple[Group, ...] = (
    Group("Y", "YAML loading", "`rlhfspec validate` / `compile`"),
    Group("S", "JSON Schema", "`rlhfspec validate` / `compile`"),
    Group("C", "Criteria and the lock file", "`rlhfspec validate` / `compile`"),
    Group("P", "Prompt settings", "`rlhfspec validate` / `compile`"),
    Group("V", "Value ranges", "`rlhfspec validate` / `compile`"),
    Group("A", "Annotation settings", "`rlhfspec validate` / `compile`"),
    Group("R", "Reward-model settings", "`rlhfspec validate` / `compile`"),
    Group("O", "Policy settings", "`rlhfspec validate` / `compile`"),
    Group("E", "Evaluation settings", "`rlhfspec validate` / `compile`"),
    Group("M", "Compute settings", "`rlhfspec validate` / `compile`"),
    Group("X", "Export targets", "`rlhfspec compile SPEC --target verl`"),
    Group("F", "Files", "`rlhfspec validate` / `compile`"),
    Group("PR", "Prompt distribution", "`rlhfspec prompts`, the `prompts` stage"),
    Group("Q", "Annotation QC", "`rlhfspec qc`, the `annotation_qc` stage"),
    Group(
        "J", "AI judge against its human review sample", "`rlhfspec qc`, the `annotation_qc` stage"
    ),
)

_ERR: Severity = "error"
_WARN: Severity = "warning"

# fmt: off
REGISTRY: tuple[Code, ...] = (
    # YAML loading
    Code("Y001", _ERR, "yaml-syntax", "The file is not well-formed YAML (or not UTF-8).",
         "Fix the syntax at the position shown; save the file as UTF-8."),
    Code("Y002", _ERR, "duplicate-key",
         "A mapping has the same key twice; YAML keeps only one silently elsewhere.",
         "Keep one of the two keys."),
    Code("Y003", _ERR, "non-string-key",
         "A mapping key is a number, boolean, null or collection; quote it.",
         'Quote the key (`"on":`, `"1":`).'),
    Code("Y004", _ERR, "limit-exceeded",
         "The file is too large, too deeply nested or expands too many aliases.",
         "Split large data into files the spec references; avoid alias chains."),
    Code("Y005", _ERR, "unsupported-tag",
         "A YAML tag other than the standard !!str/!!int/!!float/!!bool/!!null/!!map/!!seq.",
         "Remove the tag; write the value as plain YAML."),
    Code("Y006", _ERR, "multiple-documents", "The file holds more than one YAML document.",
         "Remove the `---` separators: one spec per file."),
    Code("Y007", _ERR, "not-a-mapping", "The spec is empty or its top level is not a mapping.",
         "Start from `rlhfspec init` or specs/minimal.yaml."),
    Code("Y008", _ERR, "non-finite-number",
         "A number is NaN or infinite (`.nan`, `.inf`, `1e400`); every comparison with NaN is "
         "false, so it would switch a check off.",
         "Write a finite number."),
    # JSON Schema
    Code("S001", _ERR, "unknown-key",
         "A key the schema does not define (typos are caught, never dropped).",
         "Check the spelling against docs/spec-reference.md."),
    Code("S002", _ERR, "missing-key", "A required key is absent.",
         "Add the key; docs/spec-reference.md lists what it holds."),
    Code("S003", _ERR, "wrong-type",
         "A value has the wrong type (for example `yes` where a boolean is expected).",
         "Write the type the schema asks for (`true`/`false` for booleans)."),
    Code("S004", _ERR, "not-allowed-value", "A value outside the allowed set.",
         "Use one of the values the message lists."),
    Code("S005", _ERR, "out-of-range", "A number or list length outside its bounds.",
         "Bring the value within the bounds the message gives."),
    Code("S006", _ERR, "bad-format",
         "A string that does not match its required pattern or is empty.",
         "Match the pattern the message gives."),
    Code("S007", _ERR, "duplicate-item", "A list that must hold unique items repeats one.",
         "Remove the repeated item."),
    Code("S008", _ERR, "schema-violation", "Any other schema rule.",
         "Read the message; docs/spec-reference.md describes the key."),
    # Criteria (stage 1) and the lock file
    Code("C001", _ERR, "duplicate-id", "Two dimensions or disqualifiers share an id.",
         "Give each dimension and disqualifier its own id."),
    Code("C002", _ERR, "unknown-reference",
         "A worked example names a dimension or disqualifier that does not exist.",
         "Use an id defined under `criteria.dimensions` or `criteria.disqualifiers`."),
    Code("C003", _ERR, "criteria-changed-without-version-bump",
         "The criteria differ from the locked content of the same version.",
         "Bump `criteria.version` and run `rlhfspec lock`, or undo the change."),
    Code("C004", _ERR, "criteria-version-went-backwards",
         "The criteria version is older than the newest locked version.",
         "Use a version newer than the lock file's newest."),
    Code("C005", _ERR, "unknown-criteria-version",
         "An annotation batch names a criteria version that is neither locked nor current.",
         "Tag the batch with a locked or the current criteria version."),
    Code("C006", _WARN, "no-lock-file",
         "No lock file beside the spec, so criteria drift cannot be checked.",
         "Run `rlhfspec lock SPEC` and commit the lock file."),
    Code("C007", _WARN, "criteria-version-not-locked",
         "The current criteria version is newer than the lock file's; run `rlhfspec lock`.",
         "Run `rlhfspec lock SPEC` and commit the lock file."),
    Code("C008", _ERR, "bad-detector-regex",
         "A disqualifier's detector is not a valid regular expression.",
         "Fix the regular expression (Python `re` syntax)."),
    Code("C009", _ERR, "bad-lock-file", "The lock file is not a valid rlhfspec lock file.",
         "Restore it from version control, or delete it and run `rlhfspec lock`."),
    Code("C010", _ERR, "gold-unknown-criteria-version",
         "A gold or calibration item names a criteria version that is neither locked nor "
         "current (or newer than the current one): nobody can reconstruct the criteria its "
         "answer follows.",
         "Tag the item with the locked version its answer was written (or re-reviewed) for."),
    Code("C011", _WARN, "gold-older-criteria-version",
         "Gold or calibration items were written for an older locked criteria version than the "
         "current one: their answers may no longer be what the criteria say.",
         "Re-review those items against the current criteria and re-tag them with its version."),
    Code("C012", _WARN, "gold-without-criteria-version",
         "Gold or calibration items carry no `criteria_version`, so a criteria change cannot "
         "tell which answers to re-review.",
         "Add `criteria_version` (the version the answer was written for) to every item."),
    # Prompts (stage 2)
    Code("P001", _ERR, "mix-infeasible",
         "The mix ranges cannot add up to 1 (sum of minimums > 1 or sum of maximums < 1).",
         "Widen or lower the `prompts.mix` ranges."),
    Code("P002", _ERR, "mix-kind-without-source",
         "The mix gives a range to a kind no source has.",
         "Add a source of that kind or drop its range."),
    Code("P003", _WARN, "source-kind-not-in-mix",
         "A source kind has no mix range, so its share is unconstrained.",
         "Give the kind a range in `prompts.mix`."),
    Code("P004", _ERR, "duplicate-source-id", "Two prompt sources share an id.",
         "Give each prompt source its own id."),
    Code("P005", _ERR, "missing-privacy-review",
         "A usage-log source has no approved privacy review.",
         "Record the approved review under the source's `privacy_review`."),
    Code("P006", _ERR, "bad-length-bins", "Length-bin edges are not strictly ascending.",
         "List the edges in ascending order without repeats."),
    Code("P007", _WARN, "no-production-holdout",
         "No usage-log prompts are reserved to catch a prompt-distribution mismatch.",
         "Set `prompts.production_holdout.share` above 0."),
    Code("V001", _ERR, "inverted-range", "A [min, max] range has min above max.",
         "Swap the two bounds."),
    # Annotation (stage 3)
    Code("A001", _WARN, "gold-share-outside-recommended",
         "Gold share outside the recommended 5-10%.",
         "Set `annotation.gold.share` within [0.05, 0.10]."),
    Code("A002", _ERR, "agreement-floor-not-below-target",
         "The agreement floor must be below the target.",
         "Lower `agreement.floor` or raise `agreement.target`."),
    Code("A003", _ERR, "duplicate-batch-id", "Two annotation batches share an id.",
         "Give each batch its own id."),
    Code("A004", _WARN, "long-sessions",
         "Sessions longer than 90 minutes: preference quality degrades with fatigue.",
         "Set `annotation.session_max_minutes` to 90 or less."),
    Code("A005", _WARN, "no-overlap",
         "Fewer than 2 annotators per item: agreement cannot be measured.",
         "Set `annotation.annotators_per_item` to 2 or more."),
    Code("A006", _ERR, "no-annotation-batches",
         "The policy method needs preference data but no batch is listed.",
         "List the annotation batches under `annotation.batches`."),
    Code("A007", _WARN, "order-not-randomized",
         "Output order is not randomised, so position bias goes unchecked.",
         "Set `annotation.randomize_order: true`."),
    Code("A008", _WARN, "agreement-below-guidance",
         "The agreement target is below 0.6 or the floor below 0.4, weaker than the seed's "
         "guidance (kappa above 0.6 is a reasonable target; below 0.4 the criteria are "
         "ambiguous).",
         "Raise `annotation.agreement.target` to 0.6 and the floor to 0.4, or say why not."),
    Code("A009", _WARN, "check-cannot-fail",
         "An annotation threshold is set so that its QC check can never fire "
         "(gold min_accuracy 0, max_first_share 1, fatigue max_drop 1, max_split_vote_share 1).",
         "Tighten the threshold, or leave it at its default."),
    # Reward model (stage 4)
    Code("R001", _WARN, "validation-share-outside-recommended",
         "Reward-model holdout outside the recommended 10-15%.",
         "Set `reward_model.validation_share` within [0.10, 0.15]."),
    Code("R002", _WARN, "gate-cannot-fail",
         "A reward-model gate is set so loosely it cannot fail (accuracy at or below chance, "
         "a length correlation limit of 0.9 or more).",
         "Tighten the gate under `reward_model.gates`."),
    # Policy (stage 5)
    Code("O001", _ERR, "checkpoint-interval-too-large",
         "The checkpoint interval exceeds the number of updates, so no checkpoint is evaluated.",
         "Lower `policy.checkpoint_every` or train for more episodes."),
    Code("O002", _ERR, "kl-inconsistent", "The KL block's settings contradict each other.",
         "Adaptive KL needs a target and a coef above 0; a fixed one takes no target."),
    Code("O003", _WARN, "no-kl-constraint",
         "KL coefficient 0 with a fixed controller: nothing stops reward hacking.",
         "Set `policy.kl.coef` above 0, or use adaptive KL."),
    Code("O004", _ERR, "bad-batch-split",
         "The rollout batch does not split evenly into minibatches.",
         "Make the batch size a multiple of the minibatch size."),
    Code("O005", _ERR, "sft-reference-missing",
         "`start_from_sft` is set but the SFT stage is disabled.",
         "Enable `sft` or set `start_from_sft: false`."),
    Code("O006", _WARN, "guard-below-kl-target",
         "The KL guard is below the adaptive KL target, so every converged checkpoint fails "
         "the guard.",
         "Raise `evaluation.select.guards.max_kl` above the KL target."),
    Code("O007", _WARN, "trust-remote-code", "A model may run Python code shipped with it.",
         "Keep `trust_remote_code` off unless you have read the model's code."),
    Code("O008", _WARN, "settings-for-other-method",
         "Settings for the method not selected are ignored.",
         "Remove the unused block or switch `policy.method`."),
    Code("O009", _WARN, "hub-model-unpinned",
         "A hub base model has no revision: the hub can change what it names between runs.",
         "Pin it as `org/name@<commit>` so the plan records exactly what was trained."),
    # Evaluation
    Code("E001", _ERR, "prompt-set-without-source",
         "An evaluation prompt set has no prompts to draw from.",
         "Add a prompt source of the set's kind or drop the set."),
    Code("E002", _WARN, "guard-cannot-fail",
         "A selection guard is set so loosely it cannot fail (max_length_correlation of 0.9 or "
         "more, max_disqualifier_rate 1).",
         "Tighten the guard under `evaluation.select.guards`."),
    Code("E003", _WARN, "adversarial-not-evaluated",
         "An adversarial prompt source exists but evaluation leaves the adversarial set out, "
         "where reward hacking shows first.",
         "Add `adversarial` to `evaluation.prompt_sets`."),
    # Compute
    Code("M001", _ERR, "qlora-needs-cuda",
         "LoRA with 4-bit quantisation (QLoRA, bitsandbytes) runs only on CUDA GPUs.",
         "Use `lora.quantize: none` on CPU, or `compute.device: cuda`."),
    Code("M002", _WARN, "memory-over-device",
         "A training stage's memory estimate per device exceeds compute.memory_per_device.",
         "Enable LoRA, gradient checkpointing or FSDP, add processes, or lower the batch size."),
    Code("M003", _WARN, "fsdp-on-cpu-runs-ddp",
         "accelerate applies FSDP only on accelerators: on CPU (gloo) its state stays "
         "MULTI_CPU and drops the FSDP plugin (accelerate 1.15 state.py:986-1016, even with "
         "ACCELERATE_USE_FSDP), and a model sharded beforehand fails in DDP "
         "(accelerator.py:2060), so the TRL stages (SFT, reward model, DPO) run replicated "
         "(DDP); PPO shards with torch's fully_shard on CPU too.",
         "Use `compute.device: cuda` for FSDP of the TRL stages (see docs/scale.md, FSDP on "
         "CPU), or `strategy: ddp` to say what runs."),
    # Export targets (`rlhfspec compile SPEC --target verl`)
    Code("X001", _ERR, "export-refused-setting",
         "A setting the target engine cannot express, not acknowledged under "
         "export.<target>.acknowledge.",
         "Change the setting, or acknowledge the difference under export.<target>.acknowledge."),
    Code("X002", _ERR, "export-stale-acknowledgement",
         "An acknowledgement names a setting that maps after all, or no setting of the spec.",
         "Remove the acknowledgement."),
    Code("X003", _ERR, "export-unsupported",
         "The target engine cannot run this stage at all (for example DPO on verl's main_ppo).",
         "Run this stage with `rlhfspec run`, or choose a method the target supports."),
    # Files
    Code("F001", _ERR, "file-not-found", "A referenced file does not exist.",
         "Fix the path (relative to the spec's folder) or add the file."),
    Code("F002", _ERR, "path-escapes-spec-folder",
         "A referenced path leaves the spec's folder (`../`, absolute, or a symlink out).",
         "Move the data inside the spec's folder and use a relative path."),
    Code("F003", _ERR, "missing-data-path", "A stage is enabled without the data it needs.",
         "Give the stage its data path, or disable the stage."),
    Code("F004", _ERR, "unusable-path",
         "The operating system refuses the path (a NUL byte, a name too long, no permission).",
         "Give a short relative path of ordinary characters to a readable file."),
    Code("F005", _ERR, "model-folder-not-found",
         "A base model is neither builtin, a hub id, nor an existing folder in the spec's folder.",
         "Fix the path (relative to the spec's folder) or give a hub id `org/name[@revision]`."),
    Code("F006", _ERR, "model-folder-incomplete",
         "A base model folder lacks config.json or safetensors weights.",
         "Save the model with `save_pretrained(..., safe_serialization=True)`."),
    # Prompt distribution (`rlhfspec prompts`)
    Code("PR001", _ERR, "mix-out-of-range",
         "A source kind's share of the prompts available for annotation is outside its "
         "`prompts.mix` range.",
         "Add prompts of the under-represented kinds or widen the range."),
    Code("PR002", _WARN, "annotated-mix-out-of-range",
         "A source kind's share of the distinct prompts the listed batches annotated is "
         "outside its range.",
         "Steer the next batches towards the under-represented kinds."),
    Code("PR003", _ERR, "length-bin-under-covered",
         "A word-count bin holds fewer than `min_per_stratum` prompts available for "
         "annotation.",
         "Add prompts of that length or merge the bin with a neighbour."),
    Code("PR004", _ERR, "field-value-under-covered",
         "A value of a strata field holds fewer than `min_per_stratum` prompts available for "
         "annotation.",
         "Add prompts with that value or lower `min_per_stratum`."),
    Code("PR005", _WARN, "outside-length-bins",
         "Prompts whose word count falls outside every length bin are not covered by any "
         "stratum.",
         "Extend the first or last bin edge."),
    Code("PR006", _ERR, "missing-privacy-review",
         "A usage-log source has no approved privacy review.",
         "Record the approved review under the source's `privacy_review`."),
    Code("PR007", _WARN, "empty-production-holdout",
         "No production prompts are held out, so a prompt-distribution mismatch goes unseen.",
         "Set `prompts.production_holdout.share` so at least one usage-log prompt is reserved."),
    Code("PR008", _ERR, "holdout-in-annotation-batch",
         "A production-holdout prompt appears in an annotation batch.",
         "Drop those rows from the batch; holdout prompts are for validation only."),
    Code("PR009", _ERR, "holdout-in-sft-data",
         "A production-holdout prompt appears in the SFT demonstrations.",
         "Drop those demonstrations."),
    Code("PR010", _ERR, "holdout-in-gold",
         "A production-holdout prompt appears in the gold items.",
         "Replace those gold items."),
    Code("PR011", _WARN, "unknown-prompt-ids",
         "Batches, gold items or demonstrations name prompt ids that no prompt source has.",
         "Add the prompts to a source, or fix the ids."),
    Code("PR012", _WARN, "unreadable-rows",
         "Rows of a batch, gold or demonstration file could not be read, so the leak check "
         "skipped them.",
         "Fix the rows the message names."),
    Code("PR013", _WARN, "multi-turn-out-of-scope",
         "Prompt sources hold multi-turn prompts (`messages`) while `criteria.scope.out_of_scope` "
         "names multi-turn conversations, so annotators will flag or skip them.",
         "Admit them in `criteria.scope.in_scope` (every stage formats them turn by turn) or "
         "drop those rows."),
    # Annotation QC (`rlhfspec qc`)
    Code("Q001", _ERR, "agreement_below_floor", "Overall agreement below the floor.",
         "Stop and revise the criteria or retrain annotators before collecting more."),
    Code("Q002", _WARN, "agreement_below_target", "Overall agreement below the target.",
         "Look at split votes and the per-annotator findings; clarify the criteria."),
    Code("Q003", _ERR, "gold_accuracy_low", "Annotator's gold accuracy below the minimum.",
         "Review the annotator's gold misses with them; their votes are left out.", True),
    Code("Q004", _ERR, "position_bias", "Annotator favours the first-shown response.",
         "Talk to the annotator; their votes are left out.", True),
    Code("Q005", _ERR, "fatigue", "Annotator's agreement drops late in sessions.",
         "Shorten sessions; the annotator's votes are left out.", True),
    Code("Q006", _ERR, "session_over_limit", "Annotator's sessions exceed the session limit.",
         "Split work into sessions within `annotation.session_max_minutes`."),
    Code("Q007", _ERR, "consensus_below_floor",
         "Annotator's kappa with the others' consensus below the floor.",
         "Review the annotator's labels; their votes are left out.", True),
    Code("Q008", _WARN, "consensus_below_target",
         "Annotator's kappa with the others' consensus below the target.",
         "Review the annotator's disagreements with them."),
    Code("Q009", _ERR, "batch_agreement_below_floor", "A batch's agreement below the floor.",
         "Inspect the batch: criteria version, prompts, who labelled it."),
    Code("Q010", _WARN, "batch_agreement_below_target", "A batch's agreement below the target.",
         "Inspect what sets this batch apart from the others."),
    Code("Q011", _WARN, "batch_agreement_drift",
         "A batch's agreement dropped versus the first batch.",
         "Check whether the criteria or the annotator pool changed."),
    Code("Q012", _WARN, "batch_gold_accuracy_low",
         "A batch's pooled gold accuracy below the minimum.",
         "Check the batch's gold items and their criteria version."),
    Code("Q013", _WARN, "split_votes", "Too many items without a strict majority vote.",
         "Clarify the criteria where votes split; add annotators per item."),
    Code("Q014", _ERR, "criteria_version_mismatch",
         "Records follow another criteria version than their batch's tag.",
         "Fix the batch's `criteria_version` tag or relabel with the current criteria."),
    Code("Q015", _WARN, "gold_share", "Annotator's share of gold tasks outside the spec's range.",
         "Regenerate tasks with the spec's gold share."),
    Code("Q016", _WARN, "justification_missing", "Required justifications are missing.",
         "Make the justification field required in the annotation tool."),
    Code("Q017", _WARN, "rows_skipped", "Bad rows were skipped.",
         "Fix the rows listed in the report and rerun without `--skip-bad-rows`."),
    Code("Q018", _WARN, "gold_without_key",
         "Records marked gold have no answer in the gold file.",
         "Add the items to the gold file or unmark them."),
    Code("Q019", _WARN, "under_covered", "Items with fewer annotators than annotators_per_item.",
         "Requeue the items for more votes."),
    Code("Q020", _WARN, "agreement_undefined", "Agreement could not be computed.",
         "Assign some items to at least two annotators."),
    Code("Q021", _WARN, "empty_batch", "A batch listed in the spec has no records.",
         "Export the batch again or drop it from the spec."),
    Code("Q022", _WARN, "completed_by_other",
         "Tasks were completed by someone other than the annotator they were assigned to.",
         "Use one Label Studio project per annotator (`tasks --per-annotator`), or map the "
         "tool's users in annotation.annotator_ids."),
    Code("Q023", _ERR, "length_preference",
         "Annotator picks the longer response far more often than the pool does.",
         "Review the annotator's choices with them; length is not a criterion. Their votes are "
         "left out.", True),
    Code("Q024", _ERR, "too_fast",
         "Annotator's median time per task is far below the pool's.",
         "Check that the annotator reads both responses; their votes are left out.", True),
    Code("Q025", _WARN, "poor_justifications",
         "Required justifications are empty, very short or one reused text.",
         "Ask for a sentence naming the deciding dimension or disqualifier."),
    Code("Q026", _WARN, "dimension_agreement_low",
         "Agreement on one quality dimension is below the floor.",
         "Clarify the dimension's description and add a worked example for it."),
    Code("Q027", _WARN, "split_votes_in_period",
         "A batch has more split items than max_split_vote_share.",
         "Read the batch's split items (preferences/split_items.jsonl) and clarify the criteria."),
    Code("Q028", _ERR, "not_qualified",
         "Annotator has live votes but has not passed the calibration set (never took it, or "
         "agreed with fewer of its gold answers than annotation.calibration.pass_mark).",
         "Have them take the calibration tasks (calibration/ from `rlhfspec tasks`) after "
         "reading the playbook, and list the answers under annotation.calibration.batches; "
         "their live votes are left out until they pass.", True),
    Code("Q029", _WARN, "calibration_not_recorded",
         "The spec has a calibration set, and live votes under its criteria version, but lists "
         "no calibration answers, so qualification is not checked.",
         "Send the calibration tasks to every annotator and list the answers under "
         "annotation.calibration.batches."),
    # AI judge (runtime/annotation/judge/review.py): each fails the ai_judge_agreement gate
    Code("J001", _ERR, "judge_agreement_low",
         "The AI judge's kappa with the human majority on its review sample is below judge.gate.min_kappa.",
         "Improve the judge (model, templates) or the criteria' worked examples; do not train on its labels."),
    Code("J002", _ERR, "judge_review_too_small",
         "Fewer reviewed pairs with a human majority than judge.gate.min_reviewed_pairs.",
         "Have people label more of the review sample (rlhfspec judge --reviewers)."),
    Code("J003", _ERR, "judge_position_bias",
         "The AI judge's share of first-shown picks departs from 0.5 by more than judge.gate.max_position_bias.",
         "Use a stronger judge or `order_disagreement: flag`; the labels follow the order, not the criteria."),
    Code("J004", _ERR, "judge_length_bias",
         "The AI judge picks the longer response more often than people by over judge.gate.max_length_bias.",
         "Tell the judge conciseness counts (templates, worked examples) or use another model."),
    Code("J005", _ERR, "judge_gold_accuracy_low",
         "The AI judge's accuracy on gold items is below judge.gate.min_gold_accuracy.",
         "Read the gold items it misses; fix the prompt or the criteria they expose."),
    Code("J006", _ERR, "judge_order_disagreement",
         "The AI judge's two orders agree on fewer pairs than judge.gate.min_order_agreement.",
         "The judge is unstable under a swap of positions: use a stronger model."),
)
# fmt: on

CODES: dict[str, Code] = {c.code: c for c in REGISTRY}

_CODE_FORM = re.compile(r"^([A-Z]+)(\d{3})$")


def group_of(code: str) -> Group:
    """The group a code belongs to, by its letter prefix."""
    match = _CODE_FORM.match(code)
    if match is None:
        raise ValueError(f"not a diagnostic code: {code!r}")
    for group in GROUPS:
        if group.prefix == match.group(1):
            return group
    raise ValueError(f"code {code!r} has no registered group (prefix {match.group(1)!r})")


def family(*prefixes: str) -> dict[str, Code]:
    """The codes of the given groups, in registry order (a module's view of the registry)."""
    return {c.code: c for c in REGISTRY if group_of(c.code).prefix in prefixes}


def _check_registry() -> None:
    """Unique codes, known prefixes, text in every field: a broken entry fails at import."""
    counts = Counter(c.code for c in REGISTRY)
    dupes = sorted(code for code, n in counts.items() if n > 1)
    if dupes:
        raise ValueError(f"diagnostic codes registered twice: {dupes}")
    for entry in REGISTRY:
        group_of(entry.code)
        if not (entry.name and entry.meaning and entry.hint):
            raise ValueError(f"{entry.code}: name, meaning and hint are all required")


_check_registry()
