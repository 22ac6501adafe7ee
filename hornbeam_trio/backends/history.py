"""Topic history: positions and the per-topic ring buffer (no I/O, no clock of its own).

A topic whose name matches a ``--history`` pattern keeps its last messages.  Each
message kept gets a :class:`Position`: an ``offset`` that counts the topic's
messages from 1, and the ``epoch`` of the history it belongs to, a random token
drawn when that history started.  A new epoch means history was lost (the process
restarted, the store was cleared), so a client holding an old position learns it
may have missed messages instead of silently skipping them.

Invariants of :class:`TopicRing`:

* offsets are contiguous: the ring holds offsets ``top - len + 1 .. top``;
* ``top`` only grows (trimming by size or age never lowers it);
* a read reports ``recovered`` exactly when every message after the asked-for
  position is in its answer.

Times are passed in by the caller (Trio's clock in the memory backend, so tests
drive age limits with ``MockClock``).  This module imports nothing of ours.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import islice
from typing import Any, NamedTuple

from .codec import EncodedJSON

_dumps = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message sits in its topic's history: ``str()`` for a client, ``parse`` back."""

    offset: int
    epoch: str

    def __str__(self) -> str:
        return f"{self.epoch}-{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """The inverse of ``str()``: ``"EPOCH-OFFSET"``; ValueError for anything else."""
        epoch, sep, offset = text.rpartition("-")
        if not sep or not epoch or not offset.isdigit():
            raise ValueError(f"not a history position (EPOCH-OFFSET): {text!r}")
        return cls(int(offset), epoch)


class Kept:
    """A message as history keeps it, with its position: what the backend hands the hub
    for a topic with history (``Delivery`` takes the position from it).

    ``message`` is immutable: str, bytes, or :class:`EncodedJSON` frozen at publish,
    so a publisher that mutates its dict afterwards changes nothing kept."""

    __slots__ = ("message", "position")

    def __init__(self, message: str | bytes | EncodedJSON, position: Position) -> None:
        self.message = message
        self.position = position


def freeze(message: Any) -> str | bytes | EncodedJSON:
    """``message`` as history keeps it; TypeError/ValueError for what is not JSON-like."""
    if isinstance(message, (str, bytes, EncodedJSON)):
        return message
    return EncodedJSON(_dumps(message))


def new_epoch() -> str:
    """A token no earlier history of this topic can have had (64 random bits, hex)."""
    return os.urandom(8).hex()


class HistoryRule(NamedTuple):
    """``--history PATTERN=SIZE[,AGEs]`` once parsed: an fnmatch pattern and its limits."""

    pattern: str
    size: int
    max_age: float | None


class TopicRules:
    """The ``--history`` rules and, per topic, the rule it matches (the first), matched
    once and remembered.  Past ``limit`` topics remembered as matching none, those are
    forgotten, so a stream of one-off topic names cannot grow the cache without bound."""

    __slots__ = ("_cache", "_unmatched", "limit", "rules")

    def __init__(self, rules: Iterable[HistoryRule] = (), limit: int = 65536) -> None:
        self.rules = tuple(rules)
        self.limit = limit
        self._cache: dict[str, HistoryRule | None] = {}
        self._unmatched = 0

    def rule_for(self, topic: str) -> HistoryRule | None:
        cache = self._cache
        if topic in cache:
            return cache[topic]
        rule = next((r for r in self.rules if fnmatchcase(topic, r.pattern)), None)
        if rule is None:
            if self._unmatched >= self.limit:
                self._cache = cache = {t: r for t, r in cache.items() if r is not None}
                self._unmatched = 0
            self._unmatched += 1
        cache[topic] = rule
        return rule


class TopicRing:
    """One topic's kept messages, oldest first, bounded by count and by age."""

    __slots__ = ("_entries", "max_age", "top")

    def __init__(self, size: int, max_age: float | None) -> None:
        self._entries: deque[tuple[float, Any]] = deque(maxlen=size)
        self.max_age = max_age
        self.top = 0
        """The offset of the newest message ever appended (0: none yet)."""

    def resize(self, size: int, max_age: float | None) -> None:
        if self._entries.maxlen != size:
            self._entries = deque(self._entries, maxlen=size)
        self.max_age = max_age

    def append(self, item: Any, now: float) -> int:
        """Keep ``item`` as the next message; returns its offset."""
        self._expire(now)
        self.top += 1
        self._entries.append((now, item))
        return self.top

    def since(
        self, offset: int | None, now: float, limit: int | None = None
    ) -> tuple[list[tuple[int, Any]], bool]:
        """``(offset, item)`` of the messages after ``offset`` (None: all kept), oldest
        first, the newest ``limit`` of them; and whether none after ``offset`` is missing."""
        self._expire(now)
        entries = self._entries
        first = self.top - len(entries) + 1
        after = 0 if offset is None else offset
        recovered = first <= after + 1 and after <= self.top
        start = min(max(after + 1 - first, 0), len(entries)) if recovered else 0
        kept = islice(entries, start, None)
        items = [(first + i, item) for i, (_, item) in enumerate(kept, start)]
        if limit is not None and len(items) > limit:
            items = items[len(items) - limit :] if limit else []
            recovered = False
        return items, recovered

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        max_age = self.max_age
        if max_age is None:
            return
        entries = self._entries
        oldest = now - max_age
        while entries and entries[0][0] <= oldest:
            entries.popleft()
