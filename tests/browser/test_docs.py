"""The documentation site in headless Chromium: a wide table shows every column.

The site is built with ``mkdocs build --strict`` into a temporary folder and
served on 127.0.0.1 and a free port; ``docs_drive.js`` opens the pages at a
common laptop size and measures each table. A reader must see a table's last
column (the "meaning" of a setting, a limit, a close code) without scrolling
sideways: the table fits the box that holds it, and its last column ends
within the viewport. A screenshot of the environment-variables table is kept
in test-artifacts/docs-table.png.
"""

from __future__ import annotations

import mimetypes
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import trio

pytestmark = pytest.mark.browser

DocsDrive = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

REPO = Path(__file__).resolve().parents[2]

#: A common laptop viewport.
WIDTH, HEIGHT = 1280, 800


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation, built strictly from this checkout (its resolved path)."""
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr}"
    return out.resolve()


@pytest.fixture(scope="module")
def pages(site: Path) -> list[str]:
    """Every page of the site (the home page is ``""``), quickstart first: it has
    the widest table."""
    found = [str(index.parent.relative_to(site)) + "/" for index in site.glob("**/index.html")]
    names = [name.removeprefix("./") for name in found]
    return sorted(names, key=lambda name: (name != "quickstart/", name))


def _response(root: Path, target: str) -> tuple[str, str, bytes]:
    """Status, content type and body for a GET of ``target`` under ``root``."""
    path = (root / unquote(urlsplit(target).path).lstrip("/")).resolve()
    if path.is_dir():
        path = path / "index.html"
    if path.is_file() and path.is_relative_to(root):
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return "200 OK", ctype, path.read_bytes()
    return "404 Not Found", "text/plain", b"not found"


async def _serve_file(root: Path, stream: trio.SocketStream) -> None:
    """Answer one GET on ``stream`` with a file under ``root`` (``index.html``
    for a folder) and close it."""
    try:
        with trio.move_on_after(10):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk or len(data) > 65536:
                    return
                data += chunk
            target = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[1]
            status, ctype, body = _response(root, target)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send_all(head.encode("latin-1") + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, IndexError):
        pass
    finally:
        await stream.aclose()


@pytest.fixture
async def site_url(site: Path) -> AsyncIterator[str]:
    """Base URL of the built site on 127.0.0.1 and a free port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_file(site, stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield f"http://127.0.0.1:{port}/"
        nursery.cancel_scope.cancel()


async def test_wide_tables_show_their_last_column(
    docs_drive: DocsDrive, pages: list[str], site_url: str, artifacts: Path
) -> None:
    shot = artifacts / "docs-table.png"
    assert len(pages) >= 10, pages
    result = await docs_drive(
        {
            "site": site_url,
            "width": WIDTH,
            "height": HEIGHT,
            "pages": pages,
            "screenshot": str(shot),
            "screenshot_heading": "Environment variables",
        },
    )
    print(f"screenshot of the environment-variables table: {shot}")
    # The theme loads highlight.js from a CDN, which the driver blocks (no internet).
    assert [e for e in result["errors"] if "hljs" not in e] == []
    quickstart = result["pages"]["quickstart/"]
    env = [t for t in quickstart["tables"] if t["heading"] == "Environment variables"]
    assert len(env) == 1, [t["heading"] for t in quickstart["tables"]]
    assert env[0]["columns"] == ["variable", "default", "meaning"]
    assert env[0]["rows"] > 40
    hidden: list[dict[str, Any]] = []
    for name, page in result["pages"].items():
        # The page itself does not scroll sideways either.
        assert page["page_scroll_width"] <= page["viewport_width"], name
        for table in page["tables"]:
            fits = table["holder_scroll_width"] <= table["holder_client_width"]
            visible = table["last_column_right"] <= page["viewport_width"]
            if not (fits and visible):
                hidden.append({"page": name, **table})
    assert hidden == [], "tables whose last column needs a sideways scroll"
    assert shot.stat().st_size > 10_000
