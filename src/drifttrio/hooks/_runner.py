"""How the server calls an application's :class:`~drifttrio.hooks.Hooks`.

One :class:`HookRunner` per hub: it knows which hooks are overridden (what is not
costs nothing), calls them under their deadlines, turns a hook that raises, times
out or answers nonsense into a refusal with one log line, and runs the two event
tasks (best-effort events from a bounded queue; committed pushes from the store's
journal, at least once).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, Final, TypeVar

import orjson
import trio

from .._errors import ConfigError, ProtocolError
from ..protocol.codec import DecodeLimits, bytes_as_ints, check_value
from ..protocol.messages import Action, Compact
from ..storage.base import JournaledStorage, SharedStorage, Storage
from ._api import (
    ADMIT_ALL,
    Accept,
    Admit,
    Committed,
    ConnectRequest,
    Event,
    Hooks,
    PushRequest,
    Refuse,
    Replace,
    RoomView,
    Source,
)

__all__ = ["PUSH_HOOK_FAILED", "PUSH_HOOK_TIMED_OUT", "HookFailed", "HookRunner", "push_request"]

log = logging.getLogger("drifttrio.hooks")

T = TypeVar("T")

#: What a client is told when the push hook raised or answered nonsense.
PUSH_HOOK_FAILED: Final = "push refused: the server's room logic failed"
#: ... and when the async push hook missed its deadline.
PUSH_HOOK_TIMED_OUT: Final = "push refused: the server's room logic timed out"
_AUTHORIZE_FAILED: Final = "authorization unavailable: try again later"
#: Events waiting for ``on_event``; past it they are dropped (best effort).
EVENT_QUEUE_SIZE: Final = 4096
#: Committed pushes handed to ``on_committed`` at most per call.
COMMITTED_BATCH: Final = 256
#: Backoff between retries of a failing ``on_committed`` (seconds, doubling).
RETRY_FIRST, RETRY_MAX = 0.1, 30.0


def push_request(
    room_id: str,
    key: str,
    action: Action,
    value: object,
    identity: object,
    source: Source,
    client: str = "",
) -> PushRequest:
    """A push as the hooks see it (the action's tag, a compact's seq)."""
    compact_seq = action.seq if isinstance(action, Compact) else None
    return PushRequest(room_id, key, action.TAG, value, identity, source, compact_seq, client)


class HookFailed(Exception):
    """A hook raised, missed its deadline or answered what it may not (logged once)."""

    def __init__(self, timed_out: bool = False) -> None:
        super().__init__("timed out" if timed_out else "failed")
        self.timed_out = timed_out


class HookRunner:
    """The server's side of one :class:`Hooks` object."""

    def __init__(
        self, hooks: Hooks, limits: DecodeLimits | None = None, max_value_bytes: int = 0
    ) -> None:
        self.hooks = hooks
        self._limits = limits or DecodeLimits()
        #: The largest value a hook may put in a push (its JSON; 0: unlimited): what
        #: a client's message may hold (``max_message_bytes``).
        self._max_value_bytes = max_value_bytes
        #: Which hooks are set: the server only calls (and only pays for) these.
        self.authorizes = hooks.overrides("authorize")
        self.screens_pushes = hooks.overrides("on_push")
        self.decides = hooks.overrides("decide")
        self.wants_events = hooks.overrides("on_event")
        self.wants_commits = hooks.overrides("on_committed")
        #: ``on_push`` is a plain method: called on the spot, without the deadline's
        #: cancel scope (which costs more than a trivial hook).
        self.push_is_plain = not inspect.iscoroutinefunction(hooks.on_push)
        self._events_in, self._events_out = trio.open_memory_channel[Event](EVENT_QUEUE_SIZE)
        #: Events dropped because ``on_event`` fell behind.
        self.dropped_events = 0
        self._dropped_logged_at = -float("inf")

    def check_store(self, storage: Storage) -> None:
        """Refuse, at start-up, hooks the store cannot honour."""
        if self.decides and isinstance(storage, SharedStorage):
            raise ConfigError(
                "Hooks.decide needs a store this server orders (memory, sqlite); with "
                "redis, decide in on_push and return Accept(expect_seq=...) instead"
            )
        if self.wants_commits and not isinstance(storage, JournaledStorage):
            raise ConfigError(
                f"Hooks.on_committed needs a store that keeps a journal; "
                f"{type(storage).__name__} does not"
            )

    # -- calling a hook ----------------------------------------------------------------

    async def _call(
        self,
        name: str,
        hook: Callable[[Any], Any],
        arg: Any,
        deadline: float,
    ) -> Any:
        started = time.perf_counter()
        try:
            result = hook(arg)
            if inspect.isawaitable(result):
                with trio.move_on_after(deadline) as scope:
                    return await result
                if scope.cancelled_caught:
                    log.warning("hook %s timed out after %.3g s", name, deadline)
                    raise HookFailed(timed_out=True)
        except HookFailed:
            raise
        # The application's code: anything may come out. SystemExit too (a hook
        # cannot stop the server); KeyboardInterrupt and trio's Cancelled pass.
        except (Exception, SystemExit) as exc:
            log.warning("hook %s raised %s: %s", name, type(exc).__name__, exc)
            raise HookFailed from None
        elapsed = time.perf_counter() - started
        if elapsed > self.hooks.slow_seconds:
            log.warning("hook %s held the event loop for %.0f ms", name, elapsed * 1000)
        return result

    def call_plain(self, name: str, hook: Callable[..., T], *args: Any) -> T:
        """Call a plain hook (``decide``, a plain ``on_push``) on the spot;
        :class:`HookFailed` if it fails."""
        started = time.perf_counter()
        try:
            result = hook(*args)
        except (Exception, SystemExit) as exc:  # as in _call
            log.warning("hook %s raised %s: %s", name, type(exc).__name__, exc)
            raise HookFailed from None
        if not isinstance(result, _ANSWERS) and inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            log.warning("hook %s returned an awaitable from a plain method", name)
            raise HookFailed
        elapsed = time.perf_counter() - started
        if elapsed > self.hooks.slow_seconds:
            log.warning("hook %s held the room for %.0f ms", name, elapsed * 1000)
        return result

    # -- decisions -------------------------------------------------------------------------

    async def authorize(self, request: ConnectRequest) -> Admit | Refuse:
        """The hook's admission (:data:`ADMIT_ALL` without a hook); a failing hook
        refuses with 503."""
        if not self.authorizes:
            return ADMIT_ALL
        try:
            answer = await self._call(
                "authorize", self.hooks.authorize, request, self.hooks.authorize_timeout
            )
        except HookFailed:
            return Refuse(_AUTHORIZE_FAILED, 503)
        if answer is None:
            return ADMIT_ALL
        if isinstance(answer, Refuse):
            return answer
        if isinstance(answer, Admit):
            try:  # it travels with every push, to webhooks and events: plain data
                check_value(answer.identity, self._limits)
            except ProtocolError as exc:
                log.warning("hook authorize admitted an identity that is not plain data: %s", exc)
                return Refuse(_AUTHORIZE_FAILED, 503)
            return answer
        log.warning("hook authorize answered %s, not Admit, Refuse or None", type(answer).__name__)
        return Refuse(_AUTHORIZE_FAILED, 503)

    def screen_push_now(self, push: PushRequest) -> Accept | Replace | Refuse:
        """A plain ``on_push``'s decision (see :attr:`push_is_plain`), made on the spot."""
        try:
            answer = self.call_plain("on_push", self.hooks.on_push, push)
        except HookFailed:
            return Refuse(PUSH_HOOK_FAILED, 503)
        return self.checked("on_push", answer)

    async def screen_push(self, push: PushRequest) -> Accept | Replace | Refuse:
        """``on_push``'s decision, checked (a replaced value must be plain data within
        the decode limits); a failing hook refuses the push."""
        if self.push_is_plain:
            return self.screen_push_now(push)
        try:
            answer = await self._call("on_push", self.hooks.on_push, push, self.hooks.push_timeout)
        except HookFailed as exc:
            return Refuse(PUSH_HOOK_TIMED_OUT if exc.timed_out else PUSH_HOOK_FAILED, 503)
        return self.checked("on_push", answer)

    def decide(self, view: RoomView, push: PushRequest) -> Accept | Replace | Refuse:
        """``decide``'s decision, checked; a failing hook refuses the push."""
        try:
            answer = self.call_plain("decide", self.hooks.decide, view, push)
        except HookFailed:
            return Refuse(PUSH_HOOK_FAILED, 503)
        return self.checked("decide", answer)

    def checked(self, name: str, answer: object) -> Accept | Replace | Refuse:
        if answer is None:
            return _ACCEPT
        if isinstance(answer, Replace):
            try:
                check_value(answer.value, self._limits)
                if self._max_value_bytes:
                    size = len(orjson.dumps(answer.value, default=bytes_as_ints))
                    if size > self._max_value_bytes:
                        raise ProtocolError(f"{size} bytes, over {self._max_value_bytes}")
            except ProtocolError as exc:
                log.warning("hook %s replaced a value with one that cannot be sent: %s", name, exc)
                return Refuse(PUSH_HOOK_FAILED, 503)
            return answer
        if isinstance(answer, (Accept, Refuse)):
            return answer
        log.warning(
            "hook %s answered %s, not Accept, Replace, Refuse or None", name, type(answer).__name__
        )
        return Refuse(PUSH_HOOK_FAILED, 503)

    # -- events ----------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Queue a best-effort event for ``on_event``, without waiting (dropped, and
        counted, when the queue is full)."""
        if not self.wants_events:
            return
        try:
            self._events_in.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
            now = time.monotonic()
            if now - self._dropped_logged_at >= 60.0:
                self._dropped_logged_at = now
                log.warning(
                    "hook on_event is behind: %d events dropped so far", self.dropped_events
                )

    @asynccontextmanager
    async def running(self, storage: Storage) -> AsyncIterator[None]:
        """The hooks' own lifespan, and the tasks delivering their events, for the block."""
        async with self.hooks.lifespan(), trio.open_nursery() as nursery:
            if self.wants_events:
                nursery.start_soon(self._deliver_events)
            if self.wants_commits:
                assert isinstance(storage, JournaledStorage)
                storage.enable_journal()
                nursery.start_soon(self._deliver_committed, storage)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _deliver_events(self) -> None:
        async for event in self._events_out:
            # Best effort: a failure is logged, and the next event delivered.
            with suppress(HookFailed):
                await self._call("on_event", self.hooks.on_event, event, self.hooks.event_timeout)

    async def _deliver_committed(self, journal: JournaledStorage) -> None:
        """Hand the journal's head to ``on_committed`` until it returns, then trim it:
        nothing is forgotten before the hook took it (at least once), and a batch
        the hook failed on is offered again, with backoff, before any later one."""
        while True:
            await self._retrying("wait for the journal", journal.wait_journal)
            entries = await self._retrying(
                "read the journal", partial(journal.read_journal, COMMITTED_BATCH)
            )
            if not entries:
                continue
            pushes = [Committed(e.room_id, e.seq, e.key, e.action, e.value) for e in entries]
            await self._retrying(
                "deliver committed pushes",
                partial(
                    self._call,
                    "on_committed",
                    self.hooks.on_committed,
                    pushes,
                    self.hooks.event_timeout,
                ),
            )
            await self._retrying("trim the journal", partial(journal.trim_journal, entries))

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``await step()``, retried with backoff (doubling, up to :data:`RETRY_MAX`)
        while it fails; a failing hook was logged by :meth:`_call` already."""
        delay = RETRY_FIRST
        while True:
            try:
                return await step()
            except HookFailed:
                pass
            except Exception as exc:
                log.warning("could not %s for on_committed (retrying): %s", what, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


_ACCEPT: Final = Accept()


#: What a hook answers, and is no awaitable: checked first, it is cheaper.
_ANSWERS: Final = (type(None), Accept, Replace, Refuse, Admit)
