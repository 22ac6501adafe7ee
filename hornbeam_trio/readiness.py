"""One edge-triggered epoll for every connection socket's reads.

Trio waits for readability with EPOLLONESHOT: every ``wait_readable`` re-arms the
socket with an ``epoll_ctl`` syscall, and on a busy WebSocket that is once per
message, on top of ``recv`` and ``send``.  Here each socket is registered once,
edge-triggered, in an epoll of our own; one hub task per server waits on that
epoll's fd (one re-arm per batch of events, not per message) and wakes the task
parked on each ready socket.  An edge that arrives while nobody waits is kept as a
"ready" mark, so a later wait returns at once: no wakeup is ever lost.
Linux only; elsewhere callers keep using ``trio.lowlevel.wait_readable``.
"""

from __future__ import annotations

import select
from typing import Any

import outcome
import trio

_EVENTS = (
    getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLET", 0)
)


class ReadinessHub:
    """One per server (serve() runs it in its own nursery, so it ends with the server)."""

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll") and bool(_EVENTS & getattr(select, "EPOLLET", 0))

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.waiters: dict[int, trio.lowlevel.Task] = {}
        self.ready: set[int] = set()

    def register(self, fd: int) -> None:
        self.epoll.register(fd, _EVENTS)

    def unregister(self, fd: int) -> None:
        """Before the socket closes: forget it, and fail a task still waiting on it."""
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        self.ready.discard(fd)
        task = self.waiters.pop(fd, None)
        if task is not None:
            trio.lowlevel.reschedule(task, _closed())

    async def wait_readable(self, fd: int) -> None:
        if fd in self.ready:
            self.ready.discard(fd)
            return
        self.waiters[fd] = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.waiters.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        epoll = self.epoll
        waiters = self.waiters
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    task = waiters.pop(fd, None)
                    if task is None:
                        self.ready.add(fd)
                    else:
                        reschedule(task)
        finally:
            epoll.close()


def _closed() -> Any:
    return outcome.Error(trio.ClosedResourceError("socket closed while waiting"))
