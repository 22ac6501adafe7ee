"""The embedded default: state and pub/sub inside this process, nothing to start.

Like ETS on one node, the store is shared by every server in the process.
Trio runs app code on one thread, but the façade may also be called from
``trio.to_thread`` workers, so the read-modify-write of ``incr`` takes a lock.

Topic history (``--history``) lives here too: a :class:`TopicRing` per topic that
matches a pattern, all under one epoch drawn when this store is made (a process
restart or :meth:`MemoryBackend.clear` draws a new one).  With no pattern
configured ``publish`` is the plain class method, untouched; with patterns it is
:meth:`_publish_recording`, which pays one dict lookup for a topic that keeps no
history (the pattern match is cached per topic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

import trio

from .base import HistoryRead, LocalDeliver
from .history import HistoryRule, Kept, Position, TopicRing, freeze, new_epoch
from .presence import PresenceBook, checked_topic, events_topic, join_event, leave_event
from .values import checked_copy

_NEGATIVE_CACHE_LIMIT = 65536
"""Topics remembered as keeping no history; past this many the memory is cleared so
a stream of one-off topic names cannot grow the cache without bound."""


_UNSEEN = TopicRing(1, None)
"""Marks a topic not matched against the patterns yet (never holds a message)."""


def _now() -> float:
    """Trio's clock (``MockClock`` in tests); outside a Trio run, the monotonic clock."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._deliver_local: LocalDeliver | None = None
        self._history_rules: tuple[HistoryRule, ...] = ()
        self._rings: dict[str, TopicRing | None] = {}
        """topic -> its ring, or None once it is known to match no pattern."""
        self._unmatched = 0
        self.epoch = new_epoch()
        self._presence = PresenceBook()

    async def run(
        self, deliver_local: LocalDeliver, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._deliver_local = deliver_local
        task_status.started()

    def attach(self, deliver_local: LocalDeliver) -> None:
        self._deliver_local = deliver_local

    # -- pub/sub: in one process, publishing is local delivery
    def publish(self, topic: str, message: Any) -> int:
        if self._deliver_local is None:
            return 0
        return self._deliver_local(topic, message)

    def _publish_recording(self, topic: str, message: Any) -> int:
        """``publish`` while history is configured: the message takes its place in the
        topic's ring (and its position) before any subscriber sees it."""
        ring = self._rings.get(topic, _UNSEEN)
        if ring is _UNSEEN:
            ring = self._ring_for(topic)
        if ring is not None:
            kept = freeze(message)  # validates: a bad value fails the publisher, is not kept
            message = Kept(kept, Position(ring.top + 1, self.epoch))
            ring.append(message, _now())
        if self._deliver_local is None:
            return 0
        return self._deliver_local(topic, message)

    # -- topic history
    def configure_history(self, rules: Iterable[HistoryRule]) -> None:
        """Keep history for the topics matching ``rules`` (the first match wins).

        Rings of topics that still match keep their messages and offsets under the
        new limits; the others are dropped, and then the epoch changes: a dropped
        topic that comes back counts from 1 again, so positions of before must not
        read as positions of after.  No rules: ``publish`` is plain again.
        """
        self._history_rules = tuple(rules)
        kept: dict[str, TopicRing | None] = {}
        for topic, ring in self._rings.items():
            rule = self._rule_for(topic) if ring is not None else None
            if ring is not None and rule is not None:
                ring.resize(rule.size, rule.max_age)
                kept[topic] = ring
        if sum(ring is not None for ring in self._rings.values()) != len(kept):
            self.epoch = new_epoch()
        self._rings = kept
        self._unmatched = 0
        if self._history_rules:
            self.publish = self._publish_recording  # type: ignore[method-assign]
        else:
            self.__dict__.pop("publish", None)

    def _rule_for(self, topic: str) -> HistoryRule | None:
        for rule in self._history_rules:
            if fnmatchcase(topic, rule.pattern):
                return rule
        return None

    def _lookup(self, topic: str) -> TopicRing | None:
        ring = self._rings.get(topic, _UNSEEN)
        if ring is _UNSEEN:
            return self._ring_for(topic) if self._history_rules else None
        return ring

    def _ring_for(self, topic: str) -> TopicRing | None:
        """Match once and remember the answer (a ring, or None for no history)."""
        rule = self._rule_for(topic)
        if rule is None:
            if self._unmatched >= _NEGATIVE_CACHE_LIMIT:
                self._rings = {t: r for t, r in self._rings.items() if r is not None}
                self._unmatched = 0
            self._unmatched += 1
            self._rings[topic] = None
            return None
        ring = self._rings[topic] = TopicRing(rule.size, rule.max_age)
        return ring

    def history_sizes(self) -> dict[str, int]:
        """Topic -> messages its ring holds (the metrics collector reads this)."""
        return {topic: len(ring) for topic, ring in self._rings.items() if ring is not None}

    def keeps_history(self, topic: str) -> bool:
        ring = self._lookup(topic)
        return ring is not None

    def history_read(
        self, topic: str, since: Position | None, limit: int | None = None
    ) -> HistoryRead:
        """What ``topic``'s history holds after ``since``; see :class:`HistoryRead`.

        ``since`` of another epoch is read as "from the start": all that is kept, with
        ``recovered`` False.  Raises LookupError for a topic that keeps no history.
        """
        ring = self._lookup(topic)
        if ring is None:
            raise LookupError(f"topic {topic!r} keeps no history: no --history pattern matches it")
        epoch = self.epoch
        same_epoch = since is None or since.epoch == epoch
        offset = None if since is None or not same_epoch else since.offset
        items, recovered = ring.since(offset, _now(), limit)
        return HistoryRead(
            [kept for _, kept in items],
            Position(ring.top, epoch),
            recovered and same_epoch,
        )

    async def ahistory_read(
        self, topic: str, since: Position | None, limit: int | None = None
    ) -> HistoryRead:
        """``history_read`` with no checkpoint: a subscriber registered just before
        meets the read with no publish in between."""
        return self.history_read(topic, since, limit)

    def fetch_history(
        self,
        topic: str,
        since: Position | None,
        done: Callable[[HistoryRead | BaseException], None],
    ) -> None:
        """``done`` gets the read at once (LookupError too)."""
        try:
            read = self.history_read(topic, since)
        except LookupError as exc:
            done(exc)
        else:
            done(read)

    def topic_added(self, topic: str) -> None:
        pass

    def topic_removed(self, topic: str) -> None:
        pass

    # -- state
    def get(self, key: str) -> Any:
        return checked_copy(self._data.get(key))

    def set(self, key: str, value: Any) -> None:
        self._data[key] = checked_copy(value)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def incr(self, key: str, delta: int = 1) -> int:
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, got {type(delta).__name__}")
        with self._lock:
            current = self._data.get(key, 0)
            if isinstance(current, bool) or not isinstance(current, int):
                raise TypeError(f"state key {key!r} holds a {type(current).__name__}, not an int")
            value = current + delta
            self._data[key] = value
            return value

    def incr_nowait(self, key: str, delta: int) -> None:
        self.incr(key, delta)

    # A process that dies takes its memory store along: nothing to record.
    def note_owned(self, connection: int, key: str, give_back: int | None) -> None:
        pass

    def note_released(self, connection: int, keys: Iterable[str]) -> None:
        pass

    # -- presence: a process that dies takes its members along, as its owned keys
    def member_id(self, connection: int) -> str:
        return str(connection)

    def presence_join(self, topic: str, member: str, info: Any, connection: int) -> None:
        info = checked_copy(info)
        self._presence.join(checked_topic(topic), member, info)
        self.publish(events_topic(topic), join_event(topic, member, checked_copy(info)))

    def presence_leave(self, topic: str, member: str, connection: int) -> None:
        if self._presence.leave(topic, member):
            self.publish(events_topic(topic), leave_event(topic, member))

    def presence(self, topic: str) -> dict[str, Any]:
        return self._presence.members(checked_topic(topic))

    async def apresence(self, topic: str) -> dict[str, Any]:
        return self.presence(topic)

    def get_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        data = self._data
        return {key: checked_copy(data.get(key)) for key in keys}

    def keys(self, prefix: str | None = None) -> list[str]:
        if prefix is None:
            return list(self._data)
        return [key for key in self._data if key.startswith(prefix)]

    async def aget(self, key: str) -> Any:
        return self.get(key)

    async def aset(self, key: str, value: Any) -> None:
        self.set(key, value)

    async def adelete(self, key: str) -> None:
        self.delete(key)

    async def aincr(self, key: str, delta: int = 1) -> int:
        return self.incr(key, delta)

    async def aget_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        return self.get_multi(keys)

    async def akeys(self, prefix: str | None = None) -> list[str]:
        return self.keys(prefix)

    def clear(self) -> None:
        """Forget everything (the testing toolkit's fresh start): state, presence, and history,
        whose epoch changes as after a restart.  The history patterns stay."""
        self._data.clear()
        self._presence.clear()
        self._rings.clear()
        self._unmatched = 0
        self.epoch = new_epoch()
