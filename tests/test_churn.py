"""Churn: open, subscribe and drop with a TCP reset, thousands of WebSockets in a row.

After the churn nothing may be left: no connection, task, subscription or owned
state key (``stats()``), no Trio task beyond those before, no file descriptor beyond
the baseline, and memory within a stated bound.  10,000 connections take about 10 s
on two cores, so the default suite runs them all; HORNBEAM_CHURN=N changes the count.
"""

from __future__ import annotations

import gc
import os
import resource
from typing import Any

import pytest
import trio
from raw_ws import RawWebSocket

from hornbeam_erlang import state_get, state_incr, state_set, subscribe
from hornbeam_trio.testing import TestServer, run_server

pytestmark = pytest.mark.usefixtures("hornbeam_state")

CHURN = int(os.environ.get("HORNBEAM_CHURN", "10000"))
BATCH = 100
ROOMS = 5
RSS_BOUND = 16 * 1024 * 1024
"""RSS growth allowed over a churn (after a warm-up of the same size): 16 MiB, whatever
the count.  One leaked KiB per connection would be 10 MiB at 10,000."""
OBJECTS_BOUND = 2000
"""gc-tracked objects that may be left over a churn (several hundred come and go between
runs whatever the count): one leaked dict, list, task or frame per connection is 10,000."""


async def presence_app(scope: Any, receive: Any, send: Any) -> None:
    """Subscribes, owns two state keys, says "ready", then echoes until the client leaves."""
    if scope["type"] != "websocket":
        return
    room = scope["path"].rsplit("/", 1)[-1]
    await send({"type": "websocket.accept"})
    subscribe(f"room:{room}")
    state_incr(f"online:{room}", owned=True)
    state_set(f"presence:{room}:{id(send)}", {"here": True}, owned=True)
    await send({"type": "websocket.send", "text": "ready"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def all_tasks() -> int:
    count, stack = 0, [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def churn(server: TestServer, total: int) -> None:
    """``total`` connections, ``BATCH`` at a time: connect, wait until subscribed, reset."""

    async def one(i: int, clients: list[RawWebSocket]) -> None:
        ws = await RawWebSocket.connect(server.host, server.port, f"/r/{i % ROOMS}")
        clients.append(ws)
        assert await ws.receive_text() == "ready"

    for start in range(0, total, BATCH):
        clients: list[RawWebSocket] = []
        async with trio.open_nursery() as nursery:
            for i in range(start, min(start + BATCH, total)):
                nursery.start_soon(one, i, clients)
        for ws in clients:
            ws.reset()


async def settle(server: TestServer, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while server.server.connections or server.stats()["connections"]:
            await trio.sleep(0.01)


async def test_churned_websockets_leave_nothing_behind() -> None:
    raise_fd_limit(4 * BATCH + 256)
    async with run_server(presence_app) as server:
        await churn(server, 1000)  # warm-up: caches, allocator arenas
        await settle(server)
        gc.collect()
        fds, rss, tasks = open_fds(), rss_bytes(), all_tasks()
        objects = len(gc.get_objects())

        with trio.fail_after(max(60, CHURN / 50)):
            await churn(server, CHURN)
        await settle(server)

        stats = server.stats()
        assert stats["server_connections"] == 0
        assert stats["connections"] == stats["tasks"] == 0
        assert stats["topics"] == {} and stats["subscribers"] == 0
        assert stats["owned_keys"] == []
        assert all(int(state_get(f"online:{room}") or 0) == 0 for room in range(ROOMS))
        assert all_tasks() == tasks
        assert open_fds() == fds
        gc.collect()
        grown_objects = len(gc.get_objects()) - objects
        assert grown_objects < OBJECTS_BOUND, f"{grown_objects} more objects after {CHURN}"
        grown_rss = rss_bytes() - rss
        print(f"churned {CHURN}: +{grown_objects} objects, RSS +{grown_rss / 2**20:.2f} MiB")
        assert grown_rss < RSS_BOUND, f"RSS grew {grown_rss / 2**20:.1f} MiB over {CHURN} churned"


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(wanted, 4096)), hard))
