"""A chat-completions server on 127.0.0.1 that judges from the example's simulation.

It reads the two responses out of the judge's user message, looks their
hidden attributes up in `specs/support-assistant/data/truth/responses.jsonl`
and answers with the ground-truth preference (disqualifier, then the ranked
dimensions, then the shorter response, then tie), degraded as configured:

* `accuracy`: per pair (the same in both orders, as a real judge's
  misreading is about content), the truth with this probability, else one of
  the two other labels;
* `position_bias`: per request, answer "A" (the first shown) with this
  probability;
* `length_bias`: per pair, prefer the longer response with this probability;
* `faults`: per request body, a list of faults for its successive attempts;
  `fault_rate`: a seeded share of request bodies fails on its first attempt;
  `persistent_rate`: ... on every attempt. Faults: `timeout` (answer later
  than the client waits), `429` (with Retry-After), `500`, `malformed`
  (prose instead of the JSON object), `garbage` (a body that is not a chat
  completion).

Only the standard library; it binds 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rlhfspec.common.hashing import canonical_json, sha256_text

DATA = Path(__file__).resolve().parents[2] / "specs" / "support-assistant" / "data"
DIMENSIONS = ("accuracy", "helpfulness", "tone", "conciseness")
BLOCK = re.compile(r"Response A:\n<<<\n(.*?)\n>>>\n\nResponse B:\n<<<\n(.*?)\n>>>", re.S)


def load_truth() -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """response text -> id, and id -> hidden attributes."""
    by_text: dict[str, str] = {}
    for line in (DATA / "responses.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_text[row["text"]] = row["id"]
    for line in (DATA / "gold.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_text.setdefault(row["text_a"], row["response_a"])
        by_text.setdefault(row["text_b"], row["response_b"])
    truth = {}
    for line in (DATA / "truth" / "responses.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        truth[row["response_id"]] = row
    return by_text, truth


def preferred(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The simulation's ground-truth rule: A, B or tie."""
    if bool(a["disqualifiers"]) != bool(b["disqualifiers"]):
        return "B" if a["disqualifiers"] else "A"
    for dim in DIMENSIONS:
        if a["scores"][dim] != b["scores"][dim]:
            return "A" if a["scores"][dim] > b["scores"][dim] else "B"
    if a["word_count"] != b["word_count"]:
        return "A" if a["word_count"] < b["word_count"] else "B"
    return "tie"


def dim_choice(a: dict[str, Any], b: dict[str, Any], dim: str) -> str:
    if a["scores"][dim] == b["scores"][dim]:
        return "tie"
    return "A" if a["scores"][dim] > b["scores"][dim] else "B"


@dataclass
class Behaviour:
    accuracy: float = 1.0
    position_bias: float = 0.0
    length_bias: float = 0.0
    faults: dict[str, list[str]] = field(default_factory=dict)  # request sha -> faults by attempt
    fault_rate: dict[str, float] = field(default_factory=dict)  # fault -> share of bodies, 1st try
    persistent_rate: dict[str, float] = field(default_factory=dict)  # ... on every attempt
    delay: float = 5.0  # how long a "timeout" answer takes
    seed: int = 7


class Simulator:
    """The judge behind the server; also usable without HTTP as a backend in fast tests."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.by_text, self.truth = load_truth()
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.log: list[dict[str, Any]] = []
        self.auth_seen: set[str] = set()
        self.identity = {"backend": "openai_chat", "model": "sim-judge"}

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        """The Backend protocol, for tests that need no server."""
        from rlhfspec.runtime.annotation.judge.backends import Completion

        request = {"model": "sim-judge", "messages": messages}
        content = self.judge(request)
        return Completion(
            content, sum(len(m["content"].split()) for m in messages), len(content.split())
        )

    def _rng(self, *parts: str) -> random.Random:
        return random.Random("\x1f".join([str(self.behaviour.seed), *parts]))

    def _fault(self, key: str, attempt: int) -> str | None:
        plan = self.behaviour.faults.get(key)
        if plan is not None:
            return plan[attempt] if attempt < len(plan) else None
        for fault, rate in sorted(self.behaviour.persistent_rate.items()):
            if self._rng("persistent", fault, key).random() < rate:
                return fault
        for fault, rate in sorted(self.behaviour.fault_rate.items()):
            if attempt == 0 and self._rng("fault", fault, key).random() < rate:
                return fault
        return None

    def answer(self, path: str, body: bytes) -> tuple[int, str, dict[str, str]]:
        if path != "/v1/chat/completions":
            return 404, json.dumps({"error": "not found"}), {}
        key = hashlib.sha256(body).hexdigest()
        with self.lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
        request = json.loads(body)
        fault = self._fault(key, attempt)
        messages_sha = sha256_text(canonical_json(request["messages"]))
        with self.lock:
            self.log.append(
                {"key": key, "messages": messages_sha, "attempt": attempt, "fault": fault}
            )
        if fault == "429":
            return 429, json.dumps({"error": "rate limited"}), {"Retry-After": "0"}
        if fault == "500":
            return 500, json.dumps({"error": "boom"}), {}
        if fault == "garbage":
            return 200, "<html>oops</html>", {}
        content = self.judge(request) if fault != "malformed" else "Sure! I think the answer is A."
        words = sum(len(m["content"].split()) for m in request["messages"])
        payload = {
            "id": "sim-" + key[:8],
            "object": "chat.completion",
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": words, "completion_tokens": len(content.split()), "total_tokens": words + len(content.split())},
        }  # fmt: skip
        return (-1 if fault == "timeout" else 200), json.dumps(payload), {}

    def judge(self, request: dict[str, Any]) -> str:
        match = BLOCK.search(request["messages"][-1]["content"])
        assert match, "the user message lost its response blocks"
        ids = [self.by_text[match.group(1)], self.by_text[match.group(2)]]
        a, b = self.truth[ids[0]], self.truth[ids[1]]
        pair = "|".join(sorted(ids))
        b_ = self.behaviour
        truth = preferred(a, b)
        choice = truth
        rng = self._rng("pair", pair)
        if rng.random() >= b_.accuracy:
            # a wrong label, chosen per pair in canonical terms so both orders agree
            canon = {"A": ids[0], "B": ids[1], "tie": "tie"}[truth]
            options = [o for o in (*sorted(ids), "tie") if o != canon]
            wrong = rng.choice(options)
            choice = "tie" if wrong == "tie" else ("A" if wrong == ids[0] else "B")
        if (
            b_.length_bias
            and self._rng("length", pair).random() < b_.length_bias
            and a["word_count"] != b["word_count"]
        ):
            choice = "A" if a["word_count"] > b["word_count"] else "B"
        if b_.position_bias and self._rng("position", pair, ids[0]).random() < b_.position_bias:
            choice = "A"
        dims = {d: dim_choice(a, b, d) for d in DIMENSIONS}
        confidence = "high" if choice == truth else "medium"
        return json.dumps(
            {"choice": choice, "dimensions": dims, "confidence": confidence, "reason": "simulated"}
        )


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the judge's concurrency plus retries, without refused connections
    daemon_threads = True


class JudgeServer:
    """`with JudgeServer(Behaviour(...)) as server:`; `server.base_url` ends in /v1."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.sim = Simulator(behaviour)
        sim = self.sim

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                sim.auth_seen.add(self.headers.get("Authorization", ""))
                status, payload, headers = sim.answer(self.path, body)
                if status == -1:  # timeout: answer too late
                    time.sleep(sim.behaviour.delay)
                    status = 200
                data = payload.encode("utf-8")
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
