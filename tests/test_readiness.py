"""The edge-triggered readiness hub: no wakeup lost, closing wakes the waiter."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from hornbeam_trio.readiness import ReadinessHub

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


async def test_edge_while_nobody_waits_is_kept_for_the_next_wait() -> None:
    async with running_hub() as (hub, a, b, _):
        b.send(b"x")  # the edge fires now; nobody is waiting yet
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            await hub.wait_readable(a.fileno())  # returns at once: the edge was kept
        assert a.recv(10) == b"x"


async def test_waiter_is_woken_by_data() -> None:
    async with running_hub() as (hub, a, b, nursery):
        woke = trio.Event()

        async def reader() -> None:
            await hub.wait_readable(a.fileno())
            woke.set()

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
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
