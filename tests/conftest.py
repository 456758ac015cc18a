"""Shared fixtures: paths to the repository's specs and the invalid-spec corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
CORPUS = Path(__file__).resolve().parent / "corpus"
SHIPPED_SPECS = sorted(SPECS.glob("*.yaml"))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example project (spec, lock file, data without the truth) to edit freely."""
    spec = SPECS / "support-assistant.yaml"
    shutil.copytree(
        SPECS / "support-assistant",
        tmp_path / "support-assistant",
        ignore=shutil.ignore_patterns("truth", "generate.py"),
    )
    shutil.copy(spec, tmp_path / spec.name)
    shutil.copy(spec.with_name("support-assistant.lock.json"), tmp_path)
    return tmp_path / spec.name
