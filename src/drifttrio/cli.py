"""The ``drifttrio`` command line: ``serve``, ``rooms``, ``check``, ``bench``.

Exit codes: 0 done; 2 the command is wrong (a flag, a ``DRIFTTRIO_*`` variable, a
store URL, an address this machine cannot listen on): the same command fails the
same way, fix it; 1 the command is right but something it needs is busy or
unreachable right now (the port is in use, another server holds the store, Redis
does not answer): the same command can work later. Either way, one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn, cast

import trio

from . import __version__
from ._errors import ConfigError, StorageError, unwrap_group
from ._gc import paced_full_collections
from ._logging import LOG_FORMATS, configure_logging
from .bench._cli import add_bench_parser, run_bench_command
from .client._cli import add_check_parser, run_check_command
from .runtime.config import LOG_LEVELS, Config, parse_setting, warn_unknown_variables
from .server import ListenError, serve
from .storage import Storage, StoreAccess
from .storage.base import ExclusiveStorage, shown_url
from .supervisor import WorkerFailed, check_workers, parse_workers, serve_workers
from .wiring import TRANSPORTS

__all__ = ["main"]

log = logging.getLogger("drifttrio")

#: What ``drifttrio serve`` and ``drifttrio.asgi`` store rooms in by default.
DEFAULT_STORE = "sqlite:///drifttrio.db"
#: How each ``drifttrio rooms`` action opens the store: only ``import`` may create one
#: (a mistyped --store is an error, not a new empty database), and the ones that only
#: read never write to it. The writing ones are refused while a server holds the store
#: lock (its rooms would not see the change, and could overwrite it).
_ROOMS_ACCESS: Final[dict[str, StoreAccess]] = {
    "list": "read",
    "inspect": "read",
    "export": "read",
    "import": "create",
    "delete": "write",
}
_DESCRIPTION = (
    "A DriftDB-compatible real-time relay: clients join a room over WebSocket or HTTP"
    " and push values under keys; every member gets them in one order."
)


async def _serve_until_signal(config: Config, transport: str) -> None:
    # Catch the signals before serving: a SIGTERM sent as soon as the "listening"
    # line appears must shut down gracefully, not kill the process.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def wait_for_signal() -> None:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                return

        async with trio.open_nursery() as nursery:
            # The server process's collector (see drifttrio._gc): its full collections
            # paced, not one per quarter of growth in a connection storm.
            await nursery.start(paced_full_collections)
            await serve(config, transport=transport, shutdown_trigger=wait_for_signal)
            nursery.cancel_scope.cancel()


async def _supervise_until_signal(config: Config, workers: int, serve_args: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def wait_for_signal() -> None:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                return

        await serve_workers(config, workers, serve_args, shutdown_trigger=wait_for_signal)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (``drifttrio: ...``), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"drifttrio: {message} (see: {self.prog} --help)\n")


def _setting(name: str) -> Callable[[str], Any]:
    """An argparse ``type`` reading setting ``name`` with its own rule, so a bad
    flag is refused in the same words as a bad variable (naming the flag)."""

    def parse(raw: str) -> Any:
        try:
            return parse_setting(name, raw, source="")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="drifttrio", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"drifttrio {__version__}")
    # Every subcommand's parser is a _Parser too (argparse builds them with the parent's class).
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )
    run = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server until Ctrl-C or SIGTERM. Every flag has a DRIFTTRIO_<NAME>"
        " variable (docs/quickstart.md lists them all); a flag wins over its variable.",
    )
    run.add_argument("--version", action="version", version=f"drifttrio {__version__}")
    run.add_argument(
        "--host",
        type=_setting("host"),
        default=None,
        help="address to listen on (default: 127.0.0.1; 0.0.0.0: every interface)",
    )
    run.add_argument(
        "--port",
        type=_setting("port"),
        default=None,
        help="port to listen on, 0 to 65535 (default: 8080; 0: any free port)",
    )
    run.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="where rooms are kept: sqlite:///PATH[?synchronous=full], memory,"
        " redis://[:PASSWORD@]HOST:PORT/DB or redis+cluster://HOST:PORT[,HOST:PORT...]"
        f" (default: $DRIFTTRIO_STORE or {DEFAULT_STORE})",
    )
    run.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="drifttrio",
        help="drifttrio's own h11/wsproto transport (default, fastest) or hypercorn's trio worker",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        default=None,
        help="worker processes, each owning a share of the rooms: a number, or auto (one per"
        " core); default: $DRIFTTRIO_WORKERS or 1 (docs/deployment.md)",
    )
    run.add_argument(
        "--slow-client-policy",
        type=_setting("slow_client_policy"),
        metavar="{disconnect,drop}",
        default=None,
        help="when a client's queue is full: disconnect it with 4008 (default) or drop"
        " frames and tell it with an error",
    )
    run.add_argument(
        "--no-broadcast-compact",
        action="store_true",
        default=None,
        help="do not broadcast compact (strict upstream parity)",
    )
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=None,
        help="lowest level logged to stderr: debug, info (default), warning or error",
    )
    run.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None, help="text (default), kv or json"
    )
    run.add_argument(
        "--metrics-port",
        type=_setting("metrics_port"),
        metavar="PORT",
        default=None,
        help="port of the internal /metrics, /healthz, /readyz listener (default: -1, none;"
        " 0: any free port)",
    )
    run.add_argument(
        "--metrics-host",
        type=_setting("metrics_host"),
        metavar="HOST",
        default=None,
        help="address of that listener (default: 127.0.0.1)",
    )
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
        "--shutdown-timeout",
        type=_setting("shutdown_timeout"),
        metavar="SECONDS",
        default=None,
        help="seconds a graceful drain may take (default: 10)",
    )
    run.add_argument(
        "--trusted-proxies",
        default=None,
        help="addresses/networks of your reverse proxies, whose X-Forwarded-For names the client"
        " (e.g. 127.0.0.1,10.0.0.0/8)",
    )
    run.add_argument(
        "--certfile", default=None, help="TLS certificate chain (PEM): serve https:// and wss://"
    )
    run.add_argument("--keyfile", default=None, help="its private key (PEM, unencrypted)")
    run.add_argument(
        "--hooks",
        metavar="MODULE:ATTR",
        default=None,
        help="server-side room logic: a drifttrio.hooks.Hooks (instance, class or factory),"
        " imported from the current directory or the Python path",
    )
    _rooms_parser(commands)
    add_check_parser(commands)
    add_bench_parser(commands)
    return parser


class _RoomIds(argparse.ArgumentParser):
    """Mixed into a ``drifttrio rooms`` action's parser: any argument that is not one
    of its option strings is a value, so a room id that starts with ``-`` (1 in 64 of
    the ids stored before 977d3ce, and other servers' ids) is taken as the id it is."""

    def _parse_optional(self, arg_string: str) -> Any:
        name = arg_string.split("=", 1)[0]
        if arg_string != "--" and name not in self._option_string_actions:
            return None  # a positional (argparse would take it for an unknown option)
        return super()._parse_optional(arg_string)


def _rooms_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store_help = f"the store to work on (default: $DRIFTTRIO_STORE or {DEFAULT_STORE})"
    rooms = commands.add_parser("rooms", help="list, inspect, export, import, delete stored rooms")
    rooms.add_argument("--store", metavar="URL", default=None, help=store_help)
    # On the class of the rooms parser, whatever it is, so its way of reporting errors stays.
    room_ids: type[argparse.ArgumentParser] = type("_RoomActionParser", (_RoomIds, type(rooms)), {})
    actions = rooms.add_subparsers(dest="action", required=True, parser_class=room_ids)

    def action(name: str, help: str, *, room: bool = True) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        # --store after the action too (rooms list --store X); SUPPRESS: unless given,
        # it leaves the one before the action (rooms --store X list) as it was.
        parser.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=store_help)
        if room:
            parser.add_argument("room")
        return parser

    action("list", "every stored room, one JSON object a line", room=False)
    action("inspect", "a room's seq and retained keys")
    export = action("export", "write a room as JSON Lines")
    export.add_argument("-o", "--output", default="-", help="file (default: stdout)")
    load = action("import", "create or replace a room from JSON Lines", room=False)
    load.add_argument("input", nargs="?", default="-", help="file (default: stdin)")
    load.add_argument("--room", default=None, help="import under this id (default: the file's)")
    action("delete", "delete a room and its data")


async def _rooms(args: argparse.Namespace, store: str) -> int:
    """Run one ``drifttrio rooms`` action against the store."""
    from .storage import open_storage
    from .storage.base import ServedStorage

    storage = open_storage(store, _ROOMS_ACCESS[args.action])
    if not isinstance(storage, ServedStorage):
        return await _rooms_action(args, store, storage)
    async with trio.open_nursery() as nursery:  # a networked store (Redis) connects here
        await nursery.start(storage.run)
        try:
            return await _rooms_action(args, store, storage)
        finally:
            nursery.cancel_scope.cancel()


async def _rooms_action(args: argparse.Namespace, store: str, storage: Storage) -> int:
    import orjson

    from . import admin
    from .runtime.hub import valid_room_id

    try:
        if _ROOMS_ACCESS[args.action] != "read" and isinstance(storage, ExclusiveStorage):
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
            print(
                f"drifttrio: no room {args.room!r} in {shown_url(store)}"
                " (drifttrio rooms list shows the stored ones)",
                file=sys.stderr,
            )
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
        config, transport = _serve_config(args, store)
        workers = parse_workers(args.workers or os.environ.get("DRIFTTRIO_WORKERS") or "1")
        check_workers(config, transport, workers)
        configure_logging(config.log_format, config.log_level)
        warn_unknown_variables()
        if workers > 1:
            serve_args = list(argv if argv is not None else sys.argv[1:])
            serve_args = serve_args[serve_args.index("serve") + 1 :]
            trio.run(_supervise_until_signal, config, workers, serve_args)
        else:
            trio.run(_serve_until_signal, config, transport)
    except BaseException as exc:
        return _startup_failure(exc)
    return 0


def serve_config(serve_args: Sequence[str]) -> tuple[Config, str]:
    """The settings and transport ``drifttrio serve SERVE_ARGS`` runs with (a worker
    of ``--workers`` reads its supervisor's command line again)."""
    args = _parser().parse_args(["serve", *serve_args])
    return _serve_config(args, args.store or os.environ.get("DRIFTTRIO_STORE") or DEFAULT_STORE)


def _serve_config(args: argparse.Namespace, store: str) -> tuple[Config, str]:
    config = Config.from_env(
        store=store,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        slow_client_policy=args.slow_client_policy,
        broadcast_compact=False if args.no_broadcast_compact else None,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        public_metrics=args.public_metrics,
        inspector=False if args.no_inspector else None,
        shutdown_timeout=args.shutdown_timeout,
        trusted_proxies=args.trusted_proxies,
        certfile=args.certfile,
        keyfile=args.keyfile,
        hooks=args.hooks,
    )
    return config, args.transport


def _startup_failure(exc: BaseException) -> int:
    """One line and an exit code for errors a user can fix; anything else is a
    bug: re-raised. 2: the command or a setting is wrong (:class:`ConfigError`);
    1: something it needs is busy or unreachable (the store, the address, the
    network). See the module docstring."""
    leaf = unwrap_group(exc)
    if isinstance(leaf, KeyboardInterrupt):
        return 130
    if isinstance(leaf, BrokenPipeError):
        raise leaf  # main() handles it: the reader of our output went away
    if isinstance(leaf, WorkerFailed):
        return leaf.status if leaf.status > 0 else 1  # the worker said why on stderr
    if isinstance(leaf, ConfigError):
        print(f"drifttrio: {leaf}", file=sys.stderr)
        return 2
    if isinstance(leaf, StorageError | ListenError | OSError):
        print(f"drifttrio: {leaf}", file=sys.stderr)
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
