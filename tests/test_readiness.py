"""The edge-triggered readiness hub: no wakeup lost, closing wakes the waiter."""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from hornbeam_trio.readiness import PARK_FAST, ReadinessHub
from hornbeam_trio.transport import LINGER_RESET, SocketTransport, TransportClosed

pytestmark = pytest.mark.skipif(not ReadinessHub.available(), reason="needs Linux epoll")


@asynccontextmanager
async def running_hub() -> AsyncIterator[
    tuple[ReadinessHub, socket.socket, socket.socket, trio.Nursery]
]:
    """A running hub with one registered socket (a) whose peer (b) the test writes to."""
    hub = ReadinessHub()
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
        assert a.fileno() not in hub.waiters


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
            assert fd not in hub.waiters  # the cancel disarmed the park

            got: list[bytes] = []
            woke = trio.Event()

            async def reader() -> None:
                got.append(await transport.recv())
                woke.set()

            transport.drained = True
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert fd in hub.waiters
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
        assert hub.arm(a.fileno(), trio.lowlevel.current_task()) is False  # ready: no wait
        assert a.fileno() not in hub.waiters


async def test_a_second_waiter_on_one_socket_is_refused_and_the_first_still_wakes() -> None:
    async with running_hub() as (hub, a, b, nursery):
        woke = await start_waiter(hub, a, nursery)
        with trio.fail_after(1), pytest.raises(trio.BusyResourceError):
            await hub.wait_readable(a.fileno())
        b.send(b"z")
        with trio.fail_after(1):
            await woke.wait()  # the first waiter was kept, not replaced
        assert a.fileno() not in hub.waiters


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
