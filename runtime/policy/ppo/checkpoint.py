"""PPO checkpoints (``checkpoints/update-NNNNNN``) and the metrics file.

A checkpoint is written into a temporary folder and renamed into place, with
``checkpoint.json`` written last, so a kill mid-save leaves no half checkpoint behind; it holds
the policy, the value model, the optimizer state and every RNG state, so a resumed run ends
with exactly the weights of one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import sha256_file
from rlhfspec.runtime.train.scale import save_pretrained_merged

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_FORMAT = "rlhfspec.ppo_checkpoint/1"
CHECKPOINT_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^update-(\d{6})$")


def checkpoint_name(update: int) -> str:
    return f"update-{update:06d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose ``checkpoint.json`` was written), if any."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if path.is_dir()
        and (match := _CHECKPOINT_RE.match(path.name))
        and (path / CHECKPOINT_META).is_file()
    ]
    return max(found)[1] if found else None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in plain types, loadable with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: Path,
    update: int,
    *,
    write_models: Callable[[Path], None],
    optimizer_state: dict[str, Any],
    info: dict[str, Any],
) -> Path:
    """Write a checkpoint into ``.update-NNNNNN.tmp`` and rename it into place.

    `write_models(folder)` writes ``folder/policy`` (with the tokenizer) and ``folder/value``
    (`save_models`, or from gathered state dicts under FSDP); `optimizer_state` is the
    optimizer's full, index-keyed state. ``checkpoint.json`` is written last and the rename is
    atomic, so ``update-NNNNNN`` either does not exist or is complete; a leftover temporary
    folder is ignored and removed later.
    """
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(update)
    tmp = root / f".{checkpoint_name(update)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    write_models(tmp)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng_state.pt")
    atomic_write_text(tmp / CHECKPOINT_META, json.dumps(info, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def save_models(policy: Any, value_model: Any, tokenizer: Any, folder: Path) -> None:
    """The unsharded policy (with its tokenizer) and value model as Hugging Face folders;
    with LoRA the adapters under adapter/ and the merged weights beside them, so evaluation
    and the handoff load the checkpoint as an ordinary model."""
    save_pretrained_merged(policy, folder / "policy")
    tokenizer.save_pretrained(folder / "policy")
    save_pretrained_merged(value_model, folder / "value")


def model_sha256(model_dir: Path) -> str | None:
    weights = Path(model_dir) / "model.safetensors"
    return sha256_file(weights) if weights.is_file() else None


def clean_float(value: float) -> float | None:
    """Round for the log; NaN/inf (e.g. explained variance of constant returns) become null."""
    return round(value, 6) if math.isfinite(value) else None


def read_metrics(path: Path, up_to: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row for row in rows if int(row["update"]) <= up_to]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
