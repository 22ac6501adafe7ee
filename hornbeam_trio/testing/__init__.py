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
(``trio.fail_after``) leaves nothing running, at once, however many clients are
open (clients.py); an app bug surfaces as the test's failure, not as a hang; what
leaves the block is one plain exception, never an exception group (run_server);
each server's leak check judges only its own server (leaks.py).
"""

from __future__ import annotations

import dataclasses
import json
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
from ..transport import StreamTransport
from ..types import ASGIApp
from .clients import (
    DEFAULT_TIMEOUT,
    WebSocketClient,
    assert_closed_with,
    collect,
    receive_within,
)
from .leaks import Footprint, LeakError

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


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``kind`` itself, or the one inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _find(inner, kind)
        if found is not None:
            return found
    return None


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
            await client._close_within(DEFAULT_TIMEOUT)

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
        assert isinstance(outcome, WebSocketClient)
        self._clients.append(outcome)
        return outcome

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
        """The client's reader runs in this task's nursery, which lives in run_server's."""
        client: WebSocketClient | None = None
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
                client = WebSocketClient(connection, stream)
                task_status.started(client)
        except Exception as exc:
            if client is not None:
                raise
            rejected = _find(exc, trio_websocket.ConnectionRejected)
            task_status.started(rejected if rejected is not None else exc)
        finally:
            if client is not None:
                await client._reader_stopped()

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
                await client._close_within(1)
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
    """Run ``app`` on a real server for the length of the block (see module docstring).

    What leaves the block: an exception the block itself raised, as it was raised; else
    (the block ended, or was cancelled) :class:`AppFailed` if the app raised, else
    :class:`LeakError` if the server left anything behind, else the cancellation.  None of
    these comes wrapped in an exception group, so ``pytest.raises`` sees it.
    """
    if config is None:
        options.setdefault("bind", ("127.0.0.1:0",))
        options.setdefault("log_level", "warning")
        config = Config.from_options(**options)
    elif options:
        raise TypeError("pass either a Config or keyword options, not both")
    else:
        # A Config object of this server's own, even when a test passes one Config to
        # two servers: the leak check tells the server's connections apart by it.
        config = dataclasses.replace(config)
    runtime = _make_runtime(config)
    server = Server(app, config, runtime)
    footprint = Footprint(server)
    handle = TestServer(server=server, transport=transport)
    server.app_error_hook = handle.app_errors.append
    listeners = make_listeners(config) if transport == "tcp" else []
    body_error: BaseException | None = None
    still_open: str | None = None
    outcome: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            handle._nursery = nursery
            addresses = await nursery.start(serve_server, server, listeners)
            if addresses:
                handle.host = addresses[0].host
                handle.port = addresses[0].port
            try:
                yield handle
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await handle._close_clients()
                    if check_leaks and not handle.app_errors:
                        still_open = await footprint.wait_idle(DEFAULT_TIMEOUT)
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        outcome = exc
    finally:
        for listener in listeners:
            listener.close()
    if outcome is not None and not _only_cancelled(outcome):
        raise _own_error(outcome, body_error)
    if raise_app_errors and handle.app_errors:
        first = handle.app_errors[0]
        raise AppFailed(f"the app raised {first!r} (see the chained traceback)") from first
    if check_leaks:
        problems = [still_open] if still_open else []
        leftovers = footprint.leftovers()
        if leftovers:
            problems.append("left over after the server stopped: " + "; ".join(leftovers))
        if problems:
            raise LeakError("; ".join(problems))
    if outcome is not None:
        raise outcome


def _only_cancelled(exc: BaseException) -> bool:
    """``exc`` is a cancellation: Cancelled, or a group of nothing else."""
    if isinstance(exc, trio.Cancelled):
        return True
    children = getattr(exc, "exceptions", None)
    return isinstance(children, tuple) and all(_only_cancelled(child) for child in children)


def _own_error(outcome: BaseException, body_error: BaseException | None) -> BaseException:
    """The block's own exception unwrapped from run_server's nursery group, if it is the
    only failure there (beside cancellations); else the group, which then holds more."""
    children = getattr(outcome, "exceptions", None)
    if body_error is not None and isinstance(children, tuple):
        failures: list[BaseException] = [c for c in children if not _only_cancelled(c)]
        if len(failures) == 1 and failures[0] is body_error:
            return body_error
    return outcome
