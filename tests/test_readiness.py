"""The edge-triggered readiness hub: no wakeup lost, closing wakes the waiter."""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
import trio.testing

from hornbeam_trio.readiness import PARK_FAST, ReadinessHub
from hornbeam_trio.transport import LINGER_RESET, SocketTransport, TransportClosed

pytestmark = pytest.mark.skipif(not ReadinessHub.available(), reason="needs Linux epoll")


@asynccontextmanager
async def running_hub(
    busy_poll_us: int = 0,
) -> AsyncIterator[tuple[ReadinessHub, socket.socket, socket.socket, trio.Nursery]]:
    """A running hub with one registered socket (a) whose peer (b) the test writes to."""
    hub = ReadinessHub(busy_poll_us=busy_poll_us)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            hub.register(a.fileno())
            yield hub, a, b, nursery
            nursery.cancel_scope.cancel()
    finally:
        a.close()
        b.close()


async def start_waiter(hub: ReadinessHub, sock: socket.socket, nursery: trio.Nursery) -> trio.Event:
    """A task parked in ``hub.wait_readable(sock)``; the event is set when it wakes."""
    woke = trio.Event()

    async def waiter() -> None:
        await hub.wait_readable(sock.fileno())
        woke.set()

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    return woke


async def test_edge_while_nobody_waits_is_kept_for_the_next_wait() -> None:
    async with running_hub() as (hub, a, b, _):
        b.send(b"x")  # the edge fires now; nobody is waiting yet
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            await hub.wait_readable(a.fileno())  # returns at once: the edge was kept
        assert a.recv(10) == b"x"


async def test_waiter_is_woken_by_data() -> None:
    async with running_hub() as (hub, a, b, nursery):
        woke = await start_waiter(hub, a, nursery)
        assert not woke.is_set()
        b.send(b"y")
        with trio.fail_after(1):
            await woke.wait()


async def test_unregister_fails_the_waiter_with_closed_resource_error() -> None:
    async with running_hub() as (hub, a, _, nursery):
        failed = trio.Event()

        async def reader() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await hub.wait_readable(a.fileno())
            failed.set()

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        hub.unregister(a.fileno())
        with trio.fail_after(1):
            await failed.wait()


async def test_cancelled_wait_leaves_no_waiter_behind() -> None:
    async with running_hub() as (hub, a, _, _):
        with trio.move_on_after(0.01):
            await hub.wait_readable(a.fileno())
        assert not hub.waiting(a.fileno())


def test_park_yields_its_prebuilt_message_on_this_trio() -> None:
    """readiness.park() saves its instructions only while Trio keeps WaitTaskRescheduled
    where readiness.py imports it from; on a Trio that moved it park() is slower, not
    wrong, and this says so."""
    assert PARK_FAST


async def test_a_socket_transport_parked_on_the_hub_wakes_cancels_and_closes() -> None:
    hub = ReadinessHub()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            transport = SocketTransport(a, hub=hub)
            fd = a.fileno()
            transport.drained = True  # the next recv() parks before it reads
            with trio.move_on_after(0.01) as timer:
                await transport.recv()
            assert timer.cancelled_caught
            assert not hub.waiting(fd)  # the cancel disarmed the park

            got: list[bytes] = []
            woke = trio.Event()

            async def reader() -> None:
                got.append(await transport.recv())
                woke.set()

            transport.drained = True
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.waiting(fd)
            b.send(b"hi")
            with trio.fail_after(1):
                await woke.wait()
            assert got == [b"hi"]

            failed = trio.Event()

            async def closed_reader() -> None:
                with pytest.raises(TransportClosed):
                    await transport.recv()
                failed.set()

            transport.drained = True
            nursery.start_soon(closed_reader)
            await trio.testing.wait_all_tasks_blocked()
            transport.abort()  # unregisters: the parked task fails, never hangs
            with trio.fail_after(1):
                await failed.wait()
            nursery.cancel_scope.cancel()
    finally:
        a.close()
        b.close()


class RecordingWatcher:
    """Reads one byte per call; asks to be called again while ``more`` calls remain."""

    def __init__(self, sock: socket.socket, more: int = 0) -> None:
        self.sock = sock
        self.calls = 0
        self.more = more
        self.read = b""

    def on_readable(self) -> bool:
        self.calls += 1
        try:
            self.read += self.sock.recv(1)
        except BlockingIOError:
            return False
        if self.more:
            self.more -= 1
            return True
        return False


async def test_readiness_nobody_waits_for_goes_to_the_watcher() -> None:
    async with running_hub() as (hub, a, b, _):
        watcher = RecordingWatcher(a)
        hub.watch(a.fileno(), watcher)
        b.send(b"w")
        with trio.fail_after(1):
            while watcher.calls == 0:
                await trio.sleep(0.001)
        assert watcher.read == b"w"
        assert a.fileno() not in hub.ready


async def test_a_waiting_task_comes_before_the_watcher() -> None:
    async with running_hub() as (hub, a, b, nursery):
        watcher = RecordingWatcher(a)
        hub.watch(a.fileno(), watcher)
        woke = await start_waiter(hub, a, nursery)
        b.send(b"t")
        with trio.fail_after(1):
            await woke.wait()
        assert watcher.calls == 0


async def test_an_edge_kept_before_watching_is_handed_to_the_watcher() -> None:
    async with running_hub() as (hub, a, b, _):
        b.send(b"k")
        await trio.testing.wait_all_tasks_blocked()
        assert a.fileno() in hub.ready
        watcher = RecordingWatcher(a)
        hub.watch(a.fileno(), watcher)
        assert watcher.read == b"k"


async def test_a_watcher_that_asks_again_is_called_again_after_a_checkpoint() -> None:
    async with running_hub() as (hub, a, b, _):
        watcher = RecordingWatcher(a, more=2)
        hub.watch(a.fileno(), watcher)
        b.send(b"abc")  # one edge, three bytes: read one per call
        with trio.fail_after(1):
            while watcher.read != b"abc":
                await trio.sleep(0.001)
        assert watcher.calls == 3


class HubSteps(trio.abc.Instrument):
    """Counts the steps of the hub's task: one step runs from one checkpoint to the next."""

    def __init__(self) -> None:
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("ReadinessHub.run"):
            self.steps += 1


async def test_a_busy_socket_is_served_once_per_pass_of_the_hub_however_many_edges() -> None:
    """A watcher that asks again while its peer keeps sending (a ping flood) gets new
    edges before its turn; it must still be called once per pass, or every pass of the
    hub serves it more often than the last and the other sockets wait ever longer."""
    steps = HubSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        async with running_hub() as (hub, a, b, _):
            calls_by_step: list[int] = []

            class Flooded(RecordingWatcher):
                def on_readable(self) -> bool:
                    calls_by_step.append(steps.steps)
                    b.send(b"more")  # a new edge before the hub's next pass
                    return super().on_readable()

            watcher = Flooded(a, more=60)
            hub.watch(a.fileno(), watcher)
            b.send(b"go")
            with trio.fail_after(2):
                while watcher.more:
                    await trio.sleep(0)
            # Once per pass (an edge that lands mid-pass may add one call): never more
            # calls per pass as the flood goes on.
            assert max(Counter(calls_by_step).values()) <= 2, calls_by_step
    finally:
        trio.lowlevel.remove_instrument(steps)


async def test_unregister_drops_the_watcher_even_if_it_asked_again() -> None:
    async with running_hub() as (hub, a, b, _):
        watcher = RecordingWatcher(a, more=100)
        hub.watch(a.fileno(), watcher)
        b.send(b"x" * 10)
        with trio.fail_after(1):
            while watcher.calls == 0:
                await trio.sleep(0)
        hub.unregister(a.fileno())
        calls = watcher.calls
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.calls == calls  # never called after unregister
        assert a.fileno() not in hub.ready and a.fileno() not in hub.watchers


async def test_interrupt_wakes_the_waiter_without_data_and_arm_sees_a_kept_edge() -> None:
    async with running_hub() as (hub, a, b, nursery):
        woke = await start_waiter(hub, a, nursery)
        hub.interrupt(a.fileno())
        with trio.fail_after(1):
            await woke.wait()
        b.send(b"r")
        await trio.testing.wait_all_tasks_blocked()
        assert hub.arm(a.fileno(), trio.lowlevel.current_task(), None) is None  # ready: no wait
        assert not hub.waiting(a.fileno())


async def test_a_second_waiter_on_one_socket_is_refused_and_the_first_still_wakes() -> None:
    async with running_hub() as (hub, a, b, nursery):
        woke = await start_waiter(hub, a, nursery)
        with trio.fail_after(1), pytest.raises(trio.BusyResourceError):
            await hub.wait_readable(a.fileno())
        b.send(b"z")
        with trio.fail_after(1):
            await woke.wait()  # the first waiter was kept, not replaced
        assert not hub.waiting(a.fileno())


class FailingWatcher:
    """A watcher with a bug: raises on every call."""

    def __init__(self) -> None:
        self.calls = 0

    def on_readable(self) -> bool:
        self.calls += 1
        raise RuntimeError("watcher bug")


def watcher_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "readiness watcher failed" in r.getMessage()]


async def test_a_failing_watcher_shuts_its_socket_down_and_the_hub_serves_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="hornbeam_trio")
    async with running_hub() as (hub, a, b, _):
        c, d = socket.socketpair()
        c.setblocking(False)
        try:
            hub.register(c.fileno())
            bad, good = FailingWatcher(), RecordingWatcher(c)
            hub.watch(a.fileno(), bad)
            hub.watch(c.fileno(), good)
            b.send(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert bad.calls == 1  # dropped: the shutdown's own edge did not reach it
            assert a.fileno() not in hub.watchers
            b.settimeout(1)
            assert b.recv(10) == b""  # the peer sees the end
            with trio.fail_after(1):
                await hub.wait_readable(a.fileno())  # hung up: a wait returns at once
            d.send(b"y")  # the hub goes on for the other socket
            await trio.testing.wait_all_tasks_blocked()
            assert good.read == b"y"
            [record] = watcher_failures(caplog)  # logged once, with the traceback
            assert record.exc_info is not None and "watcher bug" in str(record.exc_info[1])
        finally:
            hub.unregister(c.fileno())
            c.close()
            d.close()


async def test_a_watcher_failing_on_a_reset_socket_is_contained_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The peer's RST comes first: shutting the socket down then fails with ENOTCONN."""
    caplog.set_level(logging.ERROR, logger="hornbeam_trio")
    hub = ReadinessHub()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        sock, _ = listener.accept()
    sock.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            hub.register(sock.fileno())
            bad = FailingWatcher()
            hub.watch(sock.fileno(), bad)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            peer.close()  # RST
            await trio.testing.wait_all_tasks_blocked()
            assert bad.calls == 1
            assert len(watcher_failures(caplog)) == 1
            with trio.fail_after(1):
                await hub.wait_readable(sock.fileno())  # hung up: returns at once
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


# -- the leader: a parked task that waits on the epoll itself -------------------------


class StepOrder(trio.abc.Instrument):
    """The names of the tasks that ran a step, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def start_named_waiter(
    hub: ReadinessHub, sock: socket.socket, nursery: trio.Nursery, name: str
) -> trio.Event:
    """start_waiter, with a task name to find in a StepOrder."""
    woke = trio.Event()

    async def waiter() -> None:
        await hub.wait_readable(sock.fileno())
        woke.set()

    nursery.start_soon(waiter, name=name)
    await trio.testing.wait_all_tasks_blocked()
    return woke


@contextmanager
def another_socket(hub: ReadinessHub) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A second registered socket (c) and its peer (d), closed afterwards."""
    c, d = socket.socketpair()
    try:
        c.setblocking(False)
        hub.register(c.fileno())
        yield c, d
    finally:
        c.close()
        d.close()


class Looper:
    """A task that waits on its socket again and again, as a connection's app in receive()."""

    def __init__(self, hub: ReadinessHub, sock: socket.socket) -> None:
        self.hub = hub
        self.sock = sock
        self.wakes = 0
        self.woke = trio.Event()
        self.closed = trio.Event()
        """Set when a wait failed with ClosedResourceError (the socket or the hub closed)."""
        self.last = False
        """Set: after its next wakeup the task goes away (an app that does not come back)."""

    async def run(self) -> None:
        while True:
            try:
                await self.hub.wait_readable(self.sock.fileno())
            except trio.ClosedResourceError:
                self.closed.set()
                return
            try:
                self.sock.recv(100)
            except BlockingIOError:
                pass
            self.wakes += 1
            self.woke.set()
            self.woke = trio.Event()
            if self.last:
                return


async def start_leader(
    hub: ReadinessHub, sock: socket.socket, peer: socket.socket, nursery: trio.Nursery, name: str
) -> Looper:
    """A Looper on ``sock`` that waits as the leader.

    A running hub task keeps the epoll until one of its passes wakes a task; the woken
    task leads if it parks again before the hub's next step (Trio runs a batch in
    random order): so it is woken until it does, as by a lone connection's messages.
    """
    looper = Looper(hub, sock)
    nursery.start_soon(looper.run, name=name)
    for _ in range(64):
        await trio.testing.wait_all_tasks_blocked()
        if hub.leader_fd == sock.fileno():
            return looper
        woke = looper.woke
        peer.send(b".")
        with trio.fail_after(1):
            await woke.wait()
    raise AssertionError("the waiter never took the lead")


async def test_a_lone_waiter_is_woken_by_the_run_loop_before_the_hub_task_runs() -> None:
    """The hop through the hub's task is what a lone connection paid per message: a task
    that parks while nobody holds the epoll waits on it itself, and is the first to run
    on an edge (the hub's task runs after it, if at all)."""
    async with running_hub() as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "lone-waiter")
        order = StepOrder()
        trio.lowlevel.add_instrument(order)
        try:
            for _ in range(10):
                woke = looper.woke
                order.names.append("send")
                b.send(b"x")
                with trio.fail_after(1):
                    await woke.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert hub.leader_fd == a.fileno()  # parked again: leads again
        finally:
            trio.lowlevel.remove_instrument(order)
        relevant = [n for n in order.names if n in ("send", "lone-waiter") or "Hub" in n]
        # After every send, the waiter runs first: the hub's task, if it runs, after it.
        firsts = [relevant[i + 1] for i, n in enumerate(relevant[:-1]) if n == "send"]
        assert firsts == ["lone-waiter"] * 10, relevant


async def test_the_leader_wakes_the_other_waiters_and_runs_the_watchers() -> None:
    async with running_hub() as (hub, a, b, nursery):
        c, d = socket.socketpair()
        e, f = socket.socketpair()
        try:
            for sock in (c, e):
                sock.setblocking(False)
                hub.register(sock.fileno())
            leader = await start_leader(hub, a, b, nursery, "leader")
            wakes = leader.wakes
            other_woke = await start_named_waiter(hub, c, nursery, "other")
            assert c.fileno() in hub.waiters  # parked: the leader serves it
            watcher = RecordingWatcher(e)
            hub.watch(e.fileno(), watcher)
            d.send(b"c")
            with trio.fail_after(1):
                await other_woke.wait()
            f.send(b"e")
            with trio.fail_after(1):
                while watcher.read != b"e":
                    await trio.sleep(0.001)
            assert leader.wakes == wakes and hub.leader_fd == a.fileno()
            woke = leader.woke
            b.send(b"a")
            with trio.fail_after(1):
                await woke.wait()
        finally:
            for sock in (c, d, e, f):
                sock.close()


async def test_when_the_leader_does_not_come_back_the_hub_serves_the_others() -> None:
    """A leader whose socket turned readable goes on with its app, which may not park
    again for a long time: the hub task must take the epoll back, or every other
    parked socket would wait for it."""
    async with running_hub() as (hub, a, b, nursery):
        with another_socket(hub) as (c, d):
            leader = await start_leader(hub, a, b, nursery, "leader")
            other = await start_named_waiter(hub, c, nursery, "other")
            leader.last = True  # after this wakeup, it never parks again
            woke = leader.woke
            b.send(b"a")
            with trio.fail_after(1):
                await woke.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert hub.leader is None
            d.send(b"c")
            with trio.fail_after(1):
                await other.wait()


@pytest.mark.parametrize("polling", [False, True], ids=["sleeping", "polling"])
async def test_a_cancelled_leader_lets_the_hub_serve_a_waiter_parked_behind_it(
    polling: bool,
) -> None:
    """A polling leader sees the cancellation at its next checkpoint, well within its
    window (busy polling: see the end of this file)."""
    async with running_hub(5_000_000 if polling else 0) as (hub, a, b, nursery):
        with another_socket(hub) as (c, d):
            with trio.fail_after(1):
                async with trio.open_nursery() as leader_nursery:
                    looper = await start_leader(hub, a, b, leader_nursery, "leader")
                    other = await start_named_waiter(hub, c, nursery, "other")
                    if polling:
                        await exchange(looper, b)
                        await wait_polling(hub)
                    leader_nursery.cancel_scope.cancel()
            assert hub.leader is None
            d.send(b"c")
            with trio.fail_after(1):
                await other.wait()


async def test_interrupt_wakes_the_leader_and_unregister_fails_it() -> None:
    async with running_hub() as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "leader")
        wakes = looper.wakes
        woke = looper.woke
        assert hub.interrupt(a.fileno())  # no data: woken all the same
        with trio.fail_after(1):
            await woke.wait()
        assert looper.wakes == wakes + 1
        await trio.testing.wait_all_tasks_blocked()
        assert hub.leader_fd == a.fileno()  # parked again
        with pytest.raises(trio.BusyResourceError):
            await hub.wait_readable(a.fileno())  # a second task on the leader's socket
        hub.unregister(a.fileno())
        with trio.fail_after(1):
            await looper.closed.wait()
        assert hub.leader is None


async def test_a_watcher_asking_again_goes_on_while_a_task_leads() -> None:
    async with running_hub() as (hub, a, b, nursery):
        with another_socket(hub) as (c, d):
            await start_leader(hub, a, b, nursery, "leader")
            watcher = RecordingWatcher(c, more=2)
            hub.watch(c.fileno(), watcher)
            d.send(b"abc")  # one edge, three bytes: read one per call
            with trio.fail_after(1):
                while watcher.read != b"abc":
                    await trio.sleep(0.001)
            assert hub.leader_fd == a.fileno()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("polling", [False, True], ids=["sleeping", "polling"])
async def test_a_leader_waiting_when_the_hub_ends_is_failed_and_no_fd_is_left(
    polling: bool,
) -> None:
    """Polling, the leader finds the epoll closed at its next checkpoint."""
    before = open_fds()
    hub = ReadinessHub(busy_poll_us=1_000_000 if polling else 0)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hub.run)
                hub.register(a.fileno())
                looper = await start_leader(hub, a, b, outer, "leader")
                if polling:
                    await exchange(looper, b)
                    await wait_polling(hub)
                nursery.cancel_scope.cancel()  # the hub ends; the leader still waits
            with trio.fail_after(1):
                await looper.closed.wait()
    finally:
        a.close()
        b.close()
    assert open_fds() == before


async def test_an_interrupted_leader_is_not_read_by_its_watcher_meanwhile() -> None:
    """A second interrupt before the leader ran: still a task waiting, so the socket's
    watcher (for when nobody waits) must not read from under it."""
    async with running_hub() as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "leader")
        watcher = RecordingWatcher(a)
        hub.watch(a.fileno(), watcher)
        woke = looper.woke
        b.send(b"z")
        assert hub.interrupt(a.fileno())
        assert hub.interrupt(a.fileno())  # woken already: still True, and no watcher call
        hub._dispatch(a.fileno())  # what the hub's "again" pass does for a socket
        assert watcher.calls == 0
        with trio.fail_after(1):
            await woke.wait()
        hub.unwatch(a.fileno())


async def test_a_wait_after_the_hub_stopped_fails_instead_of_hanging() -> None:
    hub = ReadinessHub()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            hub.register(a.fileno())
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.ClosedResourceError), trio.fail_after(1):
            await hub.wait_readable(a.fileno())
    finally:
        a.close()
        b.close()


# -- busy polling: a lone leader whose peer answers fast does not sleep -----------------


class LoopSleeps(trio.abc.Instrument):
    """How often the run loop was about to sleep: an I/O wait with a timeout, not a poll."""

    def __init__(self) -> None:
        self.sleeps = 0

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            self.sleeps += 1


async def exchange(looper: Looper, peer: socket.socket) -> None:
    """The peer sends a byte; the looper wakes to it."""
    woke = looper.woke
    peer.send(b"x")
    with trio.fail_after(1):
        await woke.wait()


@pytest.mark.parametrize("busy_poll_us", [0, 1_000_000])
async def test_a_lone_leader_whose_peer_answers_at_once_is_served_without_the_loop_sleeping(
    busy_poll_us: int,
) -> None:
    """The test's own task is the peer: it answers each wakeup at once.  Polling, the run
    loop never sleeps between messages (the kernel's wakeup is what a lone connection's
    round trip waits on); without it, it sleeps once per message."""
    async with running_hub(busy_poll_us) as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "leader")
        await exchange(looper, b)  # the lead before it: short
        loop = LoopSleeps()
        trio.lowlevel.add_instrument(loop)
        try:
            for _ in range(20):
                await exchange(looper, b)
        finally:
            trio.lowlevel.remove_instrument(loop)
        if busy_poll_us:
            assert loop.sleeps == 0
            assert hub.busy_polls > 0
            assert hub.leader_fd == a.fileno()  # still the leader: the hub task never took over
        else:
            assert loop.sleeps >= 20
            assert hub.busy_polls == 0


async def test_a_busy_poll_ends_with_its_window_and_a_lead_after_a_quiet_spell_sleeps() -> None:
    async with running_hub(busy_poll_us=50_000) as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "leader")
        await exchange(looper, b)  # a short lead: the next one polls
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()  # returns once the leader sleeps
        polls = hub.busy_polls
        assert polls > 0
        assert hub.leader_fd == a.fileno()
        await trio.sleep(0.2)  # longer than the window: this lead lasts longer
        await exchange(looper, b)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.busy_polls == polls  # the lead after a long one sleeps at once
        assert hub.leader_fd == a.fileno()


async def test_a_lead_that_slept_less_than_twice_the_window_lets_the_next_one_poll() -> None:
    """A sleeping lead's length includes the kernel's wakeup: were it held to the window
    alone, polling would never begin for a peer that answers just within it."""
    async with running_hub(busy_poll_us=200_000) as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "leader")
        await trio.sleep(0.5)  # the lead in progress outlasts 2 windows: the next sleeps
        await exchange(looper, b)
        await trio.testing.wait_all_tasks_blocked()
        polls = hub.busy_polls
        await trio.sleep(0.3)  # this lead: 1.5 windows, asleep from its start
        await exchange(looper, b)
        await wait_polling(hub)  # the next one polls
        assert hub.busy_polls > polls


async def test_a_lead_that_polled_in_vain_lets_the_next_one_sleep_at_once() -> None:
    async with running_hub(busy_poll_us=200_000) as (hub, a, b, nursery):
        looper = await start_leader(hub, a, b, nursery, "leader")
        await trio.sleep(0.5)
        await exchange(looper, b)  # the lead after it sleeps at once ...
        await exchange(looper, b)  # ... and is short: the one after it polls
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()  # its window is over: in vain
        polls = hub.busy_polls
        assert polls > 0
        await exchange(looper, b)  # within 2 windows of its start, but it polled in vain
        await trio.testing.wait_all_tasks_blocked()
        assert hub.busy_polls == polls


async def wait_polling(hub: ReadinessHub) -> None:
    polls = hub.busy_polls
    with trio.fail_after(5):
        while hub.busy_polls == polls:
            await trio.sleep(0)


async def test_a_polling_leader_is_woken_by_interrupt_and_by_another_socket_s_waiter() -> None:
    async with running_hub(busy_poll_us=1_000_000) as (hub, a, b, nursery):
        with another_socket(hub) as (c, d):
            looper = await start_leader(hub, a, b, nursery, "leader")
            other = await start_named_waiter(hub, c, nursery, "other")
            await exchange(looper, b)
            await wait_polling(hub)
            d.send(b"c")  # the polling leader hands it out
            with trio.fail_after(1):
                await other.wait()
            await wait_polling(hub)
            woke = looper.woke
            assert hub.interrupt(a.fileno())
            with trio.fail_after(1):
                await woke.wait()
