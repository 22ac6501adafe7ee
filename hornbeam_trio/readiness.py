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

**The leader.**  Through the hub task, a message to a lone connection costs a hop:
the run loop wakes the hub, the hub's step polls its epoll and re-arms its wait
(``epoll_ctl``), and only a second pass of the run loop runs the connection's task.
On a busy server that hop is shared by every socket of a batch; for one connection
it is on the path of every round trip.  So the wait on the epoll is a role, not a
task: the first task to park while nobody holds it *leads*, i.e. waits on the epoll
itself (through a dup of its fd, as Trio allows one waiter per fd), polls it when
woken, wakes the other waiters and runs the watchers as the hub would, and goes on
at once when its own socket is among the events.  Invariants:

- Only the holder of the role polls the epoll (the hub task, or the one leader).
  A second poller would take the leader's own edge from under it.
- While nobody leads, the hub task is runnable or waiting on the epoll: a leader
  that leaves reschedules the hub, which waits on the epoll unless another task has
  taken the lead meanwhile.  No edge waits for a task that may not come back.
- The hub hands the role on only after a pass that woke one parked task while no
  other waits (a lone connection, likely to park again at once); with more sockets
  waiting, one pass of the hub serves them all and it keeps the role.

**Busy polling.**  On the project's 2-core VM, a kernel trace of a lone WebSocket echo
(``benchmarks/ws_timeline.py``) shows where a round trip goes: ~10 us from the server's
wakeup to its ``send`` (uvicorn's too), and ~20 us, each way, for the kernel to wake a
process whose core went idle; the sleeps, not the work, are two thirds of it.  So a leader
does not always sleep at once: it may first poll the epoll between checkpoints (the run
loop polls its own meanwhile) until bytes come or ``busy_poll_us`` is up.  A peer that
answers within that window is served without a wakeup.  A lead polls if the one before it
ended within twice the window (a lead that slept counts the kernel's wakeup too: ~50 us
for this VM's fastest peer, so the window alone would never let polling begin) and did
not poll in vain; a quiet peer costs one window, and the lead after it sleeps at once.
Only the lone leader polls: with more sockets busy the hub task holds the epoll, and the
run loop has other work to do than sleep.  Timed by the wall clock, not Trio's: a test's
MockClock stands still while a task is runnable.

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
from time import perf_counter_ns
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

    def __init__(self, busy_poll_us: int = 0) -> None:
        self.epoll = select.epoll()
        self.waiters: dict[int, trio.lowlevel.Task] = {}
        self.ready: set[int] = set()
        self.watchers: dict[int, Watcher] = {}
        self.hung_up: set[int] = set()
        """Sockets whose peer sent FIN or RST: a wait on them returns at once, for good.

        A reader that stops at a short recv() ("likely empty") would otherwise wait
        forever for an edge that came already: data and FIN arriving together make
        one edge, and the recv() that takes the data leaves the EOF unread."""
        self.leader: trio.lowlevel.Task | None = None
        """The task that waits on the epoll itself (see "The leader"), if any."""
        self.leader_fd = -1
        """The socket the leader waits for (-1: nobody leads)."""
        self._leader_note: object = None
        """Why the leader was woken without its socket's edge: _NOTE_WOKEN, _NOTE_CLOSED."""
        self._lead_fd = os.dup(self.epoll.fileno())
        """The epoll again, for the leader's wait: Trio takes one waiter per fd, and the hub
        task may still be registered on the original one."""
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        """Written to wake the leader (interrupt, unregister): it is in the epoll."""
        self.epoll.register(self._wake_fd, select.EPOLLIN)
        self._hub_task: trio.lowlevel.Task | None = None
        self._hub_waiting = False
        """The hub task waits on the epoll: tasks that park now wait for it to wake them."""
        self._hub_parked = False
        """The hub task sleeps while a task leads; the leader reschedules it when it leaves."""
        self._hub_parking = parking(self._abort_hub_park)
        self.hub_waits = 0
        """How often the hub task took the epoll back (a leader left and nobody took it
        before the hub ran): for tests and profiling, not the hot path."""
        self._busy_poll_ns = busy_poll_us * 1000
        self._poll_next = False
        """The last lead was short and did not poll in vain: the next one polls."""
        self.busy_polls = 0
        """Polls of the epoll made instead of sleeping (see "Busy polling"): for tests and
        profiling."""
        self.busy_poll_ns = 0
        """Time spent polling instead of sleeping, about (a lead's time up to its event,
        at most the window): what the polls cost, for the metrics."""
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
        elif fd == self.leader_fd:
            self._wake_leader(_NOTE_CLOSED)

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
            if fd != self.leader_fd:
                return False
            if self._leader_note is None:  # else woken already (and a watcher must not run)
                self._wake_leader(_NOTE_WOKEN)
            return True
        trio.lowlevel.reschedule(task, WOKEN)
        return True

    def _wake_leader(self, note: object) -> None:
        """Wake the leader through the epoll it waits on (it is parked in Trio's wait)."""
        self._leader_note = note
        os.eventfd_write(self._wake_fd, 1)

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

    def arm(self, fd: int, task: trio.lowlevel.Task, parked: object) -> Awaitable[Any] | None:
        """Make ``task`` the waiter on ``fd``: what it awaits, or None if ``fd`` is ready already.

        ``parked`` is the socket's :func:`parking` message, with an abort that calls
        disarm; the task awaits ``park(parked)``, or the lead (:meth:`_lead`) when
        nobody holds the epoll.  No coroutine frame or closure of ours while a
        parked task sleeps.  One waiter per fd, as in Trio: a second raises
        ``trio.BusyResourceError`` (replacing the first would leave it parked for good).
        """
        if fd in self.ready or fd in self.hung_up:
            self.ready.discard(fd)
            return None
        if self.leader is None and not self._hub_waiting:
            if fd in self.waiters:
                raise trio.BusyResourceError("another task is already waiting for this socket")
            if self._lead_fd < 0:
                raise trio.ClosedResourceError("the readiness hub has stopped")
            self.leader = task
            self.leader_fd = fd
            self._leader_note = None
            return self._lead(fd)
        if self.waiters.setdefault(fd, task) is not task or fd == self.leader_fd:
            if fd == self.leader_fd:
                del self.waiters[fd]
            raise trio.BusyResourceError("another task is already waiting for this socket")
        return _park_fast(parked) if PARK_FAST else _park_public(parked)

    async def _lead(self, fd: int) -> None:
        """Wait on the epoll for ``fd``, serving every other socket's edges meanwhile."""
        window = self._busy_poll_ns
        began = perf_counter_ns() if window else 0  # no clock reads with polling off
        poll_until = began + window if self._poll_next else 0
        polled = poll_until != 0
        in_vain = False
        try:
            poll = self.epoll.poll
            while True:
                events = None
                while poll_until:  # "Busy polling"
                    await trio.lowlevel.checkpoint()
                    if self._lead_fd < 0:
                        raise trio.ClosedResourceError("the readiness hub has stopped")
                    self.busy_polls += 1
                    events = poll(0)
                    if events:
                        break
                    if perf_counter_ns() >= poll_until:
                        poll_until = 0
                        in_vain = True
                if not events:
                    await trio.lowlevel.wait_readable(self._lead_fd)
                    events = poll(0)
                if len(events) == 1 and events[0][0] == fd:  # _serve(), for the lone socket
                    if events[0][1] & _HANGUP:
                        self.hung_up.add(fd)
                    break
                if self._hand_out(events, fd) or self._leader_note is not None:
                    break
                if self._again and self._hub_parked:
                    self._wake_hub()  # watchers that go on after a checkpoint: the hub's job
        finally:
            if window:
                lasted = perf_counter_ns() - began
                if polled:
                    self.busy_poll_ns += min(lasted, window)
                self._poll_next = lasted < 2 * window and not in_vain
            note = self._leader_note
            self.leader = None
            self.leader_fd = -1
            self._leader_note = None
            if self._hub_parked:
                self._wake_hub()
        if note is _NOTE_CLOSED:
            raise trio.ClosedResourceError("socket closed while waiting")

    def _wake_hub(self) -> None:
        self._hub_parked = False
        assert self._hub_task is not None
        trio.lowlevel.reschedule(self._hub_task, WOKEN)

    def _abort_hub_park(self, _: object) -> trio.lowlevel.Abort:
        self._hub_parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    def _serve(self, own: int) -> int:
        """Poll the epoll once and hand out its edges: the number of tasks woken, or, for
        the leader (``own`` >= 0), whether its own socket is among them.

        Only the holder of the epoll (the hub task, or the leader) calls this.
        """
        return self._hand_out(self.epoll.poll(0), own)

    def _hand_out(self, events: list[tuple[int, int]], own: int) -> int:
        """:meth:`_serve` for the edges one poll returned."""
        waiters = self.waiters
        again = self._again
        reschedule = trio.lowlevel.reschedule
        woken = 0
        for fd, mask in events:
            if mask & _HANGUP:
                self.hung_up.add(fd)
            if fd == own:
                woken = 1
                continue
            if fd in again:
                continue  # its watcher goes on after the next checkpoint anyway
            task = waiters.pop(fd, None)  # _dispatch, inlined: per event
            if task is not None:
                reschedule(task, WOKEN)
                if own < 0:
                    woken += 1
            elif fd == self._wake_fd:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
            else:
                self._nobody_waits(fd)
        return woken

    def waiting(self, fd: int) -> bool:
        """A task waits for ``fd``: parked for the hub, or leading."""
        return fd in self.waiters or fd == self.leader_fd

    def disarm(self, fd: int) -> None:
        self.waiters.pop(fd, None)

    async def wait_readable(self, fd: int) -> None:
        """arm() and park; for callers off the hot path (the hot ones park themselves)."""

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.disarm(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        waiting = self.arm(fd, trio.lowlevel.current_task(), parking(abort))
        if waiting is not None:
            await waiting

    async def run(self) -> None:
        epoll = self.epoll
        self._hub_task = trio.lowlevel.current_task()
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
                    if self.leader is not None:
                        continue  # the leader polls the epoll, never two at once
                elif self.leader is not None:
                    self._hub_parked = True
                    await park(self._hub_parking)  # until the leader leaves
                    continue
                else:
                    self.hub_waits += 1
                    self._hub_waiting = True
                    try:
                        await trio.lowlevel.wait_readable(epoll.fileno())
                    finally:
                        self._hub_waiting = False
                if self._serve(-1) == 1 and not self.waiters:
                    # One task woken, and no other waits: a lone connection, whose hop
                    # through this task costs each of its messages.  If it parks again
                    # before this checkpoint ends, it takes the epoll (else the hub does).
                    # With more tasks waiting, the hub's pass is shared: it keeps it.
                    await trio.lowlevel.checkpoint()
        finally:
            self._hub_task = None
            self._hub_parked = False
            for fd in (self._lead_fd, epoll.fileno()):
                trio.lowlevel.notify_closing(fd)  # a leader still waiting: ClosedResourceError
            os.close(self._lead_fd)
            os.close(self._wake_fd)
            self._lead_fd = -1
            epoll.close()


_NOTE_WOKEN = object()
_NOTE_CLOSED = object()


def _closed() -> Any:
    return outcome.Error(trio.ClosedResourceError("socket closed while waiting"))
