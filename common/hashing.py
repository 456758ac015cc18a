"""Hashes of specs, criteria and input files, so a run can prove which bytes it consumed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON: the form every content hash is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: Path) -> dict[str, Any]:
    """sha256 and size; JSONL files also get their row count (non-blank lines)."""
    digest = hashlib.sha256()
    size = 0
    rows = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if path.suffix == ".jsonl":
        with path.open("rb") as handle:
            rows = sum(1 for line in handle if line.strip())
    return {
        "sha256": digest.hexdigest(),
        "bytes": size,
        "rows": rows if path.suffix == ".jsonl" else None,
    }
