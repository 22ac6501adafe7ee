"""A connection's end releases everything at once: issue 12's cases, over real sockets.

Each test is named after the case it reproduces; each failed before the connection
got one release point (``WebSocketConnection._end`` -> ``ConnectionContext.end``).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from raw_ws import RawWebSocket, masked

import hornbeam_trio
from hornbeam_erlang import publish, state_get, state_incr, state_set, subscribe
from hornbeam_trio import ClientDisconnected, ConnectionEnded, stats, subscription
from hornbeam_trio.testing import run_server

pytestmark = pytest.mark.usefixtures("hornbeam_state")


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.001)


# ------------------------------------------------------------ 1. data after Close


async def test_case1_no_data_frame_follows_the_close_of_an_app_that_returned() -> None:
    """The app returns without websocket.close while subscribed to a busy topic, and the
    peer is slow to answer our Close: nothing may follow the Close (RFC 6455 §5.5.1),
    and publish() stops counting the subscriber at once."""
    returned = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        subscribe("busy")
        await receive()  # the client's "go"
        returned.set()

    async with run_server(app) as server:
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            await wait_until(lambda: stats()["topics"].get("busy") == 1)

            async def publisher() -> None:
                while True:
                    publish("busy", {"n": 1})
                    await trio.sleep(0.001)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                await ws.send_text("go")
                await returned.wait()
                await trio.sleep(0)  # the connection's task goes on to send its Close
                assert publish("busy", "after the end") == 0
                # Read everything up to the Close, then what came after it for 400 ms.
                while True:
                    opcode, _ = await ws.receive_frame()
                    if opcode == 0x8:
                        break
                after: list[int] = []
                with trio.move_on_after(0.4):
                    while True:
                        opcode, _ = await ws.receive_frame()
                        after.append(opcode)
                nursery.cancel_scope.cancel()
            assert after == []
            await ws.stream.send_all(masked(0x8, struct.pack("!H", 1000)))
        finally:
            await ws.aclose()


# ------------------------------------------------------------ 2. subscription() iterators


async def test_case2_a_reset_ends_the_apps_subscription_iterator_at_once() -> None:
    """The README's pattern: the client resets; the iterator ends (not after the 5 s
    grace), so the app returns and its owned key goes with it."""
    ended = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        state_set("presence:x", True, owned=True)
        try:
            async with subscription("feed") as messages:
                async for message in messages:
                    await send({"type": "websocket.send", "text": str(message)})
        finally:
            ended.set()

    async with run_server(app) as server:
        ws = await RawWebSocket.connect(server.host, server.port)
        await wait_until(lambda: stats()["topics"].get("feed") == 1)
        publish("feed", "one")
        assert await ws.receive_text() == "one"
        ws.reset()
        with trio.fail_after(0.5):  # the grace period is 5 s: this would time out
            await ended.wait()
        await wait_until(lambda: stats()["connections"] == 0, timeout=0.5)
        assert state_get("presence:x") is None
        assert stats()["topics"] == {}


async def test_case2_a_subscription_opened_after_the_client_left_ends_at_once() -> None:
    outcome: list[Any] = []
    gone = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect"
        with trio.fail_after(1):
            async with subscription("late") as messages:
                outcome.extend([m async for m in messages])
                outcome.append("ended")
        gone.set()

    async with run_server(app) as server:
        ws = await RawWebSocket.connect(server.host, server.port)
        ws.reset()
        with trio.fail_after(2):
            await gone.wait()
    assert outcome == ["ended"]


# ------------------------------------------------------------ 3. owned writes after the end


async def test_case3_owned_writes_after_the_connection_ended_raise_and_leave_nothing() -> None:
    """A task that outlives its connection (handed to a longer-lived nursery) makes
    owned writes: they raise ConnectionEnded and no key is left behind."""
    outcomes: list[str] = []
    done = trio.Event()
    handed_over = trio.Event()
    outer: list[trio.Nursery] = []

    async def late_writer() -> None:
        await handed_over.wait()
        await wait_until(lambda: stats()["connections"] == 0)
        for call in (
            lambda: state_set("late:set", 1, owned=True),
            lambda: state_incr("late:incr", owned=True),
        ):
            try:
                call()
            except ConnectionEnded as exc:
                outcomes.append(str(exc))
        for acall in (
            lambda: hornbeam_trio.state.set("late:aset", 1, owned=True),
            lambda: hornbeam_trio.state.incr("late:aincr", owned=True),
        ):
            try:
                await acall()
            except ConnectionEnded as exc:
                outcomes.append(str(exc))
        done.set()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        outer[0].start_soon(late_writer)  # carries this connection's context along
        handed_over.set()
        await receive()

    async with trio.open_nursery() as nursery:
        outer.append(nursery)
        async with run_server(app) as server:
            ws = await RawWebSocket.connect(server.host, server.port)
            await handed_over.wait()
            ws.reset()
            with trio.fail_after(2):
                await done.wait()
    assert len(outcomes) == 4
    assert all("has ended" in text for text in outcomes)
    for key in ("late:set", "late:incr", "late:aset", "late:aincr"):
        assert state_get(key) is None


# ------------------------------------------------------------ 5. send() is a checkpoint


async def test_case5_send_after_the_client_left_is_a_checkpoint() -> None:
    """An app loop that swallows OSError keeps sending to a departed client: each
    send() yields (other tasks run), and inside a cancelled scope raises Cancelled."""
    results: dict[str, Any] = {}
    finished = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            start = ticks
            for _ in range(100):
                try:
                    await send({"type": "websocket.send", "text": "x"})
                except OSError:
                    pass
            results["ticks during 100 failed sends"] = ticks - start
            nursery.cancel_scope.cancel()
        with trio.CancelScope() as scope_:
            scope_.cancel()
            try:
                await send({"type": "websocket.send", "text": "x"})
            except ClientDisconnected:
                results["in a cancelled scope"] = "ClientDisconnected"
        if scope_.cancelled_caught:
            results["in a cancelled scope"] = "Cancelled"
        finished.set()

    async with run_server(app) as server:
        ws = await RawWebSocket.connect(server.host, server.port)
        ws.reset()
        with trio.fail_after(2):
            await finished.wait()
    assert results["ticks during 100 failed sends"] >= 50
    assert results["in a cancelled scope"] == "Cancelled"


async def test_case4_stats_counts_the_task_of_an_http_connection() -> None:
    """An HTTP app runs in its connection's task: stats() counts it (it showed 0)."""
    inside = trio.Event()
    leave = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        inside.set()
        await leave.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with run_server(app) as server, trio.open_nursery() as nursery:
        nursery.start_soon(server.get, "/")
        await inside.wait()
        counts = stats()
        assert counts["http_connections"] == 1
        assert list(counts["tasks_per_connection"].values()) == [1]
        leave.set()


async def test_deliveries_before_accept_are_bounded_in_bytes_too() -> None:
    """A subscriber whose handshake is not accepted yet queues at most
    --subscriber-queue-bytes of deliveries (it was bounded in count only)."""
    subscribed = trio.Event()
    go = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        subscribe("early")  # before accept: deliveries wait for the handshake
        subscribed.set()
        await go.wait()
        await send({"type": "websocket.accept"})
        await receive()

    async with run_server(app, subscriber_queue_bytes=4096) as server:
        async with trio.open_nursery() as nursery:
            clients: list[RawWebSocket] = []

            async def connect() -> None:
                clients.append(await RawWebSocket.connect(server.host, server.port))

            nursery.start_soon(connect)
            await subscribed.wait()
            reached = [publish("early", "x" * 1000) for _ in range(10)]
            go.set()
        assert reached == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # 4 x ~1 KB fit in 4 KiB
        ws = clients[0]
        publish("early", "after")
        got = [await ws.receive_text() for _ in range(5)]
        assert got == ["x" * 1000] * 4 + ["after"]
        await ws.aclose()
