"""The WebSocket engine's own machinery: inline reads, the hub's watchers, the timer task.

Over plain TCP on Linux the app reads its socket itself inside ``receive()``; while it
is elsewhere the readiness hub reads for it (``on_readable``), and one timer task per
server keeps every connection's clocks.  Memory streams take the other road (a reader
task).  These tests pin down what each road must still do when the app is away from
``receive()``: answer pings, notice a departed peer, stop reading at the queue bound
without losing a message, give up on an app that ignores its disconnect, and keep a
busy connection from starving the others.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import ANY

import pytest
import trio
import trio.testing
from test_websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    client_frame,
)

from hornbeam_trio import ws_conn, ws_read, ws_session
from hornbeam_trio.readiness import ReadinessHub
from hornbeam_trio.runtime import current_connection
from hornbeam_trio.server import serve
from hornbeam_trio.testing import run_server
from hornbeam_trio.timers import TimerSweeper
from hornbeam_trio.transport import LINGER_RESET, RECV_SIZE
from hornbeam_trio.types import Message, Receive, Scope, Send
from hornbeam_trio.ws_send import DeliveryBatcher

TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "memory"])


class AwayApp:
    """Accepts, then stays away from receive() until ``release`` is set.

    Records the connection object (to look at its queue), every message it received
    after release, and whether it was cancelled.
    """

    def __init__(self) -> None:
        self.accepted = trio.Event()
        self.release = trio.Event()
        self.connection: ws_conn.WebSocketConnection | None = None
        self.received: list[Message] = []
        self.cancelled = False
        self.ended = trio.Event()
        self.receive_after_release = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        try:
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            context = current_connection.get()
            assert context is not None
            self.connection = context.pusher  # type: ignore[assignment]
            self.accepted.set()
            await self.release.wait()
            while self.receive_after_release:
                message = await receive()
                self.received.append(message)
                if message["type"] == "websocket.disconnect":
                    return
            await trio.sleep_forever()  # ignores its client from here on
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.ended.set()


# --------------------------------------------------------------------------- app away


@TRANSPORTS
async def test_ping_is_answered_while_the_app_is_away_from_receive(transport: str) -> None:
    app = AwayApp()
    async with run_server(app, transport=transport) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        await raw.send_frame(OP_PING, b"are you there")
        pong = await raw.receive_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"are you there")
        assert app.received == []  # the app never looked
        app.release.set()
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
        await app.ended.wait()
    assert app.received == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]


@TRANSPORTS
async def test_messages_wait_in_order_for_an_app_that_is_away(transport: str) -> None:
    app = AwayApp()
    frame = client_frame(OP_TEXT, b"m" * 100)
    total = 4 * RECV_SIZE // len(frame)  # a few reads' worth: more than the queue may take
    bound = ws_conn.MAX_QUEUED_EVENTS + RECV_SIZE // len(frame) + 1  # one read may overshoot
    async with run_server(app, transport=transport) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        async with trio.open_nursery() as nursery:
            # The rest must stay unread (in the kernel or the stream), neither dropped
            # nor queued: the send blocks until the app reads.
            nursery.start_soon(
                raw.send, b"".join(client_frame(OP_TEXT, b"%099d" % i) for i in range(total))
            )
            with trio.fail_after(5):
                while app.connection is None or (
                    len(app.connection._events) < ws_conn.MAX_QUEUED_EVENTS
                ):
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            assert ws_conn.MAX_QUEUED_EVENTS <= len(app.connection._events) <= bound
            app.release.set()
        with trio.fail_after(5):
            while len(app.received) < total:
                await trio.sleep(0.01)
        assert [m.get("text") for m in app.received] == [f"{i:099d}" for i in range(total)]
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000


async def test_a_large_message_for_an_absent_app_is_read_by_the_hub_and_arrives_whole() -> None:
    """2 MiB while the app is away: many edges, each read by the hub's watcher, one
    partial frame carried across them, one whole message queued for the app (the
    queue's byte budget raised above it: by default the hub stops at 1 MiB of a message
    in progress and the app's receive() reads the rest, test_ws_budget.py)."""
    app = AwayApp()
    payload = bytes(range(256)) * (8 * 1024)  # 2 MiB
    async with run_server(
        app, transport="tcp", websocket_max_queue_bytes=4 * 1024 * 1024
    ) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.send, client_frame(OP_BINARY, payload))
            with trio.fail_after(10):
                while app.connection is None or not app.connection._events:
                    await trio.sleep(0.01)
        assert app.received == []  # read by the hub, not by the app
        app.release.set()
        with trio.fail_after(5):
            while not app.received:
                await trio.sleep(0.01)
        assert app.received[0] == {"type": "websocket.receive", "bytes": payload}
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000


@TRANSPORTS
async def test_app_ignoring_a_departed_client_is_cancelled_after_its_grace(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_session, "APP_EXIT_GRACE", 0.2)
    app = AwayApp()
    app.receive_after_release = False
    app.release.set()
    async with run_server(app, transport=transport) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1001))
        assert (await raw.receive_close()).close_code == 1001
        with trio.fail_after(5):
            await app.ended.wait()
        assert app.cancelled
        await raw.expect_eof()


async def test_peer_reset_is_noticed_while_the_app_is_away() -> None:
    app = AwayApp()
    async with run_server(app, transport="tcp") as server:
        sock = socket.create_connection((server.host, server.port))
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await app.accepted.wait()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()  # RST
        connection = app.connection
        assert connection is not None
        with trio.fail_after(5):
            while connection.close_code is None:
                await trio.sleep(0.01)
        assert connection.close_code == 1006
        app.release.set()
        with trio.fail_after(5):
            await app.ended.wait()
    assert app.received[-1]["type"] == "websocket.disconnect"
    assert app.received[-1]["code"] == 1006


async def test_socket_closed_under_an_app_waiting_in_receive_gives_it_1006() -> None:
    """The transport is aborted while the app is parked on the hub: the hub fails the
    wait (ClosedResourceError) and receive() turns that into a disconnect, not a hang."""
    app = AwayApp()
    app.release.set()  # the app waits in receive(), parked on the hub
    async with run_server(app, transport="tcp") as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        await trio.testing.wait_all_tasks_blocked()
        connection = app.connection
        assert connection is not None
        connection.transport.abort()
        with trio.fail_after(5):
            await app.ended.wait()
        await raw.expect_eof()
    assert app.received == [
        {"type": "websocket.disconnect", "code": 1006, "reason": "connection lost"}
    ]


@TRANSPORTS
async def test_a_failure_while_reading_for_an_absent_app_closes_only_that_connection(
    transport: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = AwayApp()
    original = ws_conn.WebSocketConnection._received

    def failing(self: ws_conn.WebSocketConnection, data: bytes) -> bool:
        if self is app.connection and not app.release.is_set():
            raise RuntimeError("injected fault")
        return original(self, data)

    monkeypatch.setattr(ws_conn.WebSocketConnection, "_received", failing)
    caplog.set_level(logging.ERROR, logger="hornbeam_trio")
    async with run_server(app, transport=transport, check_leaks=True) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        await raw.send_frame(OP_TEXT, b"boom")
        await raw.expect_eof()
        assert "reading a WebSocket failed" in caplog.text
        app.release.set()
        with trio.fail_after(5):
            await app.ended.wait()
        assert app.received[-1]["code"] == 1011
        # The server goes on serving others.
        async with server.websocket("/") as other:
            assert other.closed is None


@pytest.mark.skipif(not ReadinessHub.available(), reason="watchers exist only with the hub")
async def test_a_failing_watcher_ends_its_own_connection_and_the_server_serves_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that escapes ``on_readable`` reaches the hub, not the app's reads: the hub
    must contain it to that socket (a dead hub task would take the server down)."""
    away = AwayApp()

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == "/away":
            await away(scope, receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})

    original = ws_read.InlineReader.on_readable

    def failing(self: ws_read.InlineReader) -> bool:
        if self.conn is away.connection:
            raise RuntimeError("injected watcher bug")
        return original(self)

    monkeypatch.setattr(ws_read.InlineReader, "on_readable", failing)
    caplog.set_level(logging.ERROR, logger="hornbeam_trio")
    async with run_server(router, transport="tcp", check_leaks=True) as server:
        raw = await RawClient.connect(server, "/away")
        await away.accepted.wait()
        await raw.send_frame(OP_TEXT, b"read by the hub")  # the app is away: the watcher
        await raw.expect_eof()  # its socket was shut down
        away.release.set()
        with trio.fail_after(5):
            await away.ended.wait()  # its next receive() found the end
        assert away.received[-1]["type"] == "websocket.disconnect"
        assert away.received[-1]["code"] == 1006
        async with server.websocket("/") as other:
            await other.send("still served")
            assert await other.receive() == "still served"
    failures = [r for r in caplog.records if "readiness watcher failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


@TRANSPORTS
async def test_app_returning_with_unread_messages_still_completes_the_close_handshake(
    transport: str,
) -> None:
    app = AwayApp()
    app.receive_after_release = False

    async def returning(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        app.accepted.set()
        await app.release.wait()  # and return without reading what came meanwhile

    async with run_server(returning, transport=transport) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        await raw.send(b"".join(client_frame(OP_TEXT, b"unread") for _ in range(100)))
        await trio.testing.wait_all_tasks_blocked()
        app.release.set()
        close = await raw.receive_close()
        assert close.close_code == 1000
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        await raw.expect_eof()  # a clean close: our reply was read, then TCP closed


# --------------------------------------------------------------------------- a busy peer


@TRANSPORTS
async def test_a_busy_receive_loop_lets_other_tasks_run(transport: str) -> None:
    """Thousands of messages already read: receive() never has to wait for the socket.

    It must still checkpoint every few messages, or an app that only awaits receive()
    would keep every other connection (here: a ticker task) from running until done.
    """
    app = AwayApp()
    total = 5000
    ticks_during = [0]
    async with run_server(app, transport=transport) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        async with trio.open_nursery() as nursery:
            # 35 KB: in the kernel at once over TCP; a memory stream waits for reads.
            nursery.start_soon(
                raw.send, b"".join(client_frame(OP_TEXT, b"x") for _ in range(total))
            )
            with trio.fail_after(5):
                while app.connection is None or (
                    len(app.connection._events) < ws_conn.MAX_QUEUED_EVENTS
                ):
                    await trio.sleep(0.01)

            async def ticker() -> None:
                while len(app.received) < total:
                    if app.received:
                        ticks_during[0] += 1
                    await trio.sleep(0)

            nursery.start_soon(ticker)
            app.release.set()
        assert ticks_during[0] >= total // (2 * ws_conn.CHECKPOINT_EVERY)
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000


async def test_eof_behind_data_the_app_reads_itself_is_not_missed() -> None:
    """Data and FIN in one edge, read by the app: the short recv() must not make it wait.

    The hub's watcher sees the edge with the queue full and leaves the bytes to the
    app; the app's recv() takes the data and comes back short ("likely empty"), with
    the EOF still unread and its edge already spent.
    """
    app = AwayApp()
    async with run_server(app, transport="tcp") as server:
        sock = socket.create_connection((server.host, server.port))
        try:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await app.accepted.wait()
            connection = app.connection
            assert connection is not None
            sock.sendall(b"".join(client_frame(OP_TEXT, b"a%d" % i) for i in range(100)))
            with trio.fail_after(5):
                while len(connection._events) < 100:
                    await trio.sleep(0.01)
            # Both before the hub's next look: one edge carrying data and FIN.
            sock.sendall(b"".join(client_frame(OP_TEXT, b"b%d" % i) for i in range(100)))
            sock.shutdown(socket.SHUT_WR)
            await trio.testing.wait_all_tasks_blocked()
            assert len(connection._events) == 100  # the watcher left the rest unread
            app.release.set()
            with trio.fail_after(5):
                await app.ended.wait()
        finally:
            sock.close()
    texts = [m.get("text") for m in app.received]
    assert texts[:-1] == [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(100)]
    assert app.received[-1]["type"] == "websocket.disconnect"


# --------------------------------------------------------------------------- the send path


class BigSender:
    """Sends one message larger than the kernel takes at once, then waits in receive().

    The server's send buffer is made small so most of the message stays queued in the
    connection's Writer, drained by its flusher task as the client reads.
    """

    PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes: under the Writer's high-water mark
    WIRE = b"\x82\x7f" + struct.pack("!Q", len(PAYLOAD)) + PAYLOAD

    def __init__(self) -> None:
        self.taken_at_once = -1
        self.sent = trio.Event()
        self.ended = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        try:
            await receive()
            await send({"type": "websocket.accept"})
            context = current_connection.get()
            assert context is not None
            connection: ws_conn.WebSocketConnection = context.pusher  # type: ignore[assignment]
            connection.transport.sock.setsockopt(  # type: ignore[attr-defined]
                socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
            )
            await send({"type": "websocket.send", "bytes": self.PAYLOAD})
            self.taken_at_once = len(self.WIRE) - connection.writer.pending_bytes
            self.sent.set()
            await receive()  # the client's close
        finally:
            self.ended.set()


async def start_big_flush(server: Any, app: BigSender) -> tuple[RawClient, bytearray]:
    """Connect, let the flusher send part of the queued message, then send our close
    without reading on: the connection ends with its flusher cancelled halfway and its
    last flush waiting for the client to read. Returns the bytes read so far."""
    raw = await RawClient.connect(server)
    raw.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # type: ignore[attr-defined]
    await app.sent.wait()
    wire = bytearray(raw.buffer)
    with trio.fail_after(5):
        # More than the kernel took at the send() itself: the flusher has sent some too.
        while len(wire) <= app.taken_at_once:
            wire += await raw.stream.receive_some(4096)
    await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
    with trio.fail_after(5):
        await app.ended.wait()
    await trio.testing.wait_all_tasks_blocked()  # the flusher was cancelled; last flush waits
    return raw, wire


async def test_a_flush_cut_short_by_the_connection_ending_sends_no_byte_twice() -> None:
    app = BigSender()
    async with run_server(app, transport="tcp") as server:
        raw, wire = await start_big_flush(server, app)
        with trio.fail_after(5):
            while chunk := await raw.stream.receive_some(65536):
                wire += chunk
    close_reply = b"\x88\x02" + struct.pack("!H", 1000)
    assert len(wire) == len(app.WIRE) + len(close_reply)
    assert bytes(wire) == app.WIRE + close_reply


async def test_a_peer_reset_during_the_last_flush_ends_the_connection_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hornbeam_trio")
    app = BigSender()
    async with run_server(app, transport="tcp") as server:
        raw, _ = await start_big_flush(server, app)
        sock = raw.stream.socket  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()  # RST while the server still has bytes for us
        with trio.fail_after(5):
            while server.server.connections:
                await trio.sleep(0.005)
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud == [], [r.getMessage() for r in loud]
    assert any("last flush" in r.getMessage() for r in caplog.records)


class BatchedTarget:
    """What the batcher asks of a connection, done as WebSocketConnection does it: the
    first delivery of a pass marks it, later ones join its batch, a flush writes it whole."""

    def __init__(self, batcher: DeliveryBatcher, clock: list[int]) -> None:
        self.batcher = batcher
        self.clock = clock
        self.batch: list[int] | None = None
        self.written: list[int] = []
        self.first_flush_at: int | None = None

    def deliver(self, item: int) -> None:
        if self.batch is None:
            self.batch = [item]
            self.batcher.mark(self)
        else:
            self.batch.append(item)

    def flush_batch(self) -> None:
        if self.first_flush_at is None:
            self.first_flush_at = self.clock[0]
        batch, self.batch = self.batch, None
        self.written += batch or []


async def test_a_delivery_pass_to_many_connections_lets_others_run_and_loses_nothing() -> None:
    """One publish to 1,000 subscribers must not hold the scheduler for 1,000 sends; what
    another task publishes during the pass still reaches everyone, once, in order."""
    batcher = DeliveryBatcher()
    rounds_published = [0]
    targets = [BatchedTarget(batcher, rounds_published) for _ in range(1000)]
    rounds = 5
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        await trio.testing.wait_all_tasks_blocked()
        for target in targets:
            target.deliver(0)

        async def publisher() -> None:
            for n in range(1, rounds + 1):
                await trio.sleep(0)  # its turns come between the batcher's slices
                for target in targets:
                    target.deliver(n)
                rounds_published[0] = n

        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()  # published all; the batcher parked
        nursery.cancel_scope.cancel()
    # Every round was published while the first pass was under way, not after it.
    first_flushes = [target.first_flush_at for target in targets]
    assert (first_flushes[0], first_flushes[-1]) == (0, rounds)
    assert all(target.written == list(range(rounds + 1)) for target in targets)


# --------------------------------------------------------------------------- timers, TCP


async def test_pings_and_idle_timeout_apply_to_an_inline_reader() -> None:
    app = AwayApp()
    app.release.set()  # the app waits in receive(), reading inline
    async with run_server(
        app, transport="tcp", websocket_ping_interval=100, websocket_timeout=400
    ) as server:
        raw = await RawClient.connect(server)
        start = trio.current_time()
        ping = await raw.receive_frame()
        assert ping.opcode == OP_PING
        await raw.send_frame(OP_PONG, ping.payload)
        assert (await raw.receive_frame()).opcode == OP_PING  # answered: pinged again
        close = await raw.receive_close()  # this one unanswered: idle timeout
        assert (close.close_code, close.close_reason) == (1001, "idle timeout")
        assert trio.current_time() - start >= 0.4
        with trio.fail_after(5):
            await app.ended.wait()
    assert app.received[-1]["code"] == 1001


# --------------------------------------------------------------------------- the timer task


class Target:
    def __init__(self, sweeper: TimerSweeper, log: list[tuple[str, float]], name: str) -> None:
        self.timer_at = math.inf
        self.timer_key = 0
        self.sweeper = sweeper
        self.log = log
        self.name = name
        self.again: float | None = None
        self.fail = False

    def on_timer(self, now: float) -> None:
        self.log.append((self.name, now))
        if self.fail:
            raise RuntimeError("timer bug")
        if self.again is not None:
            deadline, self.again = self.again, None
            self.sweeper.schedule(self, deadline)


@asynccontextmanager
async def running(sweeper: TimerSweeper) -> AsyncIterator[trio.Nursery]:
    """The sweeper's task, running in a nursery the test cancels when done."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweeper.run)
        yield nursery
        nursery.cancel_scope.cancel()


async def test_timers_fire_in_deadline_order_and_an_earlier_one_wakes_the_task(
    autojump_clock: Any,
) -> None:
    sweeper = TimerSweeper()
    log: list[tuple[str, float]] = []
    a, b = Target(sweeper, log, "a"), Target(sweeper, log, "b")
    async with running(sweeper):
        start = trio.current_time()
        sweeper.schedule(a, start + 10)
        await trio.testing.wait_all_tasks_blocked()  # the task sleeps until +10
        sweeper.schedule(b, start + 2)  # earlier: must wake it
        sweeper.schedule(a, start + 20)  # later than its entry: no-op
        await trio.sleep(15)
        assert [(n, t - start) for n, t in log] == [("b", 2), ("a", 10)]


async def test_a_target_reschedules_itself_and_stale_entries_are_skipped(
    autojump_clock: Any,
) -> None:
    sweeper = TimerSweeper()
    log: list[tuple[str, float]] = []
    a = Target(sweeper, log, "a")
    async with running(sweeper):
        start = trio.current_time()
        sweeper.schedule(a, start + 5)
        sweeper.schedule(a, start + 1)  # earlier: the +5 entry is now stale
        a.again = start + 3
        await trio.sleep(10)
        assert [t - start for _, t in log] == [1, 3]  # not 5


async def test_forgotten_targets_are_never_called_and_their_entries_compacted(
    autojump_clock: Any,
) -> None:
    sweeper = TimerSweeper()
    log: list[tuple[str, float]] = []
    targets = [Target(sweeper, log, str(i)) for i in range(200)]
    async with running(sweeper):
        start = trio.current_time()
        for target in targets:
            sweeper.schedule(target, start + 60)
        for target in targets[1:]:
            sweeper.forget(target)
            sweeper.schedule(target, start + 1)  # a forgotten target asks in vain
        assert len(sweeper._heap) < 64  # rebuilt from the live entries, not 200 stale ones
        await trio.sleep(120)
        assert [n for n, _ in log] == ["0"]


async def test_a_failing_timer_is_logged_and_the_others_still_fire(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sweeper = TimerSweeper()
    log: list[tuple[str, float]] = []
    bad, good = Target(sweeper, log, "bad"), Target(sweeper, log, "good")
    bad.fail = True
    async with running(sweeper):
        sweeper.schedule(bad, trio.current_time() + 1)
        sweeper.schedule(good, trio.current_time() + 1)
        await trio.sleep(2)
        assert sorted(n for n, _ in log) == ["bad", "good"]
        assert "a connection's timer failed" in caplog.text


@TRANSPORTS
async def test_a_second_task_waiting_in_receive_is_refused_not_left_hanging(
    transport: str,
) -> None:
    """Only one task may wait for the next message; a second one gets BusyResourceError.

    Silently replacing the first waiter would leave it parked after the disconnect.
    """
    refused: list[BaseException] = []

    async def two_receivers(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            try:
                await receive()
            except trio.BusyResourceError as exc:
                refused.append(exc)
                await send({"type": "websocket.send", "text": "refused"})
            nursery.cancel_scope.cancel()

    async with run_server(two_receivers, transport=transport) as server:
        raw = await RawClient.connect(server)
        frame = await raw.receive_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"refused")
        assert (await raw.receive_close()).close_code == 1000  # the app returned
    assert len(refused) == 1


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_before_the_app_answers_the_handshake_gets_503() -> None:
    entered = trio.Event()
    cancelled = [False]

    async def undecided(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        entered.set()
        try:
            await trio.sleep_forever()  # never accepts, never refuses
        except trio.Cancelled:
            cancelled[0] = True
            raise

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve_scope = trio.CancelScope()

            async def run_serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with serve_scope:
                    await serve(
                        undecided,
                        bind=("127.0.0.1:0",),
                        log_level="warning",
                        task_status=task_status,
                    )

            addresses = await nursery.start(run_serve)
            stream = await trio.open_tcp_stream("127.0.0.1", addresses[0].port)
            await stream.send_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await entered.wait()
            serve_scope.cancel()
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"\r\nretry-after: 1\r\n" in answer.lower()
    assert cancelled[0]


# --------------------------------------------------------------------------- held failure


@TRANSPORTS
async def test_a_failure_behind_valid_messages_waits_for_the_app_then_closes_with_its_code(
    transport: str,
) -> None:
    """A valid message and a bad frame in one read: the app receives the message and its
    answer goes out before our Close, which carries the failure's code (1002)."""

    async def echo_once(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "got " + message["text"]})
        assert (await receive()) == {"type": "websocket.disconnect", "code": 1002, "reason": ANY}

    async with run_server(echo_once, transport=transport) as server:
        raw = await RawClient.connect(server)
        await raw.send(client_frame(OP_TEXT, b"hi") + client_frame(OP_TEXT, b"bad", rsv=1))
        frame = await raw.receive_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"got hi")
        assert (await raw.receive_close()).close_code == 1002


@TRANSPORTS
async def test_a_held_failure_closes_at_the_close_timeout_if_the_app_stays_away(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_session, "CLOSE_TIMEOUT", 0.2)
    app = AwayApp()
    async with run_server(app, transport=transport) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        await raw.send(client_frame(OP_TEXT, b"hi") + client_frame(OP_TEXT, b"bad", rsv=1))
        with trio.fail_after(5):
            assert (await raw.receive_close()).close_code == 1002
        app.release.set()
        with trio.fail_after(5):
            await app.ended.wait()
        assert app.received[-1]["type"] == "websocket.disconnect"


@pytest.mark.skipif(not ReadinessHub.available(), reason="the app reads inline only with the hub")
async def test_a_flood_of_pings_at_an_app_in_receive_yields_between_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reads that bring no message (a ping flood) must not loop without a checkpoint in
    receive(): a flooding peer that keeps the socket full held the whole server (other
    clients' p99 ~3 s in benchmarks/hostile.py's ping_flood)."""
    yields = [0]
    real = ws_conn.checkpoint

    async def counted() -> None:
        yields[0] += 1
        await real()

    monkeypatch.setattr(ws_conn, "checkpoint", counted)
    receiving = trio.Event()
    received = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        receiving.set()  # nothing yields before receive() parks: the test runs after that
        message = await receive()  # parked here, reading inline, through the whole flood
        assert message["type"] == "websocket.receive"
        received.set()
        await receive()

    async with run_server(app, transport="tcp") as server:
        raw = await RawClient.connect(server)
        await receiving.wait()
        yields[0] = 0
        flood = client_frame(OP_PING, b"") * 30_000  # 180 KB of pings: several reads
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.send, flood + client_frame(OP_TEXT, b"done"))

            async def drain_pongs() -> None:
                while not received.is_set():
                    await raw.stream.receive_some(65536)

            nursery.start_soon(drain_pongs)
            with trio.fail_after(10):
                await received.wait()
            # The flood went out before "done"; drain_pongs may be waiting for bytes that
            # will not come before the next ping (20 s): it is done.
            nursery.cancel_scope.cancel()
        assert yields[0] >= 1
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))


# --------------------------------------------------------------------------- the leader


async def _echo_app(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


@pytest.mark.skipif(not ReadinessHub.available(), reason="needs the readiness hub (Linux epoll)")
async def test_a_lone_connections_echo_keeps_the_epoll_from_message_to_message() -> None:
    """A lone connection's app that waits in receive() leads the readiness hub's epoll
    (readiness.py): its messages wake it directly, without a hop through the hub's task.
    That holds only while it does not yield between giving the epoll up and waiting
    again: the wait in receive() is a checkpoint, so send() must not force another one
    every CHECKPOINT_EVERY messages (each would hand the epoll back to the hub's task)."""
    async with run_server(_echo_app) as server:
        hub = server.server.readiness
        assert hub is not None
        raw = await RawClient.connect(server)
        for _ in range(10):  # until this connection leads (see test_readiness.start_leader)
            await raw.send_frame(OP_TEXT, b"warm-up")
            await raw.receive_frame()
        waits = hub.hub_waits
        for i in range(200):
            await raw.send_frame(OP_TEXT, b"%d" % i)
            frame = await raw.receive_frame()
            assert frame.payload == b"%d" % i
        # The hub's task took the epoll back at most a couple of times (a race with the
        # client's own task of this test), not every CHECKPOINT_EVERY messages.
        assert hub.hub_waits - waits <= 3, hub.hub_waits - waits
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000


@pytest.mark.skipif(not ReadinessHub.available(), reason="needs the readiness hub (Linux epoll)")
@pytest.mark.parametrize("busy_poll_us", [0, 10_000])
async def test_busy_poll_us_decides_whether_a_lone_connection_polls_before_it_sleeps(
    busy_poll_us: int,
) -> None:
    """The flag reaches the server's readiness hub (its behaviour: test_readiness.py)."""
    async with run_server(_echo_app, busy_poll_us=busy_poll_us) as server:
        hub = server.server.readiness
        assert hub is not None
        raw = await RawClient.connect(server)
        for i in range(50):
            await raw.send_frame(OP_TEXT, b"%d" % i)
            assert (await raw.receive_frame()).payload == b"%d" % i
        assert (hub.busy_polls > 0) == bool(busy_poll_us)
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
