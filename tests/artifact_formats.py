"""Every JSON file rlhfspec writes says what it is: a `format` listed in docs/artifacts.md.

`assert_formats(folder)` walks a folder that real commands wrote (a run directory, a handoff
package, compile/tasks/qc output) and fails on a JSON file with no `format`, or one the page
does not list. Files in another tool's format keep that tool's format and are named here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import ROOT

# Hugging Face model, tokenizer, PEFT and trainer files; Label Studio imports (a list of tasks)
OTHER_TOOLS = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "chat_template.json",
    "adapter_config.json",
    "trainer_state.json",
    "preprocessor_config.json",
    "model.safetensors.index.json",
}
LABEL_STUDIO_IMPORTS = ("label_studio.json", "label_studio/")


def listed_formats() -> set[str]:
    page = (ROOT / "docs" / "artifacts.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(rlhfspec\.[a-z_-]+/\d+)` \|", page, flags=re.M))


def _other_tool(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name in OTHER_TOOLS:
        return True
    return rel.endswith(LABEL_STUDIO_IMPORTS[0]) or f"/{LABEL_STUDIO_IMPORTS[1]}" in f"/{rel}"


def assert_formats(folder: Path) -> list[str]:
    """Check every *.json under `folder`; returns the formats found (relative path: format)."""
    listed = listed_formats()
    found, problems = [], []
    for path in sorted(folder.rglob("*.json")):
        rel = path.relative_to(folder).as_posix()
        if _other_tool(rel):
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        form = doc.get("format") if isinstance(doc, dict) else None
        if not isinstance(form, str):
            problems.append(f"{rel}: no format field ({type(doc).__name__})")
        elif form not in listed:
            problems.append(f"{rel}: format {form!r} is not listed in docs/artifacts.md")
        else:
            found.append(f"{rel}: {form}")
    assert not problems, "\n".join(problems)
    return found
