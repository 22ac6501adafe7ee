"""HTTP/2 floods keep a connection's memory flat, shown by structure, not by a clock.

``tests/test_http2_hostile.py`` shows each flood over the limits ends with
GOAWAY(ENHANCE_YOUR_CALM).  These tests show the other half of issue 15's "memory stays
flat": what a connection holds while an attacker keeps it busy and the server keeps
serving it.

* Rapid reset under the limits: after every round (HEADERS, the app starts, RST_STREAM,
  the app ends) the connection holds the same state whatever the number of rounds: no
  stream object, no task but the connection's writer, no queued byte; the core's memory
  of streams closed by a reset stops at
  :data:`~hornbeam_trio.protocol.http2.RESETS_REMEMBERED` (``h2``, the core before, kept
  2**16 closed streams, ~10 MiB).
* A client that sends PINGs or SETTINGS and never reads our ACKs: the server stops
  reading instead of queueing ACKs.  With the frame buckets lifted (so only this bound is
  under test), the ACK bytes the server holds in user space, counted exactly from the
  kernel's queues on both sockets, never pass what one read of the socket provokes.
"""

from __future__ import annotations

import fcntl
import itertools
import select
import socket
import struct
import sys
import tracemalloc
from typing import Any

import h2.config
import h2.connection
import http_apps
import pytest
import trio
import trio.testing
from hpack import Encoder
from hyperframe.frame import HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from test_http2_hostile import REQUEST, Raw, frames_in

from hornbeam_trio.h2_conn import H2Connection
from hornbeam_trio.protocol import h2_limits
from hornbeam_trio.protocol.http2 import RESETS_REMEMBERED, H2Protocol, ProtocolError
from hornbeam_trio.testing import TestServer, run_server
from hornbeam_trio.transport import RECV_SIZE, SocketTransport

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="SIOCINQ/SIOCOUTQ")
SIOCINQ = 0x541B
SIOCOUTQ = 0x5411
UNLIMITED = h2_limits.Rate(10**9, 1e9)
CANCEL = 8


def server_connection(server: TestServer) -> H2Connection:
    """The server's one HTTP/2 connection (h2c by prior knowledge starts as HTTP/1.1)."""
    (conn,) = server.server.connections
    h2conn = conn if isinstance(conn, H2Connection) else conn.http2
    assert h2conn is not None
    return h2conn


def held_state(conn: H2Connection) -> dict[str, int]:
    """Everything a connection keeps per stream, and what it has queued to write."""
    proto = conn.proto
    assert conn.nursery is not None
    return {
        "streams": len(conn.streams),
        "tasks": len(conn.nursery.child_tasks),
        "core streams": len(proto.streams),
        "active": len(proto.active),
        "bodies": len(proto.body_seen) + len(proto.body_due) + len(proto.unread),
        "tunnels": len(proto.tunnels),
        "queued bytes": sum(map(len, proto.out)),
    }


def request(encoder: Encoder, stream_id: int, path: str = "/") -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = encoder.encode([(":path", path) if n == ":path" else (n, v) for n, v in REQUEST])
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


def rapid_reset_round(protocol: H2Protocol, encoder: Encoder, stream_id: int) -> None:
    events = protocol.receive_data(request(encoder, stream_id))
    assert [type(e).__name__ for e in events] == ["RequestReceived"]
    protocol.receive_data(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
    protocol.forget(stream_id)  # what the shell does when the stream's task ends
    protocol.data_to_send()


def test_rapid_reset_under_the_limits_leaves_the_core_s_memory_flat() -> None:
    """6000 rounds of HEADERS then (in a later read) RST_STREAM, 90 a second (under the
    reset bucket's 100/s, so the connection is never closed): after 3000 rounds the
    core's traced memory grows no more, where ``h2``'s default memory of 2**16 closed
    streams had it grow by ~150 bytes a round for 12 minutes of such a client."""
    now = [0.0]
    stream_id = 1

    def rounds(count: int) -> None:
        nonlocal stream_id
        for _ in range(count):
            now[0] += 1 / 90
            rapid_reset_round(protocol, encoder, stream_id)
            stream_id += 2

    # Traced from before the core exists, so what it frees later counts against what
    # it allocated: the difference between two points is what it holds more.
    tracemalloc.start()
    try:
        protocol = H2Protocol(clock=lambda: now[0])
        protocol.initiate()
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        protocol.receive_data(client.data_to_send())
        protocol.data_to_send()
        encoder = Encoder()
        rounds(3000)
        before = tracemalloc.get_traced_memory()[0]
        rounds(3000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(protocol.resets) <= RESETS_REMEMBERED
    assert not protocol.streams
    assert not protocol.active and not protocol.body_seen and not protocol.unread
    assert grown < 16 * 1024, f"{grown} bytes more after 3000 more rounds"


async def test_rapid_reset_under_the_limits_leaves_a_served_connection_as_it_was() -> None:
    """600 rounds on one connection (under the reset bucket's burst of 1000): HEADERS,
    the app starts, RST_STREAM, the app sees http.disconnect and ends.  Once the server
    is idle, the connection holds the same (empty) state after 600 rounds as after 50,
    and still answers a request on the same connection."""
    started = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/ok":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        started.set()
        while (await receive())["type"] != "http.disconnect":
            pass

    async with run_server(app) as server:
        raw = await Raw.connect(server.port)
        await raw.read_until(lambda frames: any(isinstance(f, SettingsFrame) for f in frames))
        states: dict[int, dict[str, int]] = {}
        for round_ in range(1, 601):
            stream_id = 2 * round_ - 1
            started = trio.Event()
            await raw.send(request(raw.encoder, stream_id))
            with trio.fail_after(10):
                await started.wait()
            await raw.send(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
            await trio.testing.wait_all_tasks_blocked()
            if round_ in (50, 600):
                conn = server_connection(server)
                states[round_] = held_state(conn)
                assert len(conn.proto.resets) <= RESETS_REMEMBERED
            raw.frames.clear()
        assert states[600] == states[50]
        assert states[50] == {
            "streams": 0,
            "tasks": 1,  # the connection's writer
            "core streams": 0,
            "active": 0,
            "bodies": 0,
            "tunnels": 0,
            "queued bytes": 0,
        }
        await raw.send(request(raw.encoder, 1201, "/ok"))
        await raw.read_until(
            lambda frames: any(f.stream_id == 1201 and "END_STREAM" in f.flags for f in frames)
        )
        await raw.stream.aclose()


def _queued(sock: socket.socket, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


async def _never_read(
    monkeypatch: pytest.MonkeyPatch, bucket: str, frame: bytes, answer: int
) -> None:
    """Send ``frame`` (answered by ``answer`` bytes) until the kernel takes no more, never
    reading; then count the answer bytes the server holds in user space."""
    monkeypatch.setattr(h2_limits, bucket, UNLIMITED)
    async with run_server(http_apps.hello, timeout=300_000, keepalive=0) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", server.port))
        except BlockingIOError:
            pass
        await trio.lowlevel.wait_writable(sock)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        sock.sendall(client.data_to_send())
        # The server's first flight (SETTINGS, WINDOW_UPDATE, our SETTINGS' ACK) read
        # whole, so all the server writes from here on is answers.
        await trio.testing.wait_all_tasks_blocked(0.05)
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                break
        batch = frame * (65536 // len(frame))
        sent = 0
        for _ in range(4096):  # 256 MiB: never reached while the server stops reading
            try:
                sent += sock.send(batch)
                continue
            except BlockingIOError:
                pass
            await trio.testing.wait_all_tasks_blocked(0.05)
            if not select.select([], [sock], [], 0)[1]:
                break  # the server stopped reading
        else:
            pytest.fail("the server read 256 MiB of frames it could not answer")
        conn = server_connection(server)
        transport = conn.transport
        assert isinstance(transport, SocketTransport)
        read = sent - _queued(sock, SIOCOUTQ) - _queued(transport.sock, SIOCINQ)
        answered = read // len(frame)
        in_kernel = _queued(transport.sock, SIOCOUTQ) + _queued(sock, SIOCINQ)
        held = answered * answer - in_kernel
        sock.close()
    assert 0 <= held <= RECV_SIZE, (
        f"{held} answer bytes held by the server after {answered} frames read"
    )


@linux_only
async def test_a_client_that_never_reads_its_ping_acks_stops_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PINGs without end, no byte read back (the classic ping flood, with the PING bucket
    lifted so only this bound is tested): the server holds at most one read's worth of
    PING ACKs (RECV_SIZE bytes) and leaves the rest of the client's PINGs in the kernel."""
    await _never_read(monkeypatch, "PINGS", PingFrame(0).serialize(), 17)


@linux_only
async def test_a_client_that_never_reads_its_settings_acks_stops_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with empty SETTINGS frames (each answered by a 9-byte SETTINGS ACK)."""
    await _never_read(monkeypatch, "SETTINGS_FRAMES", SettingsFrame(0).serialize(), 9)


@pytest.mark.parametrize(
    ("closed_since", "fatal"), [(RESETS_REMEMBERED - 10, False), (RESETS_REMEMBERED + 10, True)]
)
def test_late_trailers_on_a_stream_we_reset_are_ignored_within_resets_remembered(
    closed_since: int, fatal: bool
) -> None:
    """The price of the bound, stated: trailers in flight on a stream we reset are ignored
    (RFC 9113 5.1) while fewer than RESETS_REMEMBERED streams have been reset since (a
    round trip's worth), and only after that are they a connection error (5.1 lets an
    endpoint limit that period).  (A late DATA frame is only given back to the connection
    window within the bound, and answered RST_STREAM(STREAM_CLOSED) after it.)"""
    seconds = itertools.count(0.0, 1.0)  # a second a read: no bucket runs dry
    protocol = H2Protocol(clock=lambda: next(seconds))
    protocol.initiate()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    protocol.receive_data(client.data_to_send())
    encoder = Encoder()
    head = HeadersFrame(1)
    head.data = encoder.encode(REQUEST)
    head.flags.add("END_HEADERS")
    protocol.receive_data(head.serialize())  # a request whose body is still coming
    protocol.reset(1)  # e.g. its body broke a limit
    protocol.forget(1)
    for stream_id in range(3, 3 + 2 * closed_since, 2):
        rapid_reset_round(protocol, encoder, stream_id)
    protocol.data_to_send()
    trailers = HeadersFrame(1)
    trailers.data = encoder.encode([("x-checksum", "1")])
    trailers.flags.add("END_HEADERS")
    trailers.flags.add("END_STREAM")
    late = trailers.serialize()
    if fatal:
        with pytest.raises(ProtocolError):
            protocol.receive_data(late)
    else:
        assert protocol.receive_data(late) == []
        assert frames_in(protocol.data_to_send())[0] == []
