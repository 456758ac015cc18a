"""How prompts and responses become model text, the same in every stage.

SFT, the reward model, PPO, DPO, evaluation and scoring must all see a prompt the same way, or
the reward model scores text the policy never produces. One `ChatFormat` per stage, built once
from the stage's tokenizer and the spec's ``prompts.chat_template`` (`chat_format`), renders
every prompt and response; its sha256 goes to lineage so stages can be compared.

Two renderings:

* a chat template (the tokenizer's, or a ``.jinja`` file the spec names): a prompt renders
  with ``add_generation_prompt=True``; the response is what the template adds to that prompt
  when the conversation gets the assistant's turn, so the prompt's text is a prefix of
  prompt + response by construction (checked: a template that renders the prompt differently
  inside the conversation is refused). The response part ends at the tokenizer's EOS: when
  the template closes the assistant turn with the EOS token, whatever it renders after it (a
  newline) is cut; when it closes the turn with another marker, trailing whitespace is cut and
  EOS follows as in every stage (the trainers and scoring append it, sampling stops at it). So
  a finished response always ends with EOS, the token PPO's missing-EOS penalty looks for.
  A template that starts with the BOS token loses it when the tokenizer adds BOS itself.
* no template (``none``, or ``auto`` with a tokenizer that has none): ``User: ...`` and
  ``Assistant:`` turn by turn, byte-identical to rlhfspec's format before chat templates; the
  response is a space and the text (the space belongs to the response, so byte-level BPE
  tokenizes prompt + response as the prompt alone plus the rest), and EOS is appended by the
  trainers and scoring.

A prompt is a string (one user turn) or a list of ``{role, content}`` messages ending with a
user turn (multi-turn; `as_messages`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfspec.common.chat_templates import AUTO, NONE
from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_text
from rlhfspec.common.prompt_messages import LABELS

PROMPT_TEMPLATE = "User: {prompt}\nAssistant:"
#: The plain rendering's label per role (a turn is ``<label>: <content>\n``).
PLAIN_ROLES = LABELS

Message = Mapping[str, str]
PromptInput = str | Sequence[Message]


def as_messages(prompt: PromptInput) -> list[dict[str, str]]:
    """A prompt as chat messages: a string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def prompt_key(prompt: PromptInput) -> str:
    """A string that identifies a prompt (its text, or its messages' plain rendering)."""
    return prompt if isinstance(prompt, str) else plain_prompt(prompt)


def plain_prompt(prompt: PromptInput) -> str:
    """The no-template rendering: ``User: ...\\nAssistant:`` (turn by turn when multi-turn)."""
    if isinstance(prompt, str):
        return PROMPT_TEMPLATE.format(prompt=prompt.strip())
    turns = "".join(
        f"{PLAIN_ROLES[m['role']]}: {m['content'].strip()}\n" for m in as_messages(prompt)
    )
    return turns + "Assistant:"


def format_prompt(prompt: str) -> str:
    """The plain rendering of a one-turn prompt; it ends on a token boundary."""
    return plain_prompt(prompt)


def format_response(response: str) -> str:
    """The plain rendering of a response: the separating space belongs to the response."""
    return " " + response.strip()


def full_text(prompt: str, response: str) -> str:
    return format_prompt(prompt) + format_response(response)


def word_count(text: str) -> int:
    return len(text.split())


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """The one way a run turns prompts and responses into model text (module docstring).

    `template` None is the plain ``User:/Assistant:`` rendering. `tokenizer` renders the
    template (``apply_chat_template`` gives it the special tokens); `source` says where the
    template came from, for lineage.
    """

    template: str | None
    source: str
    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False)
    #: the tokenizer prepends BOS itself, so a BOS the template renders first is dropped
    strip_bos: bool = False

    @property
    def sha256(self) -> str | None:
        return None if self.template is None else sha256_text(self.template)

    def record(self) -> dict[str, Any]:
        """What lineage and model metadata record of the format."""
        return {"source": self.source, "sha256": self.sha256}

    @property
    def _eos(self) -> str:
        return str(getattr(self.tokenizer, "eos_token", None) or "")

    def prompt(self, prompt: PromptInput) -> str:
        """The prompt as the model sees it before the response."""
        if self.template is None:
            return plain_prompt(prompt)
        return self._render(_clean(as_messages(prompt)), generation=True)

    def response(self, prompt: PromptInput, response: str) -> str:
        """What follows `prompt` for a finished `response` (ends with EOS, or EOS follows)."""
        if self.template is None:
            return format_response(response)
        messages = _clean(as_messages(prompt))
        head = self._render(messages, generation=True)
        whole = self._render([*messages, {"role": "assistant", "content": response.strip()}])
        if not whole.startswith(head):
            raise RunError(
                f"chat template ({self.source}) renders a prompt differently inside the "
                f"conversation than alone with add_generation_prompt: {head[-60:]!r} is not a "
                "prefix of the prompt with the assistant's turn; the response could not be "
                "separated from its prompt. Set prompts.chat_template to a template that "
                "renders the prompt the same way in both cases."
            )
        tail = whole[len(head) :]
        eos = self._eos
        if eos and eos in tail:
            return tail[: tail.rindex(eos) + len(eos)]
        return tail.rstrip()

    def full(self, prompt: PromptInput, response: str) -> str:
        return self.prompt(prompt) + self.response(prompt, response)

    def _render(self, messages: list[dict[str, str]], generation: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=generation,
        )
        if not isinstance(text, str):
            raise RunError(f"chat template ({self.source}) did not render text")
        bos = getattr(self.tokenizer, "bos_token", None)
        if self.strip_bos and bos and text.startswith(bos):
            text = text[len(bos) :]
        return text


def _clean(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def chat_format(tokenizer: Any, setting: str, spec_dir: Path | None = None) -> ChatFormat:
    """The stage's format: `setting` is ``prompts.chat_template`` (``auto``: the tokenizer's
    template when it has one, else plain; ``none``: plain; else a ``.jinja`` file in the spec's
    folder, `spec_dir`)."""
    if setting == NONE:
        return ChatFormat(None, "none", tokenizer)
    if setting == AUTO:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # named templates
            template = template.get("default")
        if not isinstance(template, str) or not template:
            return ChatFormat(None, "none (the tokenizer has no chat template)", tokenizer)
        return ChatFormat(template, "tokenizer", tokenizer, _adds_bos(tokenizer))
    if spec_dir is None:
        raise RunError(f"prompts.chat_template {setting!r}: no spec folder to read it from")
    path = spec_dir / setting
    if not path.is_file():
        raise RunError(f"prompts.chat_template {setting!r}: no such file in {spec_dir}")
    return ChatFormat(path.read_text(encoding="utf-8"), setting, tokenizer, _adds_bos(tokenizer))


def stage_format(ctx: Any, tokenizer: Any) -> ChatFormat:
    """The format of a plan stage (`rlhfspec.runtime.stage_api.StageContext`): from
    ``prompts.chat_template`` and the stage's tokenizer, checked against the template sha256 the
    plan recorded for the stage when it could (a local or builtin model, a ``.jinja`` file), so
    a stage never formats differently from what the plan promised."""
    setting = str(ctx.settings.get("prompts", {}).get("chat_template", AUTO))
    fmt = chat_format(tokenizer, setting, ctx.project.folder)
    check_planned_template(ctx, fmt.record())
    ctx.log(f"chat template: {fmt.source} ({(fmt.sha256 or 'plain User:/Assistant: text')[:12]})")
    return fmt


def check_planned_template(ctx: Any, record: Mapping[str, Any]) -> None:
    """Refuse a format other than the one the plan recorded for the stage (when it could:
    not for a hub model, whose template only the run sees)."""
    planned = ctx.stage.get("chat_template") or {}
    if planned.get("sha256") is not None and planned["sha256"] != record["sha256"]:
        raise RunError(
            f"stage '{ctx.stage['name']}': the plan recorded chat template "
            f"{planned['sha256'][:12]} ({planned['source']}), but the model's tokenizer has "
            f"{(record['sha256'] or 'none')[:12]} ({record['source']}); compile the spec again"
        )
