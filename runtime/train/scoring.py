"""Scoring texts with a trained reward model, and the evaluation-only `rlhfspec score`.

Teams that reach a model only through an API cannot run PPO, but they can
still use the reward model to score that model's outputs and track quality
over time: `score` writes per-row scores, a per-system summary, and can
append the summary to a history file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rlhfspec.common.chat_templates import AUTO
from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import sha256_file
from rlhfspec.common.prompt_messages import messages_problem
from rlhfspec.runtime.train.formatting import chat_format, word_count
from rlhfspec.runtime.train.reward_eval import pearson

REWARD_META = "rlhfspec_reward_model.json"


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    mixed_precision: str = "no",
) -> list[float]:
    """One scalar per text, read at the last real token (EOS is appended as in training).

    Batched on the model's device, under autocast in `mixed_precision`. Complete texts from
    elsewhere (an API) are scored as finished responses; PPO and evaluation score sampled
    token ids instead (`rlhfspec.runtime.policy.ppo.rollout.episode_scores`).
    """
    import torch

    from rlhfspec.runtime.train.precision import autocast

    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "right"
    eos = tokenizer.eos_token or ""
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = [t if t.endswith(eos) else t + eos for t in texts[start : start + batch_size]]
            enc = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=True,
            )
            with autocast(mixed_precision, device):
                out = model(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device),
                )
            scores.extend(float(v) for v in out.logits[:, 0].float().tolist())
    return scores


def _summary(values: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(values.size),
        "mean": round(float(values.mean()), 6),
        "std": round(float(values.std()), 6),
        "p10": round(float(np.quantile(values, 0.1)), 6),
        "p50": round(float(np.quantile(values, 0.5)), 6),
        "p90": round(float(np.quantile(values, 0.9)), 6),
        "mean_words": round(float(lengths.mean()), 3),
        "length_correlation": None if (c := pearson(values, lengths)) is None else round(c, 6),
    }


def score_file(
    model_dir: Path,
    input_path: Path,
    output: Path,
    *,
    history: Path | None = None,
    input_display: str,
    batch_size: int = 32,
    device: str = "auto",
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """Score a JSONL of {prompt, response, system?} on `device` (auto: CUDA when there is
    one) in `mixed_precision`, `batch_size` rows at a time; write scores, return the summary.

    Texts are formatted with the chat template the reward model was trained with (its saved
    tokenizer's; the plain format when it has none), the same as in training."""
    import torch

    from rlhfspec.runtime.train.models import load_reward_model, load_tokenizer

    if not (model_dir / REWARD_META).is_file():
        raise RunError(
            f"{model_dir} is not an rlhfspec reward model (no {REWARD_META}); "
            "point --model at runs/<name>/<run-id>/models/reward_model"
        )
    meta = json.loads((model_dir / REWARD_META).read_text(encoding="utf-8"))
    rows = read_score_rows(input_path, input_display)
    tokenizer = load_tokenizer(model_dir)
    model: Any = load_reward_model(model_dir, tokenizer=tokenizer)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    fmt = chat_format(tokenizer, AUTO)
    scores = score_texts(
        model,
        tokenizer,
        [fmt.full(r.get("messages") or r["prompt"], r["response"]) for r in rows],
        batch_size=batch_size,
        max_length=int(meta.get("max_length", 512)),
        mixed_precision=mixed_precision,
    )
    lines = [
        json.dumps({**r, "score": round(s, 6)}, ensure_ascii=False)
        for r, s in zip(rows, scores, strict=True)
    ]
    atomic_write_text(output, "".join(line + "\n" for line in lines))
    summary = {
        "format": "rlhfspec.score_summary/1",
        "scored_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {
            "path": str(model_dir),
            "sha256": sha256_file(model_dir / "model.safetensors"),
            "criteria_version": meta.get("criteria_version"),
            "annotation_batches": meta.get("annotation_batches"),
            "chat_template": fmt.record(),
        },
        "input": {"path": input_display, "sha256": sha256_file(input_path), "rows": len(rows)},
        **score_summaries(rows, scores),
    }
    atomic_write_text(output.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    if history is not None:
        previous = history.read_text(encoding="utf-8") if history.exists() else ""
        atomic_write_text(history, previous + json.dumps(summary, ensure_ascii=False) + "\n")
    return summary


def read_score_rows(input_path: Path, input_display: str) -> list[dict[str, Any]]:
    """The rows to score: `prompt` and `response` strings, `system` optional; a bad row is a
    RunError naming its line."""
    rows = []
    with input_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunError(
                    f"{input_display}: line {number}: not valid JSON: {exc.msg}"
                ) from None
            if not isinstance(row, dict):
                raise RunError(f"{input_display}: line {number}: not a JSON object")
            for field in ("prompt", "response"):
                if not isinstance(row.get(field), str):
                    raise RunError(
                        f"{input_display}: line {number}: field '{field}' must be a string"
                    )
            if "system" in row and not isinstance(row["system"], str):
                raise RunError(f"{input_display}: line {number}: field 'system' must be a string")
            if "messages" in row:
                problem = messages_problem(row["messages"])
                if problem:
                    raise RunError(f"{input_display}: line {number}: field 'messages': {problem}")
            rows.append(row)
    if not rows:
        raise RunError(f"{input_display}: no rows to score")
    return rows


def score_summaries(rows: list[dict[str, Any]], scores: list[float]) -> dict[str, Any]:
    """The summary over all rows and per `system`."""
    values = np.array(scores)
    lengths = np.array([word_count(r["response"]) for r in rows], dtype=float)
    per_system = {}
    for system in sorted({r.get("system", "(none)") for r in rows}):
        mask = np.array([r.get("system", "(none)") == system for r in rows])
        per_system[system] = _summary(values[mask], lengths[mask])
    return {"overall": _summary(values, lengths), "systems": per_system}
