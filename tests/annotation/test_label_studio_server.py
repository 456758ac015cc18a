"""A real Label Studio server on 127.0.0.1: our config and tasks in, annotations shaped as
its frontend sends them, its JSON export read back through the unblinding key.

Needs the `label-studio` package (a Django app with its own pinned dependencies), installed
in a separate virtual environment so it cannot change ours: `.ci/run` makes `.venv-ls`;
elsewhere set RLHFSPEC_LABEL_STUDIO to its `label-studio` executable.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.runtime.annotation.aggregate import load_records
from rlhfspec.runtime.annotation.tasks import generate_tasks
from rlhfspec.runtime.project import load_project
from tests.annotation import stock_data
from tests.annotation.test_loop import EXAMPLE, PLACEHOLDER, project_copy
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
EXECUTABLE = Path(
    os.environ.get("RLHFSPEC_LABEL_STUDIO", ROOT / ".venv-ls" / "bin" / "label-studio")
)
EMAIL, PASSWORD = "lead@example.com", "round-trip-pass-1"


class Session:
    """Label Studio's own login (1.23 disables legacy API tokens by default): a session
    cookie plus the CSRF token, as the browser frontend uses."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(base + "/user/login/").read()
        form = {"email": EMAIL, "password": PASSWORD, "csrfmiddlewaretoken": self.csrf}
        request = urllib.request.Request(
            base + "/user/login/",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": base + "/user/login/"},
        )
        self.opener.open(request).read()

    @property
    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "X-CSRFToken": self.csrf,
                "Referer": self.base + "/",
            },
        )
        with self.opener.open(request, timeout=60) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not EXECUTABLE.exists():
        pytest.skip(f"no label-studio at {EXECUTABLE} (.ci/run installs it into .venv-ls)")
    data = tmp_path_factory.mktemp("ls-data")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        LABEL_STUDIO_USERNAME=EMAIL,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        DJANGO_DB="sqlite",
    )
    log = (data / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(EXECUTABLE),
            "start",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if urllib.request.urlopen(base + "/health", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "Label Studio did not start:\n" + (data / "server.log").read_text()[-3000:]
                )
            time.sleep(2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def frontend_result(
    config_dims: list[str], choice: str, dims: dict[str, str], note: str
) -> list[dict[str, Any]]:
    """Results as Label Studio's frontend posts them: one region per control."""

    def region(name: str, kind: str, value: dict[str, Any]) -> dict[str, Any]:
        rid = f"{name[:6]}{random.Random(name + choice).randrange(10**6):06d}"
        return {
            "id": rid,
            "from_name": name,
            "to_name": "prompt",
            "type": kind,
            "origin": "manual",
            "value": value,
        }

    out = [region("choice", "choices", {"choices": [choice]})]
    out += [region(f"dim_{d}", "choices", {"choices": [dims[d]]}) for d in config_dims]
    out.append(region("justification", "textarea", {"text": [note]}))
    return out


def test_round_trip_through_a_real_server(server: str, tmp_path: Path) -> None:
    spec = project_copy(tmp_path, PLACEHOLDER)
    out = tmp_path / "support-assistant" / "ls"
    generate_tasks(
        load_project(spec), EXAMPLE / "data" / "responses.jsonl", out,
        annotators=["ann-01", "ann-02", "ann-03"], limit=10, batch="ls-1",
    )  # fmt: skip
    session = Session(server)
    version = session.api("GET", "/api/version")
    config = (out / "label_studio" / "config.xml").read_text(encoding="utf-8")
    project = session.api(
        "POST", "/api/projects", {"title": "rlhfspec round trip", "label_config": config}
    )
    imported = json.loads((out / "label_studio" / "tasks.json").read_text(encoding="utf-8"))
    report = session.api("POST", f"/api/projects/{project['id']}/import", imported)
    assert report["task_count"] == len(imported)
    listed = session.api("GET", f"/api/tasks?project={project['id']}&page_size=1000")
    tasks = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(tasks) == len(imported)

    dims = ["accuracy", "helpfulness", "tone", "conciseness"]
    rng = random.Random(7)
    submitted: dict[str, tuple[str, dict[str, str]]] = {}
    for task in tasks:
        choice = rng.choice(["A", "B", "tie"])
        per_dim = {d: rng.choice(["A", "B", "tie"]) for d in dims}
        body = {
            "result": frontend_result(dims, choice, per_dim, "B gives the steps"),
            "lead_time": 42.5,
        }
        session.api("POST", f"/api/tasks/{task['id']}/annotations?project={project['id']}", body)
        submitted[task["data"]["task_id"]] = (choice, per_dim)
    exported = session.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    (out / "export.json").write_text(json.dumps(exported), encoding="utf-8")

    batch = (
        "  batches:\n    - {id: ls-1, path: support-assistant/ls/export.json, format: label_studio, "
        "criteria_version: 1.3.0, key: support-assistant/ls/unblinding_key.json}\n"
    )
    spec.write_text(spec.read_text(encoding="utf-8").replace(PLACEHOLDER, batch), encoding="utf-8")
    records = load_records(load_project(spec))
    key = json.loads((out / "unblinding_key.json").read_text(encoding="utf-8"))["tasks"]
    assert len(records) == len(submitted)
    by_item = {(r["item_id"], r["annotator"]): r for r in records}
    for task_id, (choice, per_dim) in submitted.items():
        real = key[task_id]
        # the server's user is nobody's in the spec: each vote falls back to the planned annotator
        record = by_item[(real["item_id"], real["annotator"])]
        assert (record["response_a"], record["response_b"]) == (
            real["response_a"],
            real["response_b"],
        )
        assert record["choice"] == choice and record["dimension_choices"] == per_dim
        assert record["gold"] == real["gold"] and record["justification"] == "B gives the steps"
    print(f"Label Studio {version.get('release') or version}: {len(imported)} tasks imported, "
          f"{len(records)} annotations exported and read back, votes equal")  # fmt: skip


def stock_project(
    session: Session, title: str, tasks: list[dict[str, Any]]
) -> tuple[int, list[dict[str, Any]]]:
    """A project made from the stock template the server ships under `title`, with `tasks`."""
    templates = session.api("GET", "/api/templates/")["templates"]
    config = next(t["config"] for t in templates if t["title"] == title)
    project = session.api("POST", "/api/projects", {"title": title, "label_config": config})
    report = session.api("POST", f"/api/projects/{project['id']}/import", tasks)
    assert report["task_count"] == len(tasks)
    listed = session.api("GET", f"/api/tasks?project={project['id']}&page_size=1000")
    return project["id"], listed["tasks"] if isinstance(listed, dict) else listed


def test_stock_template_exports_read_back_by_text(server: str, tmp_path: Path) -> None:
    """Projects from the stock "Human Preference collection for RLHF" and "Pairwise
    classification" templates, tasks with the example's texts, Pairwise clicks as the frontend
    posts them; the JSON exports read back as votes on the right prompt and responses."""
    spec = project_copy(tmp_path, PLACEHOLDER)
    session = Session(server)
    me = session.api("GET", "/api/current-user/whoami")["id"]
    by_flat = {" ".join(text.split()): i for text, i in stock_data.response_ids().items()}
    rng = random.Random(11)
    submitted: dict[tuple[str, str], str] = {}  # (answer ids) -> choice
    exports = {}
    for title, tasks, name, sides in (
        (stock_data.RLHF_TITLE, stock_data.rlhf_tasks(), "comparison", ("answer1", "answer2")),
        (stock_data.PAIRWISE_TITLE, stock_data.pairwise_tasks(), "pw", ("pairText1", "pairText2")),
    ):
        project, listed = stock_project(session, title, tasks)
        for n, task in enumerate(listed):
            selected = rng.choice(["left", "right"])
            body = {"result": stock_data.pairwise_result(name, selected, n), "lead_time": 30.5}
            session.api("POST", f"/api/tasks/{task['id']}/annotations?project={project}", body)
            first, second = (by_flat[" ".join(task["data"][s].split())] for s in sides)
            submitted[(first, second)] = "A" if selected == "left" else "B"
        exported = session.api("GET", f"/api/projects/{project}/export?exportType=JSON")
        assert exported[0]["annotations"][0]["result"][0]["type"] == "pairwise"
        exports[title] = exported
    out = tmp_path / "support-assistant" / "stock"
    out.mkdir()
    (out / "rlhf.json").write_text(json.dumps(exports[stock_data.RLHF_TITLE]), encoding="utf-8")
    (out / "pairwise.json").write_text(
        json.dumps(exports[stock_data.PAIRWISE_TITLE]), encoding="utf-8"
    )
    if os.environ.get("RLHFSPEC_RECORD_STOCK"):  # refresh the fast tests' recorded exports
        for name in ("rlhf.json", "pairwise.json"):
            (Path(__file__).parent / "fixtures" / f"ls_stock_{name}").write_text(
                json.dumps(json.loads((out / name).read_text()), indent=1) + "\n"
            )
    batches = (
        "  annotator_ids: {'" + str(me) + "': ann-07}\n"
        "  batches:\n"
        "    - {id: rlhf-1, path: support-assistant/stock/rlhf.json, "
        "format: label_studio_pairwise, criteria_version: 1.2.0}\n"
        "    - {id: pw-1, path: support-assistant/stock/pairwise.json, "
        "format: label_studio_pairwise, criteria_version: 1.2.0, "
        "fields: {prompt: null, response_a: pairText1, response_b: pairText2}}\n"
    )
    spec.write_text(
        spec.read_text(encoding="utf-8").replace(PLACEHOLDER, batches), encoding="utf-8"
    )
    records = load_records(load_project(spec))
    got = {(r["response_a"], r["response_b"]): r["choice"] for r in records}
    assert got == submitted
    assert {r["annotator"] for r in records} == {"ann-07"}
    gold = {
        frozenset((g["response_a"], g["response_b"])): g["item_id"]
        for g in stock_data.rows(stock_data.EXAMPLE / "data" / "gold.jsonl")
    }
    for record in records:  # a pair the gold file has is that gold item (the last task's)
        pair = frozenset((record["response_a"], record["response_b"]))
        assert (record["gold"], record["item_id"] if record["gold"] else None) == (
            pair in gold,
            gold.get(pair),
        )
    assert "gold-001" in {r["item_id"] for r in records}
    print(f"Label Studio stock templates: {len(submitted)} tasks imported and annotated, "
          f"{len(records)} votes exported and read back by text, votes equal")  # fmt: skip
