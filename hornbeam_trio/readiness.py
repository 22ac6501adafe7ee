"""One edge-triggered epoll for every connection socket's reads.

Trio waits for readability with EPOLLONESHOT: every ``wait_readable`` re-arms the
socket with an ``epoll_ctl`` syscall, and on a busy WebSocket that is once per
message, on top of ``recv`` and ``send``.  Here each socket is registered once,
edge-triggered, in an epoll of our own; one hub task per server waits on that
epoll's fd (one re-arm per batch of events, not per message) and wakes the task
parked on each ready socket.  An edge that arrives while nobody waits is kept as a
"ready" mark, so a later wait returns at once: no wakeup is ever lost.

A socket may also have a *watcher*: an object whose ``on_readable()`` the hub
calls, in its own task, when the socket turns readable and no task waits on it.
A WebSocket's app reads its socket itself while it sits in ``receive()``; the
watcher covers the time it is elsewhere (answering pings, noticing the peer
leave) without a reader task per connection, and without a task switch.
A watcher that raises is a bug in one connection, not in the server: the hub logs
it once, drops the watcher and shuts its socket down (the peer sees the end, the
connection reads EOF at its next look), and every other socket goes on.
Linux only; elsewhere callers keep using ``trio.lowlevel.wait_readable``.

``HORNBEAM_TRIO_READINESS=off`` in the environment makes :meth:`ReadinessHub.available`
say no on Linux too, so the path every other platform (and TLS) takes runs the same
test suites here (``.ci/run`` does).  A switch for testing, read when a server
starts; not a Config field, since every Config field is a command-line flag.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol, cast

import outcome
import trio

try:
    # trio.lowlevel.wait_task_rescheduled(abort) builds one of these (attrs, frozen) and
    # yields it to the run loop through two coroutine levels of its own: ~5 % of an
    # HTTP keep-alive request's instructions (callgrind).  A socket parks on every
    # read that would block, so it builds its message once and yields it itself
    # (park()).  Private to Trio: without it, park() falls back to the public call,
    # and tests/test_readiness.py says so on the Trio in use.
    from trio._core._traps import WaitTaskRescheduled

    _WaitTaskRescheduled: Any = WaitTaskRescheduled
except ImportError:  # pragma: no cover - a Trio that moved it
    _WaitTaskRescheduled = None

logger = logging.getLogger("hornbeam_trio")

READINESS_ENV = "HORNBEAM_TRIO_READINESS"
"""Set to ``off``: serve without the hub, as on platforms without epoll."""

_EVENTS = (
    getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLET", 0)
)
_HANGUP = (
    getattr(select, "EPOLLRDHUP", 0)
    | getattr(select, "EPOLLHUP", 0)
    | getattr(select, "EPOLLERR", 0)
)


class _Woken:
    """What a readiness wakeup sends the task it wakes: one shared, stateless object.

    ``trio.lowlevel.reschedule(task)`` makes a fresh ``outcome.Value(None)`` for every
    wakeup, and its ``unwrap()`` checks and marks it used: ~4 % of the CPU of a
    WebSocket echo (profiled).  A task parked in ``wait_task_rescheduled`` only calls
    ``unwrap()`` on what it is sent, and a readiness wakeup carries no value.
    """

    __slots__ = ()

    def unwrap(self) -> None:
        return None


WOKEN = cast("outcome.Value[None]", _Woken())

AbortFunc = Callable[[Any], trio.lowlevel.Abort]

PARK_FAST: bool = _WaitTaskRescheduled is not None
"""park() yields a prebuilt message; False: it calls trio.lowlevel.wait_task_rescheduled."""


def parking(abort_func: AbortFunc) -> object:
    """A message that parks the task that :func:`park` s it, reusable for every wait.

    The same contract as ``trio.lowlevel.wait_task_rescheduled(abort_func)``:
    arrange a ``reschedule()`` before parking; ``abort_func`` runs on cancellation.
    """
    if _WaitTaskRescheduled is None:  # pragma: no cover
        return abort_func
    return _WaitTaskRescheduled(abort_func)


@types.coroutine
def _park_fast(message: object) -> Generator[object, Any, Any]:
    return (yield message).unwrap()


async def _park_public(message: object) -> Any:  # pragma: no cover - a Trio that moved it
    return await trio.lowlevel.wait_task_rescheduled(cast("AbortFunc", message))


park: Callable[[object], Awaitable[Any]] = _park_fast if PARK_FAST else _park_public
"""``await park(message)``, ``message = parking(abort)``: ``await
trio.lowlevel.wait_task_rescheduled(abort)`` in one generator level, not three."""


class Watcher(Protocol):
    def on_readable(self) -> bool:
        """Read what is there without blocking; True asks to be called again after a checkpoint.

        Runs in the hub's task: it must not block, and should not raise (if it does,
        the hub drops it and shuts its socket down).
        """


class ReadinessHub:
    """One per server (serve() runs it in its own nursery, so it ends with the server)."""

    @staticmethod
    def available() -> bool:
        """Edge-triggered epoll exists here, and HORNBEAM_TRIO_READINESS is not ``off``."""
        if os.environ.get(READINESS_ENV, "").strip().lower() == "off":
            return False
        return hasattr(select, "epoll") and bool(_EVENTS & getattr(select, "EPOLLET", 0))

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.waiters: dict[int, trio.lowlevel.Task] = {}
        self.ready: set[int] = set()
        self.watchers: dict[int, Watcher] = {}
        self.hung_up: set[int] = set()
        """Sockets whose peer sent FIN or RST: a wait on them returns at once, for good.

        A reader that stops at a short recv() ("likely empty") would otherwise wait
        forever for an edge that came already: data and FIN arriving together make
        one edge, and the recv() that takes the data leaves the EOF unread."""
        self._again: dict[int, None] = {}
        """Sockets whose watcher asked to go on after a checkpoint, each once, in order.

        A set in all but order: a socket that asked again and also gets a new edge
        before its turn must not be queued twice, or the list grows by every busy
        socket at every pass and one pass of the hub runs for hundreds of ms
        (20 ping-flooding peers: 186 ms)."""

    def register(self, fd: int) -> None:
        self.epoll.register(fd, _EVENTS)

    def unregister(self, fd: int) -> None:
        """Before the socket closes: forget it, and fail a task still waiting on it."""
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        self.ready.discard(fd)
        self.hung_up.discard(fd)
        self.watchers.pop(fd, None)
        task = self.waiters.pop(fd, None)
        if task is not None:
            trio.lowlevel.reschedule(task, _closed())

    def watch(self, fd: int, watcher: Watcher) -> None:
        """From now on, readiness nobody waits for goes to ``watcher``."""
        self.watchers[fd] = watcher
        if fd in self.ready:
            self.ready.discard(fd)
            self._dispatch(fd)

    def unwatch(self, fd: int) -> None:
        """Readiness nobody waits for is kept as a mark again, for the next wait."""
        self.watchers.pop(fd, None)

    def interrupt(self, fd: int) -> bool:
        """Wake the task waiting on ``fd`` as if it were readable (it re-checks its state).

        False when no task waits on it.
        """
        task = self.waiters.pop(fd, None)
        if task is None:
            return False
        trio.lowlevel.reschedule(task, WOKEN)
        return True

    def _dispatch(self, fd: int) -> None:
        if not self.interrupt(fd):
            self._nobody_waits(fd)

    def _nobody_waits(self, fd: int) -> None:
        """Readiness with no task waiting: the watcher's, else kept for the next wait."""
        watcher = self.watchers.get(fd)
        if watcher is None:
            self.ready.add(fd)
            return
        try:
            again = watcher.on_readable()
        except Exception:
            self._watcher_failed(fd)
            return
        if again:
            self._again[fd] = None

    def _watcher_failed(self, fd: int) -> None:
        """Contain a watcher's bug to its own socket; the hub task must not die of it.

        The socket stays registered (its owner unregisters it when it closes) and is
        marked hung up, so a later wait on it returns at once and finds EOF.
        """
        logger.exception("a socket's readiness watcher failed: shutting that socket down")
        del self.watchers[fd]
        self.hung_up.add(fd)
        self.ready.discard(fd)
        sock = socket.socket(fileno=fd)  # a view of the fd, detached below: never closes it
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the peer (ENOTCONN): it has ended either way
        finally:
            sock.detach()

    def arm(self, fd: int, task: trio.lowlevel.Task) -> bool:
        """Make ``task`` the waiter on ``fd``; False if ``fd`` is ready already (no wait).

        For callers that park themselves (``wait_task_rescheduled`` with an abort that
        calls disarm): no coroutine frame or closure of ours while they sleep.
        One waiter per fd, as in Trio: a second raises ``trio.BusyResourceError``
        (replacing the first would leave it parked for good).
        """
        if fd in self.ready or fd in self.hung_up:
            self.ready.discard(fd)
            return False
        if self.waiters.setdefault(fd, task) is not task:  # one lookup: on the hot path
            raise trio.BusyResourceError("another task is already waiting for this socket")
        return True

    def disarm(self, fd: int) -> None:
        self.waiters.pop(fd, None)

    async def wait_readable(self, fd: int) -> None:
        """arm() and park; for callers off the hot path (the hot ones park themselves)."""
        if not self.arm(fd, trio.lowlevel.current_task()):
            return

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.disarm(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        epoll = self.epoll
        waiters = self.waiters
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                if self._again:
                    # A watcher stopped before its socket was drained, to let others
                    # run: it goes on after this checkpoint.
                    await trio.lowlevel.checkpoint()
                    again, self._again = self._again, {}
                    for fd in again:
                        if fd in self.watchers:  # not closed meanwhile
                            self._dispatch(fd)
                else:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                again = self._again
                for fd, mask in epoll.poll(0):
                    if mask & _HANGUP:
                        self.hung_up.add(fd)
                    if fd in again:
                        continue  # its watcher goes on after the next checkpoint anyway
                    task = waiters.pop(fd, None)  # _dispatch, inlined: per event
                    if task is None:
                        self._nobody_waits(fd)
                    else:
                        reschedule(task, WOKEN)
        finally:
            epoll.close()


def _closed() -> Any:
    return outcome.Error(trio.ClosedResourceError("socket closed while waiting"))
