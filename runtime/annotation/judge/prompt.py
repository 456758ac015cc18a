"""The judge's prompt, rendered from the criteria, and the strict parser of its answers.

The prompt is two sandboxed templates (`judge_system.md.j2` with the
criteria, `judge_user.md.j2` with one prompt and two responses), shipped in
`templates/` and overridable by the spec's `judge.templates` folder. Its
identity is a sha256 over the rendered system message and the user
template's source: every judgement records it, so a changed template (a
known source of judge drift) is visible and a resumed run cannot mix two.

Answers are parsed strictly: the whole reply must be one JSON object with
exactly the documented keys and values. Anything else is *unparseable*,
recorded with the raw text, and never guessed at (a guess would be a label
nobody gave).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_text
from rlhfspec.common.templating import environment

SYSTEM_TEMPLATE = "judge_system.md.j2"
USER_TEMPLATE = "judge_user.md.j2"
CONFIDENCE = ("low", "medium", "high")
KEYS = {"choice", "dimensions", "confidence", "reason"}


@dataclass(frozen=True)
class JudgePrompt:
    """The rendered system message and the user template, with their joint sha256."""

    system: str
    user_template: Any
    sha256: str
    choices: tuple[str, ...]
    dimensions: tuple[str, ...]  # empty unless per-dimension choices are asked for

    def messages(self, prompt: str, response_a: str, response_b: str) -> list[dict[str, str]]:
        user = self.user_template.render(
            prompt=prompt, response_a=response_a, response_b=response_b
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def answer_schema(self) -> dict[str, Any]:
        """JSON Schema of a valid answer, for endpoints that constrain decoding to it."""
        props: dict[str, Any] = {
            "choice": {"enum": list(self.choices)},
            "confidence": {"enum": list(CONFIDENCE)},
            "reason": {"type": "string"},
        }
        required = ["choice", "confidence"]
        if self.dimensions:
            props["dimensions"] = {
                "type": "object",
                "properties": {d: {"enum": ["A", "B", "tie"]} for d in self.dimensions},
                "required": list(self.dimensions),
                "additionalProperties": False,
            }
            required.append("dimensions")
        return {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }


def build_prompt(spec: dict[str, Any], folder: Path) -> JudgePrompt:
    """Render the system message from the resolved spec's criteria (sandboxed, strict)."""
    judge = spec["judge"]
    user_dir = None
    if "templates" in judge:
        user_dir = (folder / judge["templates"]).resolve()
        if not user_dir.is_relative_to(folder.resolve()) or not user_dir.is_dir():
            raise RunError(
                f"judge.templates: '{judge['templates']}' must be a folder inside the spec's folder"
            )
    env = environment(user_dir)
    allow_tie = bool(spec["annotation"]["allow_tie"])
    dims = tuple(d["id"] for d in spec["criteria"]["dimensions"]) if judge["per_dimension"] else ()
    try:
        system = env.get_template(SYSTEM_TEMPLATE).render(
            criteria=spec["criteria"], allow_tie=allow_tie, per_dimension=bool(dims)
        )
        user = env.get_template(USER_TEMPLATE)
        source, _, _ = env.loader.get_source(env, USER_TEMPLATE)  # type: ignore[union-attr]
    except TemplateError as exc:
        raise RunError(f"judge prompt template: {exc}") from None
    return JudgePrompt(
        system,
        user,
        sha256_text(system + "\x00" + source),
        ("A", "B", "tie") if allow_tie else ("A", "B"),
        dims,
    )


@dataclass(frozen=True)
class Answer:
    choice: str
    confidence: str
    dimensions: dict[str, str]
    reason: str


def parse_answer(text: str, prompt: JudgePrompt) -> Answer | str:
    """The answer, or a one-line reason why the text is not a valid answer."""
    try:
        data = json.loads(text.strip())
    except json.JSONDecodeError as exc:
        return f"not a JSON object: {exc.msg} at column {exc.colno}"
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    extra = sorted(set(data) - KEYS)
    if extra:
        return f"unexpected key(s) {', '.join(extra)}"
    if data.get("choice") not in prompt.choices:
        return f"choice must be one of {', '.join(prompt.choices)}; got {data.get('choice')!r}"
    if data.get("confidence") not in CONFIDENCE:
        return f"confidence must be low, medium or high; got {data.get('confidence')!r}"
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        return "reason must be a string"
    dims = data.get("dimensions", {})
    if prompt.dimensions:
        if not isinstance(dims, dict) or set(dims) != set(prompt.dimensions):
            return f"dimensions must give exactly {', '.join(prompt.dimensions)}"
        bad = [d for d, v in dims.items() if v not in ("A", "B", "tie")]
        if bad:
            return f"dimension choice(s) for {', '.join(sorted(bad))} must be A, B or tie"
    elif "dimensions" in data:
        return "dimensions were not asked for"
    return Answer(data["choice"], data["confidence"], dict(dims), reason)
