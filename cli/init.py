"""`rlhfspec init DIR`: scaffold a new project the way a team starts one.

The project is self-contained, so it keeps working when copied out of this repository: the spec
`rlhf-spec.yaml` carries a yaml-language-server modeline pointing at the copy of the schema
written beside it (`schemas/rlhf-spec.v1.schema.json`), so editors complete and check it
without network access or this repository's layout. Data folders get a few example rows in
the formats the stages read, the criteria are locked, and a pre-commit config and a GitHub
Actions workflow run `validate --strict` and `compile --check`. `validate` and `compile` pass
on the result; the example rows are there to be replaced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text, display_path
from rlhfspec.compiler.compile import compile_spec, write_outputs
from rlhfspec.compiler.lock_command import lock_spec
from rlhfspec.compiler.lockfile import lock_path_for
from rlhfspec.compiler.schemas import SPEC_SCHEMA, schema_text

SPEC_FILE = "rlhf-spec.yaml"
SCHEMA_FILE = "schemas/rlhf-spec.v1.schema.json"

SPEC = """\
# yaml-language-server: $schema={schema}
# The RLHF spec of {name}. Everything not written here takes the schema's default
# (docs/spec-reference.md); `rlhfspec compile` writes every resolved value into plan.json.
# Change the criteria only with a new criteria.version, then run `rlhfspec lock {spec}`.
spec_version: 1
name: {name}
description: "What this project aligns, for whom."

criteria:
  version: 0.1.0
  summary: "A helpful, accurate and polite assistant."
  dimensions:        # ranked: the first one matters most
    - {{id: accuracy, description: "Answers the question that was asked, correctly."}}
    - {{id: helpfulness, description: "Gives the user a next step they can take."}}
    - {{id: tone, description: "Polite and never dismissive."}}
  disqualifiers:
    - {{id: rude, description: "Insults or dismisses the user."}}

prompts:
  sources:
    - id: usage
      kind: usage_logs
      path: data/prompts/usage.jsonl
      # replace with your privacy review before real usage logs go in
      privacy_review: {{approved: true, by: privacy@example.com, "on": "2026-01-01"}}
  production_holdout: {{share: 0.34}}

annotation:
  responses: data/responses.jsonl
  batches:
    - {{id: batch-001, path: data/annotations/batch-001.jsonl, criteria_version: 0.1.0}}

policy:
  method: ppo
  kl: {{coef: 0.05}}

evaluation:
  prompt_sets: [validation, production_holdout]   # add an adversarial source and set
"""

PROMPTS = [
    {"id": "usage-0001", "text": "Where is my order? It was due on Monday."},
    {"id": "usage-0002", "text": "How do I change the delivery address of an order?"},
    {"id": "usage-0003", "text": "Can I return a gift without the receipt?"},
]
RESPONSES = [
    ("Sorry it is late. Your tracking link in the confirmation email shows where it is; "
     "if it has not moved for two days, reply here and we will send a replacement."),
    "Orders arrive when they arrive.",
    ("Open the order in your account and choose 'Change address' before it ships; "
     "after that, the carrier's link lets you redirect it."),
    "You cannot.",
    "Yes: within 30 days we refund gifts as store credit; bring the item and its packaging.",
    "Returns need a receipt. Read the policy.",
]  # fmt: skip


def _rows() -> dict[str, list[dict[str, object]]]:
    """Example rows in the formats the stages read: prompts, responses, one annotation batch."""
    responses: list[dict[str, object]] = [
        {"id": f"r-{i + 1:04d}", "prompt_id": PROMPTS[i // 2]["id"], "system": "baseline",
         "text": text}
        for i, text in enumerate(RESPONSES)
    ]  # fmt: skip
    records: list[dict[str, object]] = []
    for item, prompt in enumerate(PROMPTS):
        for a, annotator in enumerate(("ann-01", "ann-02")):
            minute = 10 * item + a
            records.append(
                {
                    "item_id": f"item-{item + 1:04d}",
                    "prompt_id": prompt["id"],
                    "response_a": responses[2 * item]["id"],
                    "response_b": responses[2 * item + 1]["id"],
                    "choice": "A",
                    "annotator": annotator,
                    "session": f"{annotator}-s001",
                    "started_at": f"2026-01-05T09:{minute:02d}:00Z",
                    "submitted_at": f"2026-01-05T09:{minute + 2:02d}:00Z",
                    "justification": None,
                    "criteria_version": "0.1.0",
                    "batch": "batch-001",
                    "gold": False,
                }
            )
    return {
        "data/prompts/usage.jsonl": [dict(p) for p in PROMPTS],
        "data/responses.jsonl": responses,
        "data/annotations/batch-001.jsonl": records,
    }


PRE_COMMIT = """\
# pre-commit install, then every commit validates the spec and checks the compiled plan
repos:
  - repo: local
    hooks:
      - id: rlhfspec-validate
        name: rlhfspec validate
        entry: rlhfspec validate --strict
        language: system
        files: ^rlhf-spec\\.yaml$
      - id: rlhfspec-compile-check
        name: rlhfspec compile --check
        entry: rlhfspec compile --check rlhf-spec.yaml -o build
        language: system
        pass_filenames: false
        files: ^(rlhf-spec\\.yaml|rlhf-spec\\.lock\\.json|data/.*)$
"""

WORKFLOW = """\
name: rlhf-spec
"on": [pull_request, push]
jobs:
  validate:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      - run: pip install rlhfspec
      - name: Validate the spec (a criteria change needs a version bump)
        run: rlhfspec validate --strict rlhf-spec.yaml
      - name: The committed plan is current
        run: rlhfspec compile --check rlhf-spec.yaml -o build
"""


def project_name(folder: Path) -> str:
    """The folder's name as a spec name: lower case, [a-z0-9._-], starting alphanumeric."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.resolve().name.lower()).strip("-._")[:64]
    return name or "rlhf-project"


def scaffold(folder: Path) -> list[Path]:
    """Write the project into `folder` (new or empty); return the files written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunError(f"{display_path(folder)} exists and is not an empty folder", exit_code=1)
    name = project_name(folder)
    files: dict[str, str] = {
        SPEC_FILE: SPEC.format(schema=SCHEMA_FILE, name=name, spec=SPEC_FILE),
        SCHEMA_FILE: schema_text(SPEC_SCHEMA),
        ".pre-commit-config.yaml": PRE_COMMIT,
        ".github/workflows/rlhf-spec.yml": WORKFLOW,
    }
    for rel, rows in _rows().items():
        files[rel] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    written = []
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        written.append(path)
    spec = folder / SPEC_FILE
    lock_spec(spec, display=display_path(spec))
    written.append(lock_path_for(spec))
    # the committed plan that `compile --check` (pre-commit, CI) compares with
    compiled = compile_spec(spec, folder / "build", display=display_path(spec))
    if compiled.plan is None:  # pragma: no cover - the scaffold is valid (tested)
        raise RunError("the scaffolded spec does not compile; this is a bug in rlhfspec")
    write_outputs(folder / "build", compiled.files)
    written += [folder / "build" / n for n in sorted(compiled.files)]
    return written


@click.command("init")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
def init(folder: Path) -> None:
    """Scaffold a new project in FOLDER: spec, schema, example data, lock, pre-commit, CI."""
    from rlhfspec.cli.main import guarded

    guarded(_init)(folder)


def _init(folder: Path) -> None:
    written = scaffold(folder)
    for path in written:
        click.echo(f"wrote {display_path(path)}")
    spec, build = display_path(folder / SPEC_FILE), display_path(folder / "build")
    click.echo(f"next: rlhfspec validate {spec} && rlhfspec compile {spec} -o {build}")
