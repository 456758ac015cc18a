"""The handoff package's HTML in a real browser: headless Chromium, no network, no console errors.

Escaping is checked on the text elsewhere; this checks what a reader would see: the page loads
without a console message (no script runs, no Content-Security-Policy violation, which is
what a blocked network load produces), no network request is attempted, and the screenshot is
not blank. The detectors are proved first on pages built to trip them, so a passing test means
the pages are clean, not that the detector is blind.

Chromium logs console messages to stderr as `...:INFO:CONSOLE:<line>] "message", source: ...`
(older versions `INFO:CONSOLE(<line>)`) with `--enable-logging=stderr`, and records every URL
request in the NetLog (`--log-net-log`); requests a page makes carry its `file://` network
isolation key, while Chromium's own background requests carry none. `--host-resolver-rules`
keeps any request from leaving the machine even if one were made.

Debian's `chromium` package provides the browser (`.ci/run` installs it); without it these
tests are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from rlhfspec.runtime.handoff.package import build_package
from tests.handoff.test_handoff import REAL_RUN, SPECS, make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)",
)
CONSOLE = re.compile(r"CONSOLE[(:]\d+|Uncaught")
WINDOW = (1200, 1600)
PAGES = (
    "index.html",
    "annotation_qc/report.html",
    "criteria/criteria.html",
    "playbook/playbook.html",
    "sampling/sampling.html",
)


# ---------------------------------------------------------------------------------------------
# Rendering and the detectors


@dataclass
class Rendered:
    console: list[str]
    requests: list[str]
    image: npt.NDArray[np.uint8]
    stderr: str

    @property
    def ink(self) -> float:
        """Share of pixels that differ from the top-left (background) pixel."""
        return float((self.image != self.image[0, 0]).any(axis=2).mean())


def render(page: Path, work: Path) -> Rendered:
    """Load `page` in headless Chromium; return its console lines, network requests, pixels."""
    assert CHROMIUM is not None
    work.mkdir(parents=True, exist_ok=True)
    png = work / "screenshot.png"
    netlog = work / "netlog.json"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={work / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--log-net-log={netlog}",
        f"--screenshot={png}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert png.is_file(), f"no screenshot (exit {done.returncode}):\n{done.stderr[-3000:]}"
    console = [line for line in done.stderr.splitlines() if CONSOLE.search(line)]
    return Rendered(console, page_requests(netlog), decode_png(png.read_bytes()), done.stderr)


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for (not Chromium's own background requests)."""
    text = netlog.read_text(encoding="utf-8")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short: close the event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log.get("events", []):
        params: dict[str, Any] = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        from_page = str(params.get("network_isolation_key", "")).startswith("file://")
        if from_page and not str(params["url"]).startswith(("file:", "data:", "about:")):
            urls.append(str(params["url"]))
    return urls


def decode_png(data: bytes) -> npt.NDArray[np.uint8]:
    """Pixels of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes), no PIL needed."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    width = height = channels = 0
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            chunks.append(body)
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], np.frombuffer(raw, np.uint8, stride, start + 1)
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: a running sum per channel
            summed = np.cumsum(line.reshape(-1, channels).astype(np.int64), axis=0) % 256
            cur = summed.astype(np.uint8).reshape(-1)
        elif kind == 2:  # Up
            cur = line + prev
        else:  # Average or Paeth: sequential within the line
            row, above, filtered = bytearray(stride), prev.tobytes(), line.tobytes()
            for i in range(stride):
                a = row[i - channels] if i >= channels else 0
                b = above[i]
                c = above[i - channels] if i >= channels else 0
                if kind == 3:
                    predictor = (a + b) >> 1
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (filtered[i] + predictor) & 0xFF
            cur = np.frombuffer(bytes(row), dtype=np.uint8)
        out[y] = cur
        prev = cur
    return out.reshape(height, width, channels)


def test_the_detectors_catch_errors_requests_and_blank_pages(tmp_path: Path) -> None:
    noisy = tmp_path / "noisy.html"
    noisy.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>x</title>"
        "<link rel='stylesheet' href='http://198.51.100.7/style.css'></head><body><p>hello</p>"
        "<img src='https://example.invalid/pixel.png'>"
        "<script>console.error('deliberate'); notDefinedAnywhere();</script></body></html>"
    )
    result = render(noisy, tmp_path / "noisy")
    assert any("deliberate" in line for line in result.console), result.stderr[-2000:]
    assert any("Uncaught ReferenceError" in line for line in result.console)
    assert sorted(result.requests) == [
        "http://198.51.100.7/style.css",
        "https://example.invalid/pixel.png",
    ]
    # the same loads under the package's Content-Security-Policy: blocked, and reported
    csp = tmp_path / "csp.html"
    csp.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
        "<title>x</title></head><body><img src='https://example.invalid/pixel.png'>"
        "<script>alert(1)</script></body></html>"
    )
    blocked = render(csp, tmp_path / "csp")
    assert blocked.requests == []
    assert any("Content Security Policy" in line for line in blocked.console)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>x</title></head><body></body></html>")
    assert render(blank, tmp_path / "blank").ink == 0.0


# ---------------------------------------------------------------------------------------------
# The package's pages


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package from a synthetic run whose samples and QC justifications are hostile."""
    root = tmp_path_factory.mktemp("browser")
    run = make_run(root, hostile=True)
    return build_package(run, root / "package").path


@pytest.mark.parametrize("page", PAGES)
def test_package_page_renders_cleanly(package: Path, tmp_path: Path, page: str) -> None:
    result = render(package / page, tmp_path)
    assert result.console == [], "\n".join(result.console)
    assert result.requests == []
    assert result.image.shape[:2] == (WINDOW[1], WINDOW[0])
    assert result.ink > 0.01, f"{page}: the screenshot is (nearly) blank"


def test_real_run_index_renders_cleanly(tmp_path: Path) -> None:
    if not (REAL_RUN / "selection.json").is_file():
        pytest.skip(f"no finished run under {REAL_RUN}")
    try:
        built = build_package(REAL_RUN, tmp_path / "package", spec_dir=SPECS)
    except Exception as exc:  # the run may predate the current example data
        pytest.skip(f"{REAL_RUN} cannot be packaged here: {exc}")
    for page in ("index.html", "annotation_qc/report.html"):
        result = render(built.path / page, tmp_path / page.replace("/", "-"))
        assert result.console == [] and result.requests == [], result.console
        assert result.ink > 0.01
