"""Gold and calibration items carry the criteria version their answer was written for, and
`validate` checks it against the lock file (C010 error, C011 and C012 warnings), located at
the item's line in the gold file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlhfspec.compiler.validate import validate_file
from tests.conftest import ROOT

EXAMPLE = ROOT / "specs"


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(EXAMPLE / "support-assistant", tmp_path / "support-assistant")
    for name in ("support-assistant.yaml", "support-assistant.lock.json"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    return tmp_path / "support-assistant.yaml", tmp_path / "support-assistant/data/gold.jsonl"


def _retag(gold: Path, versions: dict[int, object]) -> None:
    """Set (or with None remove) criteria_version on the given 1-based lines."""
    lines = gold.read_text(encoding="utf-8").splitlines()
    for number, version in versions.items():
        row = json.loads(lines[number - 1])
        if version is None:
            row.pop("criteria_version")
        else:
            row["criteria_version"] = version
        lines[number - 1] = json.dumps(row)
    gold.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_example_gold_items_carry_the_current_version() -> None:
    rows = (EXAMPLE / "support-assistant/data/gold.jsonl").read_text().splitlines()
    assert {json.loads(r)["criteria_version"] for r in rows} == {"1.3.0"}
    result = validate_file(EXAMPLE / "support-assistant.yaml")
    assert not [d for d in result.diagnostics if d.code in ("C010", "C011", "C012")]


def test_unknown_older_and_missing_versions_are_located(tmp_path: Path) -> None:
    spec, gold = _copy(tmp_path)
    _retag(gold, {3: "9.9.9", 5: "1.1.0", 7: "1.2.0", 8: "1.2.0", 9: None, 11: 12})
    result = validate_file(spec, display="support-assistant.yaml")
    found = {(d.code, d.line): d for d in result.diagnostics if d.code.startswith("C01")}
    gold_file = "support-assistant/data/gold.jsonl"
    # a version nobody locked (or a newer one, or not a string): errors at their lines
    for line in (3, 5, 11):
        assert found[("C010", line)].file == gold_file and found[("C010", line)].severity == "error"
    assert "'9.9.9'" in found[("C010", 3)].message and "1.2.0, 1.3.0" in found[("C010", 3)].message
    # an older locked version: one warning naming the lines to re-review
    older = found[("C011", 7)]
    assert (
        older.severity == "warning" and "2 item(s) were written for criteria 1.2.0" in older.message
    )
    assert "lines 7, 8" in older.message
    assert found[("C012", 9)].severity == "warning"
    assert not result.ok


def test_older_version_only_warns(tmp_path: Path) -> None:
    spec, gold = _copy(tmp_path)
    _retag(gold, dict.fromkeys(range(1, 61), "1.2.0"))
    result = validate_file(spec)
    assert result.ok
    codes = [d.code for d in result.diagnostics]
    assert codes.count("C011") == 1 and "C010" not in codes
    assert validate_file(spec, strict=True).ok is False
