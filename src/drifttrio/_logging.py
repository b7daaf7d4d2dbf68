"""Structured logs: ``text`` / ``kv`` / ``json`` line formats.

Log records carry their fields in ``extra={"fields": {...}}``; the formatters
render them after the message. Room ids are secrets (anyone who knows one can
join), so logs only ever show ``runtime.redact.room_tag`` of one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TextIO

import orjson

__all__ = ["LOG_FORMATS", "StructuredFormatter", "ThrottledLog", "configure_logging", "fields"]

#: The line formats ``configure_logging`` accepts.
LOG_FORMATS: Final = ("text", "kv", "json")


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call with structured fields."""
    return {"fields": values}


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if not text or any(c in text for c in ' "=\n\\'):
        return orjson.dumps(text).decode()
    return text


class StructuredFormatter(logging.Formatter):
    """``json``: one object per line; ``kv``: ``key=value`` pairs; ``text``: readable."""

    def __init__(self, style: str = "kv") -> None:
        super().__init__()
        if style not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {LOG_FORMATS}, got {style!r}")
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        extra: Mapping[str, Any] = getattr(record, "fields", None) or {}
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if self.style == "text":
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            line = f"{stamp} {record.levelname} {record.name}: {message}"
            if extra:
                line += " " + " ".join(f"{k}={_kv_value(v)}" for k, v in extra.items())
            return line + (f"\n{record.exc_text}" if record.exc_text else "")
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
            **extra,
        }
        if record.exc_text:
            out["exc"] = record.exc_text
        if self.style == "json":
            return orjson.dumps(out, default=str).decode()
        return " ".join(f"{k}={_kv_value(v)}" for k, v in out.items())


def configure_logging(
    style: str = "text", level: str | int = "INFO", stream: TextIO | None = None
) -> None:
    """Send drifttrio's (and everyone's) log records to ``stream`` in ``style``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(StructuredFormatter(style))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


class ThrottledLog:
    """At most ``per_interval`` lines per ``interval`` seconds for each kind of
    event, then one "suppressed K similar" line when the next interval starts.

    For conditions a client can cause at will (malformed requests, bad upgrades):
    each is worth one line, but a flood of them must not flood the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_interval: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_interval = per_interval
        self.interval = interval
        self._clock = clock
        #: kind -> [interval start, lines logged, lines suppressed]
        self._windows: dict[str, list[float]] = {}

    def log(self, level: int, kind: str, message: str, **values: Any) -> None:
        """Log ``message`` with ``values`` as fields (and ``kind``), unless this
        kind already had its lines in the current interval."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self.interval:
            if window is not None and window[2]:
                self.logger.log(
                    level,
                    "suppressed %d similar line(s) in the last %g s",
                    window[2],
                    self.interval,
                    extra=fields(kind=kind, suppressed=int(window[2])),
                )
            if len(self._windows) >= 1024:  # kinds are a small fixed set; stay bounded
                self._windows.clear()
            window = self._windows[kind] = [now, 0, 0]
        if window[1] >= self.per_interval:
            window[2] += 1
            return
        window[1] += 1
        self.logger.log(level, message, extra=fields(kind=kind, **values))
