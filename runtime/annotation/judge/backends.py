"""Where the judge's answers come from: a chat-completions endpoint or a local model.

`ChatCompletionsBackend` speaks the OpenAI-compatible chat-completions
protocol (vLLM, TGI, hosted APIs) over the standard library's HTTP client.
The API key is read from the environment variable the spec *names*, at
request time, and lives only in the request header: it is never part of an
identity, an error message, a file or lineage.

`HuggingFaceBackend` runs a local causal LM and constrains its answer to the
answer format by scoring each allowed answer (`{"choice": "A", ...}`) and
taking the most likely, so it never produces an unparseable reply; its
confidence is that answer's share of the probability.

Both raise `Transient` for what a retry may cure (timeouts, connection
errors, 429, 5xx, a body that is not a chat completion) and `Permanent` for
what it will not (other 4xx); the runner owns retries and backoff.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rlhfspec.common.errors import RunError

MAX_RETRY_AFTER = 60.0
MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int


class Transient(Exception):
    """A failure a retry may cure; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class Permanent(Exception):
    """A failure a retry will not cure (a 4xx other than 429)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Backend(Protocol):
    identity: dict[str, Any]

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion: ...


def _retry_after(value: str | None) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else None
    except ValueError:
        return None


class ChatCompletionsBackend:
    """POST <base_url>/chat/completions; the answer constrained by a JSON schema."""

    def __init__(self, settings: dict[str, Any]) -> None:
        if "base_url" not in settings or "model" not in settings:
            raise RunError(
                "judge.backend is openai_chat: set judge.base_url and judge.model in the spec"
            )
        self.url = settings["base_url"].rstrip("/") + "/chat/completions"
        if not self.url.startswith(("http://", "https://")):
            raise RunError(f"judge.base_url must start with http:// or https://, got {self.url!r}")
        self.model = str(settings["model"])
        self.key_env = settings.get("api_key_env")
        if self.key_env and not os.environ.get(self.key_env):
            raise RunError(
                f"judge.api_key_env names {self.key_env}, but that environment variable is not "
                "set; export the key in it (it is never written anywhere)"
            )
        self.timeout = float(settings["timeout_seconds"])
        self.max_tokens = int(settings["max_tokens"])
        self.temperature = float(settings["temperature"])
        self.identity = {
            "backend": "openai_chat",
            "model": self.model,
            "base_url": settings["base_url"],
            "api_key_env": self.key_env,
        }

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key_env:
            headers["Authorization"] = "Bearer " + os.environ.get(self.key_env, "")
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "judge_answer", "schema": schema, "strict": True},
            },
        }
        request = self._request(json.dumps(body).encode("utf-8"))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            status = exc.code
            after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            if status == 429:
                raise Transient("rate_limited", "HTTP 429 (rate limited)", after) from None
            if status >= 500:
                raise Transient("server_error", f"HTTP {status}", after) from None
            raise Permanent("client_error", f"HTTP {status} from {self.url}") from None
        except TimeoutError:
            raise Transient("timeout", f"no answer within {self.timeout:g} s") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError | socket.timeout):
                raise Transient("timeout", f"no answer within {self.timeout:g} s") from None
            raise Transient("connection", f"cannot reach {self.url}: {reason}") from None
        return self._completion(raw)

    def _completion(self, raw: bytes) -> Completion:
        if len(raw) > MAX_BODY:
            raise Transient("bad_response", f"response body over {MAX_BODY} bytes")
        try:
            data = json.loads(raw)
            text = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
            tokens_in = int(usage.get("prompt_tokens", 0))
            tokens_out = int(usage.get("completion_tokens", 0))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise Transient("bad_response", f"not a chat completion: {exc!r}"[:200]) from None
        if not isinstance(text, str):
            raise Transient("bad_response", "message content is not a string")
        return Completion(text, tokens_in, tokens_out)


class HuggingFaceBackend:
    """A local causal LM that picks the most likely allowed answer (constrained decoding)."""

    def __init__(self, settings: dict[str, Any], ref: str | Path, display: str) -> None:
        import torch

        from rlhfspec.runtime.train.models import load_causal_lm, load_tokenizer

        trust = bool(settings["trust_remote_code"])
        self.torch = torch
        self.tokenizer = load_tokenizer(ref, trust_remote_code=trust)
        self.model: Any = load_causal_lm(ref, trust_remote_code=trust, tokenizer=self.tokenizer)
        self.model.train(False)  # inference mode
        self.identity = {"backend": "huggingface", "model": display}

    def _prefix(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return str(text)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def _logprob(self, prefix_ids: list[int], answer: str) -> tuple[float, int]:
        answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = self.torch.tensor([prefix_ids + answer_ids])
        with self.torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, :-1].float()
        logp = self.torch.log_softmax(logits, dim=-1)
        start = len(prefix_ids) - 1
        picked = logp[start : start + len(answer_ids)].gather(
            1, self.torch.tensor(answer_ids)[:, None]
        )
        return float(picked.sum()), len(answer_ids)

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        props = schema["properties"]
        prefix_ids = self.tokenizer(self._prefix(messages), add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and len(prefix_ids) + 16 > limit:
            raise Permanent(
                "context",
                f"the prompt is {len(prefix_ids)} tokens; the model takes at most {limit}: "
                "use a model with a longer context or shorter judge templates (judge.templates)",
            )
        answer: dict[str, Any] = {}
        tokens_out = 0
        confidence = 1.0
        for key, options in [("choice", props["choice"]["enum"])] + [
            (f"dimensions.{d}", v["enum"])
            for d, v in props.get("dimensions", {}).get("properties", {}).items()
        ]:
            scores = [self._logprob(prefix_ids, json.dumps({key: o})) for o in options]
            best = max(range(len(options)), key=lambda i: scores[i][0])
            tokens_out += scores[best][1]
            if key == "choice":
                probs = self.torch.softmax(self.torch.tensor([s[0] for s in scores]), dim=0)
                confidence = float(probs[best])
                answer["choice"] = options[best]
            else:
                answer.setdefault("dimensions", {})[key.split(".", 1)[1]] = options[best]
        answer["confidence"] = (
            "high" if confidence >= 0.8 else "medium" if confidence >= 0.5 else "low"
        )
        return Completion(json.dumps(answer), len(prefix_ids), tokens_out)
