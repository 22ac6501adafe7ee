"""The Trio shell of one HTTP/1.1 connection (and the door to WebSocket).

The app runs inline in the connection's task, one request after another:
uvicorn makes a task per request, and not doing so is most of our HTTP
keep-alive margin.  ``receive()`` pulls body bytes from the parser, reading
the socket only when nothing is buffered; ``send()`` turns ASGI messages into
bytes with the sans-I/O ``ResponseEncoder`` and writes them at once.  Timers
are deadlines on cancel scopes, never extra tasks.

A request that asks to upgrade to WebSocket is handed, with the bytes that
followed its head, to :class:`~hornbeam_trio.ws_conn.WebSocketConnection`.

A client that leaves while its app is busy elsewhere (streaming from a quiet
``subscription()``, say) is noticed without a task of its own: on plain TCP
the connection is the readiness hub's watcher of its socket, and a hang-up
while the app runs ends the connection's context at once (its subscriptions
and ``subscription()`` iterators end, owned keys are undone).  It never reads
for the app: pipelined bytes stay in the kernel for the next request.  Without
the hub (TLS, in-memory streams, platforms without epoll) the departure is
seen at the app's next ``receive()`` or ``send()``.
"""

from __future__ import annotations

import logging
import socket
from math import inf
from typing import TYPE_CHECKING, Any

import trio

from .h2_conn import H2Connection
from .protocol import websocket as wsproto
from .protocol.http2 import PREFACE
from .protocol.http11 import (
    CONTINUE_RESPONSE,
    END_OF_MESSAGE,
    NEED_DATA,
    HTTPError,
    HTTPParser,
    Request,
    ResponseEncoder,
    loggable_path,
    simple_response,
)
from .runtime import ConnectionContext, current_connection
from .transport import Transport, TransportClosed
from .types import ASGI_VERSION, ClientDisconnected, ConnectionEnded
from .ws_conn import WebSocketConnection

if TYPE_CHECKING:
    from .readiness import ReadinessHub
    from .server_context import ServerContext
    from .timers import TimerSweeper
    from .types import Message, Scope

logger = logging.getLogger("hornbeam_trio")
access_logger = logging.getLogger("hornbeam_trio.access")

_DISCONNECT: Message = {"type": "http.disconnect"}

DRAIN_LIMIT = 65536
"""Unread request body skipped after a complete response to keep the connection;
a longer one (or one that stalls or breaks) closes it instead."""
HEAD_APART_AT = 32768
"""A streamed response's first chunk this large goes out after its head, not joined to
it: one more send() instead of copying the chunk (64 KiB of a 1 MiB response sent in
64 KiB chunks: ~66k instructions of memcpy, callgrind).  The bytes on the wire are
the same (``body(b"", True)`` then ``body(chunk, True)`` is ``body(chunk, True)``)."""

_ANSWERED = "the server already answered this request"
_GONE = "client went away"


HANGUP_PROBE_FIRST = 0.02
"""Seconds into a request at which, without the readiness hub, we first look whether its
client hung up; each later look waits twice as long, up to HANGUP_PROBE_MAX."""
HANGUP_PROBE_MAX = 1.0


class _HangupProbe:
    """Without the readiness hub (other platforms, the hub turned off): while an app runs,
    look now and then whether its client hung up, so a response that waits on a quiet
    topic (SSE) still releases what its connection owns.  A look is one non-blocking
    ``recv(MSG_PEEK)``: it reads nothing, and sees EOF or a reset, not pipelined bytes.

    The hub sees a hang-up at once; this sees it within twice the current interval: at
    most ~40 ms early in a request, a second for a response that has streamed for long.
    """

    __slots__ = ("conn", "interval", "sock", "timer_at", "timer_key", "timers")

    def __init__(self, conn: HTTPConnection, sock: socket.socket, timers: TimerSweeper) -> None:
        self.conn = conn
        self.sock = sock
        self.timers = timers
        self.interval = HANGUP_PROBE_FIRST
        self.timer_at = inf
        self.timer_key = 0

    def arm(self) -> None:
        """A request's app starts: look soon (unless a look is due already)."""
        if self.timer_at == inf:
            self.interval = HANGUP_PROBE_FIRST
            self.timers.schedule(self, self.timers.clock() + HANGUP_PROBE_FIRST)

    def on_timer(self, now: float) -> None:
        conn = self.conn
        if conn.idle or conn.closed_reason is not None:
            return  # armed again when the next request's app starts
        try:
            gone = self.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            gone = False
        except OSError:  # reset, or closed under us
            gone = True
        if gone:
            conn.client_left()
            return
        self.interval = min(self.interval * 2, HANGUP_PROBE_MAX)
        self.timers.schedule(self, now + self.interval)


class _HeadTimer:
    """A connection's wait for a request head, as a target of the server's TimerSweeper.

    Setting a Trio cancel scope's deadline costs a context manager per change, and
    keep-alive needed two changes per request: arm the time-out, then lift it before
    the app runs.  Here a connection only writes :attr:`deadline`; when its heap
    entry comes due, the timer task cancels the connection's scope if it is still
    waiting past its deadline, or moves the entry to the current deadline.  So a
    keep-alive connection costs a heap operation once per time-out period, not per
    request, and a wait times out at its deadline as a scope deadline would.
    """

    __slots__ = ("deadline", "scope", "timer_at", "timer_key", "timers")

    def __init__(self, timers: TimerSweeper) -> None:
        self.deadline = inf
        """When the current wait for a request head times out; inf when not waiting."""
        self.scope: trio.CancelScope | None = None
        """The connection's scope, cancelled on time-out."""
        self.timers = timers
        self.timer_at = inf
        self.timer_key = 0

    def on_timer(self, now: float) -> None:
        deadline = self.deadline
        if deadline <= now:
            if self.scope is not None:
                self.scope.cancel()
        elif deadline != inf:
            self.timers.schedule(self, deadline)


class HTTPConnection:
    """One client connection: requests in sequence, then maybe a WebSocket."""

    def __init__(
        self, server: ServerContext, transport: Transport, *, overloaded: bool = False
    ) -> None:
        self.server = server
        self.transport = transport
        self.overloaded = overloaded
        """Accepted beyond ``limit_concurrency``: its first request gets 503, then it closes."""
        config = server.config
        # A client that stops reading its response is dropped after ``timeout`` (slow read).
        transport.stall_timeout = config.request_timeout_s
        self.parser = HTTPParser(
            max_request_line_size=config.max_request_line_size,
            max_header_size=config.max_header_size,
            max_headers=config.max_headers,
            max_head_size=config.max_request_head_size,
            max_body_size=config.max_request_body_size,
        )
        self.idle = True
        """Between requests: shutdown may close us at once.  Otherwise a request is
        being served: its app runs (the hub's hang-up then means the client left)."""
        self.scope: trio.CancelScope | None = None
        self.context: ConnectionContext | None = None
        self.websocket: WebSocketConnection | None = None
        self.http2: H2Connection | None = None
        self.h2_received = b""
        """The h2c preface and what came with it, once the first read found it."""
        self.eof = False
        # A parse error found after complete pipelined requests waits until those
        # are answered.
        self.parse_error: HTTPError | None = None
        self.closed_reason: str | None = None
        """Why nothing more may be written: the server answered an error itself
        (400/408...: nothing may follow it on the wire), or the client left."""
        # Read once per connection, not per request (RequestCycle's hot path).
        self.request_timeout = config.request_timeout_s
        self.max_head_size = config.max_request_head_size
        self.access_log = config.access_log
        self.root_path = config.root_path
        self.scheme = server.http_scheme
        self.head_timer = _HeadTimer(server.timers)
        self.hub: ReadinessHub | None = getattr(transport, "hub", None)
        self.fd: int = getattr(transport, "fd", -1)
        self.hung_up: set[int] | frozenset[int] = frozenset()
        """The hub's set of sockets whose peer hung up (empty without the hub)."""
        if self.hub is not None:
            self.hub.watch(self.fd, self)
            self.hung_up = self.hub.hung_up
        sock = getattr(transport, "sock", None)
        self.hangup_probe: _HangupProbe | None = (
            _HangupProbe(self, sock, server.timers)
            if self.hub is None and isinstance(sock, socket.socket)
            else None
        )
        """Without the hub, on a plain socket: the client's hang-up seen while an app runs."""

    def on_readable(self) -> bool:
        """The readiness hub: the socket is readable and this task is not waiting on it.

        Never reads (pipelined bytes wait in the kernel for their turn): it only
        clears ``drained`` so the next ``recv()`` looks before it waits, since the
        hub keeps no "ready" mark for a watched socket.  A hang-up (FIN or reset)
        while an app runs is the client leaving.  Runs in the hub's task: never
        blocks or raises.
        """
        self.transport.drained = False  # type: ignore[attr-defined]
        if not self.idle and self.closed_reason is None and self.fd in self.hung_up:
            self.client_left()
        return False

    def client_left(self) -> None:
        """The client is gone while its app runs: end what the connection owns, now.

        Called wherever that is seen first: the hub's hang-up, EOF in ``receive()``,
        a failed write.  The app's ``subscription()`` loops end and its owned keys
        are undone; its ``receive()`` returns ``http.disconnect`` and its ``send()``
        raises ``ClientDisconnected``.  Half-closing (FIN after the request) counts
        as leaving, as in uvicorn.
        """
        self.eof = True
        if self.closed_reason is None:
            self.closed_reason = _GONE
        if self.context is not None:
            self.context.end()

    def _to_http2(self) -> H2Connection:
        """Hand the connection to HTTP/2 with the bytes read so far (preface included)."""
        if self.hub is not None:
            self.hub.unwatch(self.fd)
        self.parser = None  # type: ignore[assignment]
        h2 = H2Connection(
            self.server, self.transport, received=self.h2_received, overloaded=self.overloaded
        )
        self.h2_received = b""
        self.http2 = h2
        if self.server.shutting_down:
            h2.begin_shutdown()
        return h2

    def begin_shutdown(self) -> None:
        if self.http2 is not None:
            self.http2.begin_shutdown()
            return
        ws = self.websocket
        if ws is not None:
            ws.begin_shutdown()
        elif self.idle and self.scope is not None:
            self.scope.cancel()

    async def run(self) -> WebSocketConnection | H2Connection | None:
        """Serve requests; a WebSocket upgrade, or HTTP/2 by prior knowledge, is returned
        for the caller to run.

        The caller runs it, not this coroutine: one suspended frame fewer per idle
        WebSocket.
        """
        upgrade: Request | None = None
        # One context per connection, not per request: what an HTTP request owns
        # (owned=True state) is released when its connection closes.
        self.context = ConnectionContext(self.server.runtime, "http", self.server.config)
        token = current_connection.set(self.context)
        try:
            with trio.CancelScope() as scope:
                self.scope = self.head_timer.scope = scope
                try:
                    upgrade = await self._serve_requests()
                except TransportClosed:
                    pass
            self.scope = None
            # The deadline on that scope is the wait for a request head (see
            # _serve_requests): quiet between requests, 408 for a half-sent head.
            if (
                scope.cancelled_caught
                and not self.server.shutting_down
                and not self.parser.at_message_boundary
            ):
                await self._reject(HTTPError(408, "request timeout"))
        finally:
            self.head_timer.scope = None
            self.server.timers.forget(self.head_timer)
            if self.hangup_probe is not None:
                self.server.timers.forget(self.hangup_probe)
            current_connection.reset(token)
            self.context.release()
            self.context = None
        if self.h2_received:
            return self._to_http2()
        if upgrade is not None:
            # Outside the idle-close scope: a WebSocket is shut down with close 1001.
            ws = await self._upgrade(upgrade)
            if ws is not None:
                return ws
        await self.transport.close()
        return None

    async def _next_event(self, timeout: float | None) -> Any:
        """The parser's next event, reading the socket as needed (None: connection over)."""
        parser = self.parser
        event = parser.next_event()
        if event is not NEED_DATA:
            return event
        deadline = trio.current_time() + timeout if timeout else float("inf")
        while event is NEED_DATA:
            if self.parse_error is not None:
                await self._reject(self.parse_error)
                return None
            if self.eof:
                return None
            if parser.more:
                await self.resume_parsing()
                event = parser.next_event()
                continue
            if timeout is None:  # the caller's scope carries the deadline (_serve_requests)
                data = await self.transport.recv()
                timer = None
            else:
                with trio.move_on_at(deadline) as timer:
                    data = await self.transport.recv()
            if timer is not None and timer.cancelled_caught:
                if parser.at_message_boundary:
                    return None  # keep-alive expired quietly
                await self._reject(HTTPError(408, "request timeout"))
                return None
            self.feed(data)
            event = parser.next_event()
        return event

    def feed(self, data: bytes) -> None:
        """Bytes read from the client (``b""``: EOF) to the parser.  A malformed request
        is kept in ``parse_error``: the requests completed before its bytes keep their
        queued events and are answered first; the error is answered when they are used up.
        """
        if not data:
            self.eof = True
        try:
            self.parser.feed(data)
        except HTTPError as exc:
            self.parse_error = exc

    async def resume_parsing(self) -> None:
        """Parse the next slice of a read of short lines (``parser.more``), after a
        checkpoint: other connections run between slices (see http11.LINES_PER_STEP)."""
        await trio.lowlevel.checkpoint()
        try:
            self.parser.resume()
        except HTTPError as exc:
            self.parse_error = exc  # answered once the requests before it are

    async def _reject(self, error: HTTPError) -> None:
        if self.closed_reason is not None:
            return  # answered already, or nobody to answer
        self.closed_reason = _ANSWERED
        headers: list[tuple[bytes, bytes]] = []
        if error.status == 503:
            headers.append((b"retry-after", b"1"))
            logger.info(
                "refused %s: over --limit-concurrency=%s (503)",
                self.transport.client,
                self.server.config.limit_concurrency,
            )
        else:
            logger.info(
                "bad request from %s: %s (%d)", self.transport.client, error.reason, error.status
            )
        try:
            await self.transport.send_all(
                simple_response(error.status, error.reason.encode(), headers=headers)
            )
        except TransportClosed:
            pass

    async def _serve_requests(self) -> Request | None:
        """Answer requests until the connection is done; returns a WebSocket upgrade request.

        The wait for each request head is the hot path of keep-alive: instead of a new
        cancel scope per wait, the server's timer task cancels the connection's own
        scope (run()'s) when the wait lasts too long; then run() answers (or not) and
        closes.  The wait is inlined here, not a coroutine of its own: each level of
        the coroutine chain is crossed twice by every wakeup.
        """
        server = self.server
        timers = server.timers
        timer = self.head_timer
        parser = self.parser
        events = parser.events  # parser.next_event(), inlined: popped here
        transport = self.transport
        timeout = server.config.request_timeout_s  # the first head; then keepalive
        keepalive = server.config.keepalive
        first = True
        # The connection's first read decides: HTTP/2 by prior knowledge (h2c), or not.
        # Over TLS, ALPN decided before this connection was made.
        sniff = server.config.http2 and not transport.scheme_secure
        while not server.shutting_down or first:
            self.idle = True
            if events:
                event = events.popleft()
            else:
                if timeout:
                    timer.deadline = deadline = timers.clock() + timeout
                    if deadline < timer.timer_at:
                        timers.schedule(timer, deadline)
                try:
                    while True:
                        if self.parse_error is not None:
                            await self._reject(self.parse_error)
                            return None
                        if self.eof:
                            return None
                        if parser.more:
                            await self.resume_parsing()
                            if events:
                                event = events.popleft()
                                break
                            continue
                        data = await transport.recv()
                        if sniff:
                            sniff = False
                            if data[:1] == b"P":  # no HTTP/1.1 method starts "PRI "
                                data = await self._read_preface(data)
                                if data.startswith(PREFACE):
                                    self.h2_received = data
                                    return None
                        # feed(), inlined: once per request.
                        if not data:
                            self.eof = True
                        try:
                            parser.feed(data)
                        except HTTPError as exc:
                            self.parse_error = exc  # answered once the requests before it are
                        if events:
                            event = events.popleft()
                            break
                finally:
                    timer.deadline = inf
            if first:
                first = False
                timeout = keepalive
            if not isinstance(event, Request):
                await self._reject(HTTPError(400, "unexpected data"))
                return None
            self.idle = False
            if self.hangup_probe is not None:
                self.hangup_probe.arm()
            if self.overloaded:
                # Before the app runs, WebSocket handshakes included: answer 503 and close.
                await self._reject(HTTPError(503, "service unavailable"))
                return None
            if event.upgrade is not None:  # WebSocket: any other offer was declined
                return event
            cycle = RequestCycle(self, event)
            await cycle.run()
            if not cycle.reuse or self.eof:
                return None
        return None

    async def _read_preface(self, data: bytes) -> bytes:
        """Read on while ``data`` could still become the HTTP/2 preface (it rarely comes
        split); the bytes read, for HTTP/1.1's parser if they are not the preface."""
        while len(data) < len(PREFACE) and PREFACE.startswith(data):
            more = await self.transport.recv()
            if not more:
                break
            data += more
        return data

    async def _upgrade(self, request: Request) -> WebSocketConnection | None:
        """Validate the handshake; the connection to run, or None once refused."""
        server = self.server
        if self.hub is not None:
            self.hub.unwatch(self.fd)
        try:
            key = wsproto.check_handshake(request.method, request.headers)
            wsproto.check_origin(request.headers, server.config.websocket_allowed_origins)
        except wsproto.HandshakeError as exc:
            if exc.status == 403:
                logger.info("WebSocket handshake from %s refused: %s", self.transport.client, exc)
            try:
                await self.transport.send_all(
                    simple_response(exc.status, exc.reason.encode(), headers=exc.headers)
                )
            except TransportClosed:
                pass
            return None
        # A WebSocket has its own bounds on a peer that stops reading (slow-consumer
        # policy, pings and the idle timeout), and its writes are not per response.
        self.transport.stall_timeout = None
        ws = WebSocketConnection.for_request(
            server, request, self.transport, key=key, tail=self.parser.upgrade_tail
        )
        # The HTTP parser is done for good: a long-lived WebSocket need not hold it.
        self.parser = None  # type: ignore[assignment]
        self.websocket = ws
        return ws


class RequestCycle(ResponseEncoder):
    """One request/response: the ASGI ``receive`` and ``send`` of an ``http`` scope.

    It is its own response's :class:`ResponseEncoder` (``start``, ``body``,
    ``started``, ``complete``, and ``keep_alive``: what the response allows) rather
    than holding one: one object per request, not two.  Whether the connection goes
    on after it is :attr:`reuse`.
    """

    __slots__ = ("body_done", "conn", "request", "reuse", "status", "written")

    def __init__(self, conn: HTTPConnection, request: Request) -> None:
        ResponseEncoder.__init__(self, request)
        self.conn = conn
        self.request = request
        self.body_done = False
        self.reuse = request.keep_alive
        """The connection may serve another request after this one (final after run())."""
        self.status = 0
        self.written = False

    async def run(self) -> None:
        conn = self.conn
        server = conn.server
        request = self.request
        transport = conn.transport
        root_path = conn.root_path
        # Server.base_scope, inlined: one dict literal per request.
        scope: Scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": request.http_version,
            "scheme": conn.scheme,
            "path": root_path + request.path if root_path else request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "root_path": root_path,
            "headers": request.headers,
            "client": transport.client,
            "server": transport.server,
            "method": request.method,
        }
        lifespan = server.lifespan
        if lifespan.supported:
            scope["state"] = lifespan.state.copy()
        hung_up = conn.hung_up
        if hung_up and conn.fd in hung_up:  # it hung up before its app started: no edge to come
            conn.client_left()
        try:
            await server.app(scope, self.receive, self.send)
        except ClientDisconnected:
            self.reuse = False
        except Exception as exc:
            self.reuse = False
            if isinstance(exc, ConnectionEnded) and conn.closed_reason is _GONE:
                pass  # an owned write after its client left: the normal end of such an app
            else:
                logger.exception(
                    "HTTP app raised (%s %s)", request.method, loggable_path(request.raw_path)
                )
                server.report_app_error(exc)
                if not self.written and conn.closed_reason is None:
                    await self._write(simple_response(500, b"Internal Server Error"))
                    self.status = 500
                    return
        if not self.complete:
            if not self.written and conn.closed_reason is None:  # no 500 after our own 408/400
                logger.error(
                    "HTTP app returned without a complete response (%s)",
                    loggable_path(request.raw_path),
                )
                await self._write(simple_response(500, b"Internal Server Error"))
                self.status = 500
            self.reuse = False
        else:
            self.reuse = self.reuse and self.keep_alive
        if self.reuse and not self.body_done:
            if request.expect_continue:
                # No "100 Continue" was sent, so the client may never send the body:
                # waiting to skip it would stall.
                self.reuse = False
            elif (events := conn.parser.events) and events[0] is END_OF_MESSAGE:
                # conn.parser.skip_end_of_message(), inlined: one call fewer per request.
                events.popleft()
                self.body_done = True  # no body (or all read): no coroutine to drain it
            else:
                self.reuse = await self._drain_body(DRAIN_LIMIT)
        if conn.access_log:
            client = transport.client
            access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{client[0]}:{client[1]}" if client else "-",
                request.method,
                loggable_path(request.raw_path),
                request.http_version,
                self.status,
            )

    async def _drain_body(self, limit: int) -> bool:
        """Skip the unread body so the next request parses; True if it ended in ``limit`` bytes.

        The app's response is complete, so nothing more may be answered for this
        request: a body that stalls past the timeout, turns out malformed or runs
        past ``limit`` closes the connection quietly, never with a 408 or 400
        after the app's response.
        """
        conn = self.conn
        parser = conn.parser
        timeout = conn.request_timeout or inf
        seen = 0
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                if conn.parse_error is not None or conn.eof:
                    return False
                if parser.more:
                    await conn.resume_parsing()
                    continue
                with trio.move_on_after(timeout) as timer:
                    data = await conn.transport.recv()
                if timer.cancelled_caught:
                    return False
                # Bad bytes of this body: the connection closes (above).  A malformed
                # request after it: answered in its turn, after this body's end.
                conn.feed(data)
                continue
            if event is END_OF_MESSAGE:
                self.body_done = True
                return True
            seen += len(event)  # type: ignore[arg-type]
            if seen > limit:
                return False

    async def _write(self, data: bytes) -> None:
        reason = self.conn.closed_reason
        if reason is not None:
            # receive() timed out or hit a bad chunk and the server answered (408/400),
            # or the client left.
            raise ClientDisconnected(reason)
        try:
            await self.conn.transport.send_all(data)
        except TransportClosed:
            self.conn.client_left()
            raise ClientDisconnected(_GONE) from None

    async def receive(self) -> Message:
        if self.body_done:
            if self.complete or self.conn.eof:
                await trio.lowlevel.checkpoint()
                return _DISCONNECT
            return await self._wait_disconnect()
        request = self.request
        if request.expect_continue and not self.started:
            request.expect_continue = False
            await self._write(CONTINUE_RESPONSE)
        conn = self.conn
        events = conn.parser.events
        # A body the parser holds already is popped here: no _next_event() coroutine.
        event = events.popleft() if events else await conn._next_event(conn.request_timeout)
        if event is None:
            self.body_done = True
            self.reuse = False
            return _DISCONNECT
        if event is END_OF_MESSAGE:
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # The parser hands out what one read completed as one chunk; the end of the
        # body read with it goes in the same message (skip_end_of_message(), inlined).
        if events and events[0] is END_OF_MESSAGE:
            events.popleft()
            self.body_done = True
            return {"type": "http.request", "body": event, "more_body": False}
        return {"type": "http.request", "body": event, "more_body": True}

    async def _wait_disconnect(self) -> Message:
        """After the body: block until the client goes away (long-poll / streaming apps).

        Reads on, so that the client's leaving is seen however it comes (EOF, reset).
        Pipelined requests read meanwhile are parsed and kept for their turn.  At most
        ``max_request_head_size`` bytes are read here, kept or dropped; past that the
        connection closes after this response instead of serving what follows, and,
        with the readiness hub, reads nothing more: the hub's hang-up (FIN or reset)
        is the disconnect.  So a client that streams bytes at a waiting app (after a
        declined ``Upgrade``, say) costs neither memory nor CPU.  Without the hub the
        bytes are read and dropped, to see the end of the stream.
        """
        conn = self.conn
        parser = conn.parser
        budget = conn.max_head_size - parser.buffered  # counted once per call, not per read
        while True:
            if parser.more and self.reuse and conn.parse_error is None:
                await conn.resume_parsing()  # a pipelined read of short lines
                continue
            if budget < 0 and conn.hub is not None:
                return await self._wait_hangup(conn.hub)
            try:
                data = await conn.transport.recv()
            except TransportClosed:
                data = b""
            if not data:
                conn.client_left()
                self.reuse = False
                return _DISCONNECT
            budget -= len(data)
            if budget < 0:
                self.reuse = False  # over the budget: nothing after this response is served
            if not self.reuse or conn.parse_error is not None or parser.more:
                continue  # nothing after this response is served: not kept
            conn.feed(data)  # pipelined next request: kept for its turn, after this response

    async def _wait_hangup(self, hub: ReadinessHub) -> Message:
        """Read nothing more; wake on readiness only to see whether the client left.

        Edge-triggered: one wakeup per arrival until the kernel's receive buffer is
        full and the client's sends block, then none.  A client that closes with
        unsent bytes behind that full window is seen when its kernel resets.
        """
        conn = self.conn
        fd = conn.fd
        try:
            while fd not in hub.hung_up:
                await hub.wait_readable(fd)
        except trio.ClosedResourceError:
            pass  # closed locally (the server is aborting it)
        conn.client_left()
        self.reuse = False
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.complete:
                raise RuntimeError("http.response.body after the response completed")
            chunk = message.get("body", b"")
            more_body = message.get("more_body", False)
            if more_body and not self.written and len(chunk) >= HEAD_APART_AT:
                self.written = True
                await self._write(self.body(b"", True))  # the head alone (see HEAD_APART_AT)
            data = self.body(chunk, more_body)
            if data:
                self.written = True
                # self._write(data), inlined, and send_all() in its halves: no coroutine
                # per response when the kernel takes it at once.
                conn = self.conn
                if conn.closed_reason is not None:
                    raise ClientDisconnected(conn.closed_reason)
                transport = conn.transport
                try:
                    sent = transport.send_nowait(data)
                    if sent != len(data):
                        await transport.send_rest(data, sent)
                except TransportClosed:
                    conn.client_left()
                    raise ClientDisconnected(_GONE) from None
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.start(self.status, message.get("headers", ()))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an http scope")
