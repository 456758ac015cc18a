"""Which chat template a run formats text with, readable without torch.

The runtime formats every prompt and response through one chat template
(`rlhfspec.runtime.train.formatting`); the compiler records which one (its sha256) in the plan
entry of each stage that formats text, so ``--resume`` reruns a stage whose template changed.
The compiler must not import transformers, so the template is found here from plain files:

* ``builtin:tiny``: `TINY_CHAT_TEMPLATE`, a constant the runtime also gives the model;
* a local model folder: ``chat_template.jinja`` (transformers 5 writes it there), else the
  ``chat_template`` field of ``tokenizer_config.json`` (a string, or a list of named templates
  of which ``default`` is the one ``apply_chat_template`` uses);
* a hub id: not known before the tokenizer is downloaded; the run records it in lineage;
* the spec's ``prompts.chat_template`` may name a ``.jinja`` file instead (or ``none``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfspec.common.hashing import sha256_text
from rlhfspec.common.model_ref import kind_of
from rlhfspec.common.model_shapes import BUILTIN_TINY
from rlhfspec.common.plan_types import ChatTemplateRecord

#: builtin:tiny's chat template. Every turn opens with a role token (``<|user|>``,
#: ``<|assistant|>``, ``<|system|>``: special tokens of the tiny tokenizer) and a newline; an
#: assistant turn ends with EOS, then every turn with a newline. The generation prompt is
#: ``<|assistant|>`` and a newline, so the prompt ends on a token boundary and its tokens are a
#: prefix of the tokens of prompt + response.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] | trim -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)
#: The role tokens `TINY_CHAT_TEMPLATE` uses, added to the tiny tokenizer as special tokens.
TINY_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

#: ``prompts.chat_template`` values that are not a file.
AUTO = "auto"
NONE = "none"


def folder_template(folder: Path) -> str | None:
    """The chat template a local model folder ships, as ``AutoTokenizer`` would load it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        value: Any = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError):
        return None
    if isinstance(value, list):  # named templates: apply_chat_template uses "default"
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None


def template_record(setting: str, model_ref: str, spec_dir: Path) -> ChatTemplateRecord:
    """What the plan records of the template a stage formats with: the setting, where the
    template comes from, and its sha256 (null when only the run can know: a hub model)."""
    if setting == NONE:
        return {"setting": setting, "source": "none (User:/Assistant: text)", "sha256": None}
    if setting != AUTO:
        path = spec_dir / setting
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        return {"setting": setting, "source": setting, "sha256": _sha(text)}
    kind = kind_of(model_ref, spec_dir)
    if model_ref == BUILTIN_TINY:
        return {"setting": setting, "source": BUILTIN_TINY, "sha256": _sha(TINY_CHAT_TEMPLATE)}
    if kind == "local":
        text = folder_template(spec_dir / model_ref)
        source = model_ref if text is not None else "none (User:/Assistant: text)"
        return {"setting": setting, "source": source, "sha256": _sha(text)}
    return {"setting": setting, "source": f"{model_ref} (recorded at run time)", "sha256": None}


def _sha(text: str | None) -> str | None:
    return None if text is None else sha256_text(text)
