"""WebSocket end to end: the guide's scope and message tables, close codes, limits,
idle timeout, compression and shutdown, over real sockets.

Clients are real: trio-websocket through the testing toolkit, the ``websockets``
library (in a worker thread) where the handshake's extensions matter, and, where a
test needs bytes no well-behaved client would send, a hand-made handshake over
``server.open_stream()`` followed by frames built here (:class:`RawClient`).  Time is
controlled (memory transport + ``autojump_clock``) only for the idle-timeout tests.
What the app saw is checked through :class:`ws_apps.Recorder`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio_websocket
import ws_apps
from websockets.asyncio.client import connect as websockets_connect
from ws_apps import AppError, Recorder

from hornbeam_trio.server import serve
from hornbeam_trio.testing import TestServer, assert_closed_with, collect, run_server

TIMEOUT = 5.0
SAMPLE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example key
SAMPLE_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# --------------------------------------------------------------------------- raw client


def mask_bytes(payload: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """One client frame as RFC 6455 5.2 lays it out (masked unless told otherwise)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 0x10000:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + mask_bytes(payload, mask)


@dataclass(frozen=True)
class ServerFrame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        assert self.opcode == OP_CLOSE
        return self.payload[2:].decode()


class RawClient:
    """A WebSocket client that writes whatever bytes a test asks for."""

    def __init__(self, stream: trio.abc.Stream, buffered: bytes, head: bytes) -> None:
        self.stream = stream
        self.buffer = bytearray(buffered)
        self.head = head

    @classmethod
    async def connect(
        cls,
        server: TestServer,
        path: str = "/",
        *,
        headers: list[tuple[str, str]] | None = None,
        expect_status: int = 101,
    ) -> RawClient:
        stream = await server.open_stream()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {server.host}:{server.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {SAMPLE_KEY.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers or []),
        ]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = bytearray()
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                assert data, f"connection closed during the handshake: {bytes(buffer)!r}"
                buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert status == expect_status, head
        return cls(stream, rest, head)

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        await self.stream.send_all(client_frame(opcode, payload, **kwargs))

    async def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buffer += data
        return True

    async def receive_frame(self, timeout: float = TIMEOUT) -> ServerFrame:
        with trio.fail_after(timeout):
            assert await self._fill(2), "EOF instead of a frame"
            b0, b1 = self.buffer[0], self.buffer[1]
            assert not b1 & 0x80, "the server masked a frame"
            n = b1 & 0x7F
            offset = 2
            if n == 126:
                assert await self._fill(4)
                n = struct.unpack("!H", self.buffer[2:4])[0]
                offset = 4
            elif n == 127:
                assert await self._fill(10)
                n = struct.unpack("!Q", self.buffer[2:10])[0]
                offset = 10
            assert await self._fill(offset + n), "EOF inside a frame"
            payload = bytes(self.buffer[offset : offset + n])
            del self.buffer[: offset + n]
        return ServerFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload)

    async def receive_close(self, timeout: float = TIMEOUT) -> ServerFrame:
        """The server's close frame, skipping (but not answering) pings before it."""
        while True:
            frame = await self.receive_frame(timeout)
            if frame.opcode == OP_CLOSE:
                return frame
            assert frame.opcode == OP_PING, f"expected a close frame, got {frame}"

    async def expect_eof(self, timeout: float = TIMEOUT) -> None:
        """The server closes TCP (possibly with a reset) and sends nothing more."""
        with trio.fail_after(timeout):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            assert not self.buffer and data == b"", f"unexpected bytes before EOF: {data!r}"


# --------------------------------------------------------------------------- the scope


async def test_scope_carries_the_guides_keys() -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        async with server.websocket(
            "/chat%20room/caf%C3%A9?room=1&x=%20",
            subprotocols=["json", "graphql-ws"],
            headers=[("X-Custom-Header", "Some Value")],
        ) as ws:
            await ws.send("ping")
            assert await ws.receive() == "ping"
        session = await recorder.session()
        await session.wait_disconnect()
    scope = session.scope
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/chat room/café"
    assert scope["raw_path"] == b"/chat%20room/caf%C3%A9"
    assert scope["query_string"] == b"room=1&x=%20"
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["json", "graphql-ws"]  # the client's order
    for name, value in scope["headers"]:
        assert isinstance(name, bytes) and isinstance(value, bytes)
        assert name == name.lower()
    headers = dict(scope["headers"])
    assert headers[b"x-custom-header"] == b"Some Value"
    assert headers[b"upgrade"].lower() == b"websocket"
    assert headers[b"host"] == f"{server.host}:{server.port}".encode()
    assert scope["server"] == ("127.0.0.1", server.port)
    client_host, client_port = scope["client"]
    assert client_host == "127.0.0.1"
    assert isinstance(client_port, int) and client_port not in (0, server.port)


async def test_scope_client_is_the_peer_address() -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        raw = await RawClient.connect(server)
        assert isinstance(raw.stream, trio.SocketStream)
        local = raw.stream.socket.getsockname()
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
        await raw.expect_eof()
    session = await recorder.session()
    assert session.scope["client"] == (local[0], local[1])


async def test_root_path_option_is_reported_and_prefixes_path() -> None:
    recorder = Recorder()
    async with (
        run_server(ws_apps.echo(recorder), root_path="/api") as server,
        server.websocket("/chat?x=1") as ws,
    ):
        await ws.send("hi")
        assert await ws.receive() == "hi"
    scope = (await recorder.session()).scope
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/chat"
    assert scope["query_string"] == b"x=1"


async def test_handshake_answer_follows_rfc6455() -> None:
    async with run_server(ws_apps.echo()) as server:
        raw = await RawClient.connect(server)
        assert raw.head.startswith(b"HTTP/1.1 101 ")
        assert raw.header("sec-websocket-accept") == SAMPLE_ACCEPT.decode()
        assert (raw.header("upgrade") or "").lower() == "websocket"
        assert raw.header("sec-websocket-protocol") is None
        assert raw.header("sec-websocket-extensions") is None
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
        await raw.expect_eof()


# --------------------------------------------------------------------------- receive / disconnect


async def test_connect_comes_first_then_text_and_bytes_in_order() -> None:
    recorder = Recorder()
    sent: list[str | bytes] = ["hello", b"\x00\xff binary", "", b"", "ünïcödé ✓", b"x" * 70000]
    async with run_server(ws_apps.echo(recorder)) as server, server.websocket("/") as ws:
        for outgoing in sent:
            await ws.send(outgoing)
        assert await collect(ws, len(sent)) == sent
    session = await recorder.session()
    await session.wait_disconnect()
    assert session.received[0] == {"type": "websocket.connect"}
    receives = session.received[1:-1]
    assert [m["type"] for m in receives] == ["websocket.receive"] * len(sent)
    for message, expected in zip(receives, sent, strict=True):
        if isinstance(expected, str):
            assert message["text"] == expected and message.get("bytes") is None
        else:
            assert message["bytes"] == expected and message.get("text") is None
    assert session.received[-1]["type"] == "websocket.disconnect"


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4000, "custom goodbye")])
async def test_client_close_code_reaches_the_app(code: int, reason: str) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        raw = await RawClient.connect(server)
        await raw.send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())
        reply = await raw.receive_close()
        assert reply.close_code == code  # the server echoes the peer's code
        await raw.expect_eof()
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == code
    assert disconnect.get("reason", "") == reason


async def test_trio_websocket_client_close_reaches_the_app() -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        async with server.websocket("/") as ws:
            await ws.send("x")
            assert await ws.receive() == "x"
            await ws.close(4000, "done")
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 4000


async def test_abrupt_reset_gives_the_app_1006() -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        ws = await server.connect_websocket("/")
        await ws.send("x")
        assert await ws.receive() == "x"
        await ws.abort()
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 1006


# --------------------------------------------------------------------------- accept


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["graphql-ws", "json"], "graphql-ws"),
        (["json", "graphql-ws"], "graphql-ws"),
        (["json"], "json"),
        (["mqtt"], None),
        (None, None),
    ],
)
async def test_accept_with_the_subprotocol_the_app_chose(
    offered: list[str] | None, chosen: str | None
) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        async with server.websocket("/", subprotocols=offered) as ws:
            assert ws.subprotocol == chosen
            await ws.send("!subprotocol")
            assert await ws.receive() == (chosen or "none")
        # The 101 carries Sec-WebSocket-Protocol exactly when the app chose one.
        offer = [("Sec-WebSocket-Protocol", ", ".join(offered))] if offered else []
        raw = await RawClient.connect(server, headers=offer)
        assert raw.header("sec-websocket-protocol") == chosen
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        await raw.receive_close()
        await raw.expect_eof()
    session = await recorder.session()
    assert session.scope["subprotocols"] == (offered or [])


async def test_accept_sends_the_apps_extra_headers() -> None:
    app = ws_apps.echo(
        accept_headers=[(b"x-hornbeam", b"yes"), (b"Set-Cookie", b"session=abc; Path=/")]
    )
    async with run_server(app) as server, server.websocket("/") as ws:
        headers = dict(ws.connection.handshake_headers)
        assert headers[b"x-hornbeam"] == b"yes"
        assert headers[b"set-cookie"] == b"session=abc; Path=/"
        await ws.send("still works")
        assert await ws.receive() == "still works"


# --------------------------------------------------------------------------- send / close


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4001, "done here"), (1008, "policy")])
async def test_app_close_code_and_reason_reach_the_client(code: int, reason: str) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.closing(recorder, code=code, reason=reason)) as server:
        async with server.websocket("/") as ws:
            assert await ws.receive() == "before close"
            assert await ws.receive() == b"\x00\x01\xfe\xff"
            await assert_closed_with(ws, code, reason or None)
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == code


async def open_and_close(url: str) -> None:
    """Connect with trio-websocket's own nursery: a refused handshake raises here.

    (The toolkit's ``server.websocket()`` runs the client's reader in the server's
    nursery, where trio-websocket raises ``ConnectionRejected``; so refusals are
    observed with ``open_websocket_url`` instead.)
    """
    with trio.fail_after(TIMEOUT):
        async with trio_websocket.open_websocket_url(url):
            pass


async def test_denial_response_reaches_the_client() -> None:
    recorder = Recorder()
    app = ws_apps.denial(
        recorder,
        status=401,
        body_chunks=[b"go ", b"away"],
        headers=[(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
    )
    async with run_server(app) as server:
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            await open_and_close(server.ws_url("/"))
        await (await recorder.session()).ended.wait()
    assert rejected.value.status_code == 401
    assert rejected.value.body == b"go away"
    assert (b"www-authenticate", b"Bearer") in rejected.value.headers


# --------------------------------------------------------------------------- app failures


async def test_app_raising_after_accept_closes_with_1011() -> None:
    async with (
        run_server(ws_apps.raise_after_accept(), raise_app_errors=False) as server,
        server.websocket("/") as ws,
    ):
        await ws.send("hello")
        assert await ws.receive() == "hello"
        await assert_closed_with(ws, 1011)
    assert len(server.app_errors) == 1
    assert isinstance(server.app_errors[0], AppError)


@pytest.mark.parametrize(
    ("factory", "status", "app_fails"),
    [
        (ws_apps.raise_before_accept, 500, True),
        (ws_apps.return_before_accept, 403, False),
        (ws_apps.close_before_accept, 403, False),
    ],
)
async def test_app_ending_before_accept_answers_http(
    factory: Any, status: int, app_fails: bool
) -> None:
    async with run_server(factory(), raise_app_errors=False) as server:
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            await open_and_close(server.ws_url("/"))
        # A plain HTTP client sees the same status.
        raw = await RawClient.connect(server, expect_status=status)
        await raw.expect_eof()
    assert rejected.value.status_code == status
    assert [type(e) for e in server.app_errors] == ([AppError, AppError] if app_fails else [])


# --------------------------------------------------------------------------- limits


async def test_message_over_max_frame_size_closes_1009() -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder), websocket_max_frame_size=1024) as server:
        async with server.websocket("/") as ws:
            await ws.send("x" * 1024)  # exactly the limit is fine
            assert await ws.receive() == "x" * 1024
            await ws.send(b"y" * 1025)
            await assert_closed_with(ws, 1009)
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 1009


async def test_message_far_over_the_limit_still_gets_its_close_frame() -> None:
    """The server must not reset the connection before the client reads the 1009."""
    async with run_server(ws_apps.echo(), websocket_max_frame_size=1024) as server:
        raw = await RawClient.connect(server)
        with trio.move_on_after(TIMEOUT):
            # The server may stop reading before the frame is all written.
            try:
                await raw.send_frame(OP_BINARY, b"z" * (4 * 1024 * 1024))
            except trio.BrokenResourceError:
                pass
        frame = await raw.receive_close()
        assert (frame.close_code, frame.close_reason) == (1009, "message too big")


async def test_fragmented_message_over_the_limit_closes_1009() -> None:
    async with run_server(ws_apps.echo(), websocket_max_frame_size=1024) as server:
        raw = await RawClient.connect(server)
        await raw.send_frame(OP_TEXT, b"a" * 400, fin=False)
        await raw.send_frame(OP_CONT, b"b" * 400, fin=False)
        await raw.send_frame(OP_CONT, b"c" * 400, fin=True)
        assert (await raw.receive_close()).close_code == 1009
        await raw.expect_eof()


@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(OP_TEXT, b"caf\xc3")],  # truncated sequence
        [client_frame(OP_TEXT, b"\xff\xfe")],
        [client_frame(OP_TEXT, b"ok \xed\xa0\x80")],  # a UTF-16 surrogate
        [client_frame(OP_TEXT, b"ab\xc3", fin=False), client_frame(OP_CONT, b"(", fin=True)],
    ],
    ids=["truncated", "invalid-bytes", "surrogate", "split-across-fragments"],
)
async def test_invalid_utf8_text_closes_1007(frames: list[bytes]) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        raw = await RawClient.connect(server)
        for data in frames:
            await raw.send(data)
        assert (await raw.receive_close()).close_code == 1007
        await raw.expect_eof()
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 1007


@pytest.mark.parametrize(
    "data",
    [
        client_frame(OP_TEXT, b"hello", masked=False),
        client_frame(0x3, b"reserved"),
        client_frame(0xB, b""),
        client_frame(OP_TEXT, b"hello", rsv=0b100),  # RSV1 without permessage-deflate
        client_frame(OP_TEXT, b"hello", rsv=0b010),
        client_frame(OP_PING, b"x", fin=False),
        client_frame(OP_PING, b"x" * 126),
        client_frame(OP_CONT, b"orphan"),
        client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"),
        client_frame(OP_CLOSE, b"\x03"),
        client_frame(OP_CLOSE, struct.pack("!H", 1006)),
    ],
    ids=[
        "unmasked",
        "reserved-data-opcode",
        "reserved-control-opcode",
        "rsv1",
        "rsv2",
        "fragmented-ping",
        "long-ping",
        "orphan-continuation",
        "new-message-inside-fragmented-one",
        "one-byte-close",
        "close-code-1006",
    ],
)
async def test_protocol_errors_close_1002(data: bytes) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        raw = await RawClient.connect(server)
        await raw.send(data)
        assert (await raw.receive_close()).close_code == 1002
        await raw.expect_eof()
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 1002


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
async def test_fragmented_message_is_reassembled(opcode: int) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        raw = await RawClient.connect(server)
        await raw.send_frame(opcode, "Hé".encode()[:2], fin=False)  # splits "é" in two
        await raw.send_frame(OP_PING, b"in between")  # control frames may interleave
        await raw.send_frame(OP_CONT, "Hé".encode()[2:] + b"llo", fin=False)
        await raw.send_frame(OP_CONT, b"", fin=False)
        await raw.send_frame(OP_CONT, b", world", fin=True)
        pong = await raw.receive_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"in between")
        echo = await raw.receive_frame()
        assert (echo.fin, echo.opcode, echo.payload) == (True, opcode, "Héllo, world".encode())
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
        await raw.expect_eof()
    received = (await recorder.session()).received
    expected = "Héllo, world" if opcode == OP_TEXT else "Héllo, world".encode()
    key = "text" if opcode == OP_TEXT else "bytes"
    assert [m.get(key) for m in received if m["type"] == "websocket.receive"] == [expected]


async def test_ping_is_answered_with_a_pong_carrying_its_payload() -> None:
    async with run_server(ws_apps.echo()) as server:
        raw = await RawClient.connect(server)
        for payload in (b"", b"abc", bytes(range(125))):
            await raw.send_frame(OP_PING, payload)
            pong = await raw.receive_frame()
            assert (pong.fin, pong.opcode, pong.payload) == (True, OP_PONG, payload)
        # An unsolicited pong is ignored.
        await raw.send_frame(OP_PONG, b"unsolicited")
        await raw.send_frame(OP_TEXT, b"after")
        frame = await raw.receive_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"after")
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        await raw.receive_close()
        await raw.expect_eof()
        # trio-websocket's ping() returns only once the pong with its payload arrived.
        async with server.websocket("/") as ws:
            with trio.fail_after(TIMEOUT):
                await ws.connection.ping(b"client ping")


# --------------------------------------------------------------------------- idle timeout
# Memory transport + MockClock autojump: seconds of idling take milliseconds.


async def test_silent_peer_is_closed_1001_at_the_idle_timeout(autojump_clock: Any) -> None:
    recorder = Recorder()
    async with run_server(
        ws_apps.echo(recorder),
        transport="memory",
        websocket_timeout=3000,
        websocket_ping_interval=1000,
    ) as server:
        raw = await RawClient.connect(server)
        start = trio.current_time()
        ping = await raw.receive_frame(timeout=10)
        assert ping.opcode == OP_PING
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.05)
        # The peer never answers: closed at the idle timeout, counted from the last frame.
        close = await raw.receive_frame(timeout=10)
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.05)
        assert (close.opcode, close.close_code, close.close_reason) == (
            OP_CLOSE,
            1001,
            "idle timeout",
        )
        disconnect = await (await recorder.session()).wait_disconnect()
        assert disconnect["code"] == 1001
        # It does not answer our close either: the server gives up and closes TCP.
        await raw.expect_eof(timeout=30)


async def test_server_pings_at_the_interval_and_a_peer_that_answers_stays(
    autojump_clock: Any,
) -> None:
    recorder = Recorder()
    async with run_server(
        ws_apps.echo(recorder),
        transport="memory",
        websocket_timeout=3000,
        websocket_ping_interval=1000,
    ) as server:
        raw = await RawClient.connect(server)
        start = last = trio.current_time()
        for _ in range(10):  # 10 s: more than three idle timeouts
            ping = await raw.receive_frame(timeout=10)
            assert ping.opcode == OP_PING
            assert trio.current_time() - last == pytest.approx(1.0, abs=0.05)
            last = trio.current_time()
            await raw.send_frame(OP_PONG, ping.payload)
        assert trio.current_time() - start > 3 * 3.0
        await raw.send_frame(OP_TEXT, b"still here")
        frame = await raw.receive_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"still here")
        assert (await recorder.session()).disconnect is None
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
        await raw.expect_eof()


async def test_trio_websocket_peer_answering_pings_stays_connected(autojump_clock: Any) -> None:
    recorder = Recorder()
    async with (
        run_server(
            ws_apps.echo(recorder),
            transport="memory",
            websocket_timeout=2000,
            websocket_ping_interval=500,
        ) as server,
        server.websocket("/") as ws,
    ):
        await trio.sleep(5 * 2.0)
        assert ws.closed is None
        assert (await recorder.session()).disconnect is None
        await ws.send("after five timeouts")
        assert await ws.receive() == "after five timeouts"


async def test_quiet_peer_without_server_pings_is_closed_1001(autojump_clock: Any) -> None:
    recorder = Recorder()
    async with run_server(
        ws_apps.echo(recorder),
        transport="memory",
        websocket_timeout=2000,
        websocket_ping_interval=0,
    ) as server:
        async with server.websocket("/") as ws:
            start = trio.current_time()
            await ws.send("one")
            assert await ws.receive() == "one"
            await assert_closed_with(ws, 1001, "idle timeout", timeout=10)
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.05)
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 1001


# --------------------------------------------------------------------------- compression


def run_websockets_client(url: str, messages: list[str | bytes], **kwargs: Any) -> dict[str, Any]:
    """Drive the ``websockets`` asyncio client in this (worker) thread; report what it saw."""

    async def main() -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            async with websockets_connect(url, max_size=None, **kwargs) as ws:
                echoes = []
                for message in messages:
                    await ws.send(message)
                    echoes.append(await ws.recv())
                assert ws.response is not None
                return {
                    "echoes": echoes,
                    "extensions_header": ws.response.headers.get("Sec-WebSocket-Extensions"),
                    "extensions": [ext.name for ext in ws.protocol.extensions],
                }

    return asyncio.run(main())


async def test_compression_is_negotiated_with_websockets_client() -> None:
    big_text = "hornbeam pub/sub message " * 40000  # ~1 MB, very compressible
    big_bytes = bytes(range(256)) * 4096
    messages: list[str | bytes] = [big_text, big_bytes, "small"]
    async with run_server(ws_apps.echo(), websocket_compress=True) as server:
        with trio.fail_after(TIMEOUT * 2):
            seen = await trio.to_thread.run_sync(
                lambda: run_websockets_client(server.ws_url("/"), messages, compression="deflate")
            )
    assert seen["extensions"] == ["permessage-deflate"]
    assert seen["extensions_header"] is not None
    assert seen["extensions_header"].startswith("permessage-deflate")
    assert seen["echoes"] == messages


async def test_no_compression_without_the_option() -> None:
    messages: list[str | bytes] = ["text", b"bytes"]
    async with run_server(ws_apps.echo()) as server:
        with trio.fail_after(TIMEOUT * 2):
            seen = await trio.to_thread.run_sync(
                lambda: run_websockets_client(server.ws_url("/"), messages, compression="deflate")
            )
    assert seen["extensions"] == []
    assert seen["extensions_header"] is None
    assert seen["echoes"] == messages


async def test_compressed_frames_on_the_wire() -> None:
    """The server's frames really are deflated (RSV1, smaller), and it inflates ours."""
    text = "compress me " * 1000
    async with run_server(ws_apps.echo(), websocket_compress=True) as server:
        raw = await RawClient.connect(
            server, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")]
        )
        assert raw.header("sec-websocket-extensions") == "permessage-deflate"
        compressor = zlib.compressobj(wbits=-15)
        ours = compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
        await raw.send_frame(OP_TEXT, ours[:-4], rsv=0b100)
        frame = await raw.receive_frame()
        assert (frame.opcode, frame.rsv) == (OP_TEXT, 0b100)
        assert len(frame.payload) < len(text) // 10
        inflated = zlib.decompressobj(wbits=-15).decompress(frame.payload + b"\x00\x00\xff\xff")
        assert inflated.decode() == text
        await raw.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        assert (await raw.receive_close()).close_code == 1000
        await raw.expect_eof()


# --------------------------------------------------------------------------- shutdown


async def test_server_shutdown_closes_websockets_with_1001() -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            serve_scope = trio.CancelScope()

            async def run_serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with serve_scope:
                    await serve(
                        ws_apps.echo(recorder),
                        bind=("127.0.0.1:0",),
                        log_level="warning",
                        task_status=task_status,
                    )

            addresses = await nursery.start(run_serve)
            url = f"ws://127.0.0.1:{addresses[0].port}/room"
            async with (
                trio_websocket.open_websocket_url(url) as first,
                trio_websocket.open_websocket_url(url) as second,
            ):
                for ws in (first, second):
                    await ws.send_message("ready?")
                    assert await ws.get_message() == "ready?"
                serve_scope.cancel()
                for ws in (first, second):
                    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                        await ws.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == 1001
        # serve() returned: the nursery above is done.
    assert len(recorder.sessions) == 2
    for session in recorder.sessions:
        disconnect = await session.wait_disconnect()
        assert disconnect["code"] == 1001
        assert session.ended.is_set()


def _accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def test_sample_accept_matches_rfc_example() -> None:
    assert _accept_for(SAMPLE_KEY) == SAMPLE_ACCEPT


async def test_cancelling_run_server_closes_outside_clients_with_1001() -> None:
    """The toolkit's own clients are closed (1000) before its server stops, so the
    shutdown path is observed with a client the toolkit does not manage; leak checks
    are off because they wait for every connection to end before the server stops."""
    recorder = Recorder()
    url: list[str] = []
    ready = trio.Event()
    server_scope = trio.CancelScope()

    async def run() -> None:
        with server_scope:
            async with run_server(ws_apps.echo(recorder), check_leaks=False) as server:
                url.append(server.ws_url("/"))
                ready.set()
                await trio.sleep_forever()

    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await ready.wait()
            async with trio_websocket.open_websocket_url(url[0]) as ws:
                await ws.send_message("ready?")
                assert await ws.get_message() == "ready?"
                server_scope.cancel()
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1001
    disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == 1001
