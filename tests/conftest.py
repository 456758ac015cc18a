"""Shared fixtures: paths to the repository's specs and the invalid-spec corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
CORPUS = Path(__file__).resolve().parent / "corpus"
SHIPPED_SPECS = sorted(SPECS.glob("*.yaml"))


@pytest.fixture
def root() -> Path:
    return ROOT
