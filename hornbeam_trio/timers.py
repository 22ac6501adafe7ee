"""One task fires the timers of every connection of a server.

A WebSocket has up to four clocks: the next ping, the idle timeout, the wait for
the peer's close reply, and the grace an app gets to return once its client is
gone.  A cancel scope per connection would tie them to a task that waits; a
WebSocket's app may read its socket inline and no task of the connection waits
on its clocks.  An HTTP keep-alive connection waits for each request head with a
time-out, and a cancel scope deadline set and lifted per request costs more than
the rest of the request's bookkeeping.  So each connection keeps its own next
deadline, and one heap per server orders them.

Entries are lazy: activity on a connection (the common case, once per message)
only moves ``last_activity``; the heap entry stays where it is, and when it fires
the connection looks at its clocks and asks for its true next deadline.  Only a
deadline earlier than the one already in the heap pushes a new entry.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import trio

logger = logging.getLogger("hornbeam_trio")


class TimerTarget(Protocol):
    timer_at: float
    """The deadline of this target's live heap entry (inf: none; -inf: forgotten)."""
    timer_key: int

    def on_timer(self, now: float) -> None:
        """Handle what is due at ``now`` and schedule() the next deadline, if any."""


class TimerSweeper:
    """One per server (serve() runs it in its own nursery, so it ends with the server)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, TimerTarget] = {}
        self._keys = itertools.count(1)
        self._task: trio.lowlevel.Task | None = None
        self._parked = False
        self._wake_at = math.inf
        self.clock: Callable[[], float] = trio.current_time
        """The run's clock, bound once run() starts: one call instead of trio.current_time's
        three on the keep-alive hot path."""

    def schedule(self, target: TimerTarget, deadline: float) -> None:
        """Make sure ``target.on_timer`` runs no later than ``deadline``."""
        if deadline >= target.timer_at:
            return  # an entry at least as early is already in the heap (or forgotten)
        if target.timer_key == 0:
            target.timer_key = next(self._keys)
            self._live[target.timer_key] = target
        target.timer_at = deadline
        heapq.heappush(self._heap, (deadline, target.timer_key))
        if deadline < self._wake_at and self._parked:
            self._parked = False
            assert self._task is not None
            trio.lowlevel.reschedule(self._task)

    def forget(self, target: TimerTarget) -> None:
        """The target is gone: its entries are skipped, and it is never called again."""
        self._live.pop(target.timer_key, None)
        target.timer_at = -math.inf
        heap = self._heap
        if len(heap) > 64 and len(heap) > 4 * len(self._live):
            # Under churn, stale entries of closed connections would pile up until
            # their deadlines (a minute): rebuild from the live ones instead.
            live = self._live
            self._heap = [(d, k) for d, k in heap if k in live and live[k].timer_at == d]
            heapq.heapify(self._heap)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._task = trio.lowlevel.current_task()
        self.clock = clock = trio.lowlevel.current_clock().current_time
        task_status.started()
        try:
            await self._fire_forever(clock)
        finally:
            self._parked = False

    async def _fire_forever(self, clock: Callable[[], float]) -> None:
        live = self._live
        while True:
            now = clock()
            while self._heap and self._heap[0][0] <= now:
                deadline, key = heapq.heappop(self._heap)
                target = live.get(key)
                if target is None or target.timer_at != deadline:
                    continue  # stale: the target is gone or has an earlier entry
                target.timer_at = math.inf
                try:
                    target.on_timer(now)
                except Exception:  # one connection's bug must not stop every clock
                    logger.exception("a connection's timer failed")
            self._wake_at = self._heap[0][0] if self._heap else math.inf
            self._parked = True
            with trio.move_on_at(self._wake_at):
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            self._parked = False
