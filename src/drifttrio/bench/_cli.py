"""``drifttrio bench URL``: the load generator from the command line."""

from __future__ import annotations

import argparse
import sys

from ._model import ACTIONS, DEFAULT_SCENARIOS, SCENARIOS

__all__ = ["add_bench_parser", "run_bench_command"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _scenarios(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if "all" in names:
        return list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {','.join(unknown) or text!r}: pick from {', '.join(SCENARIOS)}, all"
        )
    return names


def add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="load-test any DriftDB server: throughput, latency, loss and order",
        description="Load-test a DriftDB server (drifttrio or another). Each scenario "
        "runs for --seconds after --warmup, checks that every receiver saw its room's "
        "seqs in order with none missing, and exits 1 if any was lost, reordered or "
        "duplicated, or the server answered an error or closed a connection; 2 if the "
        "bench could not run. --procs N drives the load from N processes; give the "
        "bench cores of its own (taskset).",
    )
    bench.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    bench.add_argument(
        "--scenario",
        dest="scenarios",
        type=_scenarios,
        action="append",
        metavar="NAME[,NAME...]",
        help=f"{', '.join(SCENARIOS)} or all (repeatable; default: {','.join(DEFAULT_SCENARIOS)})",
    )
    bench.add_argument(
        "--seconds", type=_positive_float, default=5.0, help="measured per scenario (5)"
    )
    bench.add_argument(
        "--warmup", type=_non_negative_float, default=1.0, help="of load not counted first (1)"
    )
    bench.add_argument(
        "--subscribers",
        type=_positive_int,
        default=None,
        help="fanout: subscribers (10); rooms: subscribers per room (3)",
    )
    bench.add_argument(
        "--in-flight",
        type=_positive_int,
        default=100,
        help="pushes in flight: fanout's publisher; writers, rooms: in total (100)",
    )
    bench.add_argument("--writers", type=_positive_int, default=10, help="writers (10)")
    bench.add_argument("--rooms", type=_positive_int, default=10, help="rooms (10)")
    bench.add_argument(
        "--values", type=_positive_int, default=1000, help="replay: values in the stream (1000)"
    )
    bench.add_argument(
        "--concurrency", type=_positive_int, default=10, help="churn: connections at once (10)"
    )
    bench.add_argument(
        "--action",
        choices=ACTIONS,
        default="relay",
        help="push action of fanout, writers, rooms (relay)",
    )
    bench.add_argument(
        "--payload",
        type=_non_negative_int,
        default=32,
        help="bytes of padding in each pushed value (32)",
    )
    bench.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        help="seconds to wait for a room, an upgrade, an answer, the final drain (10)",
    )
    bench.add_argument(
        "--pid",
        type=int,
        default=None,
        help="a local server process: report its CPU per 1,000 messages and RSS per connection",
    )
    bench.add_argument(
        "--procs",
        type=_positive_int,
        default=1,
        help="processes the load runs in, each with its share of the connections; "
        "results merged (1)",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _progress(line: str) -> None:
    print(f"bench {line}", file=sys.stderr, flush=True)


def run_bench_command(args: argparse.Namespace) -> int:
    """Print the table (or JSON); 0 if all was well, 1 if not, 2 if the bench could not run."""
    import orjson
    import trio

    from .._errors import ConfigError
    from ..client._reach import server_url
    from ._errors import BenchError
    from ._model import BenchOptions
    from ._report import format_table, to_json
    from ._runner import run_bench

    try:
        url = server_url(args.url)
    except ConfigError as exc:
        print(f"drifttrio bench: {exc}", file=sys.stderr)
        return 2
    scenarios = [name for names in args.scenarios or [DEFAULT_SCENARIOS] for name in names]
    options = BenchOptions(
        url=url,
        scenarios=tuple(dict.fromkeys(scenarios)),
        seconds=args.seconds,
        warmup=args.warmup,
        subscribers=args.subscribers,
        in_flight=args.in_flight,
        writers=args.writers,
        rooms=args.rooms,
        values=args.values,
        concurrency=args.concurrency,
        action=args.action,
        payload=args.payload,
        timeout=args.timeout,
        pid=args.pid,
        progress=None if args.quiet else _progress,
        procs=args.procs,
    )
    error: BenchError | None = None
    try:
        results = trio.run(run_bench, options)
    except BenchError as exc:
        error, results = exc, exc.completed
    except KeyboardInterrupt:
        return 130
    if args.json and (results or error is None):
        report = to_json(results, options)
        if error is not None:
            report.update(ok=False, error=str(error), stopped_in=error.scenario)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    elif results:
        print(format_table(results, options, complete=error is None))
    sys.stdout.flush()
    if error is not None:
        where = f"{error.scenario}: " if results else ""
        print(f"drifttrio bench: {where}{error}", file=sys.stderr)
        return 2
    return 0 if all(r.ok for r in results) else 1
