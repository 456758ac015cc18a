"""`handoff` refuses symbolic links in a run directory (issue 15, class 8).

On main a link to a file outside the run was packaged once its sha256 was
edited into lineage.json; the package holds the run's own files only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_file
from rlhfspec.runtime.handoff.package import build_package
from tests.handoff.test_handoff import make_run


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("symlinks"))


def relink(run: Path, rel: str, target: Path) -> None:
    """Replace a run file by a link to `target` and record the target's hash in lineage."""
    (run / rel).unlink()
    (run / rel).symlink_to(target)
    lineage = json.loads((run / "lineage.json").read_text(encoding="utf-8"))
    for entry in lineage["stages"].values():
        for output in entry.get("outputs", []):
            if output["path"] == rel:
                output["sha256"] = sha256_file(target)
    (run / "lineage.json").write_text(json.dumps(lineage), encoding="utf-8")


def test_a_link_to_a_file_outside_the_run_is_refused(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    secret = tmp_path / "outside" / "secret.json"
    secret.parent.mkdir()
    secret.write_text((run / "selection.json").read_text(encoding="utf-8"), encoding="utf-8")
    relink(run, "selection.json", secret)
    with pytest.raises(RunError, match="symbolic link"):
        build_package(run, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_a_linked_folder_is_refused(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    moved = tmp_path / "elsewhere"
    shutil.move(run / "eval", moved)
    (run / "eval").symlink_to(moved, target_is_directory=True)
    with pytest.raises(RunError, match="symbolic link"):
        build_package(run, tmp_path / "pkg")
