"""What one WebSocket connection may cost, over real sockets (issue 16, findings 2-5).

Each test sends the hostile bytes and checks the server's own accounting: the
writer's pending bytes, the decoded bytes queued for the app, the close code.
The sans-I/O halves (protocol, session) are in test_ws_protocol.py and
test_ws_session.py; the budget as a whole is stated in the README ("Memory per
connection").
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import trio
import ws_apps
from test_websocket import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, RawClient, client_frame
from test_ws_engine import AwayApp

from hornbeam_trio.protocol import websocket as wsproto
from hornbeam_trio.testing import run_server
from hornbeam_trio.transport import RECV_SIZE
from hornbeam_trio.ws_conn import WebSocketConnection


def queued_bytes(conn: WebSocketConnection) -> int:
    """Decoded bytes waiting behind the message the app takes next, counted from the queue."""
    return sum(
        len(m.get("bytes") or m.get("text") or b"")
        for m in conn._events[1:]
        if m["type"] == "websocket.receive"
    )


async def test_a_ping_flood_from_a_client_that_never_reads_keeps_one_pong_and_idles_out() -> None:
    app = AwayApp()
    app.release.set()  # the app waits in receive(): it reads its socket itself
    burst = client_frame(OP_PING, b"p" * 125) * 400  # ~52 KB of pings a write
    async with run_server(app, websocket_timeout=1500, websocket_ping_interval=0) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        conn = app.connection
        assert conn is not None
        most = 0
        with trio.move_on_after(8):
            while not app.ended.is_set():
                try:
                    await raw.send(burst)  # never reading a byte of the pongs
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                most = max(most, conn.writer.pending_bytes)
                # One read's pongs at most, then only the latest is held.
                assert conn.writer.pending_bytes <= 2 * RECV_SIZE, most
        # Pings alone are not activity: the flood ends at the idle timeout.
        assert app.received[-1]["type"] == "websocket.disconnect"
        assert conn.close_code == 1001
        await raw.stream.aclose()


async def test_deflate_bombs_for_an_app_away_from_receive_are_inflated_up_to_the_queue_bytes() -> (
    None
):
    """An app away from receive() gets at most ``--websocket-max-queue-bytes`` decoded for
    it, the message still arriving included: a bomb of 2 MiB (2 KB on the wire) is not
    even finished while it is away.  Back in receive(), it gets every message, in order."""
    bomb_size = 2 * 1024 * 1024
    z = zlib.compressobj(wbits=-15)
    payload = z.compress(b"\0" * bomb_size) + z.flush(zlib.Z_SYNC_FLUSH)
    bomb = client_frame(OP_BINARY, payload[:-4], rsv=4)  # ~2 KB each on the wire
    count = 12
    app = AwayApp()
    async with run_server(app, websocket_compress=True) as server:
        raw = await RawClient.connect(
            server, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")]
        )
        assert raw.header("sec-websocket-extensions") == "permessage-deflate"
        await app.accepted.wait()
        conn = app.connection
        assert conn is not None
        await raw.send(bomb * count)
        protocol = conn.protocol
        assert protocol is not None
        limit = conn.config.websocket_max_queue_bytes
        with trio.fail_after(10):
            while protocol.message_bytes < limit:
                await trio.sleep(0.01)
        await trio.sleep(0.3)  # time enough to read on, were it going to
        # The bound (1 MiB by default) plus at most one inflate call's output past it.
        assert not conn._events  # not even the first message was finished
        assert protocol.message_bytes <= limit + wsproto.INFLATE_PER_CALL + RECV_SIZE
        app.release.set()
        with trio.fail_after(20):
            while len(app.received) < count:
                await trio.sleep(0.01)
        expected = {"type": "websocket.receive", "bytes": b"\0" * bomb_size}
        assert app.received == [expected] * count  # all of them, in order
        assert conn._queued_bytes == 0
        await raw.send_frame(OP_CLOSE, b"\x03\xe8")
        assert (await raw.receive_close()).close_code == 1000
        await app.ended.wait()


async def test_a_large_message_for_an_app_away_is_read_up_to_the_queue_bytes_then_by_the_app() -> (
    None
):
    """4 MiB in one frame while the app is away: read (by the hub, or the reader task)
    only up to ``--websocket-max-queue-bytes``, the rest left in the kernel; once the app
    is back in receive() it gets the message whole."""
    app = AwayApp()
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    async with run_server(app) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        conn = app.connection
        assert conn is not None and conn.protocol is not None
        protocol = conn.protocol
        limit = conn.config.websocket_max_queue_bytes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.send, client_frame(OP_BINARY, payload))
            with trio.fail_after(10):
                while protocol.message_bytes < limit:
                    await trio.sleep(0.01)
            await trio.sleep(0.3)  # time enough to read on, were it going to
            assert protocol.message_bytes <= limit + RECV_SIZE
            assert not conn._events
            app.release.set()
            with trio.fail_after(10):
                while not app.received:
                    await trio.sleep(0.01)
        assert app.received[0] == {"type": "websocket.receive", "bytes": payload}
        await raw.send_frame(OP_CLOSE, b"\x03\xe8")
        assert (await raw.receive_close()).close_code == 1000
        await app.ended.wait()


async def test_one_byte_continuation_frames_are_charged_their_overhead_and_refused() -> None:
    async with run_server(ws_apps.echo(), websocket_max_frame_size=4096) as server:
        raw = await RawClient.connect(server)
        # Fragments of a reasonable size pass as before.
        await raw.send(
            client_frame(OP_TEXT, b"a" * 500, fin=False)
            + b"".join(client_frame(OP_CONT, b"b" * 500, fin=i == 4) for i in range(5))
        )
        echo = await raw.receive_frame()
        assert (echo.opcode, echo.payload) == (OP_TEXT, b"a" * 500 + b"b" * 2500)
        # 1 + 200 one-byte fragments: 201 payload bytes, but 201 frames of overhead.
        await raw.send(
            client_frame(OP_BINARY, b"x", fin=False)
            + b"".join(client_frame(OP_CONT, b"y", fin=i == 199) for i in range(200))
        )
        close = await raw.receive_close()
        assert close.close_code == 1009


class BoundedParsesPerStep(trio.abc.Instrument):
    """The most ``receive_data`` calls stopped at the protocol's per-call bound in one task
    step (between two checkpoints): each such call is FRAMES_PER_CALL frames of work."""

    def __init__(self) -> None:
        self.this_step = 0
        self.most = 0
        self.messages = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.this_step = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most = max(self.most, self.this_step)


@pytest.mark.parametrize("app_reads", [True, False], ids=["app-in-receive", "app-away"])
async def test_a_flood_of_tiny_frames_is_parsed_one_bounded_call_per_checkpoint(
    monkeypatch: pytest.MonkeyPatch, app_reads: bool
) -> None:
    """64 KiB reads of one-byte fragments and pings: thousands of frames a read.  However
    the connection reads (the app's own task in receive(), the hub's watcher while it is
    away, or the reader task), no task step parses more than one bound of them: the other
    connections run between."""
    steps = BoundedParsesPerStep()
    parse = wsproto.ServerProtocol.receive_data

    def counting(self: wsproto.ServerProtocol, data: bytes) -> Any:
        events = parse(self, data)
        steps.this_step += self.more
        steps.messages += len(events)
        return events

    monkeypatch.setattr(wsproto.ServerProtocol, "receive_data", counting)
    app = AwayApp()
    if app_reads:
        app.release.set()
    flood = client_frame(OP_TEXT, b"a", fin=False)
    flood += client_frame(OP_CONT, b"b", fin=False) * 20_000 + client_frame(OP_CONT, b"c")
    flood += client_frame(OP_PING, b"p") * 20_000 + client_frame(OP_BINARY, b"end")
    async with run_server(app, websocket_ping_interval=0) as server:
        raw = await RawClient.connect(server)
        await app.accepted.wait()
        trio.lowlevel.add_instrument(steps)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(raw.send, flood)
                nursery.start_soon(_drain_frames, raw)  # the pongs
                with trio.fail_after(20):
                    while steps.messages < 2:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        finally:
            trio.lowlevel.remove_instrument(steps)
        app.release.set()  # to see the disconnect
        await raw.stream.aclose()
    assert steps.most == 1


async def _drain_frames(raw: RawClient) -> None:
    while await raw.stream.receive_some(1 << 16):
        pass


async def test_a_frame_trickled_one_byte_at_a_time_is_closed_1008_at_its_own_deadline() -> None:
    async with run_server(
        ws_apps.echo(), websocket_timeout=600, websocket_ping_interval=0
    ) as server:
        raw = await RawClient.connect(server)
        frame = client_frame(OP_TEXT, b"t" * 100)

        async def trickle() -> None:
            for i in range(len(frame)):
                try:
                    await raw.send(frame[i : i + 1])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(0.1)  # well within the idle timeout, byte by byte

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            started = trio.current_time()
            close = await raw.receive_close(timeout=3)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert close.close_code == 1008
        assert 0.5 <= elapsed < 2.0
        await raw.stream.aclose()
