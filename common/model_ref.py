"""Base-model references in a spec, and what of a local model folder is its provenance.

A spec's ``base_model`` is one of three things:

* ``builtin:<name>``: built locally by the runtime (`rlhfspec.runtime.train.models`);
* a hub id ``org/name``, optionally pinned as ``org/name@revision`` (a commit, tag or branch;
  only a commit hash pins the bytes): recorded in the plan as written;
* anything else is a path, relative to the spec's folder like every other path in a spec
  (also a bare ``org/name`` that exists as a folder there). It must stay inside the folder and
  hold a model: ``config.json`` and safetensors weights. The plan records the sha256 of every
  file of the folder that decides what is trained (`MODEL_FILES`), so a changed base model
  changes the plan entry of each stage that reads it, and ``--resume`` runs them again.

No torch here: the compiler checks (`compiler.semantic.check_model_folder`) and hashes model
folders with this module.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Literal

BUILTIN_PREFIX = "builtin:"
#: A hub id, org/name, with an optional @revision.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
#: The files of a model folder that decide what is trained and how text is formatted.
MODEL_FILES = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

Kind = Literal["builtin", "hub", "local"]


def kind_of(ref: str, spec_dir: Path | None) -> Kind:
    """What `ref` names: builtin, a hub id, or a local folder (relative to `spec_dir`)."""
    if ref.startswith(BUILTIN_PREFIX):
        return "builtin"
    if ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        return "local"
    if spec_dir is not None and (spec_dir / ref.split("@", 1)[0]).is_dir():
        return "local"
    return "hub"


def hub_parts(ref: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); no revision -> None."""
    name, _, revision = ref.partition("@")
    return name, revision or None


def model_files(folder: Path) -> list[str]:
    """The provenance files present in `folder`, sorted (names relative to it)."""
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    return [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in MODEL_FILES)]
