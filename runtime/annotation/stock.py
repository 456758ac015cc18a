"""Exports of Label Studio's stock pairwise templates, matched to the spec by text.

A team that builds its Label Studio project from a stock template instead of our generated
config (`rlhfspec tasks`) imports tasks that hold texts only: Label Studio 1.23's "Human
Preference collection for RLHF" template (`generative-ai/human-feedback-collection`) shows
`$prompt`, `$answer1` and `$answer2` and records a `<Pairwise name="comparison">` result,
`{"selected": "left"}` or `"right"`; its "Pairwise classification" template
(`ranking-and-scoring/pairwise-classification`) shows `$pairText1` and `$pairText2` with a
`<Pairwise name="pw">` and no prompt at all. A batch with `format: label_studio_pairwise`
says so; its `fields` name the data fields that hold the prompt and the two answers.

Every task is matched to the spec by text, compared after whitespace normalisation (runs of
spaces, tabs and newlines are one space; Unicode NFC): the prompt to a prompt of the spec's
sources (its `text`; a multi-turn prompt also by its messages' transcript, and a task may
hold the prompt as `{role, content}` messages), each answer to a response of
`annotation.responses` for that prompt. Without a prompt field the answers alone decide the
prompt. A task that matches nothing, or more than one prompt or response, is a row problem
naming the field, the text and the fix; it is never guessed. The matched pair gets the item
id `rlhfspec tasks` gives the same pair, or the gold item's id when the gold file has the pair,
so votes from stock and from generated projects count on the same items.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from rlhfspec.common.errors import RunError
from rlhfspec.common.jsonl import read_objects, read_rows
from rlhfspec.common.prompt_messages import messages_problem, transcript
from rlhfspec.runtime.annotation.blinding import opaque_id
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.prompts.pool import load_prompt_pool

FORMAT = "label_studio_pairwise"
Problems = list[tuple[str | None, str]]
SIDES = ("response_a", "response_b")


def normalise(text: str) -> str:
    """The form texts are compared in: NFC, whitespace runs folded to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def batch_fields(entry: dict[str, Any]) -> dict[str, str | None]:
    """The batch's `fields` (the compiler wrote the schema's defaults into the plan)."""
    return {role: entry["fields"][role] for role in ("prompt", *SIDES)}


def _transcript(value: Any) -> Any:
    """A valid `{role, content}` message list as its transcript; anything else as it is."""
    if messages_problem(value) is not None:
        return value
    return transcript(cast(list[Mapping[str, str]], value))


def item_id_for(seed: int, prompt_id: str, one: str, two: str) -> str:
    """The item id `rlhfspec tasks` gives a drawn pair (tasks._draw_items), order-free."""
    return opaque_id(seed, "item", prompt_id, *sorted((one, two)), prefix="item")


def _shown(text: str) -> str:
    flat = normalise(text)
    return repr(flat if len(flat) <= 60 else flat[:57] + "...")


@dataclass
class StockMatcher:
    """The spec's prompts, responses and gold pairs, indexed by normalised text."""

    seed: int
    responses_file: str
    prompts: dict[str, list[str]] = field(default_factory=dict)
    """normalised prompt text -> prompt ids (every source, the holdout included)"""
    responses: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """normalised response text -> (response id, prompt id)"""
    gold: dict[frozenset[str], str] = field(default_factory=dict)
    """a gold item's two response ids -> its item id"""

    @classmethod
    def build(cls, project: Project) -> StockMatcher:
        ann = project.spec["annotation"]
        rel = ann.get("responses")
        if not rel:
            raise RunError(
                f"{project.display}: a `{FORMAT}` batch is matched to the responses by text, "
                "but annotation.responses is not set; name the JSONL of the compared responses"
            )
        out = cls(project.seed, rel)
        for prompt in load_prompt_pool(project).prompts:
            # a multi-turn prompt: its text (the transcript, unless the row has its own text)
            # and its messages' transcript, as a task may carry either
            keys = {normalise(prompt.text)}
            if prompt.messages:
                keys.add(normalise(_transcript(prompt.messages)))
            for key in keys:
                out.prompts.setdefault(key, []).append(prompt.id)
        for row in read_rows(project.path(rel), rel, ("id", "prompt_id", "text")):
            out.responses.setdefault(normalise(row["text"]), []).append(
                (row["id"], row["prompt_id"])
            )
        gold = ann.get("gold")
        if gold:  # read loosely: QC reports the gold file's bad rows
            for _, row in read_objects(project.path(gold["path"]), gold["path"], []):
                ids = [row.get(k) for k in ("item_id", *SIDES)]
                if all(isinstance(i, str) and i for i in ids):
                    out.gold[frozenset(str(i) for i in ids[1:])] = str(ids[0])
        return out

    def _texts(
        self, data: dict[str, Any], fields: dict[str, str | None]
    ) -> tuple[dict[str, str], Problems]:
        """The prompt and answer texts the fields name, or what is wrong with them."""
        texts: dict[str, str] = {}
        problems: Problems = []
        for role, name in fields.items():
            if name is None:
                continue
            value = data.get(name)
            if role == "prompt":
                value = _transcript(value)  # a multi-turn prompt as {role, content} messages
            if isinstance(value, str) and value.strip():
                texts[role] = value
            else:
                present = ", ".join(sorted(map(str, data))) or "none"
                problems.append(
                    (
                        f"data.{name}",
                        f"must hold the {role.replace('_', ' ')} text"
                        + (" (or its {role, content} messages)" if role == "prompt" else "")
                        + f", got {value!r:.40} (the "
                        f"task's data fields: {present}); set the batch's `fields.{role}` to "
                        "the field that holds it",
                    )
                )
        return texts, problems

    def _prompt_ids(self, text: str | None, name: str | None) -> tuple[set[str] | None, Problems]:
        if text is None:
            return None, []
        found = self.prompts.get(normalise(text))
        if not found:
            return set(), [
                (
                    f"data.{name}",
                    f"{_shown(text)} matches no prompt of the spec's prompt sources (compared "
                    "after whitespace normalisation); import the prompt text unchanged, or add "
                    "the prompt to a source",
                )
            ]
        return set(found), []

    def _candidates(
        self, text: str, name: str | None, prompts: set[str] | None
    ) -> tuple[list[tuple[str, str]], Problems]:
        found = self.responses.get(normalise(text), [])
        if not found:
            return [], [
                (
                    f"data.{name}",
                    f"{_shown(text)} matches no response in {self.responses_file} (compared "
                    "after whitespace normalisation); import the response texts unchanged, or "
                    f"add the response to {self.responses_file}",
                )
            ]
        kept = [c for c in found if prompts is None or c[1] in prompts]
        if not kept:
            return [], [
                (
                    f"data.{name}",
                    f"{_shown(text)} is a response to {', '.join(sorted({c[1] for c in found}))}, "
                    "not to the task's prompt; check that the task's prompt and answers belong "
                    "together",
                )
            ]
        return kept, []

    def match(
        self, data: dict[str, Any], fields: dict[str, str | None]
    ) -> tuple[dict[str, Any] | None, Problems]:
        """The task's item, prompt and response ids (our data fields), or why there are none."""
        texts, problems = self._texts(data, fields)
        if problems:
            return None, problems
        prompts, problems = self._prompt_ids(texts.get("prompt"), fields["prompt"])
        if problems:
            return None, problems
        sides = {}
        for side in SIDES:
            sides[side], found = self._candidates(texts[side], fields[side], prompts)
            problems += found
        if problems:
            return None, problems
        return self._resolve(sides, fields)

    def _resolve(
        self, sides: dict[str, list[tuple[str, str]]], fields: dict[str, str | None]
    ) -> tuple[dict[str, Any] | None, Problems]:
        """One prompt both answers belong to, one response per answer, else a problem."""
        common = {p for _, p in sides["response_a"]} & {p for _, p in sides["response_b"]}
        if len(common) != 1:
            what = (
                "are responses to different prompts"
                if not common
                else f"fit several prompts ({', '.join(sorted(common))})"
            )
            hint = "" if fields["prompt"] else "; name the prompt field in the batch's `fields`"
            return None, [(f"data.{fields['response_b']}", f"the two answers {what}{hint}")]
        prompt_id = common.pop()
        ids: dict[str, str] = {}
        for side in SIDES:
            mine = sorted(r for r, p in sides[side] if p == prompt_id)
            if len(mine) > 1:
                return None, [
                    (
                        f"data.{fields[side]}",
                        f"the text is responses {', '.join(mine)} of prompt {prompt_id} alike; "
                        "make the texts in the responses file distinct (the match is ambiguous)",
                    )
                ]
            ids[side] = mine[0]
        if ids["response_a"] == ids["response_b"]:
            return None, [(f"data.{fields['response_b']}", "both answers are the same response")]
        gold = self.gold.get(frozenset(ids.values()))
        item_id = gold or item_id_for(self.seed, prompt_id, ids["response_a"], ids["response_b"])
        return {"item_id": item_id, "prompt_id": prompt_id, **ids, "gold": gold is not None}, []

    def prompt_ids(self, data: dict[str, Any], fields: dict[str, str | None]) -> list[str]:
        """Loosely, for the leak check: the prompts the prompt text matches, else the prompts
        both answers are responses to; none when nothing matches."""
        name = fields["prompt"]
        text = data.get(name) if name else None
        text = _transcript(text)
        if isinstance(text, str) and normalise(text) in self.prompts:
            return sorted(set(self.prompts[normalise(text)]))
        found: list[set[str]] = []
        for side in SIDES:
            value = data.get(fields[side] or "")
            cands = self.responses.get(normalise(value), []) if isinstance(value, str) else []
            found.append({p for _, p in cands})
        return sorted(found[0] & found[1])

    def choice_aliases(self, fields: dict[str, str | None]) -> dict[str, str]:
        """Choice values a stock-based project may use for A and B, lower-cased: left/right
        and the answer fields' names (`answer1`, `answer2`)."""
        aliases = {"left": "A", "right": "B"}
        for side, value in zip(SIDES, ("A", "B"), strict=True):
            if fields[side]:
                aliases[str(fields[side]).lower()] = value
        return aliases


def annotator_mapper(
    annotator_ids: dict[str, str],
) -> Callable[[dict[str, Any]], Problems]:
    """A stock batch has no planned annotators: a Label Studio user (`ls-user-<id>` or an
    email) is mapped through `annotation.annotator_ids`, else keeps Label Studio's name."""

    def resolve(record: dict[str, Any]) -> Problems:
        who = str(record.get("annotator", ""))
        raw = who[len("ls-user-") :] if who.startswith("ls-user-") else who
        record["annotator"] = annotator_ids.get(raw, annotator_ids.get(who, who))
        return []

    return resolve
