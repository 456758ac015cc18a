"""The holdout-leak check reads blinded batches through their unblinding key.

Under the default `blind: true` an annotator's answers carry opaque task, item and response
ids and no prompt id: the prompt ids are only in `unblinding_key.json`. A holdout prompt in
such a batch must still be found (PR008), in our JSONL answers and in a Label Studio export
of our own tasks alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.runtime.annotation.tasks import generate_tasks
from rlhfspec.runtime.project import load_project
from rlhfspec.runtime.prompts.check import check_prompts
from tests.annotation.test_loop import EXAMPLE, PLACEHOLDER, project_copy

HOLDOUT_PROMPT = "usage-0360"


def blinded_batch(tmp_path: Path, fmt: str) -> tuple[Path, str]:
    """Tasks for two annotators; the key then says one task's prompt is a holdout prompt (as
    when the tasks were drawn before the holdout grew); answers in `fmt` without prompt ids."""
    spec = project_copy(tmp_path, PLACEHOLDER)
    out = tmp_path / "support-assistant" / "blind"
    generate_tasks(
        load_project(spec), EXAMPLE / "data" / "responses.jsonl", out,
        annotators=["ann-01", "ann-02", "ann-03"], limit=6, batch="blind-1",
    )  # fmt: skip
    key_path = out / "unblinding_key.json"
    key = json.loads(key_path.read_text(encoding="utf-8"))
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    leaked = next(t for t in tasks if not t["gold"])
    key["tasks"][leaked["task_id"]]["prompt_id"] = HOLDOUT_PROMPT
    key_path.write_text(json.dumps(key), encoding="utf-8")
    views = [
        json.loads(line) for line in (out / "annotators" / "ann-01.jsonl").read_text().splitlines()
    ]
    views += [
        json.loads(line) for line in (out / "annotators" / "ann-02.jsonl").read_text().splitlines()
    ]
    views += [
        json.loads(line) for line in (out / "annotators" / "ann-03.jsonl").read_text().splitlines()
    ]
    assert all("prompt_id" not in v for v in views)  # blinded: nothing names the prompt
    if fmt == "jsonl":
        rows: list[dict[str, Any]] = [
            {k: v[k] for k in ("task_id", "item_id", "response_a", "response_b")} | {"choice": "A"}
            for v in views
        ]
        path = out / "answers.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        imported = json.loads((out / "label_studio" / "tasks.json").read_text(encoding="utf-8"))
        export = [dict(t, id=n, annotations=[]) for n, t in enumerate(imported, start=1)]
        path = out / "export.json"
        path.write_text(json.dumps(export), encoding="utf-8")
    batch = (
        f"  batches:\n    - {{id: blind-1, path: support-assistant/blind/{path.name}, "
        f"format: {fmt}, criteria_version: 1.2.0, key: support-assistant/blind/unblinding_key.json}}\n"
    )
    spec.write_text(spec.read_text(encoding="utf-8").replace(PLACEHOLDER, batch), encoding="utf-8")
    return spec, leaked["task_id"]


@pytest.mark.parametrize("fmt", ["jsonl", "label_studio"])
def test_a_holdout_prompt_in_a_blinded_batch_is_a_leak(tmp_path: Path, fmt: str) -> None:
    spec, _ = blinded_batch(tmp_path, fmt)
    report = check_prompts(load_project(spec))
    assert [f.code for f in report.errors] == ["PR008"]
    assert HOLDOUT_PROMPT in report.errors[0].message
    assert report.metrics["leaks"]["batches"] == {"blind-1": [HOLDOUT_PROMPT]}
    # every row was read through the key: none is left unchecked (PR012)
    assert "PR012" not in [f.code for f in report.findings]
