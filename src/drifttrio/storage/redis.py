"""The Redis backend: rooms shared by many drifttrio nodes.

Redis is the ordering point of every room: one Lua script per batch of pushes
assigns the room's next seqs, applies the actions to the retained streams, appends
the events to the room's short log and publishes them, atomically
(:mod:`._redis_scripts`). Each node mirrors the rooms it has members in by
applying those events in order (:mod:`drifttrio.runtime.shared_room`).

One pub/sub connection per node carries every room's events. When it breaks, each
room that was following is told (its callback gets ``None``), ends, and closes its
members with :data:`~drifttrio.CloseCode.STORE_UNAVAILABLE`; they reconnect, and
the room is loaded again from Redis.

Needs ``pip install drifttrio[redis]`` (coredis). Persistence: see
``docs/deployment.md`` - without ``appendonly yes`` a Redis restart would take
seqs back, so the node refuses to start.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import cbor2
import trio

from .._errors import ConfigError, StorageError
from ..core.refusals import PushRefusal, PushRefused
from ..core.room_state import Stream, StreamChange, value_size
from ..protocol.messages import SeqValue, Value
from . import _redis_scripts as scripts
from .base import FeedCallback, JournalEntry, RoomInfo, RoomSnapshot, shown_url

__all__ = ["ActionName", "Event", "PushItem", "PushResult", "RedisStorage", "parse_records"]

log = logging.getLogger("drifttrio.redis")

#: Events kept in each room's log for nodes that missed some (``?log=N``).
DEFAULT_LOG_LENGTH: Final = 1000

#: The committed-push journal (see :meth:`RedisStorage.enable_journal`): how long the
#: delivering node's lease lasts unless renewed (seconds; each read renews it) ...
JOURNAL_LEASE_SECONDS: Final = 60.0
#: ... how long a room stays marked after its last journaled push, even when its
#: journal looks empty (a push marked then may not have run its script yet) ...
JOURNAL_GRACE_SECONDS: Final = 60.0
#: ... how long after marking a room this node pushes to it without marking it
#: again (the mark is then at most this old plus a request's time when the push
#: runs: keep it well below the grace period) ...
JOURNAL_REMARK_SECONDS: Final = 20.0
#: ... how often a node looks for pushes journaled by other nodes (seconds) ...
JOURNAL_POLL_SECONDS: Final = 0.5
#: ... and how long an emptied room journal is kept (its ids keep counting up).
JOURNAL_EMPTY_TTL_MS: Final = 86_400_000


ActionName = Literal["relay", "replace", "append", "compact"]


@attrs.frozen
class Event:
    """One event of a shared room, in the order Redis assigned (``ev`` 1, 2, 3...)."""

    ev: int
    seq: int
    action: ActionName
    key: str
    value: Value


@attrs.frozen
class PushItem:
    """One push, as the push script takes it."""

    action: ActionName
    key: str
    blob: bytes  # CBOR of the value
    compact_seq: int = 0
    #: What the entry counts for against ``max_room_bytes`` (its
    #: :func:`~drifttrio.core.room_state.value_size`, computed by the node) ...
    charge: int = 0
    #: ... and the stream, if the push creates it (:func:`~.room_state.key_size`).
    key_charge: int = 0
    #: Apply it only if the key's last retained seq is this one (0: it retains
    #: nothing), else refuse it as a conflict; ``None``: unconditional.
    expect_seq: int | None = None


@attrs.frozen
class PushResult:
    """What the push script did with one :class:`PushItem`: applied it (``ok``, at
    ``seq``, as event ``ev``), found it a no-op (a compact at or below the stream's
    mark), or refused it (``error``, with the ``refusal``)."""

    status: Literal["ok", "noop", "error"]
    seq: int = 0
    stream_size: int = 0
    ev: int = 0
    refusal: PushRefused | None = attrs.field(default=None, eq=False)

    @property
    def error(self) -> str:
        """The refusal's text for the client (``""`` unless refused)."""
        return "" if self.refusal is None else self.refusal.message


class DataLossError(StorageError):
    """Redis holds fewer events for a room than this node has seen: it lost writes
    (restarted without its append-only file). Seqs must not be reused: the room ends."""


def encode_value(value: Value) -> bytes:
    return cbor2.dumps(value)


def _decode_value(blob: bytes) -> Value:
    return Value(cbor2.loads(blob))


def parse_records(data: bytes, after: int = 0) -> list[Event]:
    """Split a published batch (or a log entry) into events, skipping (without
    decoding their values) those numbered ``after`` or lower."""
    events = []
    pos = 0
    while pos < len(data):
        fields = []
        for _ in range(5):
            bar = data.index(b"|", pos)
            fields.append(data[pos:bar])
            pos = bar + 1
        ev_raw, seq, action, key_len, blob_len = fields
        k, b = int(key_len), int(blob_len)
        ev = int(ev_raw)
        if ev > after:
            key = data[pos : pos + k].decode()
            value = _decode_value(data[pos + k : pos + k + b])
            events.append(Event(ev, int(seq), action.decode(), key, value))  # type: ignore[arg-type]
        pos += k + b
    return events


def _entry(seq: int, value: Value) -> bytes:
    """A stored stream entry: ``"SEQ:CHARGE|" + CBOR`` (the scripts sum the charges)."""
    return b"%d:%d|" % (seq, value_size(value)) + encode_value(value)


def _parse_entry(raw: bytes) -> SeqValue:
    """A stored entry; entries written before charges were stored are ``"SEQ|" + CBOR``."""
    bar = raw.index(b"|")
    return SeqValue(_decode_value(raw[bar + 1 :]), int(raw[:bar].split(b":", 1)[0]))


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: coredis and trio wrap."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class RedisStorage:
    """Rooms in Redis (or a Redis Cluster); a room's keys share the hash tag ``{ROOM}``.

    Start :meth:`run` in a nursery before use (the hub does). ``clock`` stamps
    activity (for TTL expiry); tests pass a fake one. Rooms are ordered here (a
    :class:`~.base.SharedStorage`): room tasks use :meth:`push_batch` and
    :meth:`follow` instead of :meth:`commit`.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            import coredis
            import coredis.retry
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                "the Redis store needs the redis extra: pip install 'drifttrio[redis]'"
            ) from None
        self.url = url
        self._clock = clock
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.get("prefix", ["drifttrio"])[-1]
        shown = shown_url(url)
        log_length = query.get("log", [str(DEFAULT_LOG_LENGTH)])[-1]
        if not (log_length.isascii() and log_length.isdigit()):
            raise ConfigError(f"store {shown!r}: log must be a whole number, got {log_length!r}")
        self.log_length = int(log_length)
        self.persistence = query.get("persistence", ["check"])[-1]
        if self.persistence not in ("check", "unsafe"):
            raise ConfigError(f"store {shown!r}: persistence must be 'check' or 'unsafe'")
        self.cluster = parts.scheme in ("redis+cluster", "rediss+cluster")
        ssl = parts.scheme.startswith("rediss")
        common: dict[str, Any] = {
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "ssl": ssl,
            "decode_responses": False,
            "connect_timeout": 2.0,
            "stream_timeout": 10.0,
            # No automatic retries: a push script whose answer was lost may have run,
            # and running it again would apply the push twice (a second seq).
            "retry_policy": coredis.retry.NoRetryPolicy(),
        }
        nodes = []
        for hostport in (parts.netloc.rsplit("@", 1)[-1] or "127.0.0.1:6379").split(","):
            host, _, port = hostport.rpartition(":")
            if not host:
                host, port = port, "6379"
            try:
                nodes.append((host.strip("[]"), int(port)))
            except ValueError:
                raise ConfigError(f"store {shown!r}: bad host:port {hostport!r}") from None
        self.client: Any
        if self.cluster:
            self.client = coredis.RedisCluster(
                startup_nodes=[{"host": h, "port": p} for h, p in nodes], **common
            )
            self._publish = "SPUBLISH"
        else:
            if len(nodes) != 1:
                raise ConfigError(f"store {shown!r}: one host (use redis+cluster:// for several)")
            db = parts.path.strip("/") or "0"
            if not db.isdigit():
                raise ConfigError(f"store {shown!r}: the database must be a number")
            self.client = coredis.Redis(host=nodes[0][0], port=nodes[0][1], db=int(db), **common)
            self._publish = "PUBLISH"
        self._scripts: dict[str, Any] = {}
        self._followers: dict[bytes, FeedCallback] = {}
        self._pubsub: Any = None
        self._running = False
        self._scope: trio.CancelScope | None = None
        #: The journal: whether this node journals its pushes, the token it holds the
        #: delivery lease with, the event set when it journals (then replaced), where
        #: the next read starts in the index of rooms, and whether the last read found
        #: nothing (then the next wait sleeps first).
        self._journaling = False
        self._journal_token = secrets.token_hex(8)
        self._journal_grew = trio.Event()
        self._journal_offset = 0
        self._journal_idle = False
        #: When this node last sent a mark for each room (``time.monotonic``).
        self._journal_marked: dict[str, float] = {}
        self._journal_marked_max = 4096
        #: Whether this node held the delivery lease when it last asked.
        self._journal_lease_held = False

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, check persistence, and carry the rooms' events until cancelled."""
        import anyio

        self._scope = trio.CancelScope()
        try:
            with self._scope:
                try:
                    await self._serve(task_status)
                except* anyio.ClosedResourceError:
                    # coredis 6.9's pub/sub teardown can fail this way when cancelled
                    # (it writes UNSUBSCRIBE to a closed connection): harmless then.
                    if trio.current_effective_deadline() != -math.inf:
                        raise
        finally:
            self._running = False

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with self.client:
                await self.client.ping()
                await self._check_persistence()
                for name in scripts.__all__:
                    self._scripts[name] = self.client.register_script(getattr(scripts, name))
                self._running = True
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._keep_journal_lease)
                        await self._feed(task_status)
                except BaseExceptionGroup as group:
                    # Only the feed raises (the lease task keeps its errors): as before.
                    raise _leaf(group) from None
        except Exception as exc:
            leaf = _leaf(exc)
            if isinstance(leaf, ConfigError | StorageError):
                raise leaf from None
            if self._running:
                raise
            raise StorageError(
                f"cannot use Redis at {self._where()}: {leaf}"
                " (check that Redis runs there and the store URL)"
            ) from exc

    def _where(self) -> str:
        return urlsplit(self.url).netloc.rsplit("@", 1)[-1] or "127.0.0.1:6379"

    async def _check_persistence(self) -> None:
        """Refuse Redis that would forget seqs on restart; warn when it may lose a second."""
        import coredis.exceptions

        try:
            settings = await self.client.config_get(["appendonly", "appendfsync"])
        except coredis.exceptions.RedisError as exc:
            log.warning(
                "cannot read Redis persistence settings (%s): make sure it runs with"
                " appendonly yes and appendfsync always, or seqs may be reused after a"
                " Redis restart",
                exc,
            )
            return
        values = {_text(k): _text(v) for k, v in settings.items()}
        if values.get("appendonly") != "yes":
            message = (
                f"Redis at {self._where()} runs with appendonly {values.get('appendonly')!r}:"
                " after a restart it would forget pushes and reuse their seqs."
                " Configure appendonly yes and appendfsync always"
                " (or add ?persistence=unsafe to the store URL to accept that)"
            )
            if self.persistence != "unsafe":
                raise ConfigError(message)
            log.warning("%s", message)
        elif values.get("appendfsync") != "always":
            log.warning(
                "Redis at %s runs with appendfsync %r: a Redis crash can lose up to a"
                " second of acknowledged pushes, whose seqs are then reused."
                " Use appendfsync always for drifttrio's guarantee",
                self._where(),
                values.get("appendfsync"),
            )

    async def _feed(self, task_status: trio.TaskStatus[None]) -> None:
        """One pub/sub connection for all followed rooms; re-opened when it breaks."""
        started = broken = False
        delay = 0.05
        open_pubsub = self.client.sharded_pubsub if self.cluster else self.client.pubsub
        while True:
            try:
                pubsub = open_pubsub(
                    retry_policy=None, ignore_subscribe_messages=True, max_idle_seconds=5
                )
                async with pubsub:
                    self._pubsub = pubsub
                    delay = 0.05
                    if not started:
                        started = True
                        task_status.started()
                    if broken:
                        broken = False
                        log.warning("Redis event feed reconnected")
                    while True:
                        # (Not ``async for``: that ends while nothing is subscribed.)
                        message = await pubsub.get_message()
                        if message is None or message["type"] not in ("message", "smessage"):
                            continue
                        callback = self._followers.get(message["channel"])
                        if callback is not None:
                            callback(message["data"])
            except Exception as exc:
                if not started:
                    raise
                broken = True
                log.warning("Redis event feed broke (%r); reconnecting", exc)
            finally:
                self._pubsub = None
                followers, self._followers = self._followers, {}
                for callback in followers.values():
                    callback(None)
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def aclose(self) -> None:
        """Stop :meth:`run` (which owns the connections)."""
        self._running = False
        if self._scope is not None:
            self._scope.cancel()

    # -- keys ----------------------------------------------------------------------

    def _meta(self, room_id: str) -> str:
        return f"{self.prefix}:{{{room_id}}}"

    def _keys(self, room_id: str) -> list[str]:
        meta = self._meta(room_id)
        return [meta, meta + ":keys", meta + ":log"]

    def _stream_prefix(self, room_id: str) -> str:
        return self._meta(room_id) + ":s:"

    def _journal_key(self, room_id: str) -> str:
        return self._meta(room_id) + ":journal"

    @property
    def _journal_index(self) -> str:
        return f"{self.prefix}:journal:rooms"

    @property
    def _journal_lease(self) -> str:
        return f"{self.prefix}:journal:lease"

    def channel(self, room_id: str) -> bytes:
        return (self._meta(room_id) + ":ev").encode()

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of the scripts (Redis errors become :class:`StorageError`)."""
        return await self._request(lambda: self._scripts[name](keys, args))

    async def _command(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one client command (Redis errors become :class:`StorageError`)."""
        return await self._request(lambda: getattr(self.client, method)(*args, **kwargs))

    async def _request(self, make: Callable[[], Awaitable[Any]]) -> Any:
        if not self._running:
            raise StorageError("the Redis storage is not running (start RedisStorage.run)")
        import coredis.exceptions

        try:
            return await make()
        except coredis.exceptions.RedisError as exc:
            raise StorageError(f"Redis: {exc}") from exc

    # -- shared rooms ---------------------------------------------------------------

    async def follow(self, room_id: str, callback: FeedCallback) -> None:
        """Deliver the room's published events to ``callback`` from now on."""
        pubsub = self._pubsub
        if pubsub is None:
            raise StorageError("Redis event feed is down")
        channel = self.channel(room_id)
        self._followers[channel] = callback
        try:
            await pubsub.subscribe(channel)
        except Exception as exc:
            self._followers.pop(channel, None)
            raise StorageError(f"Redis: cannot subscribe: {exc!r}") from exc

    async def unfollow(self, room_id: str, callback: FeedCallback) -> None:
        channel = self.channel(room_id)
        if self._followers.get(channel) is not callback:
            return
        del self._followers[channel]
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                await pubsub.unsubscribe(channel)
            except Exception as exc:
                log.debug("unsubscribe failed: %r", exc)

    async def push_batch(
        self,
        room_id: str,
        items: Sequence[PushItem],
        *,
        seen_ev: int,
        max_keys: int = 0,
        max_values: int = 0,
        max_bytes: int = 0,
    ) -> list[PushResult]:
        """Run the push script: assign seqs, retain, log and publish, atomically.

        ``seen_ev`` is the last event this node applied; if Redis holds fewer, it lost
        data and :class:`DataLossError` is raised. Raises
        :class:`~drifttrio.RoomNotFound` if the room is gone, :class:`StorageError`
        if Redis fails (then, unless the failure came after Redis ran the script,
        nothing was applied).
        """
        from .._errors import RoomNotFound

        journal = await self._journal_mark(room_id, any(i.action != "relay" for i in items))
        keys = [*self._keys(room_id), self._journal_key(room_id)]
        prefix = self._stream_prefix(room_id)
        index: dict[str, int] = {}
        for item in items:
            if item.key not in index:
                keys.append(prefix + item.key)
                index[item.key] = len(keys)
        args: list[Any] = [
            repr(self._clock()),
            self.log_length,
            self._publish,
            self.channel(room_id),
            max_keys,
            max_values,
            max_bytes,
            seen_ev,
            len(items),
            journal,
        ]
        for item in items:
            args += [
                item.action,
                index[item.key],
                item.key,
                item.blob,
                item.compact_seq,
                item.charge,
                item.key_charge,
                "" if item.expect_seq is None else item.expect_seq,
            ]
        raw = await self._call("PUSH", keys, args)
        self._journal_grown(journal)
        if raw is None:
            raise RoomNotFound(room_id)
        if raw and raw[0] == b"behind":
            raise DataLossError(
                f"Redis holds {raw[1]} events for the room, this node saw {seen_ev}:"
                " Redis lost writes"
            )
        results = []
        for item, row in zip(items, raw, strict=True):
            status = _text(row[0])
            if status == "ok":
                results.append(PushResult("ok", int(row[1]), int(row[2]), int(row[3])))
            elif status == "noop":
                results.append(PushResult("noop"))
            else:
                # The script names the cause by its PushRefusal value: the text is
                # rendered here, from the same table as RoomState's refusals.
                reason = PushRefusal(_text(row[1]))
                refusal = PushRefused(reason, item.key, *(int(n) for n in row[2:]))
                results.append(PushResult("error", refusal=refusal))
        return results

    async def read_events(self, room_id: str, first: int, last: int) -> list[Event]:
        """Events ``first..last`` from the room's log (fewer if they were trimmed)."""
        entries = await self._command("xrange", self._keys(room_id)[2], f"{first}-0", f"{last}-0")
        events: list[Event] = []
        for entry in entries:
            events.extend(parse_records(entry.field_values[b"p"]))
        return events

    # -- the Storage interface ----------------------------------------------------

    @property
    def _counter(self) -> str:
        """How many rooms exist (kept beside the rooms: scripts can't span slots)."""
        return f"{self.prefix}:rooms"

    async def _count(self, delta: int) -> None:
        await self._command("incrby", self._counter, delta)

    async def create_room(self, room_id: str) -> None:
        if await self._call("CREATE", self._keys(room_id)[:1], [repr(self._clock())]):
            await self._count(1)

    async def room_exists(self, room_id: str) -> bool:
        return bool(await self._command("exists", [self._meta(room_id)]))

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        raw = await self._call("LOAD", self._keys(room_id)[:2], [self._stream_prefix(room_id)])
        if raw is None:
            return None
        streams: dict[str, Stream] = {}
        for name, mark, entries in raw[2:]:
            streams[_text(name)] = Stream([_parse_entry(e) for e in entries], int(mark))
        return RoomSnapshot(int(raw[0]), streams, ev=int(raw[1]))

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        from .._errors import RoomNotFound

        journal = await self._journal_mark(room_id, bool(changes))
        args: list[Any] = [repr(self._clock()), seq, self._stream_prefix(room_id), journal]
        for change in changes:
            entry = change.entry
            args += [change.kind, change.key, _entry(entry.seq, entry.value)]
        keys = [*self._keys(room_id)[:2], self._journal_key(room_id)]
        done = await self._call("COMMIT", keys, args)
        self._journal_grown(journal)
        if done is None:
            raise RoomNotFound(room_id)

    async def delete_room(self, room_id: str) -> None:
        if await self._call("DELETE", self._keys(room_id), [self._stream_prefix(room_id)]):
            await self._count(-1)

    async def touch(self, room_id: str) -> None:
        await self._call("TOUCH", self._keys(room_id)[:1], [repr(self._clock())])

    async def _room_ids(self) -> list[str]:
        """Every stored room (a SCAN over all primaries: O(rooms))."""
        import coredis.exceptions

        head = f"{self.prefix}:{{"
        ids = []
        try:
            async for raw in self.client.scan_iter(match=head + "*", type_="hash"):
                name = _text(raw)
                if name.endswith("}") and name.startswith(head):
                    ids.append(name[len(head) : -1])
        except coredis.exceptions.RedisError as exc:
            raise StorageError(f"Redis: {exc}") from exc
        return sorted(ids)

    async def expire(self, idle_seconds: float, keep: Container[str] = ()) -> list[str]:
        """Delete rooms idle longer than ``idle_seconds`` (except ``keep``). Other nodes
        do not know this node's live rooms: the hub touches them first."""
        cutoff = self._clock() - idle_seconds
        expired = []
        for room_id in await self._room_ids():
            if room_id in keep:
                continue
            last = await self._command("hget", self._meta(room_id), "last")
            if last is None or float(last) >= cutoff:
                continue
            args = [self._stream_prefix(room_id), repr(cutoff)]
            if await self._call("DELETE", self._keys(room_id), args):
                await self._count(-1)
                expired.append(room_id)
        return expired

    async def count_rooms(self) -> int:
        """O(1): a counter kept by create/delete/expire/import (a node dying between a
        room's creation and the count can leave it off by one; ``list_rooms`` scans)."""
        raw = await self._command("get", self._counter)
        return max(0, int(raw or 0))

    async def list_rooms(self) -> list[RoomInfo]:
        infos = []
        for room_id in await self._room_ids():
            seq, last = await self._command("hmget", self._meta(room_id), ["seq", "last"])
            if seq is not None:
                infos.append(RoomInfo(room_id, int(seq), float(last or 0)))
        return infos

    async def import_room(self, room_id: str, snapshot: RoomSnapshot) -> None:
        args: list[Any] = [repr(self._clock()), snapshot.seq, self._stream_prefix(room_id)]
        for key, stream in snapshot.streams.items():
            args += [key, stream.compacted, len(stream.entries)]
            args += [_entry(e.seq, e.value) for e in stream.entries]
        if await self._call("IMPORT", self._keys(room_id), args):
            await self._count(1)

    # -- the committed-push journal ---------------------------------------------------
    #
    # Each room's journal is a stream under the room's hash tag, written by the push
    # (or commit) script itself: a push and its journal entry are one atomic write.
    # A global index (a sorted set) names the rooms whose journal may hold entries; no
    # script can write it with the room's keys on a Redis Cluster (other slot), so the
    # node marks the room in it *before* running the script. Crash windows: a node
    # dying between the mark and the script leaves a mark with an empty journal
    # (unmarked after the grace period); the consumer dying between delivering and
    # trimming delivers those entries again (at least once). Only a mark older than
    # the grace period on an empty journal is removed (the index's own Redis time
    # decides), so a push marked but not yet written is never left unmarked.
    #
    # One node delivers: the holder of a lease (a key with an expiry, renewed by each
    # wait and read, and every 20 s while it holds it). If it dies, another takes over
    # once the lease expires and delivers again what the first had not trimmed.

    def enable_journal(self) -> None:
        """Journal this node's pushes from now on. Every node sharing the store must
        run the same hooks: a node without ``on_committed`` journals nothing."""
        self._journaling = True

    async def _journal_mark(self, room_id: str, retains: bool) -> str:
        """Mark the room in the journal index if the batch will journal something;
        the script's journal flag (``'1'`` or ``'0'``)."""
        if not (self._journaling and retains):
            return "0"
        now = time.monotonic()
        if now - self._journal_marked.get(room_id, -math.inf) >= JOURNAL_REMARK_SECONDS:
            if len(self._journal_marked) >= self._journal_marked_max:
                # Forget the stale marks: the dict holds the rooms pushed to lately.
                fresh = now - JOURNAL_REMARK_SECONDS
                marked = self._journal_marked.items()
                self._journal_marked = {room: at for room, at in marked if at > fresh}
                self._journal_marked_max = max(4096, 2 * len(self._journal_marked))
            await self._call("JOURNAL_MARK", [self._journal_index], [room_id])
            self._journal_marked[room_id] = now  # when sent: the mark is no older
        return "1"

    def _journal_grown(self, journal: str) -> None:
        if journal == "1":
            self._journal_grew.set()
            self._journal_grew = trio.Event()

    async def _holds_journal_lease(self) -> bool:
        """Take the delivery lease if it is free, renew it if this node holds it."""
        ttl_ms = int(JOURNAL_LEASE_SECONDS * 1000)
        args = [self._journal_token, ttl_ms]
        held = await self._call("JOURNAL_LEASE", [self._journal_lease], args)
        self._journal_lease_held = bool(held)
        return self._journal_lease_held

    async def _keep_journal_lease(self) -> None:
        """Renew the lease while this node holds it, also while ``on_committed`` takes
        long (a slow hook must not hand delivery to a second node meanwhile)."""
        while True:
            await trio.sleep(JOURNAL_LEASE_SECONDS / 3)
            if self._journal_lease_held:
                try:
                    await self._holds_journal_lease()
                except StorageError as exc:  # the next wait or read tries again
                    log.debug("could not renew the journal lease: %s", exc)

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries from the rooms marked in the index, visited in turn
        from where the last read stopped (so a busy room starves none); nothing
        unless this node holds the delivery lease."""
        entries: list[JournalEntry] = []
        if await self._holds_journal_lease():
            start = self._journal_offset
            rooms = await self._command("zrange", self._journal_index, start, start + limit - 1)
            # Next time: from the first room not drained now (wrapping at the end).
            self._journal_offset = start + len(rooms) if len(rooms) == limit else 0
            for visited, raw in enumerate(rooms):
                room_id = _text(raw)
                wanted = limit - len(entries)
                found = await self._command(
                    "xrange", self._journal_key(room_id), "-", "+", count=wanted
                )
                if not found:
                    args = [room_id, repr(JOURNAL_GRACE_SECONDS)]
                    await self._call("JOURNAL_UNMARK", [self._journal_index], args)
                entries.extend(_journal_entry(room_id, item) for item in found)
                if len(entries) >= limit:
                    self._journal_offset = start + visited + (len(found) < wanted)
                    break
        self._journal_idle = not entries
        return entries

    async def trim_journal(self, entries: Sequence[JournalEntry]) -> None:
        last: dict[str, int] = {}
        for entry in entries:
            last[entry.room_id] = max(entry.id, last.get(entry.room_id, 0))
        for room_id, upto in last.items():
            args = [f"0-{upto + 1}", JOURNAL_EMPTY_TTL_MS]
            await self._call("JOURNAL_TRIM", [self._journal_key(room_id)], args)

    async def wait_journal(self) -> None:
        """Poll: other nodes' pushes wake no one here. This node's own pushes wake it
        at once; after a read that found nothing, wait for one or the poll period."""
        while True:
            if (
                not self._journal_idle
                and await self._holds_journal_lease()
                and await self._command("zcard", self._journal_index)
            ):
                return
            self._journal_idle = False
            with trio.move_on_after(JOURNAL_POLL_SECONDS):
                await self._journal_grew.wait()


def _journal_entry(room_id: str, item: Any) -> JournalEntry:
    """A journal stream entry (id ``0-N``; fields seq, action, key, CBOR value)."""
    fields = item.field_values
    return JournalEntry(
        int(_text(item.identifier).split("-", 1)[1]),
        room_id,
        int(fields[b"s"]),
        _text(fields[b"a"]),
        _text(fields[b"k"]),
        _decode_value(fields[b"v"]),
    )
