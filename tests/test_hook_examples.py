"""The server-side logic examples (examples/turn_game, examples/moderated_chat), run
as their READMEs say: a real ``drifttrio serve --hooks`` process and the published
npm client under Node."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from _procs import child_env, drifttrio_command, start_child

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tests" / "interop" / "node_modules"

pytestmark = pytest.mark.interop


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "driftdb").is_dir():
        pytest.skip("needs node and tests/interop/node_modules (bash .ci/run installs them)")
    return node


async def _run_node(node: str, script: Path, *args: str) -> dict[str, object]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [node, str(script), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def test_turn_game_refuses_illegal_moves_for_the_npm_client() -> None:
    node = _node()
    folder = ROOT / "examples" / "turn_game"
    argv = [*drifttrio_command(), "serve", "--store", "memory", "--port", "0"]
    async with trio.open_nursery() as nursery:
        server = await start_child(nursery, [*argv, "--hooks", "game:TicTacToe"], folder)
        try:
            url = (await server.wait_for_line(r"listening on (http://127\.0\.0\.1:\d+)")).group(1)
            result = await _run_node(node, folder / "play.js", url)
        finally:
            server.process.terminate()
        await server.process.wait()
    game = [
        {"cell": 4, "player": "x"},
        {"cell": 0, "player": "o"},
        {"cell": 2, "player": "x"},
        {"cell": 8, "player": "o"},
        {"cell": 6, "player": "x"},
    ]
    assert result["seen"] == {"x": game, "o": game, "spectator": game}
    assert result["refused"] == {
        "x": ["not your turn: o plays", "not your turn: o plays"],
        "o": ["cell 4 is taken", "the game is over"],
        "spectator": ["push refused: not allowed to write key 'moves'"],
    }
    assert "Traceback" not in server.log


async def test_moderated_chat_runs_on_its_webhook_backend() -> None:
    node = _node()
    folder = ROOT / "examples" / "moderated_chat"
    secret = "a-shared-secret-for-this-test-only"
    async with trio.open_nursery() as nursery:
        backend = await trio.lowlevel.open_process(
            [sys.executable, "-u", str(folder / "backend.py"), "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env={**child_env(), "WEBHOOK_SECRET": secret},
        )
        try:
            assert backend.stdout is not None
            with trio.fail_after(30):
                first = await backend.stdout.receive_some(4096)
            backend_url = re.search(rb"http://127\.0\.0\.1:\d+", first)
            assert backend_url is not None, first
            env = {
                "DRIFTTRIO_WEBHOOK_URL": backend_url.group(0).decode(),
                "DRIFTTRIO_WEBHOOK_SECRET": secret,
                "DRIFTTRIO_WEBHOOK_HOOKS": "authorize,push",
            }
            argv = [*drifttrio_command(), "serve", "--store", "memory", "--port", "0"]
            server = await start_child(nursery, argv, ROOT, env)
            try:
                pattern = r"listening on (http://127\.0\.0\.1:\d+)"
                url = (await server.wait_for_line(pattern)).group(1)
                result = await _run_node(node, folder / "chat.js", url)
                # The README's HTTP session: no name, 401; with a name, stamped.
                http_url = f"{url}/room/{result['room']}/send"
                async with httpx.AsyncClient() as http:
                    anonymous = await http.post(http_url, json={"type": "get", "key": "chat"})
                    got = await http.post(
                        f"{http_url}?name=carol", json={"type": "get", "key": "chat", "seq": 0}
                    )
            finally:
                server.process.terminate()
            await server.process.wait()
        finally:
            backend.terminate()
            await backend.wait()
    stamped = [{"text": "hi all", "from": "alice"}, {"text": "bye", "from": "alice"}]
    assert result["bob"] == stamped
    assert result["alice"] == stamped
    assert result["refused"] == ["message refused: mind your language"]
    assert anonymous.status_code == 401
    assert [e["value"] for e in got.json()["data"]] == stamped
    assert "Traceback" not in server.log
