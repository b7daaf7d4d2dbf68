"""The ``drifttrio`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from . import __version__
from ._errors import ConfigError
from .client._cli import add_check_parser, run_check_command
from .runtime.config import Config
from .server import serve

__all__ = ["main"]

log = logging.getLogger("drifttrio")

#: What ``drifttrio serve`` and ``drifttrio.asgi`` store rooms in by default.
DEFAULT_STORE = "sqlite:///drifttrio.db"


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
    add_check_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return run_check_command(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = Config.from_env(
            store=args.store or os.environ.get("DRIFTTRIO_STORE") or DEFAULT_STORE,
            slow_client_policy=args.slow_client_policy,
            broadcast_compact=False if args.no_broadcast_compact else None,
        )
        trio.run(_serve_until_signal, config, args.host, args.port, args.transport)
    except ConfigError as exc:
        print(f"drifttrio: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"drifttrio: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
