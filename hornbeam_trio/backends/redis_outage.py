"""What the Redis backend says about an outage: one line when it starts, one when it ends.

An outage is one episode, however many of the backend's parts notice it: it starts
when the first part (the writer, the subscriber connection) loses Redis, and ends
when the last one is whole again: the subscriber subscribed again to every topic of
this process, and the writer has sent the backlog queued meanwhile.  In between,
nothing more is logged; publishes and writes dropped because the queue was full are
only counted (one line when the queue first overflows), and the end line gives the
exact numbers of the episode.  A queue that overflows while Redis is reachable (it
cannot keep up) is an episode of its own, closed when the queue is empty again.

No I/O and no clock of its own (``now`` is passed in), so every rule is tested with
plain calls (tests/test_redis.py, ``test_outage_log_*``).
"""

from __future__ import annotations

import logging

import trio

logger = logging.getLogger("hornbeam_trio")


def reason(exc: BaseException) -> str:
    """Why an operation failed, never empty: a timeout without a message says so."""
    text = str(exc)
    if text:
        return text
    if isinstance(exc, (TimeoutError, trio.TooSlowError)):
        return "timed out"
    return type(exc).__name__


class OutageLog:
    """The outage state of one backend, and its log lines (warning level)."""

    def __init__(self, where: str, max_pending: int) -> None:
        self.where = where
        self.max_pending = max_pending
        self.down_parts: set[str] = set()
        self.since: float | None = None
        """When the current outage began (None: Redis is reachable)."""
        self.lost_publishes = 0
        self.lost_writes = 0
        self.sent_after = 0
        """Publishes and writes of the backlog sent since Redis came back (this episode)."""
        self.outages = 0
        self._overflowing = False
        self._lost_at_start = (0, 0)

    @property
    def down(self) -> bool:
        return self.since is not None

    def part_down(self, part: str, why: str, now: float) -> None:
        """``part`` lost Redis (``why``); the first part to do so starts the outage."""
        self.down_parts.add(part)
        if self.since is None:
            self._begin(now)
            logger.warning(
                "Redis at %s unreachable (%s); publishes and writes stay queued (at most "
                "%d), retrying with backoff",
                self.where,
                why,
                self.max_pending,
            )

    def part_up(self, part: str, now: float) -> None:
        """``part`` is whole again; the last one ends the outage."""
        self.down_parts.discard(part)
        if self.since is not None and not self.down_parts:
            publishes, writes = self._lost_in_episode()
            logger.warning(
                "Redis at %s reachable again after %.1fs; sent %d queued operations; "
                "lost while it was not: %d publishes, %d writes%s",
                self.where,
                now - self.since,
                self.sent_after,
                publishes,
                writes,
                f" (queue full at {self.max_pending})" if self._overflowing else "",
            )
            self.since = None
            self._overflowing = False

    def sent(self, count: int) -> None:
        if self.since is not None:
            self.sent_after += count

    def lost(self, publish: bool) -> None:
        """One publish or write dropped because the queue is full."""
        if self.since is None and not self._overflowing:
            self._lost_at_start = (self.lost_publishes, self.lost_writes)
        if publish:
            self.lost_publishes += 1
        else:
            self.lost_writes += 1
        if not self._overflowing:
            self._overflowing = True
            logger.warning(
                "Redis backend: %d operations already wait for Redis; new publishes and "
                "writes are dropped and counted until %s",
                self.max_pending,
                "it is back" if self.since is not None else "the queue is empty again",
            )

    def drained(self) -> None:
        """The queue is empty: an overflow outside an outage ends here, with its count."""
        if self.since is None and self._overflowing:
            publishes, writes = self._lost_in_episode()
            logger.warning(
                "Redis backend: queue below its limit again; dropped %d publishes, %d writes",
                publishes,
                writes,
            )
            self._overflowing = False

    def _begin(self, now: float) -> None:
        self.since = now
        self.outages += 1
        self.sent_after = 0
        if not self._overflowing:
            self._lost_at_start = (self.lost_publishes, self.lost_writes)

    def _lost_in_episode(self) -> tuple[int, int]:
        return (
            self.lost_publishes - self._lost_at_start[0],
            self.lost_writes - self._lost_at_start[1],
        )
