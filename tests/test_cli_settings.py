"""Settings that are checked, and a ``drifttrio serve`` start that explains itself.

- every numeric setting is finite and within a range (nan, inf, negatives, values
  that overflow what uses them are refused), from a variable, a flag or Python;
- every mistake on the command line is one line, ``drifttrio: ...``, exit 2 when
  the command is wrong, 1 when what it needs is busy (a port in use), and nothing
  is created before the listener is bound;
- host, port and log level are settings (``DRIFTTRIO_PORT`` ...), the flag wins;
- an unknown ``DRIFTTRIO_*`` variable gets one warning naming the closest setting;
- the start-up line shows the store's absolute path and never a password.

Real ``python -m drifttrio`` processes in ``tmp_path``; ports taken by sockets the
test binds on 127.0.0.1:0; no sleeping to wait for anything.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

import drifttrio
from _procs import TIMEOUT, child_env, start_child
from drifttrio import Config, ConfigError, open_server
from drifttrio.cli import _parser
from drifttrio.runtime.config import (
    MAX_COUNT,
    MAX_RATE,
    MAX_SECONDS,
    MAX_VALUE_DEPTH,
    MIN_RATE,
    _Number,
    parse_setting,
    warn_unknown_variables,
)
from drifttrio.server import shown_store

#: The children import the drifttrio these tests import, wherever they run.
ENV = {"PYTHONPATH": str(Path(drifttrio.__file__).resolve().parents[1])}
COMMAND = [sys.executable, "-m", "drifttrio"]
NUMERIC = [
    field.name
    for field in attrs.fields(Config)
    if isinstance(field.default, int | float) and not isinstance(field.default, bool)
]


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m drifttrio ARGS`` in ``cwd`` to completion: status, stdout, stderr."""
    done = subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env={**child_env(), **ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@contextmanager
def taken_port() -> Iterator[int]:
    """A port some other program listens on (127.0.0.1)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


# -- every numeric setting has a range ----------------------------------------------------------


def _rule(name: str) -> _Number:
    rule = attrs.fields_dict(Config)[name].validator
    assert isinstance(rule, _Number), f"{name} has no range"
    return rule


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_setting_has_a_finite_range_its_default_is_in(name: str) -> None:
    rule = _rule(name)
    assert math.isfinite(rule.low)
    assert math.isfinite(rule.high)
    assert rule.accepts(attrs.fields_dict(Config)[name].default)


def _bad_values(name: str) -> list[Any]:
    rule = _rule(name)
    bad: list[Any] = [float("nan"), float("inf"), float("-inf"), rule.high + 1, 10**30, True]
    bad.append(-1 if rule.low >= 0 else rule.low - 1)
    if rule.zero is None and rule.low > 0:
        bad.append(0)
    if rule.integer:
        bad.append(1.5)
    if not rule.integer and rule.low > 0:
        bad.append(rule.low / 2)  # a positive rate or duration too small to mean anything
    return bad


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name in NUMERIC for value in _bad_values(name)]
)
def test_an_out_of_range_number_is_refused_in_python_and_in_a_variable(
    name: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be "):
        Config(**{name: value})
    variable = f"DRIFTTRIO_{name.upper()}"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    with pytest.raises(ConfigError, match=f"^{variable} must be .*, got '{text}'$"):
        Config.from_env({variable: text})


@pytest.mark.parametrize("name", NUMERIC)
def test_both_ends_of_a_range_are_accepted(name: str) -> None:
    rule = _rule(name)
    for value in (rule.low, rule.high, *([0] if rule.zero else [])):
        value = int(value) if rule.integer else value
        # init_chunk_bytes may be at most half of outbox_bytes: the largest fit
        # together, the smallest outbox takes a 1-byte chunk.
        related = {"init_chunk_bytes": 1} if name == "outbox_bytes" else {}
        if name == "init_chunk_bytes":
            related = {"outbox_bytes": MAX_COUNT}
        assert getattr(Config(**{name: value}, **related), name) == value
        assert parse_setting(name, str(value)) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cors_origin", "https://a.example\r\nx-injected: 1"),
        ("cors_origin", "https://ä.example"),
        ("host", ""),
        ("host", "127.0.0.1\x00"),
        ("metrics_host", "a b"),
        ("log_level", "verbose"),
        ("log_format", "xml"),
        ("slow_client_policy", "ignore"),
        ("inspector", "no"),
        ("store", None),
    ],
)
def test_a_bad_text_choice_or_flag_is_refused(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be "):
        Config(**{name: value})


def test_variables_are_read_in_any_case_and_the_override_wins() -> None:
    env = {"DRIFTTRIO_LOG_LEVEL": "WARNING", "DRIFTTRIO_PORT": "9999", "DRIFTTRIO_HOST": "::1"}
    config = Config.from_env(env)
    assert (config.log_level, config.port, config.host) == ("warning", 9999, "::1")
    # A bad variable that an override (a flag) replaces is not read at all.
    assert Config.from_env({"DRIFTTRIO_PORT": "nan"}, port=0).port == 0


# -- a real server at the bounds --------------------------------------------------------------


async def test_a_server_at_the_upper_bounds_serves_and_stops() -> None:
    """Every count, size, rate and duration at its largest: nothing overflows."""
    largest: dict[str, Any] = {}
    for name in NUMERIC:
        rule = _rule(name)
        if name not in ("port", "metrics_port"):
            largest[name] = int(rule.high) if rule.integer else rule.high
    largest["init_chunk_bytes"] = MAX_COUNT // 2
    assert largest["room_token_ttl_seconds"] == MAX_SECONDS
    assert largest["rate_limit_per_second"] == MAX_RATE
    config = Config(**largest, room_token_secret="s", api_key="k")
    deep: Any = "bottom"
    for _ in range(MAX_VALUE_DEPTH - 1):
        deep = [deep]
    async with open_server(config) as server:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
            auth = {"Authorization": "Bearer k"}
            created = (await http.post("/new", headers=auth)).json()
            room, token = created["room"], created["socket_url"].split("token=")[1]
            issued = await http.post(f"/room/{room}/token", headers=auth, json={})
            assert issued.status_code == 200, issued.text
            send = f"/room/{room}/send?token={token}"
            push = {"type": "push", "key": "k", "value": deep, "action": {"type": "append"}}
            assert (await http.post(send, json=push)).status_code == 200
            with trio.fail_after(TIMEOUT):
                async with open_websocket_url(created["socket_url"]) as ws:
                    await ws.send_message(
                        orjson.dumps({"type": "get", "key": "k", "seq": 0}).decode()
                    )
                    init = orjson.loads(await ws.get_message())
        assert init["type"] == "init"
        assert init["data"][0]["value"] == deep


async def test_a_server_at_the_slowest_rates_refuses_with_a_finite_retry_after() -> None:
    config = Config(
        address_messages_per_second=MIN_RATE,
        address_messages_burst=1,
        new_rooms_per_minute=MIN_RATE,
    )
    async with (
        open_server(config) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False) as http,
    ):
        room = (await http.post("/new")).json()["room"]
        assert (await http.post("/new")).status_code == 429
        ping = {"type": "ping", "nonce": 1}
        assert (await http.post(f"/room/{room}/send", json=ping)).status_code == 200
        refused = await http.post(f"/room/{room}/send", json=ping)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) == math.ceil(1 / MIN_RATE)


# -- the command line: one line for each mistake ----------------------------------------------

BAD_SETTING = "drifttrio: {} must be {}, got '{}'"
SECONDS = "a number of seconds from 0.001 to 315360000 (ten years)"
PORT = "a whole number from 0 to 65535 (0: any free port)"


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["--port", "70000"],
            {},
            f"drifttrio: argument --port: must be {PORT}, got '70000'"
            " (see: drifttrio serve --help)",
        ),
        (
            ["--port", "-1"],
            {},
            f"drifttrio: argument --port: must be {PORT}, got '-1' (see: drifttrio serve --help)",
        ),
        (
            ["--log-level", "verbose"],
            {},
            "drifttrio: argument --log-level: invalid choice: 'verbose' (choose from 'debug',"
            " 'info', 'warning', 'error') (see: drifttrio serve --help)",
        ),
        (
            ["--shutdown-timeout", "inf"],
            {},
            f"drifttrio: argument --shutdown-timeout: must be {SECONDS}, got 'inf'"
            " (see: drifttrio serve --help)",
        ),
        (
            ["--metrics-port", "-2"],
            {},
            "drifttrio: argument --metrics-port: must be a whole number from -1 to 65535"
            " (-1: off, 0: any free port), got '-2' (see: drifttrio serve --help)",
        ),
        (
            [],
            {"DRIFTTRIO_HANDSHAKE_TIMEOUT": "nan"},
            BAD_SETTING.format("DRIFTTRIO_HANDSHAKE_TIMEOUT", SECONDS, "nan"),
        ),
        (
            [],
            {"DRIFTTRIO_WRITE_TIMEOUT": "nan"},
            BAD_SETTING.format("DRIFTTRIO_WRITE_TIMEOUT", SECONDS, "nan"),
        ),
        (
            [],
            {"DRIFTTRIO_ROOM_TTL_SECONDS": "1e300"},
            BAD_SETTING.format(
                "DRIFTTRIO_ROOM_TTL_SECONDS", f"0 (keep rooms forever) or {SECONDS}", "1e300"
            ),
        ),
        (
            [],
            {"DRIFTTRIO_RATE_LIMIT_PER_SECOND": "1e308"},
            BAD_SETTING.format(
                "DRIFTTRIO_RATE_LIMIT_PER_SECOND",
                "0 (unlimited) or a number from 0.000001 to 1000000000 per second",
                "1e308",
            ),
        ),
        (
            [],
            {"DRIFTTRIO_RATE_LIMIT_BURST": str(10**30)},
            BAD_SETTING.format(
                "DRIFTTRIO_RATE_LIMIT_BURST", "a whole number from 1 to 9007199254740992", 10**30
            ),
        ),
        (
            [],
            {"DRIFTTRIO_ROOM_INBOX_SIZE": "x"},
            BAD_SETTING.format(
                "DRIFTTRIO_ROOM_INBOX_SIZE", "a whole number from 1 to 9007199254740992", "x"
            ),
        ),
        ([], {"DRIFTTRIO_PORT": "70000"}, BAD_SETTING.format("DRIFTTRIO_PORT", PORT, "70000")),
        (
            [],
            {"DRIFTTRIO_LOG_LEVEL": "verbose"},
            BAD_SETTING.format(
                "DRIFTTRIO_LOG_LEVEL", "one of debug, info, warning, error", "verbose"
            ),
        ),
        (
            ["--host", "192.0.2.1"],
            {},
            "drifttrio: cannot listen on 192.0.2.1:8080: not an address of this machine"
            " (--host takes one of its addresses, 127.0.0.1 or 0.0.0.0)",
        ),
        (
            [],
            {"DRIFTTRIO_HOST": "192.0.2.1", "DRIFTTRIO_PORT": "0"},
            "drifttrio: cannot listen on 192.0.2.1:0: not an address of this machine"
            " (--host takes one of its addresses, 127.0.0.1 or 0.0.0.0)",
        ),
    ],
)
def test_a_bad_setting_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    assert run(tmp_path, "serve", *args, env=env) == (2, "", line + "\n")
    assert list(tmp_path.iterdir()) == []  # no drifttrio.db


def test_no_command_is_one_line_exit_2(tmp_path: Path) -> None:
    assert run(tmp_path) == (
        2,
        "",
        "drifttrio: the following arguments are required: COMMAND (see: drifttrio --help)\n",
    )


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_in_use_is_one_line_exit_1_and_creates_nothing(tmp_path: Path, flag: str) -> None:
    with taken_port() as port:
        args = ["--port", "0", "--metrics-port", str(port)] if flag != "--port" else []
        status, out, err = run(tmp_path, "serve", *args, flag, str(port))
    assert (status, out, err) == (
        1,
        "",
        f"drifttrio: cannot listen on 127.0.0.1:{port}: address already in use"
        f" (another drifttrio? stop it or pick another {flag})\n",
    )
    assert list(tmp_path.iterdir()) == []  # the store was not opened


def test_drifttrio_port_is_read_and_the_flag_wins(tmp_path: Path) -> None:
    with taken_port() as port:
        # The variable is read: the port it names is the one found in use...
        assert run(tmp_path, "serve", env={"DRIFTTRIO_PORT": str(port)})[0:2] == (1, "")
        # ... and a flag wins over it (a bad value it replaces is not even read).
        status, _, err = run(
            tmp_path,
            "serve",
            "--port",
            str(port),
            env={"DRIFTTRIO_PORT": "nan"},
        )
    assert status == 1
    assert err.startswith(f"drifttrio: cannot listen on 127.0.0.1:{port}: ")


def test_serve_version(tmp_path: Path) -> None:
    assert run(tmp_path, "serve", "--version") == (0, f"drifttrio {drifttrio.__version__}\n", "")


def test_help_describes_the_commands_and_every_serve_flag(tmp_path: Path) -> None:
    status, out, _ = run(tmp_path, "--help")
    assert status == 0
    assert "DriftDB-compatible" in out
    assert "``" not in out  # not a raw docstring
    status, out, _ = run(tmp_path, "serve", "--help")
    assert status == 0
    assert "redis://" in out
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    for action in serve._actions:
        assert action.help, f"{action.option_strings} has no help"


# -- warnings and the start-up line ----------------------------------------------------------


def test_unknown_variables_are_named_with_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "DRIFTTRIO_ROOM_INBOX_SIZ": "5",
        "DRIFTTRIO_REQUIRE_REDIS": "1",  # the test suite's own: known
        "DRIFTTRIO_PORT": "1",
        "OTHER": "x",
    }
    with caplog.at_level("WARNING", logger="drifttrio.config"):
        assert warn_unknown_variables(env) == ["DRIFTTRIO_ROOM_INBOX_SIZ"]
    assert [r.getMessage() for r in caplog.records] == [
        "DRIFTTRIO_ROOM_INBOX_SIZ is not a drifttrio setting and is ignored:"
        " did you mean DRIFTTRIO_ROOM_INBOX_SIZE?"
    ]


async def test_serve_warns_once_about_a_misspelt_variable_and_shows_the_absolute_store(
    tmp_path: Path,
) -> None:
    env = {**ENV, "DRIFTTRIO_ROOM_INBOX_SIZ": "5", "DRIFTTRIO_REQUIRE_REDIS": "1"}
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, [*COMMAND, "serve", "--port", "0"], tmp_path, env)
        try:
            line = (await child.wait_for_line(r"drifttrio listening on .*")).group(0)
            child.process.send_signal(signal.SIGTERM)
            with trio.fail_after(TIMEOUT):
                assert await child.process.wait() == 0, child.log
        finally:
            if child.process.poll() is None:
                child.process.kill()
    assert f"(store: sqlite:///{tmp_path / 'drifttrio.db'})" in line
    warnings = [entry for entry in child.lines if "DRIFTTRIO_" in entry]
    assert len(warnings) == 1, child.log
    assert warnings[0].endswith(
        "WARNING drifttrio.config: DRIFTTRIO_ROOM_INBOX_SIZ is not a drifttrio setting and is"
        " ignored: did you mean DRIFTTRIO_ROOM_INBOX_SIZE?"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory", "memory"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite:////var/lib/d.db", "sqlite:////var/lib/d.db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@db:6379/0?prefix=x", "redis://:***@db:6379/0?prefix=x"),
        ("rediss://app:s3cret@db:6380/1", "rediss://app:***@db:6380/1"),
        ("redis+cluster://:p@a:1,b:2", "redis+cluster://:***@a:1,b:2"),
    ],
)
def test_the_startup_line_never_shows_a_password(url: str, shown: str) -> None:
    assert shown_store(url) == shown


def test_a_relative_sqlite_path_is_shown_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert shown_store("sqlite:///rooms.db?synchronous=full") == (
        f"sqlite:///{tmp_path / 'rooms.db'}?synchronous=full"
    )
