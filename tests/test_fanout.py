"""Pub/sub fan-out under load: subscriber queue bounds, memory after release, GC work.

A subscriber that never reads is held to ``--subscriber-queue-size`` messages and
``--subscriber-queue-bytes`` bytes however the publishes were batched; nothing of
a released connection stays referenced; a broadcast allocates nothing the garbage
collector tracks per subscriber (what made full collections run inside publish()).
"""

from __future__ import annotations

import gc
import struct
from typing import Any

import pytest
import trio
from example_server import example_server, http_get

from hornbeam_erlang import publish, subscribe
from hornbeam_trio import stats
from hornbeam_trio.runtime import get_runtime
from hornbeam_trio.testing import run_server
from hornbeam_trio.ws_conn import WebSocketConnection

pytestmark = pytest.mark.usefixtures("hornbeam_state")

LIMIT = 100
PAYLOAD = 1000  # bytes per message: a frame of 1,004


async def feed_app(scope: Any, receive: Any, send: Any) -> None:
    """Subscribes to ``feed`` and otherwise waits for the end."""
    if scope["type"] != "websocket":
        return
    await send({"type": "websocket.accept"})
    subscribe("feed")
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


HANDSHAKE = (
    b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def never_reading_subscriber(server: Any) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(server.host, server.port)
    await stream.send_all(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101")
    await wait_until(lambda: stats()["topics"].get("feed") == 1)
    return stream


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked) -> (opcode, payload); asserts nothing is cut in half."""
    frames = []
    at = 0
    while at < len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, at)
            at += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, at)
            at += 8
        assert at + length <= len(data), "a frame cut short"
        frames.append((opcode, data[at : at + length]))
        at += length
    return frames


async def read_all(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    with trio.fail_after(30):
        while chunk := await stream.receive_some(1 << 20):
            data += chunk
    return bytes(data)


async def publish_bursts(bursts: int, per_burst: int) -> tuple[int, int]:
    """Bursts of publishes, each in one scheduler pass; returns the most the server
    held queued for the one subscriber, in bytes on its writer and in deliveries.

    A burst smaller than the limit is the case that matters: each pass's batch is
    one write, and a count of writes let 100 writes of 50 messages through.
    """
    most_bytes = most_messages = 0
    number = 0
    for _ in range(bursts):
        subscribers = list(get_runtime().hub.topics.get("feed", ()))
        for _ in range(per_burst):  # no checkpoint: one pass, one batch per subscriber
            publish("feed", number.to_bytes(8, "big") + b"x" * (PAYLOAD - 8))
            number += 1
        for _ in range(3):  # the batcher's turn, then the flusher's
            for conn in subscribers:
                writer = conn.writer
                most_bytes = max(most_bytes, writer.pending_bytes)
                # The server's own count; before it had one, this pass's batch alone.
                batch = getattr(conn, "_batch", None) or ()
                most_messages = max(most_messages, getattr(writer, "delivery_count", len(batch)))
            await trio.sleep(0)
    return most_bytes, most_messages


async def test_bursts_to_a_subscriber_that_never_reads_close_it_1013_within_its_bound() -> None:
    async with run_server(feed_app, subscriber_queue_size=LIMIT, slow_consumer="close") as server:
        slow = await never_reading_subscriber(server)
        most_bytes, most_messages = await publish_bursts(bursts=400, per_burst=50)
        # Its 1013 came from the bound, not from 40,000 messages queued in a few writes.
        assert most_bytes <= LIMIT * (PAYLOAD + 4)
        assert most_messages <= LIMIT
        assert stats()["topics"].get("feed") is None
        frames = parse_frames(await read_all(slow))
        assert frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1013
        await slow.aclose()


async def test_bursts_under_drop_oldest_lose_whole_oldest_messages_within_the_bound() -> None:
    async with run_server(
        feed_app, subscriber_queue_size=LIMIT, slow_consumer="drop-oldest"
    ) as server:
        slow = await never_reading_subscriber(server)
        most_bytes, most_messages = await publish_bursts(bursts=400, per_burst=50)
        assert most_bytes <= LIMIT * (PAYLOAD + 4)
        assert most_messages <= LIMIT
        assert stats()["topics"].get("feed") == 1  # still subscribed: it only lost messages
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_and_keep, slow, received := [])
            await trio.sleep(0.2)
            publish("feed", "last")
            await wait_until(lambda: received and received[-1].endswith(b"last"))
            nursery.cancel_scope.cancel()
        frames = parse_frames(b"".join(received))
        numbers = [int.from_bytes(p[:8], "big") for op, p in frames if op == 0x2]
        assert all(len(p) == PAYLOAD for op, p in frames if op == 0x2)  # none cut in half
        assert numbers == sorted(numbers)
        assert numbers[-1] == 19_999  # the newest was kept
        assert len(numbers) < 20_000 // 2  # the oldest went
        await slow.aclose()


async def read_and_keep(stream: trio.SocketStream, received: list[bytes]) -> None:
    while chunk := await stream.receive_some(1 << 20):
        received.append(chunk)


async def test_a_connection_released_after_a_broadcast_is_garbage_without_another_publish() -> None:
    def alive() -> list[WebSocketConnection]:
        return [
            obj
            for obj in gc.get_objects()
            if type(obj) is WebSocketConnection and obj.scope["path"] == "/feed/released"
        ]

    async with run_server(feed_app) as server:
        async with server.websocket("/feed/released") as client:
            await wait_until(lambda: stats()["topics"].get("feed") == 1)
            publish("feed", "to everyone")
            assert await client.receive() == "to everyone"
        await wait_until(lambda: stats()["connections"] == 0)
        for _ in range(10):
            await trio.sleep(0)  # the batcher is parked again, its pass long over
        gc.collect()
        assert alive() == []


async def test_a_broadcast_and_its_flush_allocate_no_tracked_object_per_subscriber() -> None:
    async with run_server(feed_app) as server:
        subscribers = [await trio.open_tcp_stream(server.host, server.port) for _ in range(200)]
        for stream in subscribers:
            await stream.send_all(HANDSHAKE)
        await wait_until(lambda: stats()["topics"].get("feed") == 200)
        for _ in range(10):
            await trio.sleep(0)
        gc.disable()
        try:
            before = gc.get_count()[0]
            assert publish("feed", b"tick") == 200
            for _ in range(5):  # the batcher's pass: 200 sends
                await trio.sleep(0)
            allocated = gc.get_count()[0] - before
        finally:
            gc.enable()
        # One Delivery, one tuple of subscribers, the batcher's list: no list per
        # subscriber, so a broadcast never pushes thousands of young containers into
        # the old generation (what made full collections run inside publish()).
        assert allocated < 50
        for stream in subscribers:
            await stream.aclose()


async def test_the_server_process_freezes_its_start_up_heap() -> None:
    async with example_server("tests.apps.gc_probe:app") as server:
        report = (await http_get(server, "/")).json()
    assert report["frozen"] > 0
    assert report["import_heap_tracked"] is False
