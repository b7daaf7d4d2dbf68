"""The ``drifttrio`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

import trio

from . import __version__
from ._errors import ConfigError, StorageError
from ._logging import LOG_FORMATS, configure_logging
from .bench._cli import add_bench_parser, run_bench_command
from .client._cli import add_check_parser, run_check_command
from .runtime.config import Config
from .server import serve
from .storage import Storage
from .storage.base import ExclusiveStorage

__all__ = ["main"]

log = logging.getLogger("drifttrio")

#: What ``drifttrio serve`` and ``drifttrio.asgi`` store rooms in by default.
DEFAULT_STORE = "sqlite:///drifttrio.db"
#: ``drifttrio rooms`` actions that write: refused while a server holds the store lock
#: (its rooms would not see the change, and could overwrite it). The others only read.
_WRITE_ACTIONS: Final = frozenset({"import", "delete"})


async def _serve_until_signal(config: Config, host: str, port: int, transport: str) -> None:
    # Catch the signals before serving: a SIGTERM sent as soon as the "listening"
    # line appears must shut down gracefully, not kill the process.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def wait_for_signal() -> None:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                return

        await serve(
            config, host=host, port=port, transport=transport, shutdown_trigger=wait_for_signal
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drifttrio", description=__doc__)
    parser.add_argument("--version", action="version", version=f"drifttrio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server")
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    run.add_argument("--port", type=int, default=8080, help="port to listen on (8080; 0: any)")
    run.add_argument(
        "--store",
        default=None,
        help="sqlite:///PATH[?synchronous=full] | memory "
        f"(default: $DRIFTTRIO_STORE or {DEFAULT_STORE})",
    )
    run.add_argument(
        "--transport",
        choices=["drifttrio", "hypercorn"],
        default="drifttrio",
        help="drifttrio's own h11/wsproto transport (default, fastest) or hypercorn's trio worker",
    )
    run.add_argument("--slow-client-policy", choices=["disconnect", "drop"], default=None)
    run.add_argument(
        "--no-broadcast-compact",
        action="store_true",
        default=None,
        help="do not broadcast compact (strict upstream parity)",
    )
    run.add_argument("--log-level", default="info", help="debug, info, warning, error")
    run.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None, help="text (default), kv or json"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of the internal /metrics, /healthz, /readyz listener (-1: none, the default)",
    )
    run.add_argument("--metrics-host", default=None, help="its address (127.0.0.1)")
    run.add_argument(
        "--public-metrics",
        action="store_true",
        default=None,
        help="also serve /metrics on the public listener",
    )
    run.add_argument(
        "--no-inspector", action="store_true", default=None, help="do not serve the /ui inspector"
    )
    run.add_argument(
        "--shutdown-timeout", type=float, default=None, help="seconds a graceful drain may take"
    )
    run.add_argument(
        "--certfile", default=None, help="TLS certificate chain (PEM): serve https:// and wss://"
    )
    run.add_argument("--keyfile", default=None, help="its private key (PEM, unencrypted)")
    _rooms_parser(commands)
    add_check_parser(commands)
    add_bench_parser(commands)
    return parser


def _rooms_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rooms = commands.add_parser("rooms", help="list, inspect, export, import, delete stored rooms")
    rooms.add_argument(
        "--store",
        default=None,
        help=f"the store to work on (default: $DRIFTTRIO_STORE or {DEFAULT_STORE})",
    )
    actions = rooms.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every stored room, one JSON object a line")
    actions.add_parser("inspect", help="a room's seq and retained keys").add_argument("room")
    export = actions.add_parser("export", help="write a room as JSON Lines")
    export.add_argument("room")
    export.add_argument("-o", "--output", default="-", help="file (default: stdout)")
    load = actions.add_parser("import", help="create or replace a room from JSON Lines")
    load.add_argument("input", nargs="?", default="-", help="file (default: stdin)")
    load.add_argument("--room", default=None, help="import under this id (default: the file's)")
    actions.add_parser("delete", help="delete a room and its data").add_argument("room")


async def _rooms(args: argparse.Namespace, store: str) -> int:
    """Run one ``drifttrio rooms`` action against the store."""
    from .storage import open_storage

    storage = open_storage(store)
    run = getattr(storage, "run", None)
    if run is None:
        return await _rooms_action(args, store, storage)
    async with trio.open_nursery() as nursery:  # a networked store (Redis) connects here
        await nursery.start(run)
        try:
            return await _rooms_action(args, store, storage)
        finally:
            nursery.cancel_scope.cancel()


async def _rooms_action(args: argparse.Namespace, store: str, storage: Storage) -> int:
    import orjson

    from . import admin
    from .runtime.hub import valid_room_id

    try:
        if args.action in _WRITE_ACTIONS and isinstance(storage, ExclusiveStorage):
            storage.take_store_lock("admin")
        if args.action == "list":
            for row in await admin.list_rooms(storage):
                print(orjson.dumps(row).decode())
            return 0
        if args.action == "import":
            if args.input == "-":
                text = sys.stdin.read()
            else:
                text = await trio.Path(args.input).read_text(encoding="utf-8")
            room_id, imported = admin.parse_lines(text.splitlines())
            room_id = args.room or room_id
            if not valid_room_id(room_id):
                raise ConfigError(f"not a valid room id: {room_id!r}")
            await storage.import_room(room_id, imported)
            print(f"imported room {room_id} (seq {imported.seq})", file=sys.stderr)
            return 0
        snapshot = await storage.load_room(args.room)
        if snapshot is None:
            print(f"drifttrio: no room {args.room!r} in {store}", file=sys.stderr)
            return 1
        if args.action == "inspect":
            print(orjson.dumps(admin.inspect_room(args.room, snapshot)).decode())
        elif args.action == "export":
            text = "".join(line + "\n" for line in admin.dump_lines(args.room, snapshot))
            if args.output == "-":
                sys.stdout.write(text)
            else:
                await trio.Path(args.output).write_text(text, encoding="utf-8")
        elif args.action == "delete":
            await storage.delete_room(args.room)
            print(f"deleted room {args.room}", file=sys.stderr)
        return 0
    finally:
        await storage.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # Output piped into a reader that stopped (``| head``): not an error.
        # Point stdout at devnull so the interpreter's final flush doesn't fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return run_check_command(args)
    if args.command == "bench":
        return run_bench_command(args)
    store = args.store or os.environ.get("DRIFTTRIO_STORE") or DEFAULT_STORE
    if args.command == "rooms":
        try:
            return trio.run(_rooms, args, store)
        except BaseException as exc:
            return _startup_failure(exc)
    try:
        config = Config.from_env(
            store=store,
            slow_client_policy=args.slow_client_policy,
            broadcast_compact=False if args.no_broadcast_compact else None,
            log_format=args.log_format,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            public_metrics=args.public_metrics,
            inspector=False if args.no_inspector else None,
            shutdown_timeout=args.shutdown_timeout,
            certfile=args.certfile,
            keyfile=args.keyfile,
        )
        configure_logging(config.log_format, args.log_level)
        trio.run(_serve_until_signal, config, args.host, args.port, args.transport)
    except BaseException as exc:
        return _startup_failure(exc)
    return 0


def _startup_failure(exc: BaseException) -> int:
    """One line and an exit code for errors a user can fix (a bad setting, a store
    that can't be reached, a port in use); anything else is a bug: re-raised."""
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    if isinstance(leaf, KeyboardInterrupt):
        return 130
    if isinstance(leaf, BrokenPipeError):
        raise leaf  # main() handles it: the reader of our output went away
    if isinstance(leaf, ConfigError | StorageError | OSError):
        print(f"drifttrio: {leaf}", file=sys.stderr)
        return 2 if isinstance(leaf, ConfigError) else 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
