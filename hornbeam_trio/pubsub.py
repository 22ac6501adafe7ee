"""Topics, deliveries and subscriber queues: the in-process fan-out.

A published message becomes one :class:`Delivery`.  Its JSON text and its
WebSocket frame are computed at most once, however many subscribers it
reaches, and each subscriber's ``deliver()`` must not block: a WebSocket
connection writes the pre-encoded frame with one non-blocking ``send()`` and
queues only what the kernel did not take; a :class:`Subscription` iterator
appends to its bounded queue.  So one slow subscriber never delays the others
and ``publish()`` never waits.  What happens when a subscriber's queue is full
is the configured slow-consumer policy: ``close`` or ``drop-oldest``.

A fan-out to more than ``fanout.INLINE_LIMIT`` subscribers, and every publish made
while one is pending, goes through the FIFO of :mod:`hornbeam_trio.fanout`, worked
through in slices by its own task: per-subscriber order holds across topics.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import trio

from .backends.codec import EncodedJSON
from .backends.history import Kept, Position
from .fanout import FanOut, deliver_all
from .protocol.websocket import encode_binary, encode_text


class PubSubCounts:
    """Totals of this process's pub/sub: plain ints, read by the metrics collector at
    scrape time (metrics.py), so counting costs an add and nothing else.

    ``published``: publish() calls made here; ``delivered``: messages handed to local
    subscribers (one per subscriber reached); ``dropped``: deliveries lost under
    ``drop-oldest``; ``slow_consumer_closes``: subscribers ended under ``close`` (a
    WebSocket closed with 1013, a ``subscription()`` that raised SlowConsumer).
    """

    __slots__ = ("delivered", "dropped", "published", "slow_consumer_closes")

    def __init__(self) -> None:
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.slow_consumer_closes = 0


COUNTS = PubSubCounts()
"""The process's one instance: metrics are per process, whatever the servers in it."""


class Delivery:
    """One published message, encoded lazily and only once."""

    __slots__ = ("_frame", "_text", "message", "position")

    def __init__(self, message: Any) -> None:
        self.position: Position | None = None
        """Its place in the topic's history; None for a topic that keeps none."""
        if isinstance(message, Kept):  # a topic with history: frozen at publish
            self.position = message.position
            message = message.message
        self.message = message
        self._text: str | None = message if isinstance(message, str) else None
        self._frame: bytes | None = None
        if isinstance(message, EncodedJSON):
            self._text = message.text  # from another process: framed as it was encoded
        elif not isinstance(message, (str, bytes)):
            # Validate (and encode) at publish time, so a bad value fails the publisher.
            self._text = json.dumps(message, separators=(",", ":"))

    @property
    def size(self) -> int:
        """About what the message holds in memory: its text's or bytes' length."""
        text = self._text
        return len(text) if text is not None else len(self.message)

    @property
    def is_binary(self) -> bool:
        return isinstance(self.message, bytes)

    @property
    def frame(self) -> bytes:
        """The WebSocket frame: dict/list/scalars -> JSON text, str -> text, bytes -> binary."""
        frame = self._frame
        if frame is None:
            if self._text is None:
                frame = encode_binary(self.message)
            else:
                frame = encode_text(self._text)
            self._frame = frame
        return frame

    def value(self) -> Any:
        """An independent copy, as a subscriber over Redis would decode it."""
        if self._text is None or isinstance(self.message, str):
            return self.message
        return json.loads(self._text)


def replayed(delivery: Delivery, through: Position) -> bool:
    """Whether a replay that read up to ``through`` holds ``delivery`` already."""
    position = delivery.position
    return (
        position is not None
        and position.offset <= through.offset
        and position.epoch == through.epoch
    )


class Subscriber(Protocol):
    def deliver(self, delivery: Delivery) -> bool:
        """Take the delivery without blocking; False if this subscriber is gone."""
        ...


class Hub:
    """topic -> subscribers in this process, and the FIFO of its big fan-outs."""

    def __init__(self) -> None:
        self.topics: dict[str, dict[Subscriber, None]] = {}
        self.fanout = FanOut(self.topics, COUNTS)
        """Its ``run()`` is started by ``serve()``; without it, every fan-out is inline."""

    def add(self, topic: str, subscriber: Subscriber) -> bool:
        """Register; True when this is the topic's first local subscriber."""
        subscribers = self.topics.get(topic)
        if subscribers is None:
            self.topics[topic] = {subscriber: None}
            return True
        subscribers[subscriber] = None
        return False

    def remove(self, topic: str, subscriber: Subscriber) -> bool:
        """Unregister; True when the topic has no local subscriber left."""
        subscribers = self.topics.get(topic)
        if subscribers is None or subscriber not in subscribers:
            return False
        del subscribers[subscriber]
        if not subscribers:
            del self.topics[topic]
            return True
        return False

    def deliver_local(self, topic: str, message: Any) -> int:
        subscribers = self.topics.get(topic)
        if not subscribers:
            if not isinstance(message, (str, bytes, EncodedJSON, Delivery, Kept)):
                json.dumps(message)  # same TypeError with or without listeners
            return 0
        delivery = message if isinstance(message, Delivery) else Delivery(message)
        fanout = self.fanout
        if fanout.jobs or len(subscribers) > fanout.limit:  # behind what is queued, or big
            return fanout.submit(topic, delivery, subscribers, delivery.size)
        # A tuple: deliver() may unsubscribe (slow-consumer close) while we iterate.
        reached = deliver_all(tuple(subscribers), delivery)
        COUNTS.delivered += reached
        return reached

    def subscriber_counts(self) -> dict[str, int]:
        return {topic: len(subs) for topic, subs in self.topics.items()}


@dataclass(frozen=True, slots=True)
class Message:
    """A message with its place in the topic's history: what a ``subscription(topic,
    since=...)`` (or ``with_positions=True``) and ``history()`` hand the app.  Give
    ``str(position)`` to the client; it comes back as ``since`` when it reconnects."""

    data: Any
    position: Position


class SlowConsumer(Exception):
    """The subscription's queue overflowed under the ``close`` policy."""


SlowConsumerPolicy = Literal["close", "drop-oldest"]


class Subscription:
    """``async for message in subscription`` — a bounded queue fed by the hub.

    Messages are independent copies (JSON-like values as decoded JSON; str and
    bytes as they were published); with ``positions`` each comes as a
    :class:`Message` with its history position.  Created by
    ``hornbeam_trio.subscription()``.

    A subscription opened ``since`` a position first yields the replayed history
    (:meth:`replay`), held apart from the live queue so that it never counts
    against ``maxsize``, then the live messages.  ``recovered`` says whether the
    replay holds every message after that position.
    """

    def __init__(
        self,
        topic: str,
        *,
        maxsize: int,
        policy: SlowConsumerPolicy,
        on_overflow: Any = None,
        positions: bool = False,
    ) -> None:
        self.topic = topic
        self._queue: deque[Delivery] = deque()
        self._replay: deque[Delivery] = deque()
        self._positions = positions
        self._through: Position | None = None
        """The replay's position: live deliveries at or below it were replayed already."""
        self.recovered = True
        """False when the position given as ``since`` was of another epoch, or older
        than what history still keeps: the replay then starts at the oldest kept."""
        self._maxsize = maxsize
        self._policy = policy
        self._lot = trio.lowlevel.ParkingLot()
        self._overflowed = False
        self._closed = False
        self._on_overflow = on_overflow
        self.dropped = 0

    def deliver(self, delivery: Delivery) -> bool:
        if self._closed or self._overflowed:
            return False
        through = self._through
        if through is not None and replayed(delivery, through):
            return True  # in the replay already
        if len(self._queue) >= self._maxsize:
            if self._policy == "drop-oldest":
                self._queue.popleft()
                self.dropped += 1
                COUNTS.dropped += 1
            else:
                self._overflowed = True
                COUNTS.slow_consumer_closes += 1
                self._lot.unpark_all()
                if self._on_overflow is not None:
                    self._on_overflow()
                return False
        self._queue.append(delivery)
        if self._lot:
            self._lot.unpark()
        return True

    def replay(self, kept: Iterable[Kept], *, recovered: bool, through: Position) -> None:
        """Queue a history read made after this subscription registered, ahead of the
        live deliveries.  ``through`` is the read's position: live deliveries at or below
        it, queued already or still to come, are in the replay and are dropped (over
        Redis the read and the live deliveries overlap).  Nothing if it has ended."""
        self.recovered = recovered
        self._through = through
        if not self._closed:
            self._replay.extend(Delivery(item) for item in kept)
            if self._queue:
                self._queue = deque(d for d in self._queue if not replayed(d, through))

    def close(self) -> None:
        """The block is left: no more deliveries; what is queued can still be read."""
        self._closed = True
        self._lot.unpark_all()

    def end(self) -> None:
        """Its connection ended: the ``async for`` ends now, queued messages dropped.

        An overflow that closed the connection (1013) ends it the same way: the
        connection's end, not the overflow, is what the app's loop meets.
        """
        self._queue.clear()
        self._replay.clear()
        self._overflowed = False
        self.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await self.get()

    async def get(self) -> Any:
        """The next message; raises SlowConsumer after an overflow under ``close``."""
        if self._replay:
            await trio.lowlevel.checkpoint_if_cancelled()
            return self._unwrap(self._replay.popleft())
        while not self._queue:
            if self._overflowed:
                raise SlowConsumer(f"subscription to {self.topic!r} fell behind")
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._unwrap(self._queue.popleft())

    def get_nowait(self) -> Any:
        """The next queued message or None (the guide's ``check_pubsub()`` shape)."""
        if self._replay:
            return self._unwrap(self._replay.popleft())
        if self._queue:
            return self._unwrap(self._queue.popleft())
        if self._overflowed:
            raise SlowConsumer(f"subscription to {self.topic!r} fell behind")
        return None

    def _unwrap(self, delivery: Delivery) -> Any:
        if not self._positions:
            return delivery.value()
        position = delivery.position
        if position is None:  # the history patterns changed while this was open
            raise LookupError(f"topic {self.topic!r} keeps no history any more")
        return Message(delivery.value(), position)

    def __len__(self) -> int:
        return len(self._replay) + len(self._queue)
