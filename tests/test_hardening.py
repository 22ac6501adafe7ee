"""Hostile and overloading clients: the concurrency limit (503), WebSocket Origin checks (403),
the TLS handshake timeout, and slowloris clients against the request timeout (408).

Each test names the answer a client gets; README "What bad input gets" points here.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import http_apps
import pytest
import trio
import trio.testing
import trio_websocket
import trustme
from http_apps import RawHTTP
from test_ws_engine import running

from hornbeam_trio import cli
from hornbeam_trio.config import Config, ConfigError
from hornbeam_trio.protocol import websocket as wsproto
from hornbeam_trio.testing import TestServer, run_server
from hornbeam_trio.timers import TimerSweeper
from hornbeam_trio.transport import SocketTransport, TransportClosed


def get(path: bytes = b"/") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path


class CountingApp:
    """Answers HTTP 200 and echoes WebSocket text; counts the scopes it was called with."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await http_apps.skip_lifespan(receive, send)
            return
        self.calls.append(scope["type"])
        if scope["type"] == "http":
            await http_apps.respond(send, 200, b"ok")
            return
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


# -- configuration -------------------------------------------------------------------------


def test_hardening_defaults() -> None:
    config = Config()
    assert config.limit_concurrency is None
    assert config.websocket_allowed_origins == ()
    assert config.tls_handshake_timeout == 10.0
    assert config.max_request_head_size == 65536
    assert config.max_request_body_size is None


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"limit_concurrency": 0}, "limit_concurrency"),
        ({"limit_concurrency": -5}, "limit_concurrency"),
        ({"limit_concurrency": True}, "limit_concurrency"),
        ({"limit_concurrency": "10"}, "limit_concurrency"),
        ({"tls_handshake_timeout": -1}, "tls_handshake_timeout"),
        ({"tls_handshake_timeout": "soon"}, "tls_handshake_timeout"),
        ({"websocket_allowed_origins": ("",)}, "websocket_allowed_origins"),
        ({"websocket_allowed_origins": (3,)}, "websocket_allowed_origins"),
        ({"max_request_head_size": 0}, "max_request_head_size"),
        ({"max_request_body_size": -1}, "max_request_body_size"),
        ({"max_request_body_size": True}, "max_request_body_size"),
    ],
)
def test_bad_hardening_values_name_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_options(**options)
    assert info.value.option == option


def test_a_single_origin_string_becomes_a_tuple() -> None:
    config = Config(websocket_allowed_origins="https://example.com")  # type: ignore[arg-type]
    assert config.websocket_allowed_origins == ("https://example.com",)


def test_hardening_flags() -> None:
    _, config = cli.parse_args(
        [
            "m:a",
            "--limit-concurrency", "100",
            "--tls-handshake-timeout", "0",
            "--websocket-allowed-origins", "https://a.example",
            "--websocket-allowed-origins", "https://*.b.example",
        ]
    )  # fmt: skip
    assert config.limit_concurrency == 100
    assert config.tls_handshake_timeout == 0
    assert config.websocket_allowed_origins == ("https://a.example", "https://*.b.example")
    with pytest.raises(ConfigError, match="limit_concurrency"):
        cli.parse_args(["m:a", "--limit-concurrency", "lots"])


# -- limit_concurrency ---------------------------------------------------------------------


async def test_http_over_the_concurrency_limit_gets_503_before_the_app_runs() -> None:
    app = CountingApp()
    async with run_server(app, transport="memory", limit_concurrency=2) as server:
        held = [RawHTTP(await server.open_stream()) for _ in range(2)]
        for client in held:  # two keep-alive connections, both served and still open
            await client.send(get())
            assert (await client.read_response()).status == 200
        extra = RawHTTP(await server.open_stream())
        await extra.send(get())
        response = await extra.read_response()
        assert response.status == 503
        assert response.header("retry-after") == "1"
        assert response.header("connection") == "close"
        await extra.assert_closed()
        assert app.calls == ["http", "http"]  # the app never saw the third request

        await held[0].stream.aclose()  # one slot frees up...
        await wait_until(lambda: server.server.admitted < 2)
        again = RawHTTP(await server.open_stream())
        await again.send(get())
        assert (await again.read_response()).status == 200  # ...and is served again
        for client in (held[1], again):
            await client.stream.aclose()


async def test_websocket_over_the_concurrency_limit_is_refused_with_503() -> None:
    app = CountingApp()
    async with run_server(app, limit_concurrency=1) as server:
        async with server.websocket("/") as first:
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                await server.connect_websocket("/")
            assert info.value.status_code == 503
            await first.send("still here")
            assert await first.receive() == "still here"
        assert app.calls == ["websocket"]
        await wait_until(lambda: server.server.admitted == 0)
        async with server.websocket("/") as second:
            await second.send("after")
            assert await second.receive() == "after"
    assert app.calls == ["websocket", "websocket"]


async def test_a_burst_beyond_the_limit_never_crashes_and_is_all_answered() -> None:
    app = CountingApp()
    async with run_server(app, limit_concurrency=5) as server:
        statuses: list[int] = []

        async def one() -> None:
            response = await server.get("/")
            statuses.append(response.status)

        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(one)
        assert len(statuses) == 60
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) == len(app.calls) >= 5


# -- websocket_allowed_origins ---------------------------------------------------------------


ALLOWED = ("https://example.com", "https://*.example.org")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("HTTPS://EXAMPLE.COM", True),
        ("https://chat.example.org", True),
        ("https://a.b.example.org", True),
        (None, True),  # not a browser: no Origin to check
        ("https://example.com.evil.net", False),
        ("https://evilexample.org", False),
        ("http://example.com", False),
        ("null", False),
    ],
)
def test_check_origin(origin: str | None, allowed: bool) -> None:
    headers = [(b"host", b"x")] + ([(b"origin", origin.encode())] if origin else [])
    if allowed:
        wsproto.check_origin(headers, ALLOWED)
    else:
        with pytest.raises(wsproto.HandshakeError) as info:
            wsproto.check_origin(headers, ALLOWED)
        assert info.value.status == 403


def test_two_origin_headers_are_refused_and_no_patterns_allow_all() -> None:
    two = [(b"origin", b"https://example.com"), (b"origin", b"https://evil.net")]
    with pytest.raises(wsproto.HandshakeError):
        wsproto.check_origin(two, ALLOWED)
    wsproto.check_origin([(b"origin", b"https://evil.net")], ())


async def connect_from(server: TestServer, origin: str | None) -> int:
    """The handshake's answer for a browser-like client sending ``origin``: 101 or the refusal."""
    headers = [("Origin", origin)] if origin else None
    try:
        async with server.websocket("/", headers=headers) as ws:
            await ws.send("hi")
            assert await ws.receive() == "hi"
    except trio_websocket.ConnectionRejected as exc:
        assert exc.status_code is not None
        return exc.status_code
    return 101


async def test_websocket_from_a_foreign_origin_gets_403_before_the_app_runs() -> None:
    app = CountingApp()
    async with run_server(app, websocket_allowed_origins=ALLOWED) as server:
        assert await connect_from(server, "https://evil.net") == 403
        assert app.calls == []
        assert await connect_from(server, "https://example.com") == 101
        assert await connect_from(server, "https://chat.example.org") == 101
        assert await connect_from(server, None) == 101
    assert app.calls == ["websocket"] * 3


async def test_by_default_every_origin_is_allowed() -> None:
    app = CountingApp()
    async with run_server(app) as server:
        assert await connect_from(server, "https://anywhere.example") == 101


# -- TLS handshake timeout -----------------------------------------------------------------


def make_cert(tmp_path: Path) -> tuple[trustme.CA, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, str(certfile), str(keyfile)


@pytest.mark.parametrize(
    "first_bytes", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "stalled"]
)
async def test_tls_client_that_never_finishes_its_handshake_is_dropped(
    tmp_path: Path, first_bytes: bytes
) -> None:
    ca, certfile, keyfile = make_cert(tmp_path)
    app = CountingApp()
    async with run_server(
        app, certfile=certfile, keyfile=keyfile, tls_handshake_timeout=0.3, log_level="critical"
    ) as server:
        silent = await trio.open_tcp_stream(server.host, server.port)
        await silent.send_all(first_bytes)  # a ClientHello header, then nothing
        start = trio.current_time()
        with trio.fail_after(5):
            try:
                while await silent.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass  # dropped with a reset: just as good
        waited = trio.current_time() - start
        await silent.aclose()
        assert 0.25 <= waited < 3
        # A real TLS client is still served.
        context = ssl.create_default_context()
        ca.configure_trust(context)
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", server.port, ssl_context=context, https_compatible=True
        )
        client = RawHTTP(stream)
        await client.send(get())
        assert (await client.read_response()).status == 200
        await stream.aclose()
    assert app.calls == ["http"]


# -- slowloris: the request timeout ------------------------------------------------------------


async def test_head_trickled_one_byte_a_second_is_cut_off_at_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = CountingApp()
    async with run_server(app, transport="memory", timeout=5000) as server:
        client = RawHTTP(await server.open_stream())
        start = trio.current_time()

        async def trickle() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 100:
                try:
                    await client.send(bytes([byte]))
                except trio.BrokenResourceError:
                    return
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            response = await client.read_response()
            elapsed = trio.current_time() - start
            await client.assert_closed()
            nursery.cancel_scope.cancel()
    assert response.status == 408
    assert 5 <= elapsed < 6  # bytes kept arriving: the deadline is for the whole head
    assert app.calls == []


async def test_body_chunks_within_the_timeout_pass_and_a_longer_gap_gets_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = http_apps.BodyRecorder()
    async with run_server(app, transport="memory", timeout=3000) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
        for part in (b"ab", b"cd", b"ef"):  # 2.5 s apart: each gap is under 3 s
            await trio.sleep(2.5)
            await client.send(part)
        assert (await client.read_response()).status == 200

        await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nab")
        start = trio.current_time()
        response = await client.read_response()  # ... and the rest never comes
        waited = trio.current_time() - start
        await client.assert_closed()
    assert response.status == 408
    assert 3 <= waited < 3.5


async def test_many_slowloris_connections_do_not_starve_a_normal_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = CountingApp()
    async with run_server(app, transport="memory", timeout=10000) as server:
        slow = [RawHTTP(await server.open_stream()) for _ in range(200)]
        for client in slow:
            await client.send(b"GET / HTTP/1.1\r\nHo")
        await trio.sleep(5)
        normal = RawHTTP(await server.open_stream())
        await normal.send(get())
        assert (await normal.read_response()).status == 200
        await normal.stream.aclose()
        start = trio.current_time()
        for client in slow:
            assert (await client.read_response()).status == 408
        assert trio.current_time() - start < 5.5  # all cut off at their own deadline
    assert app.calls == ["http"]


# -- broken WebSocket handshakes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key", "status"),
    [
        pytest.param(b"8", b"dGhlIHNhbXBsZSBub25jZQ==", 426, id="version-8"),
        pytest.param(b"13", b"short", 400, id="bad-key"),
    ],
)
async def test_broken_websocket_handshake_gets_an_http_error_before_the_app_runs(
    version: bytes, key: bytes, status: int
) -> None:
    app = CountingApp()
    async with run_server(app) as server:
        client = RawHTTP(await server.open_stream())
        await client.send(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n\r\n" % (key, version)
        )
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == status
    if status == 426:
        assert response.header("sec-websocket-version") == "13"
    assert app.calls == []


# -- slow readers: a client that stops taking its response ---------------------------------------


class BigResponse:
    """Streams ``size`` bytes in 1 MiB messages; records how sending ended."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.outcome: str | None = None
        self.done = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunk = b"x" * (1 << 20)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(self.size // len(chunk) - 1):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": chunk})
            self.outcome = "sent"
        except Exception as exc:
            self.outcome = type(exc).__name__
            raise
        finally:
            self.done.set()


async def small_window_client(server: TestServer) -> trio.SocketStream:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    await sock.connect((server.host, server.port))
    stream = trio.SocketStream(sock)
    await stream.send_all(get())
    return stream


async def test_a_client_that_stops_reading_its_response_is_dropped_after_the_timeout() -> None:
    app = BigResponse(64 << 20)
    async with run_server(app, timeout=300) as server:
        stream = await small_window_client(server)  # ... and it never reads
        start = trio.current_time()
        with trio.fail_after(10):
            await app.done.wait()
        waited = trio.current_time() - start
        await wait_until(lambda: not server.server.connections)
        await stream.aclose()
    assert app.outcome == "ClientDisconnected"
    assert 0.3 <= waited < 5


def full_transport(
    sweeper: TimerSweeper, stall_timeout: float
) -> tuple[SocketTransport, socket.socket]:
    """A server-side transport over loopback TCP whose send buffer is full: its peer
    never reads, so a wait for writability only ends by its stall or a cancel."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    peer = socket.create_connection(listener.getsockname())
    sock, _ = listener.accept()
    listener.close()
    sock.setblocking(False)
    transport = SocketTransport(sock, timers=sweeper)
    transport.stall_timeout = stall_timeout
    while transport.try_send(b"x" * 65536):
        pass
    return transport, peer


async def test_a_write_wait_gives_up_a_stall_timeout_after_it_began_not_after_an_earlier_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The timer task's entries are lazy: the one an earlier wait pushed fires during a
    later wait, which must go on to its own deadline."""
    sweeper = TimerSweeper()
    async with running(sweeper):
        transport, peer = full_transport(sweeper, 10)
        start = trio.current_time()
        with trio.move_on_after(5):
            await transport.wait_writable()  # its entry is for +10
        with pytest.raises(TransportClosed, match="took no bytes for 10s"):
            await transport.wait_writable()  # from +5: ends at +15, not +10
        assert trio.current_time() - start == 15
        transport.abort()
        peer.close()


async def test_an_entry_of_a_write_wait_that_ended_leaves_the_transport_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweeper = TimerSweeper()
    async with running(sweeper):
        transport, peer = full_transport(sweeper, 10)
        start = trio.current_time()
        with trio.move_on_after(5):
            await transport.wait_writable()
        # Its +10 entry fires while the socket waits to be readable (as a keep-alive
        # connection waits for its next request without the hub): that wait goes on.
        with trio.move_on_at(start + 12) as read_wait:
            await trio.lowlevel.wait_readable(transport.sock)
        assert read_wait.cancelled_caught
        with trio.move_on_after(1) as waited:
            await transport.wait_writable()  # a plain wait: not ended as stalled
        assert waited.cancelled_caught
        transport.abort()
        peer.close()


async def test_a_slow_reader_that_keeps_reading_gets_the_whole_response() -> None:
    app = BigResponse(16 << 20)
    async with run_server(app, timeout=500) as server:
        stream = await small_window_client(server)
        received = 0
        with trio.fail_after(20):
            while True:
                await trio.sleep(0.15)  # pauses shorter than the timeout, then reads all there is
                with trio.move_on_after(0.05):
                    while chunk := await stream.receive_some(1 << 20):
                        received += len(chunk)
                if app.done.is_set() and received > 16 << 20:
                    break
        await stream.aclose()
    assert app.outcome == "sent"
