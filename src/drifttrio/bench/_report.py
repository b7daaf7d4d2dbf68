"""The final table (and notes) for people, and the JSON document for machines."""

from __future__ import annotations

from typing import Any

from ._model import SATURATED, BenchOptions, ScenarioResult

__all__ = ["format_table", "to_json"]


def _setup(result: ScenarioResult) -> str:
    p = result.params
    if result.name == "fanout":
        return f"1 pub, {p['subscribers']} subs, {p['in_flight']} in flight, {p['action']}"
    if result.name == "writers":
        return f"{p['writers']} writers, {p['in_flight']} in flight, {p['action']}"
    if result.name == "rooms":
        return (
            f"{p['rooms']} rooms x (1 pub, {p['subscribers']} subs), "
            f"{p['in_flight']} in flight, {p['action']}"
        )
    if result.name == "replay":
        return f"get of {p['values']} values"
    if result.name == "churn":
        return f"{p['concurrency']} at once: connect, get, push, close"
    return "1 connection, sequential"


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.2f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _row(result: ScenarioResult, with_server: bool) -> list[str]:
    row = [
        result.name,
        _setup(result),
        str(result.connections),
        f"{result.rate:,.0f} {result.unit}",
        _ms(result.latency.percentile(0.5)),
        _ms(result.latency.percentile(0.99)),
        str(result.lost),
        str(result.reordered),
        str(result.duplicated),
        str(result.errors + len(result.closed)),
        "-" if result.client_cpu is None else f"{result.client_cpu:.0%}",
    ]
    if with_server:
        server = result.server
        row += [
            "-" if server is None else f"{server.cpu_share:.0%}",
            "-" if server is None or server.cpu_per_1k is None else f"{server.cpu_per_1k:.4f}",
            "-" if server is None else _bytes(server.rss_per_connection),
        ]
    row.append("ok" if result.ok else "FAIL")
    return row


def format_table(
    results: list[ScenarioResult], options: BenchOptions, *, complete: bool = True
) -> str:
    """The results as an aligned table, then what went wrong and what to make of it.

    ``complete=False``: the run stopped before its last scenario (said at the end).
    """
    with_server = options.pid is not None
    header = [
        "scenario",
        "setup",
        "conns",
        "rate",
        "p50 ms",
        "p99 ms",
        "lost",
        "reord",
        "dup",
        "errors",
        "gen CPU",
    ]
    if with_server:
        header += ["srv CPU", "srv CPU s/1k msg", "srv RSS/conn"]
    header.append("")
    rows = [header] + [_row(r, with_server) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = {0, 1}
    procs = f", the load from {options.procs} processes" if options.procs > 1 else ""
    lines = [
        f"drifttrio bench {options.url}: {options.seconds:g} s measured per scenario "
        f"after {options.warmup:g} s of warm-up{procs}",
        "",
    ]
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(_notes(results, options, complete))
    return "\n".join(lines)


def _notes(results: list[ScenarioResult], options: BenchOptions, complete: bool) -> list[str]:
    notes: list[str] = []
    for r in results:
        problems: list[str] = []
        if r.lost or r.reordered or r.duplicated:
            problems.append(
                f"{r.lost} lost, {r.reordered} reordered, {r.duplicated} duplicated message(s)"
            )
        if r.errors:
            problems.append(f"{r.errors} error message(s) from the server, first: {r.first_error}")
        if r.closed:
            shown = "; ".join(r.closed[:3]) + (
                f"; and {len(r.closed) - 3} more" if len(r.closed) > 3 else ""
            )
            problems.append(f"{len(r.closed)} connection(s) closed: {shown}")
        problems.extend(r.failures)
        for problem in problems:
            notes.append(f"FAIL {r.name}: {problem}")
    # A drifttrio server on its defaults paces each connection and client address
    # (nothing is refused, so nothing here shows it): always say how to lift that.
    notes.append(
        "note: drifttrio paces each connection and client address by default (the rates "
        "above may be its limits, not its speed); benchmark "
        "drifttrio with DRIFTTRIO_RATE_LIMIT_PER_SECOND=0 "
        "DRIFTTRIO_ADDRESS_MESSAGES_PER_SECOND=0 DRIFTTRIO_ADDRESS_BYTES_PER_SECOND=0 "
        "DRIFTTRIO_ADDRESS_NODES_PER_SECOND=0 (and DRIFTTRIO_NEW_ROOMS_PER_MINUTE=0)"
    )
    busy = [r for r in results if r.generator_limited]
    if busy:
        notes.append(_generator_limit(busy, options.procs))
    if not complete:
        notes.append("the bench stopped before its last scenario (the reason is on stderr)")
    elif all(r.ok for r in results):
        notes.append(
            "all scenarios ok: every receiver saw every seq once, in order; no error, no close"
        )
    return notes


def _generator_limit(busy: list[ScenarioResult], procs: int) -> str:
    """The one line saying the load generator, not the server, was the limit."""
    names = ", ".join(r.name for r in busy)
    worst = max(r.client_cpu or 0.0 for r in busy)
    process = "the load process" if procs == 1 else "a load process"
    return (
        f"note: the load generator was the limit in {names}: {process} used {worst:.0%} of a "
        f"core ({SATURATED:.0%} or more), so those rates are its limit, not necessarily the "
        f"server's. Run more load processes (--procs {procs * 2}) on cores of their own "
        "(taskset: the server on one core, the bench on others)."
    )


def to_json(results: list[ScenarioResult], options: BenchOptions) -> dict[str, Any]:
    return {
        "url": options.url,
        "seconds": options.seconds,
        "warmup": options.warmup,
        "pid": options.pid,
        "procs": options.procs,
        "ok": all(r.ok for r in results),
        "generator_limited": any(r.generator_limited for r in results),
        "scenarios": [r.to_json() for r in results],
    }
