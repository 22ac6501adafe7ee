"""HTTP under hostile input (issue 16's HTTP findings, issue 12's HTTP streaming case).

Each test sends the bytes of one finding over a real socket and checks the answer and
the bound, read from the server's own accounting (``HTTPParser.buffered``, ``stats()``)
once the kernel has handed the server everything that was sent.  README "What bad input
gets" points here.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import termios
from typing import Any

import http_apps
import pytest
import trio
import trio.testing
from http_apps import RawHTTP

from hornbeam_trio import ClientDisconnected, publish, state_get, state_set, subscription
from hornbeam_trio.http_conn import HTTPConnection
from hornbeam_trio.protocol.http11 import DEFAULT_MAX_HEAD_SIZE, SLICE, HTTPParser
from hornbeam_trio.readiness import READINESS_ENV, ReadinessHub
from hornbeam_trio.testing import TestServer, run_server
from hornbeam_trio.transport import RECV_SIZE, SocketTransport
from hornbeam_trio.types import Message, Receive, Scope, Send


def get(path: bytes = b"/", *, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path, extra)


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


def only_connection(server: TestServer) -> HTTPConnection:
    (conn,) = server.server.connections
    return conn


def _queued(sock: socket.socket, request: int) -> int:
    return int.from_bytes(fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"), "little")


async def wait_all_read(client: trio.abc.Stream, conn: HTTPConnection) -> None:
    """Until the server has read every byte the client sent (none left in either kernel)."""
    assert isinstance(client, trio.SocketStream)
    server_sock: socket.socket = conn.transport.sock  # type: ignore[attr-defined]
    await wait_until(
        lambda: (
            _queued(client.socket, termios.TIOCOUTQ) == 0  # type: ignore[arg-type]
            and _queued(server_sock, termios.FIONREAD) == 0
        )
    )


async def wait_all_sent(client: trio.abc.Stream, conn: HTTPConnection) -> None:
    """Until every byte the client sent is in the server's kernel, or read (past its
    budget, a connection whose app waits for the disconnect stops reading)."""
    assert isinstance(client, trio.SocketStream)
    await wait_until(lambda: _queued(client.socket, termios.TIOCOUTQ) == 0)  # type: ignore[arg-type]


async def send_while_reading(client: RawHTTP, data: bytes, method: str = "GET") -> Any:
    """Send ``data`` and read the response meanwhile: the server may answer and stop
    reading before all of it is sent."""
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            try:
                await client.send(data)
            except trio.BrokenResourceError:
                pass

        nursery.start_soon(write)
        response = await client.read_response(method)
        nursery.cancel_scope.cancel()
    return response


# -- 1. a declined Upgrade ------------------------------------------------------------------


async def test_declined_h2c_upgrade_is_answered_with_its_body_then_closed() -> None:
    async with run_server(http_apps.body_echo) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(
            b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 5\r\n"
            b"\r\nhello" + get(b"/never-served")
        )
        response = await client.read_response()
        await client.assert_closed()  # the pipelined GET is not served
    assert response.status == 200
    assert response.json()["body"] == "hello"
    assert response.header("connection") == "close"


async def test_declined_upgrade_with_a_chunked_body_is_answered_then_closed() -> None:
    async with run_server(http_apps.body_echo) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(
            b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: foo/2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" + get()
        )
        response = await client.read_response()
        await client.assert_closed()
    assert response.json()["body"] == "abcde"


async def test_declined_upgrade_keeps_nothing_of_what_follows_while_the_app_waits() -> None:
    """``Upgrade: foo`` to a long-poll app, then a stream of junk: nothing of it is held,
    and the app still learns that the client left."""
    app = http_apps.LongPoll()
    async with run_server(app) as server:
        stream = await server.open_stream()
        await stream.send_all(get(b"/lp", extra=b"Connection: Upgrade\r\nUpgrade: foo\r\n"))
        with trio.fail_after(5):
            await app.waiting.wait()
        conn = only_connection(server)
        junk = b"x" * 65536
        with trio.move_on_after(0.5):  # as much as the server takes in that time
            while True:
                await stream.send_all(junk)
        assert len(conn.parser.upgrade_tail) == 0
        assert conn.parser.buffered < RECV_SIZE
        _reset(stream)  # unsent junk may be queued: a FIN would wait behind it
        with trio.fail_after(5):
            await app.disconnected.wait()
    assert app.after_body == {"type": "http.disconnect"}


def _reset(stream: trio.SocketStream) -> None:
    """Close with a reset (SO_LINGER 0), as a client that gives up does."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    stream.socket.close()


@pytest.mark.skipif(not ReadinessHub.available(), reason="the hub watches for the hang-up")
async def test_declined_upgrade_stops_reading_while_the_app_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client streaming bytes at a long-poll app after a declined ``Upgrade`` gets
    ``max_request_head_size`` bytes read at most, then none: its sends block in its
    kernel (uvicorn's cost), instead of the server reading and dropping gigabytes."""
    read = [0]
    recv = SocketTransport.recv

    async def counting(self: SocketTransport) -> bytes:
        data = await recv(self)
        read[0] += len(data)
        return data

    monkeypatch.setattr(SocketTransport, "recv", counting)
    app = http_apps.LongPoll()
    async with run_server(app) as server:
        stream = await server.open_stream()
        assert isinstance(stream, trio.SocketStream)
        await stream.send_all(get(b"/lp", extra=b"Connection: Upgrade\r\nUpgrade: h2c\r\n"))
        with trio.fail_after(5):
            await app.waiting.wait()
        conn = only_connection(server)
        server_sock: socket.socket = conn.transport.sock  # type: ignore[attr-defined]
        read[0] = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_forever, stream)

            def stopped_reading() -> bool:
                assert read[0] <= DEFAULT_MAX_HEAD_SIZE + RECV_SIZE, read[0]
                return _queued(server_sock, termios.FIONREAD) >= RECV_SIZE

            await wait_until(stopped_reading, timeout=20)
            nursery.cancel_scope.cancel()
        _reset(stream)
        with trio.fail_after(5):
            await app.disconnected.wait()
        await wait_until(lambda: not server.server.connections)


async def _send_forever(stream: trio.SocketStream) -> None:
    junk = b"A" * 65536
    while True:
        await stream.send_all(junk)


# -- 6. long-poll after a pipelining burst --------------------------------------------------


@pytest.mark.parametrize("pipelined", [70, 5000])
async def test_long_poll_sees_the_disconnect_after_a_pipelining_burst(pipelined: int) -> None:
    """70 GETs (more than the 64 events that used to stop reading for good) and 5,000
    (~160 KiB, past the head-size budget: the rest is not read, or read and dropped
    without the readiness hub)."""
    app = http_apps.LongPoll()
    async with run_server(app) as server:
        stream = await server.open_stream()
        await stream.send_all(get(b"/lp"))
        with trio.fail_after(5):
            await app.waiting.wait()
        conn = only_connection(server)
        await stream.send_all(get(b"/next") * pipelined)
        await wait_all_sent(stream, conn)
        assert conn.parser.buffered <= DEFAULT_MAX_HEAD_SIZE
        await stream.aclose()
        with trio.fail_after(5):
            await app.disconnected.wait()
        await wait_until(lambda: not server.server.connections)
    assert app.after_body == {"type": "http.disconnect"}


# -- 7. one ASGI message per chunk ----------------------------------------------------------


async def test_one_byte_chunks_come_in_one_message_per_read() -> None:
    chunks = 200_000
    async with run_server(http_apps.body_echo) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * chunks
            + b"0\r\n\r\n"
        )
        response = await client.read_response()
    report = response.json()
    assert report["body"] == "x" * chunks
    messages = report["messages"]
    # 1.2 MB arrive in reads of up to 65 KiB: far fewer messages than chunks.
    assert len(messages) < 1000
    assert [more for _, _, more in messages] == [True] * (len(messages) - 1) + [False]


class BodyCallbacksPerStep(trio.abc.Instrument):
    """The most calls of httptools' on_body in one task step (between two checkpoints)."""

    def __init__(self) -> None:
        self.this_step = 0
        self.most = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.this_step = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most = max(self.most, self.this_step)


async def test_reads_of_one_byte_chunks_are_parsed_a_bounded_slice_per_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """64 KiB reads of one-byte chunks are ~10,000 calls from httptools each: no task
    step makes more than one slice's worth of them, so other connections run between."""
    steps = BodyCallbacksPerStep()
    on_body = HTTPParser._on_body

    def counting(self: HTTPParser, chunk: bytes) -> None:
        steps.this_step += 1
        on_body(self, chunk)

    monkeypatch.setattr(HTTPParser, "_on_body", counting)  # bound when a parser is made
    chunks = 60_000
    async with run_server(http_apps.body_echo) as server:
        client = RawHTTP(await server.open_stream())
        trio.lowlevel.add_instrument(steps)
        try:
            response = await send_while_reading(
                client,
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"1\r\nx\r\n" * chunks
                + b"0\r\n\r\n",
                "POST",
            )
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert response.json()["body"] == "x" * chunks
    assert 0 < steps.most <= SLICE // len(b"1\r\nx\r\n") + 1


async def test_a_content_length_body_read_at_once_is_one_message() -> None:
    async with run_server(http_apps.body_echo) as server:
        response = await server.request("POST", "/", body=b"0123456789")
    assert response.json()["messages"] == [["http.request", 10, False]]


# -- 8. the whole request head, and the body ------------------------------------------------


async def test_a_request_head_over_max_request_head_size_gets_431() -> None:
    """Ten 8,000-byte headers: each within --max-header-size, 80 KB together."""
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(10))
    async with run_server(http_apps.hello) as server:
        client = RawHTTP(await server.open_stream())
        response = await send_while_reading(client, get(extra=headers))
        await client.assert_closed()
    assert response.status == 431
    assert response.body == b"request head too large"


async def test_max_request_head_size_is_configurable() -> None:
    async with run_server(http_apps.hello, max_request_head_size=1000) as server:
        fits = RawHTTP(await server.open_stream())
        await fits.send(get(extra=b"X-A: " + b"a" * 900 + b"\r\n"))
        assert (await fits.read_response()).status == 200
        too_big = RawHTTP(await server.open_stream())
        await too_big.send(get(extra=b"X-A: " + b"a" * 1000 + b"\r\n"))
        assert (await too_big.read_response()).status == 431


async def test_unfinished_heads_past_the_head_limit_are_answered_431_not_held() -> None:
    """200 connections each sending 100 KB of headers and never the blank line: each is
    cut off at the limit (431) instead of holding its head until the timeout."""
    line = b"X-Pad: " + b"p" * 993 + b"\r\n"
    statuses: list[int] = []
    async with run_server(http_apps.hello) as server:
        clients = [RawHTTP(await server.open_stream()) for _ in range(200)]

        async def one(client: RawHTTP) -> None:
            response = await send_while_reading(client, b"GET / HTTP/1.1\r\n" + line * 100)
            statuses.append(response.status)
            await client.assert_closed()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(one, client)
        await wait_until(lambda: not server.server.connections)
    assert statuses == [431] * 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_max_request_body_size_gets_413(framing: str) -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        await http_apps.hello(scope, receive, send)

    if framing == "content-length":
        data = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n" + b"b" * 11
    else:
        data = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        data += b"6\r\nbbbbbb\r\n" * 2 + b"0\r\n\r\n"
    async with run_server(app, max_request_body_size=10) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(data)
        response = await client.read_response()
        await client.assert_closed()
        fits = await server.request("POST", "/", body=b"b" * 10)
    assert response.status == 413
    assert fits.status == 200
    if framing == "content-length":
        assert len(calls) == 1  # said before the app ran: only the fitting request ran it


async def test_a_websocket_handshake_with_95_large_extension_headers_gets_431() -> None:
    """95 x 8 KB Sec-WebSocket-Extensions used to cost 370 ms of CPU per handshake."""
    app = http_apps.LongPoll()
    extensions = b"".join(
        b"Sec-WebSocket-Extensions: " + b"permessage-deflate; x, " * 347 + b"y\r\n"
        for _ in range(95)
    )
    head = get(b"/ws", extra=WS_HANDSHAKE + extensions)
    async with run_server(app, websocket_compress=True) as server:
        client = RawHTTP(await server.open_stream())
        response = await send_while_reading(client, head)
    assert response.status == 431
    assert not app.waiting.is_set()


# -- 12. smaller ones -----------------------------------------------------------------------

WS_HANDSHAKE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
FORGED_PATH = b"/a%0d%0a127.0.0.1:1%20-%20%22GET%20/forged%22%20200%1b[2J"


async def raises(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom")


async def test_log_lines_quote_the_raw_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hornbeam_trio")
    async with run_server(http_apps.hello, access_log=True) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(get(FORGED_PATH))
        assert (await client.read_response()).status == 200
    async with run_server(raises, raise_app_errors=False) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(get(FORGED_PATH))
        assert (await client.read_response()).status == 500
        client = RawHTTP(await server.open_stream())
        await client.send(get(FORGED_PATH, extra=WS_HANDSHAKE))
        assert (await client.read_response()).status == 500
    lines = [r.getMessage() for r in caplog.records if "/a%0d%0a" in r.getMessage()]
    assert len(lines) == 3  # the access line, the HTTP and the WebSocket app error lines
    for line in lines:
        assert FORGED_PATH.decode() in line
        assert not any(ch in line for ch in "\r\n\x1b")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param((b"x-nul", b"a\x00b"), id="nul-in-value"),
        pytest.param((b"", b"v"), id="empty-name"),
        pytest.param((b"x y", b"v"), id="space-in-name"),
        pytest.param((b"x-split", b"a\r\nset-cookie: x=1"), id="crlf-in-value"),
        pytest.param((b"transfer-encoding", b"chunked"), id="transfer-encoding"),
        pytest.param((b"content-length", b"0"), id="content-length"),
    ],
)
async def test_a_websocket_accept_with_a_bad_header_gets_500_before_the_handshake(
    header: tuple[bytes, bytes],
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept", "headers": [header]})

    async with run_server(app, raise_app_errors=False) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(get(b"/ws", extra=WS_HANDSHAKE))
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == 500
    assert [type(e) for e in server.app_errors] == [ValueError]


async def test_the_same_headers_are_refused_in_an_http_response() -> None:
    """The HTTP side of the one validation: a NUL or an empty name is an app error (500)."""
    for header in ((b"x-nul", b"a\x00b"), (b"", b"v")):

        async def app(scope: Scope, receive: Receive, send: Send, h: Any = header) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [h]})

        async with run_server(app, raise_app_errors=False) as server:
            response = await server.get("/")
        assert response.status == 500
        assert [type(e) for e in server.app_errors] == [ValueError]


async def test_an_app_answering_a_stalled_body_unread_gets_no_408_after_its_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with run_server(
        http_apps.answers_without_reading, transport="memory", timeout=3000
    ) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        response = await client.read_response()
        await client.assert_closed()  # at the timeout: closed, nothing more said
    assert response.status == 413  # the app's own answer


async def test_an_app_answering_a_broken_body_unread_gets_no_400_after_its_response() -> None:
    async with run_server(http_apps.answers_without_reading) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
        )
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == 413


async def test_an_unread_body_that_ends_keeps_the_connection() -> None:
    async with run_server(http_apps.answers_without_reading) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" + get())
        assert (await client.read_response()).status == 413
        assert (await client.read_response()).status == 413  # the pipelined GET, served


async def test_a_chunked_http10_request_closes_the_connection_after_its_response() -> None:
    async with run_server(http_apps.body_echo) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )
        response = await client.read_response()
        await client.assert_closed()  # RFC 9112 6.1: the next request is not served
    assert response.json()["body"] == "hello"
    assert response.header("connection") == "close"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="http11-no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="http11-two"),
        pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, id="http10-two"),
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", 200, id="http10-no-host"),
    ],
)
async def test_host_headers_other_than_one_get_400(head: bytes, status: int) -> None:
    async with run_server(http_apps.hello) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(head)
        response = await client.read_response()
    assert response.status == status


# -- issue 12 case 4: HTTP streaming over subscription() ------------------------------------


class EventStream:
    """SSE over a quiet topic: an owned key, then the topic's messages as events.

    A sloppy one: a write that fails (ClientDisconnected) does not stop it.
    """

    def __init__(self) -> None:
        self.streaming = trio.Event()
        self.ended = trio.Event()
        self.ended_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await http_apps.skip_lifespan(receive, send)
            return
        state_set("viewer", 1, owned=True)
        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        async with subscription("quiet") as messages:
            await send(start)
            await send({"type": "http.response.body", "body": b": hi\n\n", "more_body": True})
            self.streaming.set()
            async for message in messages:
                body = b"data: %s\n\n" % str(message).encode()
                try:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                except ClientDisconnected:
                    pass
        self.ended_at = trio.current_time()
        self.ended.set()
        state_set("late", 1, owned=True)  # raises ConnectionEnded: a normal end here


@pytest.mark.parametrize("leave", ["close", "reset"])
@pytest.mark.parametrize(
    ("hub", "within"),
    [
        # The hub wakes on the hang-up itself: typically well under a millisecond.
        pytest.param(
            "on",
            0.05,
            id="hub",
            marks=pytest.mark.skipif(
                not ReadinessHub.available(), reason="the hub sees a hang-up while the app is away"
            ),
        ),
        # Without it (other platforms, the hub off), nothing is published so no write
        # fails: only the hang-up probe (a timed MSG_PEEK while the app runs) sees the
        # client go; its first looks come 20 and 60 ms into a request.
        pytest.param("off", 0.2, id="probe"),
    ],
)
async def test_a_streaming_client_on_a_quiet_topic_that_leaves_releases_its_connection(
    hub: str, within: float, leave: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hub == "off":
        monkeypatch.setenv(READINESS_ENV, "off")
    app = EventStream()
    async with run_server(app) as server:
        stream = await server.open_stream()
        await stream.send_all(get(b"/events"))
        with trio.fail_after(5):
            await app.streaming.wait()
        assert server.stats()["topics"] == {"quiet": 1}
        assert server.stats()["owned_keys"] == ["viewer"]
        assert isinstance(stream, trio.SocketStream)
        if leave == "reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        left_at = trio.current_time()
        await trio.aclose_forcefully(stream)
        with trio.fail_after(5):
            await app.ended.wait()
        stats = server.stats()
        await wait_until(lambda: not server.server.connections)
    assert app.ended_at - left_at < within
    assert stats["topics"] == {}
    assert stats["owned_keys"] == []
    assert state_get("viewer") is None
    assert state_get("late") is None
    assert server.app_errors == []


async def test_without_the_hub_a_departed_streaming_client_is_released_at_a_failed_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The portable path (TLS, no epoll) learns of the departure from the next write that
    fails, and ends the connection then, even for an app that ignores the failure."""
    monkeypatch.setenv(READINESS_ENV, "off")
    app = EventStream()
    async with run_server(app) as server:
        stream = await server.open_stream()
        await stream.send_all(get(b"/events"))
        with trio.fail_after(5):
            await app.streaming.wait()
        await trio.aclose_forcefully(stream)
        with trio.fail_after(5):
            while not app.ended.is_set():
                publish("quiet", "tick")
                await trio.sleep(0.01)
        stats = server.stats()
    assert stats["topics"] == {}
    assert stats["owned_keys"] == []
    assert server.app_errors == []
