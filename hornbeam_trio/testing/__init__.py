"""Testing toolkit for cancellation-safe WebSocket test suites.

``async with run_server(app) as server:`` runs the app on a real hornbeam_trio
server inside the caller's nursery (over TCP on a free port, or over in-memory
streams with ``transport="memory"``, where ``trio.testing.MockClock`` makes
timeout tests take milliseconds).  The handle gives real clients:
``server.websocket(path)`` (trio-websocket) and ``server.get(path)`` /
``server.request(...)`` (h11).  On exit, clients the test forgot are closed,
the server is shut down, and the test fails, naming what leaked, if any
connection, task, subscription or owned state key is left; an exception raised
by the app fails the test with the app's own traceback.

Guarantees (each backed by a test in tests/test_testing.py): a test that forgets
to close a client still tears down cleanly; a test cancelled by a timeout
(``trio.fail_after``) leaves nothing running; an app bug surfaces as the test's
failure, not as a hang.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import trio
import trio.testing
import trio_websocket

from ..config import Config
from ..server import Server, _make_runtime, make_listeners, serve_server
from ..transport import LINGER_RESET, StreamTransport
from ..types import ASGIApp

__all__ = [
    "AppFailed",
    "HTTPResponse",
    "LeakError",
    "TestServer",
    "WebSocketClient",
    "assert_closed_with",
    "collect",
    "receive_within",
    "run_server",
]

DEFAULT_TIMEOUT = 5.0


class LeakError(AssertionError):
    """Something the server owned outlived the test."""


class AppFailed(AssertionError):
    """The app raised; the app's exception is chained as ``__cause__``."""


@dataclass
class HTTPResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class WebSocketClient:
    """A trio-websocket client that also knows how to vanish abruptly."""

    def __init__(
        self, connection: trio_websocket.WebSocketConnection, stream: trio.abc.Stream
    ) -> None:
        self.connection = connection
        self._stream = stream

    @property
    def subprotocol(self) -> str | None:
        return self.connection.subprotocol

    @property
    def closed(self) -> trio_websocket.CloseReason | None:
        return self.connection.closed

    async def send(self, message: str | bytes) -> None:
        await self.connection.send_message(message)

    async def send_json(self, value: Any) -> None:
        await self.connection.send_message(json.dumps(value))

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
        return await receive_within(self, timeout)

    async def receive_json(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        message = await receive_within(self, timeout)
        return json.loads(message)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Clean close: the closing handshake, then TCP close."""
        await self.connection.aclose(code, reason)

    async def abort(self) -> None:
        """Abrupt disconnect: a TCP reset, no close frame (or a dropped in-memory stream)."""
        sock = _socket_of(self._stream)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        await trio.aclose_forcefully(self._stream)


async def receive_within(client: WebSocketClient, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
    """The next message, or a test failure that says how long it waited."""
    with trio.move_on_after(timeout):
        try:
            return await client.connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise AssertionError(
                f"connection closed while waiting for a message: {exc.reason}"
            ) from None
    raise AssertionError(f"no WebSocket message within {timeout:g}s")


async def assert_closed_with(
    client: WebSocketClient,
    code: int,
    reason: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Wait for the server's close (skipping messages still queued) and check its code/reason."""
    with trio.move_on_after(timeout):
        while client.connection.closed is None:
            try:
                await client.connection.get_message()
            except trio_websocket.ConnectionClosed:
                break
    closed = client.connection.closed
    if closed is None:
        raise AssertionError(f"connection not closed within {timeout:g}s (expected {code})")
    if closed.code != code:
        raise AssertionError(f"closed with {closed.code} {closed.reason!r}, expected {code}")
    if reason is not None and closed.reason != reason:
        raise AssertionError(f"closed with reason {closed.reason!r}, expected {reason!r}")


async def collect(source: Any, count: int, *, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    """``count`` messages from a WebSocketClient or a pub/sub Subscription, or a clear failure."""
    out: list[Any] = []
    with trio.move_on_after(timeout):
        while len(out) < count:
            if isinstance(source, WebSocketClient):
                out.append(await source.connection.get_message())
            else:
                out.append(await source.get())
    if len(out) < count:
        raise AssertionError(f"got {len(out)} of {count} messages within {timeout:g}s: {out!r}")
    return out


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``kind`` itself, or the one inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _find(inner, kind)
        if found is not None:
            return found
    return None


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    return stream.socket if isinstance(stream, trio.SocketStream) else None


@dataclass
class TestServer:
    """Handle yielded by :func:`run_server`."""

    __test__ = False  # not a pytest test class

    server: Server
    transport: Literal["tcp", "memory"]
    host: str = "127.0.0.1"
    port: int = 0
    _nursery: trio.Nursery | None = None
    _clients: list[WebSocketClient] = field(default_factory=list)
    _streams: list[trio.abc.Stream] = field(default_factory=list)
    app_errors: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def stats(self) -> dict[str, Any]:
        stats = self.server.runtime.stats()
        stats["server_connections"] = len(self.server.connections)
        return stats

    async def open_stream(self) -> trio.abc.Stream:
        """A raw byte stream to the server (TCP, or an in-memory pair)."""
        if self.transport == "tcp":
            stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
        else:
            client, server_side = trio.testing.memory_stream_pair()
            nursery = self.server.connections_nursery
            assert nursery is not None
            nursery.start_soon(
                self.server.handle_transport,
                StreamTransport(server_side, client=("127.0.0.1", 50000), server=("127.0.0.1", 80)),
            )
            stream = client
        self._streams.append(stream)
        return stream

    @asynccontextmanager
    async def websocket(
        self,
        path: str = "/",
        *,
        subprotocols: Iterable[str] | None = None,
        headers: list[tuple[str, str]] | None = None,
        max_message_size: int = 64 * 1024 * 1024,
    ) -> AsyncIterator[WebSocketClient]:
        """A connected WebSocket client; closed cleanly on exit unless the test closed it."""
        client = await self.connect_websocket(
            path, subprotocols=subprotocols, headers=headers, max_message_size=max_message_size
        )
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DEFAULT_TIMEOUT):
                await client.connection.aclose()

    async def connect_websocket(
        self,
        path: str = "/",
        *,
        subprotocols: Iterable[str] | None = None,
        headers: list[tuple[str, str]] | None = None,
        max_message_size: int = 64 * 1024 * 1024,
    ) -> WebSocketClient:
        """Like :meth:`websocket`, without the context manager (closed at server exit).

        A refused handshake raises ``trio_websocket.ConnectionRejected`` here, in the test,
        with the server's status and body: each client runs in a nursery of its own.
        """
        assert self._nursery is not None
        stream = await self.open_stream()
        outcome = await self._nursery.start(
            self._host_client,
            stream,
            path,
            list(subprotocols) if subprotocols else None,
            [(k.encode(), v.encode()) for k, v in headers or []],
            max_message_size,
        )
        if isinstance(outcome, BaseException):
            raise outcome
        client = WebSocketClient(outcome, stream)
        self._clients.append(client)
        return client

    async def _host_client(
        self,
        stream: trio.abc.Stream,
        path: str,
        subprotocols: list[str] | None,
        headers: list[tuple[bytes, bytes]],
        max_message_size: int,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        try:
            async with trio.open_nursery() as nursery:
                connection = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,  # type: ignore[arg-type]  # any Stream works; the annotation is narrow
                    f"{self.host}:{self.port}",
                    path,
                    subprotocols=subprotocols,
                    extra_headers=headers,
                    max_message_size=max_message_size,
                    message_queue_size=1024,
                )
                started = True
                task_status.started(connection)
        except Exception as exc:
            if started:
                raise
            rejected = _find(exc, trio_websocket.ConnectionRejected)
            task_status.started(rejected if rejected is not None else exc)

    async def request(
        self,
        method: str,
        path: str = "/",
        *,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HTTPResponse:
        """One HTTP/1.1 request on a fresh connection (closed afterwards)."""
        stream = await self.open_stream()
        try:
            with trio.fail_after(timeout):
                return await _h11_request(stream, self.host, method, path, body, headers or [])
        finally:
            await trio.aclose_forcefully(stream)
            self._streams.remove(stream)

    async def get(self, path: str = "/", **kwargs: Any) -> HTTPResponse:
        return await self.request("GET", path, **kwargs)

    async def _close_clients(self) -> None:
        for client in self._clients:
            if client.connection.closed is None:
                with trio.move_on_after(1):
                    await client.connection.aclose()
        for stream in self._streams:
            await trio.aclose_forcefully(stream)
        self._clients.clear()
        self._streams.clear()


async def _h11_request(
    stream: trio.abc.Stream,
    host: str,
    method: str,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]],
) -> HTTPResponse:
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("host", host), ("connection", "close"), *headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        all_headers.append(("content-length", str(len(body))))
    out = conn.send(h11.Request(method=method, target=path, headers=all_headers))
    if body:
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
    out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(out)
    status = 0
    response_headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            response_headers = list(event.headers)
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return HTTPResponse(status, response_headers, b"".join(chunks))


@asynccontextmanager
async def run_server(
    app: ASGIApp,
    config: Config | None = None,
    *,
    transport: Literal["tcp", "memory"] = "tcp",
    check_leaks: bool = True,
    raise_app_errors: bool = True,
    **options: Any,
) -> AsyncIterator[TestServer]:
    """Run ``app`` on a real server for the length of the block (see module docstring)."""
    if config is None:
        options.setdefault("bind", ("127.0.0.1:0",))
        options.setdefault("log_level", "warning")
        config = Config.from_options(**options)
    elif options:
        raise TypeError("pass either a Config or keyword options, not both")
    runtime = _make_runtime(config)
    server = Server(app, config, runtime)
    handle = TestServer(server=server, transport=transport)
    server.app_error_hook = handle.app_errors.append
    listeners = make_listeners(config) if transport == "tcp" else []
    try:
        async with trio.open_nursery() as nursery:
            handle._nursery = nursery
            addresses = await nursery.start(serve_server, server, listeners)
            if addresses:
                handle.host = addresses[0].host
                handle.port = addresses[0].port
            try:
                yield handle
            finally:
                with trio.CancelScope(shield=True):
                    await handle._close_clients()
                    if check_leaks and not handle.app_errors:
                        await _wait_idle(handle)
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            listener.close()
    if raise_app_errors and handle.app_errors:
        first = handle.app_errors[0]
        raise AppFailed(f"the app raised {first!r} (see the chained traceback)") from first
    if check_leaks:
        _check_no_leaks(handle)


async def _wait_idle(handle: TestServer, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Give connections whose clients just left a moment to finish before judging."""
    with trio.move_on_after(timeout):
        while handle.server.connections or handle.server.runtime.connections:
            await trio.sleep(0.005)
    if handle.server.connections:
        raise LeakError(
            f"{len(handle.server.connections)} server connection(s) still open "
            f"{timeout:g}s after every client closed"
        )


def _check_no_leaks(handle: TestServer) -> None:
    stats = handle.stats()
    problems = []
    if stats["server_connections"]:
        problems.append(f"{stats['server_connections']} connection(s)")
    if stats["connections"]:
        problems.append(
            f"{stats['connections']} connection context(s) with {stats['tasks']} task(s)"
        )
    if stats["topics"]:
        problems.append(f"subscriptions {stats['topics']}")
    if stats["owned_keys"]:
        problems.append(f"owned state keys {stats['owned_keys']}")
    if problems:
        raise LeakError("left over after the server stopped: " + "; ".join(problems))
