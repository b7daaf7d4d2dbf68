"""``drifttrio check URL``: the conformance suite from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._conformance import CheckResult

__all__ = ["add_check_parser", "run_check_command"]


def add_check_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check", help="run the DriftDB conformance suite against a server URL"
    )
    check.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per wait (5)")
    check.add_argument(
        "--core-only", action="store_true", help="exit 0 when only extension checks fail"
    )


def run_check_command(args: argparse.Namespace) -> int:
    """Print the table; exit 1 if a check failed (a core one, with ``--core-only``),
    2 if the checks could not run: a URL that is not one, a server that does not answer."""
    import httpx

    from .._errors import ConfigError
    from ._conformance import format_table, run_checks
    from ._reach import ServerUnreachable, reach, server_url

    async def check(base_url: str) -> list[CheckResult]:
        async with httpx.AsyncClient(timeout=args.timeout) as http:
            await reach(http, base_url)
            return await run_checks(base_url, wait=args.timeout, http_client=http)

    try:
        results = trio.run(check, server_url(args.url))
    except (ConfigError, ServerUnreachable) as exc:
        print(f"drifttrio: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(format_table(results))
    sys.stdout.flush()
    failed = [r for r in results if not r.passed and (r.kind == "core" or not args.core_only)]
    return 1 if failed else 0
