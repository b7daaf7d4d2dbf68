"""``drifttrio check URL``: the conformance suite from the command line."""

from __future__ import annotations

import argparse
import sys

import trio

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
    """Print the table; exit 1 if a check failed (a core one, with ``--core-only``)."""
    from ._conformance import format_table, run_checks

    results = trio.run(lambda: run_checks(args.url, wait=args.timeout))
    print(format_table(results))
    sys.stdout.flush()
    failed = [r for r in results if not r.passed and (r.kind == "core" or not args.core_only)]
    return 1 if failed else 0
