"""The client examples run, and docs/client.md shows them verbatim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

EXPECTED: dict[str, list[str]] = {
    "client_tour.py": [
        "chat 1: hello",
        "chat 2: world",
        "chat 3: live",
        "get since 1: [(2, 'world')]",
        "ping answered: True",
        "events: ['Connected']",
        "stream size: 3",
        "last value: (4, 'over http')",
    ],
    "client_helpers.py": [
        "bob sees the title: Meeting notes",
        "bob's counter: {'total': 10}",
        "compacted: True",
        "alice sees: {'bob': {'cursor': [3, 4]}}",
    ],
}


def test_every_client_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("client_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_client_example_runs(name: str) -> None:
    with trio.fail_after(30):
        result: subprocess.CompletedProcess[bytes] = await trio.run_process(
            [sys.executable, str(EXAMPLES / name)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )
    stdout = result.stdout.decode()
    assert result.returncode == 0, f"{name} failed:\n{stdout}\n{result.stderr.decode()}"
    for expected in EXPECTED[name]:
        assert expected in stdout, f"{expected!r} not in the output of {name}:\n{stdout}"


def test_client_guide_code_is_the_examples() -> None:
    page = (ROOT / "docs" / "client.md").read_text()
    blocks = re.findall(r"^`examples/([\w.]+)`:\n\n```python\n(.*?)^```$", page, re.M | re.S)
    assert sorted(name for name, _ in blocks) == sorted(EXPECTED)
    assert len(blocks) == len(re.findall(r"^```python$", page, re.M))
    for name, code in blocks:
        assert code == (EXAMPLES / name).read_text(), f"docs/client.md is out of date: {name}"
