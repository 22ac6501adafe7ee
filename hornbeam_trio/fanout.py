"""Big fan-outs, worked through in slices: no task step delivers to more than ``SLICE``.

``publish()`` is synchronous (a Hornbeam API function) and returns the subscriber
count, but reaching a subscriber costs ~2 us: done in one task step, a publish to
19,000 subscribers would stop every other connection for ~40 ms.  So a fan-out to
more than ``INLINE_LIMIT`` local subscribers becomes a :class:`Job` at the tail of
one FIFO, and one task (:meth:`FanOut.run`, started by ``serve()``) delivers it
``SLICE`` subscribers at a time with a checkpoint between slices.

Invariants:

- Per-subscriber order holds across topics: if publish(A) returned before
  publish(B), a subscriber of both gets A first.  Jobs leave the FIFO in the order
  they entered it, and while it holds any job every later publish joins its tail,
  however small; only with the FIFO empty does a small fan-out go inline, as it
  always did (the common path pays one attribute test and one comparison).
- A job is the subscribers of its topic when publish() was called: one that
  subscribes later is not in it.  Each subscriber is checked against the topic's
  live subscribers at its turn, so one released meanwhile (unsubscribed, its
  connection ended) gets nothing after its release; the job lets go of each
  subscriber once its slice is delivered, so it holds a released connection no
  longer than the backlog ahead of it takes (bounded below).
- Deliveries go through the subscriber's ``deliver()`` as inline ones do: the
  slow-consumer limits (1013 close, drop-oldest) apply at delivery time.
- Bounded: the FIFO holds at most ``MAX_QUEUED`` subscriber references (plus one
  per job) and ``MAX_QUEUED_BYTES`` of messages.  A publish that would pass either
  bound first delivers the whole backlog inline, in order, then its own fan-out
  inline: a publisher that outruns the fan-out pays for it with the pause of old,
  never with memory.  Counting the jobs against each subscriber's queue bytes was
  the other choice; but a job costs a pointer per subscriber and one shared
  message, not a copy per subscriber, and those limits exist to close slow
  readers, not to throttle publishers.
- ``publish()`` returns, for a queued fan-out, the subscribers the job will try:
  those of the topic at the call (inline, those whose ``deliver()`` accepted).
  ``PubSubCounts.delivered`` counts the ones actually reached, slice by slice.
- No running task (no server in this run, or a call from another thread): every
  fan-out is inline, as before; a stopping runner delivers what is left inline.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import trio

logger = logging.getLogger("hornbeam_trio")

INLINE_LIMIT = 1000
"""Fan-outs to more local subscribers than this are queued (with the FIFO empty)."""

SLICE = 1000
"""Subscribers one task step of the fan-out task delivers to, at most (~2 ms)."""

MAX_QUEUED = 1 << 18
"""Subscriber references (plus one per job) the FIFO may hold: 2 MiB of pointers,
some 13 publishes to 19,000 subscribers ahead of the fan-out task."""

MAX_QUEUED_BYTES = 16 << 20
"""Message bytes (one copy per job, shared by its subscribers) the FIFO may hold."""


class Target(Protocol):
    """A subscriber, as the fan-out sees it (``pubsub.Subscriber``)."""

    def deliver(self, delivery: Any) -> bool: ...


class Counts(Protocol):
    delivered: int


class Job:
    """One publish's fan-out: its subscribers not reached yet, last first."""

    __slots__ = ("delivery", "size", "todo", "topic")

    def __init__(self, topic: str, delivery: Any, todo: list[Target], size: int) -> None:
        self.topic = topic
        self.delivery = delivery
        self.todo = todo
        self.size = size


def deliver_all(subscribers: Iterable[Target], delivery: Any) -> int:
    """Inline: every subscriber in one go; how many accepted."""
    reached = 0
    for subscriber in subscribers:
        if subscriber.deliver(delivery):
            reached += 1
    return reached


class FanOut:
    """The FIFO of queued fan-outs and the task that works through it (one per hub)."""

    def __init__(self, topics: dict[str, dict[Any, None]], counts: Counts) -> None:
        self._topics = topics
        self._counts = counts
        self.jobs: deque[Job] = deque()
        self.limit = sys.maxsize
        """INLINE_LIMIT while a task runs the FIFO; without one, nothing is queued."""
        self.queued = 0
        """Subscriber references the jobs still hold, plus one per job."""
        self.queued_bytes = 0
        self._task: trio.lowlevel.Task | None = None
        self._thread = 0
        self._parked = False

    def submit(self, topic: str, delivery: Any, subscribers: dict[Any, None], size: int) -> int:
        """Queue ``delivery`` to ``subscribers`` behind the jobs ahead; how many it will try.

        Past a bound, the backlog and this fan-out are delivered here and now instead
        (still in order).  From another thread than the task's, only this fan-out is,
        here and now: it may overtake queued ones (the backlog is the task's to touch).
        """
        count = len(subscribers)
        foreign = self._task is not None and threading.get_ident() != self._thread
        if (
            foreign
            or self._task is None
            or self.queued + count + 1 > MAX_QUEUED
            or self.queued_bytes + size > MAX_QUEUED_BYTES
        ):
            if not foreign:
                # Never from another thread: the task may be in _work() on these jobs.
                self.drain()
            reached = deliver_all(tuple(subscribers), delivery)
            self._counts.delivered += reached
            return reached
        todo = list(subscribers)
        todo.reverse()  # taken from the end: each slice lets go of what it delivered
        self.jobs.append(Job(topic, delivery, todo, size))
        self.queued += count + 1
        self.queued_bytes += size
        if self._parked:
            self._parked = False
            trio.lowlevel.reschedule(self._task)
        return count

    def _work(self, budget: int) -> None:
        """Deliver to up to ``budget`` subscribers, oldest job first."""
        jobs = self.jobs
        topics = self._topics
        reached = 0
        while jobs and budget > 0:
            job = jobs[0]
            todo = job.todo
            take = min(budget, len(todo))
            if take:
                chunk = todo[-take:]
                del todo[-take:]
                self.queued -= take
                budget -= take
                live = topics.get(job.topic) or {}
                delivery = job.delivery
                for subscriber in reversed(chunk):
                    try:
                        if subscriber in live and subscriber.deliver(delivery):
                            reached += 1
                    except Exception:  # the others still get it; the task must not die
                        logger.exception("delivering to a subscriber of %r failed", job.topic)
                del chunk
            else:
                budget -= 1
            if not todo:
                jobs.popleft()
                self.queued -= 1
                self.queued_bytes -= job.size
        self._counts.delivered += reached

    def drain(self) -> None:
        """Deliver every queued fan-out now, in order."""
        while self.jobs:
            self._work(sys.maxsize)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self) -> None:
        """Work through the FIFO, ``SLICE`` subscribers per step, until cancelled.

        The memory backend's hub is the process's: a second server of the same run
        finds the first one's task at work and returns (if that one stops first,
        fan-outs go inline again).
        """
        if self._task is not None:
            return
        self._task = trio.lowlevel.current_task()
        self._thread = threading.get_ident()
        self.limit = INLINE_LIMIT
        try:
            while True:
                while self.jobs:
                    self._work(SLICE)
                    await trio.lowlevel.checkpoint()
                self._parked = True
                await trio.lowlevel.wait_task_rescheduled(self._abort)
        finally:
            self._task = None
            self._parked = False
            self.limit = sys.maxsize
            self.drain()
