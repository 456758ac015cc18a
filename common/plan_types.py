"""The shape of a plan's stage entry: the contract the compiler writes and the runtime reads.

The compiler builds these entries (compiler/plan.py, `stage_graph`); the runner hands one to
each stage (runtime/stage_api.py, `StageContext.stage`), hashes it into the stage's resume
signature and checks the stage's writes against its `outputs` and `work`. The JSON Schema of
the plan (schemas/rlhf-plan.v1.schema.json) is the authority on the file; these types say the
same for the code, so a typo in a key is a mypy error rather than a KeyError at run time.

The settings stay a plain mapping: they are the part of the resolved spec the stage reads,
nested as in the spec, and the spec's schema describes them.
"""

from typing import Any, NotRequired, TypedDict


# no `from __future__ import annotations` here: TypedDict reads NotRequired from the
# evaluated annotations (Python 3.11), which postponed annotations would hide
class InputFile(TypedDict):
    """A spec file (or a local base model's file) a stage reads, pinned by its sha256."""

    path: str
    sha256: str


class ExternalSource(TypedDict):
    """The mark `run --policy-checkpoints` puts on the policy entry: the job imported."""

    engine: str
    source: str
    manifest_sha256: str
    files: dict[str, str]  # the job's config files, with sha256
    checkpoints: list[list[Any]]  # [step, (file, bytes, mtime_ns)...]: enough to see a change


class ChatTemplateRecord(TypedDict):
    """Which chat template a stage formats text with (`template_record`)."""

    setting: str  # prompts.chat_template
    source: str  # builtin:tiny, the model folder, the .jinja file, a hub id, or none
    sha256: str | None  # null for the plain format or a hub model (lineage records it)


class StageEntry(TypedDict):
    """One stage of the plan, in run order: everything the stage may read and must write."""

    name: str
    description: str
    depends_on: list[str]
    settings: dict[str, Any]  # the resolved settings it reads, nested as in the spec
    inputs: list[InputFile]
    reads: list[str]  # upstream outputs (files or folders) it may read
    human_inputs: list[str]  # files a person adds to the run directory for it
    outputs: list[str]  # what it must write, exactly
    work: list[str]  # scratch it may write besides (training checkpoints for resume)
    command: str  # the single-process command that runs it
    # training stages only
    compute: NotRequired[dict[str, Any]]
    launch: NotRequired[str]
    memory: NotRequired[dict[str, Any]]
    # stages that format text (sft, reward_model, policy, evaluate): common/chat_templates.py
    chat_template: NotRequired[ChatTemplateRecord]
    # set at run time by --policy-checkpoints, never in a compiled plan
    external: NotRequired[ExternalSource]
