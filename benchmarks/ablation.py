"""``drifttrio serve`` with parts of its per-message work replaced by stand-ins that
cost next to nothing: a measuring tool for where a push's time goes, not a server
to use.

    python benchmarks/ablation.py --stub metrics,decode,limits,room serve --port 0

What each stub replaces (the rest of the server is unchanged):

- ``metrics``: every count and histogram observation does nothing;
- ``decode``: a JSON ``push`` is ``orjson.loads`` and a ``Push``, nothing checked
  (its action is taken as ``relay``; other messages are decoded as usual);
- ``limits``: the connection's rate limit and its address's budget never charge;
- ``room``: a room batch of pushes only numbers each push (its own counter, not the
  room's state), encodes one frame and writes it to each member's socket without
  waiting (a member whose socket is full misses it): no apply, commit, join gate,
  outbox or counting. Joins, leaves, gets and pings go the usual way;
- ``inline`` (not a stub: a sketch of another design, memory store only): a
  WebSocket's push that finds its room's task parked on an empty inbox is not
  sent to it; the reader runs the room's step for it at once (the room's own
  code, without yielding), so a push costs one task wake-up instead of two.
  Anything else, and a push that finds the room busy, goes through the inbox.

The rows ``throughput.ABLATION_ROWS`` (``--only``-able in ``small_rooms.py`` and
``throughput.py``) run it beside ``drifttrio serve`` and the yardstick
``trio_room_relay.py``: the distance between the all-stubs row and the yardstick is
what the layers that no stub replaces cost (the wire, frame reader and WebSocket
state, the session's loop, the room's run loop and its inbox).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import orjson

STUBS = ("metrics", "decode", "limits", "room", "inline")


def _stub_metrics() -> None:
    from drifttrio.runtime import metrics

    metrics.Tally.inc = lambda self, amount=1.0: None  # type: ignore[method-assign]
    metrics.TallyHistogram.observe = lambda self, amount: None  # type: ignore[method-assign]


def _stub_decode() -> None:
    from drifttrio.protocol.messages import Push, Relay, Value
    from drifttrio.web import session

    decode = session.decode_json_client_message
    relay = Relay()

    def lean(data: bytes, limits: Any, *, nodes: int | None = None) -> Any:
        raw = orjson.loads(data)
        if type(raw) is not dict or raw.get("type") != "push":
            return decode(data, limits, nodes=nodes)
        return Push(raw["key"], Value(raw["value"]), relay)

    session.decode_json_client_message = lean  # type: ignore[assignment]


def _stub_limits() -> None:
    from drifttrio.web import limits

    limits.TokenBucket.debit = lambda self: 0.0  # type: ignore[method-assign]
    limits.ClientBudgets.debit_message = lambda self, ip, nbytes, count: (0.0, 1)  # type: ignore[method-assign]


def _stub_room() -> None:
    from drifttrio.runtime.room import PushCommand, Room
    from drifttrio.web.frames import websocket_frame

    handle = Room._handle_batch
    seqs: dict[str, int] = {}

    async def lean(self: Room, commands: list[Any]) -> None:
        if any(type(c) is not PushCommand for c in commands):
            await handle(self, commands)
            return
        for command in commands:
            seq = seqs[self.room_id] = seqs.get(self.room_id, 0) + 1
            push = {"type": "push", "key": command.key, "value": command.value, "seq": seq}
            frame = websocket_frame(orjson.dumps(push), binary=False)
            for member in self.members:
                member._write_now(frame)  # type: ignore[misc]

    Room._handle_batch = lean  # type: ignore[method-assign]


def _stub_inline() -> None:
    from drifttrio.runtime.member import Member
    from drifttrio.runtime.room import PushCommand, Room

    class Inline:
        """The room's inbox, but a lone push to a parked room is applied at once."""

        def __init__(self, room: Room, inbox: Any) -> None:
            self._room = room
            self._inbox = inbox

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inbox, name)

        def send_nowait(self, command: Any) -> None:
            room = self._room
            if type(command) is PushCommand and isinstance(command.origin, Member):
                waiting = room._commands.statistics()
                if waiting.tasks_waiting_receive and not waiting.current_buffer_used:
                    room._batch = batch = [command]
                    step = room._handle_batch(batch)
                    try:
                        step.send(None)
                    except StopIteration:
                        pass
                    else:
                        raise RuntimeError("the room's step tried to wait")
                    finally:
                        room._end_batch()
                    return
            self._inbox.send_nowait(command)

        async def send(self, command: Any) -> None:
            await self._inbox.send(command)

    init = Room.__init__

    def make(self: Room, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.inbox = Inline(self, self.inbox)  # type: ignore[assignment]

    Room.__init__ = make  # type: ignore[method-assign]


_STUBBERS: dict[str, Callable[[], None]] = {
    "inline": _stub_inline,
    "metrics": _stub_metrics,
    "decode": _stub_decode,
    "limits": _stub_limits,
    "room": _stub_room,
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--stub":
        sys.exit("usage: ablation.py --stub metrics,decode,limits,room serve [options]")
    stubs = [name for name in argv[1].split(",") if name]
    unknown = sorted(set(stubs) - set(STUBS))
    if unknown:
        sys.exit(f"ablation.py: unknown stub {', '.join(unknown)} (known: {', '.join(STUBS)})")
    for name in stubs:
        _STUBBERS[name]()
    from drifttrio.cli import main as drifttrio

    sys.argv = ["drifttrio", *argv[2:]]
    drifttrio()


if __name__ == "__main__":
    main(sys.argv[1:])
