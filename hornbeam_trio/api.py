"""The Hornbeam-compatible façade: synchronous, handle-free, as in the guide.

Every call finds the server it runs under (and the connection it runs for)
through context variables, so the same names work in WebSocket and HTTP
handlers, lifespan and background tasks.  Outside any server they work on the
process-wide in-memory store, which is what ETS is on one node: handy in
scripts and unit tests.  ``subscribe()`` is the exception: it needs a
WebSocket connection to push to, and says so.

``owned=True`` ties a key to the calling connection: an owned set is deleted,
an owned increment taken back, when the connection ends, on every exit path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from .backends.base import HistoryRead, HistoryStore, HistoryUnavailable
from .backends.history import Position
from .backends.presence import events_topic
from .pubsub import COUNTS, Delivery, Message, SlowConsumer, Subscription
from .recovery import PositionedPush
from .runtime import ConnectionContext, current_connection, get_runtime

__all__ = [
    "History",
    "HistoryUnavailable",
    "Message",
    "Position",
    "SlowConsumer",
    "decr",
    "delete",
    "get",
    "history",
    "incr",
    "presence",
    "presence_join",
    "presence_leave",
    "presence_topic",
    "publish",
    "set",
    "state_decr",
    "state_delete",
    "state_get",
    "state_get_multi",
    "state_incr",
    "state_keys",
    "state_set",
    "stats",
    "subscribe",
    "subscription",
    "unsubscribe",
]


def _owner(call: str) -> ConnectionContext:
    """The calling connection, still open: checked before the write is made."""
    context = current_connection.get()
    if context is None:
        raise RuntimeError(f"{call}(..., owned=True) must be called while handling a connection")
    context.check_open(call)
    return context


# -- shared state ------------------------------------------------------------
def state_get(key: str) -> Any:
    """The value, or None when absent (a copy: mutating it never changes the store)."""
    return get_runtime().backend.get(key)


def state_set(key: str, value: Any, *, owned: bool = False) -> None:
    context = _owner("state_set") if owned else None
    get_runtime().backend.set(key, value)
    if context is not None:
        context.own_set(key)


def state_delete(key: str) -> None:
    get_runtime().backend.delete(key)
    context = current_connection.get()
    if context is not None:
        context.disown(key)


def state_incr(key: str, delta: int = 1, *, owned: bool = False) -> int:
    """Atomic add; a missing key counts from 0; returns the new value."""
    context = _owner("state_incr") if owned else None
    value = get_runtime().backend.incr(key, delta)
    if context is not None:
        context.own_incr(key, delta)
    return value


def state_decr(key: str, delta: int = 1, *, owned: bool = False) -> int:
    return state_incr(key, -delta, owned=owned)


def state_get_multi(keys: Iterable[str]) -> dict[str, Any]:
    return get_runtime().backend.get_multi(list(keys))


def state_keys(prefix: str | None = None) -> list[str]:
    return get_runtime().backend.keys(prefix)


get = state_get
set = state_set
delete = state_delete
incr = state_incr
decr = state_decr


# -- pub/sub -----------------------------------------------------------------
def publish(topic: str, message: Any) -> int:
    """Deliver to every subscriber of ``topic`` without blocking; returns how many.

    A fan-out to more than 1,000 subscribers in this process (and any publish made
    while one is pending) is delivered after the call, in slices, in publish order:
    the count is then of the subscribers it will try (see :mod:`hornbeam_trio.fanout`).
    """
    reached = get_runtime().backend.publish(topic, message)
    COUNTS.published += 1  # after: a publish that raised (a bad value) was not made
    return reached


def subscribe(topic: str, since: Position | str | None = None) -> None:
    """The current WebSocket client receives the topic's messages, pushed by the server.

    With ``since`` (a :class:`Position` or its ``str()``; the topic must keep history),
    the client first gets a recovery frame ``{"topic", "recovered", "position"}``, then
    the messages kept after ``since``, then the live ones, each once, every one as
    ``{"topic", "position", "data"}`` (see :mod:`hornbeam_trio.recovery`).  A plain
    push subscription to the topic is replaced by this one.
    """
    context = current_connection.get()
    if context is None or context.pusher is None:
        raise RuntimeError(
            "subscribe() pushes to the current WebSocket client, and there is none here; "
            "use `async with hornbeam_trio.subscription(topic) as messages` instead"
        )
    if since is None:
        context.subscribe(topic, context.pusher)
        return
    position = _position(since)
    store = _history_store(topic)
    if context.ended:
        return
    context.unsubscribe(topic, context.pusher)
    push = PositionedPush(topic, context.pusher)
    context.subscribe(topic, push)  # registered first: the read below misses nothing
    store.fetch_history(topic, position, push.replay)


def unsubscribe(topic: str) -> None:
    context = current_connection.get()
    if context is None or context.pusher is None:
        return
    context.unsubscribe(topic, context.pusher)


# -- presence ------------------------------------------------------------------
def presence_join(topic: str, info: Any = None) -> str:
    """The calling connection joins ``topic``'s presence with ``info`` (JSON-like), or
    updates its info if it is in already; returns its member id.

    Owned by the connection: it leaves on every exit path, with its owned keys.  A
    join event is published on :func:`presence_topic` once ``presence(topic)`` shows it.
    """
    context = current_connection.get()
    if context is None:
        raise RuntimeError("presence_join() must be called while handling a connection")
    return context.join_presence(topic, info)


def presence_leave(topic: str) -> None:
    """The calling connection leaves ``topic``'s presence (a leave event follows); a
    no-op if it is not in."""
    context = current_connection.get()
    if context is None:
        raise RuntimeError("presence_leave() must be called while handling a connection")
    context.leave_presence(topic)


def presence(topic: str) -> dict[str, Any]:
    """member id -> info of ``topic``'s members (copies).  Over Redis this would have to
    wait: it raises SyncUnavailable, use ``await hornbeam_trio.state.presence(topic)``."""
    return get_runtime().backend.presence(topic)


def presence_topic(topic: str) -> str:
    """Where ``topic``'s join and leave events are published: ``"presence:" + topic``."""
    return events_topic(topic)


# -- topic history -------------------------------------------------------------
class History(NamedTuple):
    """What ``history()`` returns: the messages (oldest first), the topic's newest
    position, and whether nothing after ``since`` is missing from ``messages``."""

    messages: list[Message]
    position: Position
    recovered: bool


def _history_store(topic: str) -> HistoryStore:
    backend: Any = get_runtime().backend
    if not hasattr(backend, "history_read"):
        raise HistoryUnavailable(f"topic history: the {backend.name} backend keeps none")
    store: HistoryStore = backend
    if not store.keeps_history(topic):
        raise LookupError(f"topic {topic!r} keeps no history: no --history pattern matches it")
    return store


def _position(since: Position | str | None) -> Position | None:
    return Position.parse(since) if isinstance(since, str) else since


def history(topic: str, since: Position | str | None = None, limit: int | None = None) -> History:
    """The kept messages of ``topic`` after ``since`` (None: all kept), without subscribing.

    ``limit`` keeps the newest ``limit`` of them (``recovered`` is then False if it cut
    any).  A ``since`` of another epoch reads as None, with ``recovered`` False.
    Raises LookupError for a topic no ``--history`` pattern matches, and
    :class:`HistoryUnavailable` over a backend that keeps no history.  Over Redis it
    raises ``SyncUnavailable``: ``await hornbeam_trio.state.history(...)`` works on both.
    """
    _check_limit(limit)
    read: HistoryRead = _history_store(topic).history_read(topic, _position(since), limit)
    return History(_messages(read), read.position, read.recovered)


async def ahistory(
    topic: str, since: Position | str | None = None, limit: int | None = None
) -> History:
    """``history()``, awaitable: what to call over Redis (``hornbeam_trio.state.history``)."""
    _check_limit(limit)
    read = await _history_store(topic).ahistory_read(topic, _position(since), limit)
    return History(_messages(read), read.position, read.recovered)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an integer >= 0 or None, got {limit!r}")


def _messages(read: HistoryRead) -> list[Message]:
    return [Message(Delivery(kept).value(), kept.position) for kept in read.messages]


@asynccontextmanager
async def subscription(
    topic: str,
    *,
    maxsize: int | None = None,
    since: Position | str | None = None,
    with_positions: bool = False,
) -> AsyncIterator[Subscription]:
    """``async with subscription(topic) as messages: async for m in messages: ...``

    Owned by the calling connection when there is one: when the connection ends
    (client gone, server shutdown), the ``async for`` ends at once; opened after
    the end, it ends at once too.  Always released when the block exits.  Under
    the ``close`` slow-consumer policy an overflow raises :class:`SlowConsumer`
    from the iterator and, inside a WebSocket connection, closes it with 1013.

    With ``since`` (a :class:`Position` or its ``str()``), first the messages kept
    after it, then the live ones: none missing in between, none twice.  Messages
    then come as :class:`Message` (``.data``, ``.position``), as with
    ``with_positions=True``.  If ``since`` is of another epoch or older than what is
    kept, ``messages.recovered`` is False (readable before the first message) and
    the replay starts at the oldest message kept.  The topic must keep history
    (LookupError otherwise; :class:`HistoryUnavailable` over a backend without).
    """
    runtime = get_runtime()
    position = _position(since)
    positions = with_positions or position is not None
    store = _history_store(topic) if positions else None
    context = current_connection.get()
    config = context.config if context is not None else None
    on_overflow = None
    if context is not None and context.pusher is not None:
        pusher = context.pusher
        close_now = getattr(pusher, "close_now", None)
        if close_now is not None:

            def on_overflow() -> None:
                close_now(1013, "slow consumer")

    sub = Subscription(
        topic,
        maxsize=maxsize or (config.subscriber_queue_size if config else 1024),
        policy=config.slow_consumer if config else "close",
        on_overflow=on_overflow,
        positions=positions,
    )
    # The subscriber is registered before the history is read: every message is in
    # the read or delivered live (or both, and replay() drops the live copy).
    if context is not None:
        context.open_iterator(sub)  # ends with the connection (at once if it has ended)
    else:
        runtime.add_subscriber(topic, sub)
    try:
        if store is not None and position is not None:
            read = await store.ahistory_read(topic, position)
            sub.replay(read.messages, recovered=read.recovered, through=read.position)
        yield sub
    finally:
        sub.close()
        if context is not None:
            context.close_iterator(sub)
        else:
            runtime.remove_subscriber(topic, sub)


def stats() -> dict[str, Any]:
    """Live connections, tasks per connection, subscribers per topic, owned keys."""
    return get_runtime().stats()
