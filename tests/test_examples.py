"""The runnable examples and the documentation: they run, they build, they agree with the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

from drifttrio import CloseCode, Config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"

#: What each example must print (substrings of its standard output).
EXPECTED: dict[str, list[str]] = {
    "conditional_push.py": [
        "refused: conflict: key 'score' changed (last seq 1, expected 0)",
        "counter after 20 concurrent increments: SeqValue(value=20, seq=21)",
    ],
    "embed_server.py": [
        "listening on http://127.0.0.1:",
        'received: {"key":"chat","value":"hi","seq":1,"type":"push"}',
        "server stopped",
    ],
    "in_process_hub.py": [
        "stream size after second append: 2",
        "received: PushEvent(key='chat', value={'text': 'hello'}, seq=1)",
        "received: PushEvent(key='cursor', value={'x': 10, 'y': 20}, seq=3)",
        "get chat since 1: [SeqValue(value={'text': 'world'}, seq=2)]",
        "get cursor (relay keeps nothing): []",
        "after compact: [SeqValue(value={'reset': ['hello', 'world']}, seq=2)]",
        "keyed: Init(key='score', data=())",
        "keyed: PushEvent(key='score', value=3, seq=5)",
    ],
    "serve_in_nursery.py": [
        "serving on 127.0.0.1:",
        "'value': 'hello from the hub', 'seq': 1",
        "'nonce': 42",
        "server stopped",
    ],
    "mount_asgi.py": [
        "socket_url has the prefix: True",
        'browser subscribed: {"key":"news","data":[],"type":"init"}',
        'browser received: {"key":"news","value":"pushed by the application","seq":1,',
        "server stopped",
    ],
    "mock_clock.py": [
        "t=0s live rooms: 1",
        "t=59s live rooms: 1",
        "t=61s live rooms: 0",
        "reloaded: [SeqValue(value='kept in storage', seq=1)]",
        "t=7261s room exists: False",
    ],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


async def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``python ARGS`` with the checkout's sources first on the path."""
    return await trio.run_process(
        [sys.executable, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
        env=_env(),
    )


def test_every_example_is_tested() -> None:
    # client_*.py are tested in tests/test_client_examples.py.
    names = [p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("client_")]
    assert sorted(names) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs(name: str) -> None:
    with trio.fail_after(30):
        result = await _run(str(EXAMPLES / name))
    stdout = result.stdout.decode()
    assert result.returncode == 0, f"{name} failed:\n{stdout}\n{result.stderr.decode()}"
    for expected in EXPECTED[name]:
        assert expected in stdout, f"{expected!r} not in the output of {name}:\n{stdout}"


async def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    with trio.fail_after(60):
        result = await _run(
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        )
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "site" / "protocol" / "index.html").exists()


def test_embedding_guide_code_is_the_examples() -> None:
    """Every Python block of the embedding guide is an example file, verbatim."""
    page = (DOCS / "embedding.md").read_text()
    blocks = re.findall(r"^`examples/([\w.]+)`:\n\n```python\n(.*?)^```$", page, re.M | re.S)
    all_blocks = re.findall(r"^```python$", page, re.M)
    assert blocks, "no example blocks found"
    assert len(blocks) == len(all_blocks), "a python block is not labelled with its example"
    for name, code in blocks:
        assert code == (EXAMPLES / name).read_text(), f"docs/embedding.md is out of date: {name}"


def test_quickstart_lists_every_setting_with_its_default() -> None:
    page = (DOCS / "quickstart.md").read_text()
    # An empty default is shown as *(empty)*.
    documented = dict(
        re.findall(r"^\| `DRIFTTRIO_([A-Z_]+)` \| (?:`([^`]*)`|\*\(empty\)\*)", page, re.M)
    )
    fields = {field.name.upper(): field.default for field in attrs.fields(Config)}
    assert set(documented) == set(fields)
    for name, default in fields.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert documented[name] == shown, f"DRIFTTRIO_{name}: documented default is wrong"


def test_protocol_lists_every_close_code() -> None:
    page = (DOCS / "protocol.md").read_text()
    codes = {
        name: value
        for name, value in vars(CloseCode).items()
        if name.isupper() and isinstance(value, int)
    }
    for name, value in codes.items():
        assert f"| {value} | `{name}` |" in page, f"close code {value} {name} is not documented"
