"""The files a spec names: which base models a run loads, every `x-path` field, and the
checks that keep each path inside the spec's folder and each model folder loadable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfspec.common.model_ref import model_files
from rlhfspec.compiler.schemas import JsonPath, walk


def used_base_models(spec: dict[str, Any]) -> list[str]:
    """The sections whose ``base_model`` a run loads (not the ones starting from SFT)."""
    used = ["sft"] if spec["sft"]["enabled"] else []
    for section in ("reward_model", "policy"):
        if not spec[section]["start_from_sft"]:
            used.append(section)
    return used


def iter_paths(schema: dict[str, Any], data: Any) -> Iterator[tuple[JsonPath, str]]:
    """Every file path the spec references (fields marked `x-path` in the schema, except the
    keywords a field lists in `x-path-except`, such as ``prompts.chat_template: auto``)."""
    for path, sub, value in walk(schema, data):
        if (
            sub.get("x-path")
            and isinstance(value, str)
            and value not in sub.get("x-path-except", ())
        ):
            yield path, value


def check_path(base: Path, value: str) -> tuple[str, str, str] | None:
    """Refuse paths that leave the spec's folder; then require a readable file.

    Every OS error a path can raise (a NUL byte, a name too long, a loop of
    symlinks, no permission) is a diagnostic here, never an internal error.
    """
    try:
        return _check_path(base, value)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return (
            "F004",
            f"'{value[:80]}' cannot be used as a path: {reason}",
            "give a short relative path of ordinary characters inside the spec's folder",
        )


def _check_path(base: Path, value: str) -> tuple[str, str, str] | None:
    candidate = Path(value)
    if candidate.is_absolute():
        return (
            "F002",
            f"'{value}' is an absolute path; spec paths are relative to the spec's folder",
            "move the file under the spec's folder and give a relative path",
        )
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base):
        return (
            "F002",
            f"'{value}' leaves the spec's folder {base.name}/",
            "keep data inside the spec's folder, so the spec and its data move together",
        )
    if not resolved.is_file():
        return (
            "F001",
            f"file '{value}' does not exist (looked in {base.name}/)",
            "check the path; it is relative to the spec's folder",
        )
    if not os.access(resolved, os.R_OK):
        raise PermissionError(13, "permission denied")
    return None


def check_model_folder(spec_dir: Path, ref: str) -> tuple[str, str, str] | None:
    """A problem with a local base model, as (code, message, hint), or None."""
    base = spec_dir.resolve()
    candidate = Path(ref).expanduser()
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base):
        return (
            "F002",
            f"base model '{ref}' leaves the spec's folder {base.name}/",
            "put the model folder under the spec's folder and give a relative path",
        )
    if not resolved.is_dir():
        return (
            "F005",
            f"base model folder '{ref}' does not exist (looked in {base.name}/); a hub id is "
            "org/name[@revision]",
            "check the path (relative to the spec's folder), or give a hub id",
        )
    names = model_files(resolved)
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        missing.append("*.safetensors weights")
    if missing:
        return (
            "F006",
            f"base model folder '{ref}' lacks {' and '.join(missing)}",
            "save the model with save_pretrained(..., safe_serialization=True)",
        )
    return None
