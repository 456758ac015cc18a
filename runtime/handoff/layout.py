"""What a handoff package is made of: its parts, fixed file names and formats, and the small
helpers every module of the package shares.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

PARTS = (
    "criteria",
    "sampling_procedure",
    "playbook",
    "annotation_qc",
    "reward_model_eval",
    "deployment_checkpoint",
    "lineage",
    "model_card",
)


WEIGHTS_MODES = ("include", "reference", "merged")
CHECKSUMS_FILE = "CHECKSUMS.sha256"
MANIFEST_FILE = "lineage/manifest.json"
MANIFEST_FORMAT = "rlhfspec.handoff_manifest/1"
REFERENCE_FILE = "model/REFERENCE.json"
REFERENCE_FORMAT = "rlhfspec.weights_reference/1"
MODEL_CARD_FILE = "MODEL_CARD.md"
HANDOFF_STAGE = "handoff"
MAX_METADATA_BYTES = 16 * 1024 * 1024
"""The largest metadata file (run records, checksums, manifest) read whole."""
PLAN_STAGE = "compile"
"""What the manifest names as the producer of the compiled plan and its documents."""


def json_bytes(value: Any) -> bytes:
    """Indented, key-sorted JSON: readable, and the same bytes for the same value."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def human_size(n: int) -> str:
    """A byte count for people: 512 B, 1.5 KB, 3.2 MB."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def safe_name(path: str) -> bool:
    """A relative POSIX path without `..`, backslashes or line breaks: safe in a tarball and in
    CHECKSUMS.sha256."""
    pure = PurePosixPath(path)
    return (
        bool(path)
        and not pure.is_absolute()
        and ".." not in pure.parts
        and "\\" not in path
        and "\n" not in path
        and "\r" not in path
        and str(pure) == path
    )
