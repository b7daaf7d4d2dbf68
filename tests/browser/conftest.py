"""Fixtures for the browser test: a drifttrio server, the app served over HTTP, Chromium.

The app (``index.html`` + ``app.js``, which imports the published ``driftdb``
npm client) is bundled with esbuild into a temporary folder once per session
and served by a small HTTP server on its own port, so the page's origin differs
from the server's as in a real deployment. ``drive.js`` runs the pages in
headless Chromium through playwright-core. ``bash .ci/run`` installs Chromium
and runs ``npm ci`` here; without them these tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from drifttrio import Config, RunningServer, open_server

BROWSER_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = BROWSER_DIR.parent.parent / "test-artifacts"

#: Bound on one drive.js run (the script also stops itself after 30 s).
DRIVE_TIMEOUT = 60.0

#: What the static server serves: file name -> content type.
APP_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "react.html": "text/html; charset=utf-8",
    "react.js": "text/javascript; charset=utf-8",
}

Drive = Callable[[RunningServer, list[dict[str, Any]]], Awaitable[dict[str, Any]]]
ReactDrive = Callable[[RunningServer, dict[str, Any]], Awaitable[dict[str, Any]]]
DocsDrive = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable (``CHROMIUM`` overrides), or skip when there is none."""
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).is_file():
        pytest.skip(
            "chromium is not installed (bash .ci/run installs it: apt-get install chromium)"
        )
    return exe


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, or skip when Node or the npm packages are missing."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed (bash .ci/run needs Node 20 for these tests)")
    for package in ("driftdb", "driftdb-react", "react", "react-dom", "esbuild", "playwright-core"):
        if not (BROWSER_DIR / "node_modules" / package).is_dir():
            pytest.skip(
                f"tests/browser/node_modules/{package} is missing: "
                "run `npm ci --prefix tests/browser`"
            )
    return exe


@pytest.fixture(scope="session")
def app_files(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The apps as served to the browser: index.html with the esbuild bundle of
    app.js, and react.html with the production bundle of react/app.jsx."""
    out = tmp_path_factory.mktemp("browser-app")
    proc = subprocess.run(
        [node, str(BROWSER_DIR / "build.js"), str(out)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"esbuild failed:\n{proc.stderr}"
    files = {name: (out / name).read_bytes() for name in APP_FILES}
    # The bundles carry the npm client: its DbConnection and CBOR library.
    assert b"DbConnection" in files["app.js"]
    assert b"DbConnection" in files["react.js"]
    return files


async def _serve_file(files: dict[str, bytes], stream: trio.SocketStream) -> None:
    """Answer one HTTP/1.1 request on ``stream`` from ``files`` and close it."""
    try:
        with trio.move_on_after(10):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk or len(data) > 65536:
                    return
                data += chunk
            method, target, _ = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            name = urlsplit(target).path.lstrip("/") or "index.html"
            if method == "GET" and name in files:
                status, ctype, body = "200 OK", APP_FILES[name], files[name]
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            await stream.send_all(head.encode("latin-1") + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
        pass
    finally:
        await stream.aclose()


@pytest.fixture
async def app_url(app_files: dict[str, bytes]) -> AsyncIterator[str]:
    """Base URL of a static HTTP server for the app, on 127.0.0.1 and a free port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_file(app_files, stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """A drifttrio server on 127.0.0.1 and a free port, default configuration.

    Its own transport by default; parametrize indirectly with ``"hypercorn"``
    for the other one.
    """
    transport = getattr(request, "param", "drifttrio")
    async with open_server(Config(), transport=transport) as running:
        yield running


async def run_driver(node: str, script: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run a driver script with ``config``; return the one JSON line it printed.

    A non-zero exit, or anything but one JSON line on stdout, fails the test
    with the script's stderr (which shows what every page displayed).
    """
    with trio.fail_after(DRIVE_TIMEOUT):
        proc = await trio.run_process(
            [node, str(BROWSER_DIR / script), json.dumps(config)],
            cwd=BROWSER_DIR,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stdout = proc.stdout.decode(errors="replace")
    stderr = proc.stderr.decode(errors="replace")
    if os.environ.get("DRIVE_TRACE"):  # DRIVE_TRACE=1 pytest -s: show the trace
        print(stderr)
    assert proc.returncode == 0, (
        f"{script} exited with {proc.returncode}\n"
        f"--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
    )
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"{script} printed {len(lines)} lines:\n{stdout}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


@pytest.fixture
def drive(node: str, chromium: str, app_url: str) -> Drive:
    """Run drive.js with these steps against ``server``; return the JSON it printed."""

    async def run(server: RunningServer, steps: list[dict[str, Any]]) -> dict[str, Any]:
        config = {"app": app_url, "server": server.url, "chromium": chromium, "steps": steps}
        return await run_driver(node, "drive.js", config)

    return run


@pytest.fixture
def react_drive(node: str, chromium: str, app_url: str) -> ReactDrive:
    """Run react_drive.js (the React app's scenario) against ``server`` with these
    settings; return the JSON it printed."""

    async def run(server: RunningServer, settings: dict[str, Any]) -> dict[str, Any]:
        config = {"app": app_url, "server": server.url, "chromium": chromium, **settings}
        return await run_driver(node, "react_drive.js", config)

    return run


@pytest.fixture
def docs_drive(node: str, chromium: str) -> DocsDrive:
    """Run docs_drive.js (measure a built site's tables) with these settings."""

    async def run(settings: dict[str, Any]) -> dict[str, Any]:
        return await run_driver(node, "docs_drive.js", {"chromium": chromium, **settings})

    return run


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """test-artifacts/ at the repository root (gitignored), for screenshots."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR
