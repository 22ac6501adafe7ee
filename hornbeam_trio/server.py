"""``serve(app, config)``: listeners, accept loops, lifespan and graceful shutdown.

Structure (every box is a nursery, every connection its own)::

    serve()                       cancelled by the caller, SIGINT or SIGTERM
      └ shielded server scope     survives that cancellation for the grace period
          ├ lifespan task
          ├ accept loop per listener
          └ one task per connection -> HTTPConnection / WebSocketConnection nursery

When serve() is cancelled: stop accepting, close idle keep-alive connections,
send close 1001 to every WebSocket, let in-flight HTTP responses finish.  Then
lifespan shutdown runs.  The whole shutdown has one budget, ``shutdown_timeout``
seconds from the cancellation: connections still open at its end are cancelled,
and lifespan shutdown gets what they left of it.  serve() returns with nothing
of it left running.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from .backends.history import HistoryRule
from .config import BindAddress, Config, parse_bind, parse_metrics_bind
from .h2_conn import H2Connection
from .http_conn import HTTPConnection
from .lifespan import Lifespan, StartupFailed
from .readiness import ReadinessHub
from .runtime import Runtime, current_runtime, default_runtime
from .timers import TimerSweeper
from .transport import SocketTransport, StreamTransport, Transport
from .types import ASGI_VERSION
from .ws_send import DeliveryBatcher

if TYPE_CHECKING:
    from .metrics import ServerMetrics
    from .server_context import RequestHead
    from .types import ASGIApp, Scope

logger = logging.getLogger("hornbeam_trio")

__all__ = ["Server", "StartupFailed", "serve"]

ACCEPTS_PER_CHECKPOINT = 32
_AF_UNIX: int | None = getattr(socket, "AF_UNIX", None)
"""None where Python has no unix sockets (Windows): a unix: bind is refused by Config."""
_CONN_TASK = "hornbeam_trio connection"


def make_listeners(config: Config) -> list[socket.socket]:
    listeners: list[socket.socket] = []
    try:
        for text in config.bind:
            address = parse_bind(text)
            listeners.append(_bind_one(address, config.backlog))
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def _bind_one(address: BindAddress, backlog: int) -> socket.socket:
    if address.kind == "unix":
        assert _AF_UNIX is not None  # parse_bind refuses unix: where there is none
        if os.path.exists(address.path):
            os.unlink(address.path)
        sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.path)
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if os.name == "posix":
            # A restart may bind while old connections sit in TIME_WAIT.  Not on Windows,
            # where SO_REUSEADDR would let a second server take a port in use (as asyncio).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((address.host, address.port))
        except OSError:
            sock.close()
            raise
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def bound_address(sock: socket.socket) -> BindAddress:
    name = sock.getsockname()
    if sock.family == _AF_UNIX:
        return BindAddress("unix", path=str(name))
    return BindAddress("tcp", host=str(name[0]), port=int(name[1]))


def make_ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.certfile, config.keyfile)
    if config.cacertfile:
        context.load_verify_locations(config.cacertfile)
    context.set_alpn_protocols(["h2", "http/1.1"] if config.http2 else ["http/1.1"])
    return context


class Server:
    """State shared by the connections of one serve() call."""

    def __init__(self, app: ASGIApp, config: Config, runtime: Runtime) -> None:
        self.app = app
        self.config = config
        self.runtime = runtime
        self.ssl_context = make_ssl_context(config)
        self.shutting_down = False
        self.connections: set[HTTPConnection | H2Connection] = set()
        self.admitted = 0
        """Connections counted against ``limit_concurrency`` (those not answered 503)."""
        self.lifespan = Lifespan(app, config.lifespan)
        self.connections_nursery: trio.Nursery | None = None
        self.batcher = DeliveryBatcher()
        """Coalesces this server's pub/sub deliveries (one send per connection per pass)."""
        self.timers = TimerSweeper()
        """Every connection's clocks, in one task (see serve): HTTP request-head time-outs,
        WebSocket pings, idle timeouts, close handshakes and app grace."""
        self.readiness: ReadinessHub | None = None
        """Read-readiness for every plain-TCP connection of this server (Linux epoll)."""
        self.app_error_hook: Callable[[BaseException], None] | None = None
        """Called with every exception an app raises (the testing toolkit re-raises them)."""
        self.http_scheme = "https" if self.ssl_context else "http"
        self._ws_scheme = "wss" if self.ssl_context else "ws"
        self.metrics: ServerMetrics | None = None
        """Set with ``metrics_bind``: then the batcher times its rounds (the counters
        are plain ints the server keeps anyway; see metrics.py)."""
        self.metrics_socket: str | None = None
        """A ``--workers`` worker's: the unix socket its metrics are asked for on (the
        parent's collector serves ``metrics_bind``; metrics_workers.py)."""
        if config.metrics_bind is not None:
            from .metrics import ServerMetrics

            self.metrics = ServerMetrics(runtime, config, self.busy_poll_seconds)
            self.batcher.observe_latency = self.metrics.latency.observe

    def busy_poll_seconds(self) -> float:
        """Time the readiness hub's lone connections polled instead of sleeping."""
        return self.readiness.busy_poll_ns / 1e9 if self.readiness is not None else 0.0

    def base_scope(self, request: RequestHead, transport: Transport, kind: str) -> Scope:
        """The scope of a request; HTTP/1.1 requests build theirs inline (RequestCycle.run)."""
        root_path = self.config.root_path
        scope: Scope = {
            "type": kind,
            "asgi": ASGI_VERSION,
            "http_version": request.http_version,
            "scheme": self._ws_scheme if kind == "websocket" else self.http_scheme,
            "path": root_path + request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "root_path": root_path,
            "headers": request.headers,
            "client": transport.client,
            "server": transport.server,
        }
        if self.lifespan.supported:
            scope["state"] = self.lifespan.state.copy()
        return scope

    async def accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        # A shutdown that came before this task ran has closed the listener already.
        await trio.lowlevel.checkpoint_if_cancelled()
        accepted = 0
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                accepted = 0
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.error("accept() failed: %s; pausing 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            sock.setblocking(False)
            if sock.family != _AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A constant task name: Trio would otherwise format one string per connection.
            nursery.start_soon(self.handle_transport, self.make_transport(sock), name=_CONN_TASK)
            accepted += 1
            if accepted >= ACCEPTS_PER_CHECKPOINT:
                accepted = 0
                await trio.lowlevel.checkpoint()

    def make_transport(self, sock: socket.socket) -> Transport:
        """The raw-socket fast path, or TLS over a Trio stream (handshake on first read)."""
        if self.ssl_context is not None:
            raw = SocketTransport(sock)  # only for the addresses
            stream = trio.SSLStream(
                trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
                self.ssl_context,
                server_side=True,
            )
            return StreamTransport(stream, client=raw.client, server=raw.server, secure=True)
        return SocketTransport(sock, hub=self.readiness, timers=self.timers)

    async def handle_transport(self, transport: Transport) -> None:
        """Serve one client connection to its end (sockets, TLS, in-memory test streams)."""
        if self.ssl_context is not None and not await self._tls_handshake(transport):
            return
        limit = self.config.limit_concurrency
        overloaded = limit is not None and self.admitted >= limit
        conn: HTTPConnection | H2Connection
        if _alpn(transport) == "h2":
            conn = H2Connection(self, transport, overloaded=overloaded)
        else:
            conn = HTTPConnection(self, transport, overloaded=overloaded)
        self.connections.add(conn)
        if not overloaded:
            self.admitted += 1
        try:
            handoff = await conn.run()
            if handoff is not None:  # a WebSocket, or HTTP/2 by prior knowledge
                await handoff.run()
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            logger.debug("connection from %s ended: %r", transport.client, exc)
        except Exception:
            logger.exception("connection handler failed")
        finally:
            self.connections.discard(conn)
            if not overloaded:
                self.admitted -= 1
            transport.abort()

    async def _tls_handshake(self, transport: Transport) -> bool:
        """Finish the TLS handshake within ``tls_handshake_timeout``; False: dropped.

        Done before the connection counts for ``limit_concurrency`` or shutdown: a client
        that opens TCP and never speaks TLS holds only its socket, and only this long.
        """
        stream = getattr(transport, "stream", None)
        if not isinstance(stream, trio.SSLStream):
            return True
        timeout = self.config.tls_handshake_timeout or float("inf")
        with trio.move_on_after(timeout) as timer:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.debug("TLS handshake with %s failed: %r", transport.client, exc)
                transport.abort()
                return False
        if timer.cancelled_caught:
            logger.info(
                "TLS handshake with %s not finished within %gs: dropped",
                transport.client,
                self.config.tls_handshake_timeout,
            )
            transport.abort()
            return False
        return True

    def report_app_error(self, exc: BaseException) -> None:
        hook = self.app_error_hook
        if hook is not None:
            hook(exc)

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for conn in list(self.connections):
            conn.begin_shutdown()


def _alpn(transport: Transport) -> str | None:
    """The protocol TLS negotiated by ALPN (None on cleartext, or without ALPN)."""
    stream = getattr(transport, "stream", None)
    if isinstance(stream, trio.SSLStream):
        protocol: str | None = stream.selected_alpn_protocol()
        return protocol
    return None


async def serve(
    app: ASGIApp,
    config: Config | None = None,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``app`` until cancelled; ``await nursery.start(serve, app, config)`` returns
    the list of bound addresses (a real port where port 0 was asked)."""
    if config is None:
        config = Config.from_options(**options)
    elif options:
        config = Config.from_options(**{**_config_options(config), **options})
    server = Server(app, config, _make_runtime(config))
    await serve_server(server, make_listeners(config), task_status=task_status)


async def serve_server(
    server: Server,
    listeners: list[socket.socket],
    *,
    unlink_unix: bool = True,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """serve() for an already built Server; the listeners may be empty (in-memory tests).

    ``unlink_unix=False`` for listeners this process did not bind (a ``--workers``
    worker): the socket file belongs to the parent, and a worker that stops, to be
    replaced, must not take the path away from the workers still serving on it.
    """
    current_runtime.set(server.runtime)
    failure: StartupFailed | None = None
    try:
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            try:
                result = await nursery.start(
                    _run_shielded, server, listeners, shutdown, unlink_unix
                )
                if isinstance(result, StartupFailed):
                    failure = result
                else:
                    task_status.started(result)
                    await trio.sleep_forever()
            finally:
                # The caller's cancellation lands here, also during a startup: the
                # shielded task finishes starting, then sees this and shuts down.
                shutdown.set()
    finally:
        for listener in listeners:
            _close_listener(listener, unlink=unlink_unix)
    if failure is not None:
        raise failure


def _config_options(config: Config) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _make_runtime(config: Config) -> Runtime:
    """The process-wide runtime for ``memory``; a runtime of its own over Redis."""
    if config.backend == "memory":
        runtime = default_runtime()
        memory: Any = runtime.backend  # the process-wide store: the last server started sets it
        memory.configure_history(HistoryRule(*rule) for rule in config.history_rules)
        return runtime
    from .backends.redis import RedisBackend  # coredis is imported only when asked for

    backend = RedisBackend(config.backend)
    backend.configure_history(HistoryRule(*rule) for rule in config.history_rules)
    runtime = Runtime(backend)
    topics = runtime.hub.topics
    backend.count_local = lambda topic: len(topics.get(topic) or ())
    return runtime


@asynccontextmanager
async def _backend_running(runtime: Runtime) -> AsyncIterator[None]:
    """The backend's ``run()`` for the length of the block: it starts before lifespan and
    the listeners (Redis down -> BackendUnavailable, nothing listens) and stops, flushing
    queued writes, after lifespan shutdown and the last connection's release."""
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.backend.run, runtime.hub.deliver_local)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


async def _start_metrics(metrics: ServerMetrics, bind: str, nursery: trio.Nursery) -> None:
    """The metrics listener, bound before the app's listeners report ready (a port in
    use fails the start like the app's own would)."""
    from .metrics_http import serve_metrics

    address: BindAddress = await nursery.start(
        serve_metrics, metrics.arender, parse_metrics_bind(bind)
    )
    host = f"[{address.host}]" if ":" in address.host else address.host
    logger.info("Metrics on http://%s:%d/metrics", host, address.port)


def _close_listener(listener: socket.socket, *, unlink: bool) -> None:
    if listener.fileno() == -1:
        return
    path = listener.getsockname() if unlink and listener.family == _AF_UNIX else None
    trio.lowlevel.notify_closing(listener)
    listener.close()
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


async def _run_shielded(
    server: Server,
    listeners: list[socket.socket],
    shutdown: trio.Event,
    unlink_unix: bool,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Everything that must outlive the caller's cancellation for the grace period."""
    config = server.config
    with trio.CancelScope(shield=True):
        async with _backend_running(server.runtime), trio.open_nursery() as lifespan_nursery:
            lifespan_nursery.start_soon(server.batcher.run)
            lifespan_nursery.start_soon(server.runtime.hub.fanout.run)
            await lifespan_nursery.start(server.timers.run)
            if ReadinessHub.available():
                # Outlives every connection: this nursery closes after the connections'.
                server.readiness = ReadinessHub(busy_poll_us=config.busy_poll_us)
                lifespan_nursery.start_soon(server.readiness.run)
            if server.metrics is not None and server.metrics_socket is not None:
                from .metrics_workers import serve_snapshots

                await lifespan_nursery.start(
                    serve_snapshots, server.metrics.render, server.metrics_socket
                )
            elif server.metrics is not None and config.metrics_bind is not None:
                await _start_metrics(server.metrics, config.metrics_bind, lifespan_nursery)
            await lifespan_nursery.start(server.lifespan.run)
            try:
                server.lifespan.check_startup()
            except StartupFailed as exc:
                lifespan_nursery.cancel_scope.cancel()
                task_status.started(exc)
                return
            # The one shutdown budget: set when shutdown begins, shared by the connections
            # and then lifespan shutdown (inf until then; an accept loop that fails before
            # any shutdown leaves lifespan a full shutdown_timeout of its own).
            deadline = math.inf
            try:
                async with trio.open_nursery() as connections:
                    server.connections_nursery = connections
                    accept_scope = trio.CancelScope()

                    async def accept_all() -> None:
                        with accept_scope:
                            async with trio.open_nursery() as accepters:
                                for listener in listeners:
                                    accepters.start_soon(server.accept_loop, listener, connections)

                    connections.start_soon(accept_all)
                    task_status.started([bound_address(sock) for sock in listeners])
                    if trio.lowlevel.current_task().eventual_parent_nursery is not None:
                        # serve()'s caller was cancelled while we started (SIGINT during
                        # lifespan startup): Trio then leaves this task where it was, and
                        # nobody would ever set ``shutdown``.  That cancellation is it.
                        shutdown.set()
                    await shutdown.wait()
                    deadline = trio.current_time() + config.shutdown_timeout
                    accept_scope.cancel()
                    for listener in listeners:
                        _close_listener(listener, unlink=unlink_unix)
                    server.begin_shutdown()
                    # On the connections only: the lifespan task must outlive a response
                    # cut off at the deadline, to be told to shut down.
                    connections.cancel_scope.deadline = deadline
            finally:
                if deadline == math.inf:
                    deadline = trio.current_time() + config.shutdown_timeout
                with trio.CancelScope(shield=True):
                    await server.lifespan.shutdown(deadline)
                lifespan_nursery.cancel_scope.cancel()
