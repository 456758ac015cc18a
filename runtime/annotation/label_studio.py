"""Label Studio import files for generated annotation tasks.

The import is what `read_label_studio` in `runtime/annotations.py` reads
back after annotation, so the two are kept in step here: every task's
`data` carries `item_id`, `prompt_id`, `response_a`, `response_b`, `gold`
and `criteria_version` (what the reader turns into a record), plus the
three texts the labeling interface shows. The intended annotator, session
and position go into the task's `meta`, which the interface never
displays. One Label Studio task per (item, annotator) assignment keeps the
overlap and the A/B order under our control rather than Label Studio's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from rlhfspec.common.fileio import atomic_write_text

DATA_FIELDS = (
    "task_id",
    "item_id",
    "response_a",
    "response_b",
    "criteria_version",
    "prompt",
    "text_a",
    "text_b",
)
"""What annotators can see in Label Studio's task list: opaque ids and the texts. The gold
flag, the real item and prompt ids and the planned swap stay in unblinding_key.json."""
META_FIELDS = ("task_id", "batch", "annotator", "session", "position")


DIMENSION_PREFIX = "dim_"
"""Per-dimension Choices are named `dim_<dimension id>`; the reader maps them back."""


def labeling_config(
    *,
    criteria_version: str,
    allow_tie: bool,
    justification: str,
    dimensions: list[tuple[str, str]] | None = None,
    dimensions_required: bool = False,
) -> str:
    """The labeling config XML: prompt, response A, response B, an A/B(/tie) choice.

    The choice control is named `choice` with values A, B and tie, which is
    what the reader maps back; `justification` (a TextArea) is left out when
    the spec says `none` and required when it says `required`.
    """
    choices = ["A", "B"] + (["tie"] if allow_tie else [])
    header = f"Which response is better? Criteria version {criteria_version}"
    lines = [
        "<View>",
        f"  <Header value={quoteattr(header)}/>",
        '  <Header value="Prompt" size="5"/>',
        '  <Text name="prompt" value="$prompt"/>',
        '  <Header value="Response A" size="5"/>',
        '  <Text name="response_a" value="$text_a"/>',
        '  <Header value="Response B" size="5"/>',
        '  <Text name="response_b" value="$text_b"/>',
        '  <Choices name="choice" toName="prompt" choice="single" required="true" showInline="true">',
    ]
    for hotkey, value in enumerate(choices, start=1):
        lines.append(f'    <Choice value={quoteattr(value)} hotkey="{hotkey}"/>')
    lines.append("  </Choices>")
    for dim_id, dim_name in dimensions or []:
        required = "true" if dimensions_required else "false"
        lines.append(
            f'  <Header value={quoteattr(f"{dim_name}: which response is better?")} size="6"/>'
        )
        lines.append(
            f'  <Choices name="{DIMENSION_PREFIX}{dim_id}" toName="prompt" choice="single" '
            f'required="{required}" showInline="true">'
        )
        lines += [f"    <Choice value={quoteattr(value)}/>" for value in choices]
        lines.append("  </Choices>")
    if justification != "none":
        required = "true" if justification == "required" else "false"
        placeholder = "Why is this response better? (" + justification + ")"
        lines.append(
            f'  <TextArea name="justification" toName="prompt" rows="3" editable="true" '
            f'maxSubmissions="1" required="{required}" placeholder={quoteattr(placeholder)}/>'
        )
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def import_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our task rows as Label Studio import tasks (`data` + `meta`), in the same order."""
    return [
        {
            "data": {name: task[name] for name in DATA_FIELDS},
            "meta": {name: task[name] for name in META_FIELDS},
        }
        for task in tasks
    ]


def write_label_studio(
    tasks: list[dict[str, Any]],
    out_dir: Path,
    *,
    criteria_version: str,
    allow_tie: bool,
    justification: str,
    dimensions: list[tuple[str, str]] | None = None,
    dimensions_required: bool = False,
) -> list[Path]:
    """Write tasks.json and config.xml into out_dir atomically; return the paths."""
    paths = [out_dir / "tasks.json", out_dir / "config.xml"]
    atomic_write_text(
        paths[0], json.dumps(import_tasks(tasks), indent=1, ensure_ascii=False) + "\n"
    )
    atomic_write_text(
        paths[1],
        labeling_config(
            criteria_version=criteria_version,
            allow_tie=allow_tie,
            justification=justification,
            dimensions=dimensions,
            dimensions_required=dimensions_required,
        ),
    )
    return paths
