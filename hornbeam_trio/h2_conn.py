"""The Trio shell of one HTTP/2 connection: a reader task and a task per stream.

The connection's task reads the socket and feeds the sans-I/O
:class:`~hornbeam_trio.protocol.http2.H2Protocol`; each request it reports
becomes an :class:`H2Stream` running the app in the connection's nursery, so a
slow or crashed app holds up only its own stream.  Every write goes through
:meth:`H2Connection.flush` under one FIFO lock: the frames the core queued leave
in the order it queued them.  A stream's ``send()`` of a body in progress
returns once its bytes are with the kernel (the peer's TCP window is the
backpressure, as on HTTP/1.1); the last frame of a response is left to the
connection's writer task (:meth:`H2Connection.flush_soon`), which writes once
per scheduler pass for every stream that finished in it, so the app returns at
once and the streams one read started share one write.

Flow control both ways: a stream's body goes out only as far as the peer's
windows allow (its ``send()`` waits for WINDOW_UPDATE), and received body bytes
are acknowledged when the app reads them, so a stream's unread body is bounded
by its window.

Hostile input is bounded in the sans-I/O core (floods: GOAWAY(ENHANCE_YOUR_CALM));
here only time and writing: the reader writes everything one read provoked before it
reads again, and waits its turn behind the streams' writes, so a client that does not
read our answers (PING ACKs, SETTINGS ACKs, RST_STREAMs) stops being read: unsent
output stays within what one read can provoke, the kernel's buffers hold the rest, and
the transport's stall timeout (``--timeout``) drops the client.  The reader's one
cancel scope carries the earliest of its deadlines: the client preface (``--timeout``
from the start), the idle timeout, and the request bodies' (``--timeout`` without
progress: 408 or RST_STREAM).

Ending: the peer's EOF, a connection error (the core queued GOAWAY), the idle
timeout (``keepalive`` seconds with no stream), or a graceful shutdown: GOAWAY
at once, the streams in flight finish (the server's ``shutdown_timeout``
cancels what is left), then the final GOAWAY and close.  A stream's end
(``H2Stream.run``'s finally) is the one place its state is released.

An extended CONNECT (RFC 8441) starts an ``h2_ws.H2WebSocket`` instead of an
:class:`H2Stream`: the same place in ``streams``, the same news from the reader,
and a WebSocket connection running over it.
"""

from __future__ import annotations

import logging
from collections import deque
from math import inf
from typing import TYPE_CHECKING

import trio

from .h2_ws import H2WebSocket
from .protocol import http2
from .protocol.http11 import loggable_path
from .runtime import ConnectionContext, current_connection
from .transport import Transport, TransportClosed
from .types import ClientDisconnected

if TYPE_CHECKING:
    from .server_context import ServerContext
    from .types import Message

logger = logging.getLogger("hornbeam_trio")
access_logger = logging.getLogger("hornbeam_trio.access")

_DISCONNECT: Message = {"type": "http.disconnect"}
_GONE = "client went away"


class H2Connection:
    """One HTTP/2 connection (h2 by ALPN over TLS, or h2c by prior knowledge)."""

    def __init__(
        self,
        server: ServerContext,
        transport: Transport,
        *,
        received: bytes = b"",
        overloaded: bool = False,
    ) -> None:
        self.server = server
        self.transport = transport
        self.received = received
        """Bytes read before we knew this was HTTP/2 (the h2c preface and what followed)."""
        self.overloaded = overloaded
        """Accepted beyond ``limit_concurrency``: each request gets 503, then GOAWAY."""
        config = server.config
        transport.stall_timeout = config.request_timeout_s
        self.proto = http2.H2Protocol(
            max_concurrent_streams=config.http2_max_concurrent_streams,
            max_request_line_size=config.max_request_line_size,
            max_header_size=config.max_header_size,
            max_headers=config.max_headers,
            max_head_size=config.max_request_head_size,
            max_body_size=config.max_request_body_size,
            body_timeout=config.request_timeout_s,
            clock=trio.current_time,
        )
        timeout = config.request_timeout_s
        self.preface_deadline = trio.current_time() + timeout if timeout else inf
        """Until the client's preface and first SETTINGS have arrived."""
        self.streams: dict[int, H2Stream | H2WebSocket] = {}
        self.write_lock = trio.StrictFIFOLock()
        self.nursery: trio.Nursery | None = None
        self.read_scope: trio.CancelScope | None = None
        self.keepalive = config.keepalive
        self.idle_deadline = trio.current_time() + self.keepalive if self.keepalive else inf
        self.lost = False
        """The transport is gone (EOF, reset, connection error): no stream can write."""
        self.writer: trio.lowlevel.Task | None = None
        """The writer task while it is parked (``flush_soon`` wakes it)."""
        self.context: ConnectionContext | None = None

    def begin_shutdown(self) -> None:
        """GOAWAY now (from the reader task); streams in flight go on to their end."""
        self.proto.go_away()
        for stream in self.streams.values():
            stream.begin_shutdown()
        if self.read_scope is not None:
            self.read_scope.cancel()

    async def run(self) -> None:
        self.context = ConnectionContext(self.server.runtime, "http", self.server.config)
        token = current_connection.set(self.context)
        try:
            self.proto.initiate()
            if self.server.shutting_down:
                self.proto.go_away()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._write_loop, name="hornbeam_trio h2 writer")
                try:
                    await self._read_loop()
                except TransportClosed:
                    pass
                self._lose()
        finally:
            current_connection.reset(token)
            self.context.release()
            self.context = None
            await self.transport.close()

    def _lose(self) -> None:
        """Nothing more can be written: every stream's app sees a disconnect."""
        self.lost = True
        self.flush_soon()  # the writer's last round
        if self.context is not None:
            self.context.end()
        for stream in self.streams.values():
            stream.gone = True
            stream.wake()

    async def _read_loop(self) -> None:
        proto = self.proto
        transport = self.transport
        data = self.received
        self.received = b""
        if data:
            if not await self._feed(data):
                return
        else:
            await self.flush()  # our SETTINGS go first
        while True:
            if proto.going_away and not self.streams:
                proto.close()
                await self.flush()
                return
            with trio.CancelScope() as scope:
                scope.deadline = self._deadline()
                self.read_scope = scope
                data = await transport.recv()
            self.read_scope = None
            if scope.cancelled_caught:
                now = trio.current_time()
                if not proto.preface_done and now >= self.preface_deadline:
                    logger.info("no HTTP/2 preface from %s in time: closed", transport.client)
                    return
                for late in proto.expired():
                    self._reject(late)
                if not self.streams and now >= self.idle_deadline:
                    proto.go_away()  # idle: the loop's top closes
                await self.flush()  # a GOAWAY from begin_shutdown, 408s
                continue
            if not data:
                return
            if not await self._feed(data):
                return

    def _deadline(self) -> float:
        """When the reader must wake without input: the earliest deadline running."""
        deadline = self.proto.next_deadline()
        if not self.streams:
            deadline = min(deadline, self.idle_deadline)
        if not self.proto.preface_done:
            deadline = min(deadline, self.preface_deadline)
        return deadline

    def body_deadline_armed(self) -> None:
        """A stream's app read all its body so far: its deadline runs again."""
        if self.read_scope is not None:
            self.read_scope.deadline = min(self.read_scope.deadline, self.proto.next_deadline())

    async def _feed(self, data: bytes) -> bool:
        """Handle ``data``; False: a connection error was answered, close."""
        try:
            events = self.proto.receive_data(data)
        except http2.Flood as exc:
            logger.info("HTTP/2 flood from %s: %s (ENHANCE_YOUR_CALM)", self.transport.client, exc)
            await self.flush()  # the GOAWAY
            return False
        except http2.ProtocolError as exc:
            logger.info("HTTP/2 connection error from %s: %s", self.transport.client, exc)
            await self.flush()  # the core queued the GOAWAY
            return False
        for event in events:
            if isinstance(event, http2.BodyReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.proto.acknowledge(event.stream_id, event.flow_length)
                else:
                    stream.chunks.append((event.data, event.flow_length))
                    stream.wake()
            elif isinstance(event, http2.RequestReceived):
                self._start_stream(event)
            elif isinstance(event, http2.BodyEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body_done = True
                    stream.wake()
            elif isinstance(event, http2.WindowOpened):
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.wake()
                else:
                    for stream in self.streams.values():
                        stream.wake()
            elif isinstance(event, http2.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.gone = True
                    stream.wake()
            elif isinstance(event, http2.RequestRejected):
                self._reject(event)
            # ConnectionLost (the peer's GOAWAY): streams in flight finish; EOF ends us.
        await self.flush()
        return True

    def _start_stream(self, event: http2.RequestReceived) -> None:
        if self.overloaded:
            logger.info(
                "refused %s: over --limit-concurrency=%s (503)",
                self.transport.client,
                self.server.config.limit_concurrency,
            )
            self._answer(event.stream_id, 503, b"service unavailable", [(b"retry-after", b"1")])
            self.proto.go_away()
            return
        stream: H2Stream | H2WebSocket
        stream = H2Stream(self, event) if event.protocol is None else H2WebSocket(self, event)
        self.streams[event.stream_id] = stream
        assert self.nursery is not None
        self.nursery.start_soon(stream.run, name="hornbeam_trio h2 stream")

    def _reject(self, event: http2.RequestRejected) -> None:
        logger.info(
            "bad request from %s: %s (%d)", self.transport.client, event.reason, event.status
        )
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            # Its body broke a limit while its app ran.
            stream.gone = True
            stream.wake()
            if stream.head_sent:
                self.proto.reset(event.stream_id, http2.ErrorCode.CANCEL)
                return
            stream.answered = True
        self._answer(event.stream_id, event.status, event.reason.encode())

    def _answer(
        self,
        stream_id: int,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """A complete response of the server's own; the request's rest is refused.

        Its body goes only if the client's windows take it now (a few bytes: they almost
        always do); else the head alone ends the stream, with no body: the answer is
        never left half sent, and never waits for a window.
        """
        proto = self.proto
        try:
            if proto.sendable(stream_id, len(body)) < len(body):
                body = b""
            head = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                *(headers or ()),
            ]
            proto.send_headers(stream_id, http2.response_block(status, head), end_stream=not body)
            if body:
                proto.send_data(stream_id, body, end_stream=True)
        except http2.ProtocolError:
            return  # the peer reset it meanwhile
        # RFC 9113 8.1: a response before the request's end, then RST_STREAM NO_ERROR.
        self.proto.reset(stream_id, http2.ErrorCode.NO_ERROR)

    def stream_done(self, stream: H2Stream | H2WebSocket) -> None:
        """Release what the stream held; the connection may now be idle or finished."""
        del self.streams[stream.stream_id]
        self.proto.forget(stream.stream_id)
        for _, flow in stream.chunks:
            self.proto.acknowledge(stream.stream_id, flow)
        stream.chunks.clear()
        if not self.streams:
            if self.keepalive:
                self.idle_deadline = trio.current_time() + self.keepalive
            if self.read_scope is not None:
                if self.proto.going_away:
                    self.read_scope.cancel()  # the last stream after GOAWAY: close
                else:
                    self.read_scope.deadline = self.idle_deadline

    async def flush(self) -> None:
        """Write what the core queued; return once every byte queued before the call is
        with the kernel.  Raises TransportClosed.

        The caller first yields, so the streams one read started (or one WINDOW_UPDATE
        woke) all queue their frames before the first of them writes: one write carries
        them all; the others find nothing left and no write in progress, and return.
        A write in progress may hold the caller's bytes: the caller waits its turn.
        """
        await trio.lowlevel.checkpoint()
        lock = self.write_lock
        if lock.locked():
            async with lock:
                data = self.proto.data_to_send()
                if data:
                    await self.transport.send_all(data)
            return
        data = self.proto.data_to_send()
        if data:
            lock.acquire_nowait()
            try:
                await self.transport.send_all(data)
            finally:
                lock.release()

    def flush_soon(self) -> None:
        """Have the writer task write what is queued, after the current scheduler pass:
        for a caller that need not wait for the kernel (a complete response: its app
        may return at once) or cannot await (a WebSocket's accept or abort).  One write
        then carries what every stream of the pass queued."""
        task = self.writer
        if task is not None:
            self.writer = None
            trio.lowlevel.reschedule(task)

    async def _write_loop(self) -> None:
        """The writer task: parked until :meth:`flush_soon`; writes until nothing is
        queued, and once more after the connection is lost (what the streams had queued
        before the client's EOF), then ends."""
        while True:
            if not self.proto.pending:
                if self.lost:
                    return
                self.writer = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_writer)
            try:
                await self.flush()
            except TransportClosed:
                self._lose()
                return

    def _abort_writer(self, _: object) -> trio.lowlevel.Abort:
        self.writer = None
        return trio.lowlevel.Abort.SUCCEEDED


class H2Stream:
    """One request/response: the ASGI ``receive`` and ``send`` of an ``http`` scope."""

    __slots__ = (
        "answered",
        "body_done",
        "body_read",
        "chunks",
        "complete",
        "conn",
        "gone",
        "head",
        "head_sent",
        "request",
        "status",
        "stream_id",
        "wakeup",
    )

    def __init__(self, conn: H2Connection, request: http2.RequestReceived) -> None:
        self.conn = conn
        self.request = request
        self.stream_id = request.stream_id
        self.chunks: deque[tuple[bytes, int]] = deque()
        """Received body chunks not yet read by the app, with their flow-controlled sizes."""
        self.body_done = request.end_stream
        """The request body has ended (the last chunk may still be in ``chunks``)."""
        self.body_read = False
        """The app has had the body's last message."""
        self.gone = False
        """Reset by the peer, the connection lost, or answered by the server itself."""
        self.answered = False
        """The server answered this stream itself (413): no 500 after it."""
        self.head: bytes | None = None
        """The response head, HPACK-encoded, until it goes with the first body."""
        self.head_sent = False
        self.complete = False
        self.status = 0
        self.wakeup: trio.Event | None = None
        """What ``_wait`` waits on; None until the stream first waits (most never do)."""

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    def begin_shutdown(self) -> None:
        """Nothing: a request in flight finishes within the shutdown timeout."""

    async def _wait(self) -> None:
        """Until the reader reports news for this stream.  Callers check their condition
        first; nothing awaits between that check and this, so no wake is lost."""
        event = self.wakeup = trio.Event()
        await event.wait()

    async def run(self) -> None:
        conn = self.conn
        server = conn.server
        request = self.request
        transport = conn.transport
        scope = server.base_scope(request, transport, "http")
        scope["method"] = request.method
        try:
            try:
                await server.app(scope, self.receive, self.send)
            except ClientDisconnected:
                pass
            except Exception as exc:
                logger.exception(
                    "HTTP app raised (%s %s)", request.method, loggable_path(request.raw_path)
                )
                server.report_app_error(exc)
                await self._fail()
            else:
                # A stream its client reset (gone) has no one to answer: the app that
                # returns after http.disconnect did right, as over HTTP/1.1.
                if not self.complete and not self.answered and not self.gone:
                    logger.error(
                        "HTTP app returned without a complete response (%s)",
                        loggable_path(request.raw_path),
                    )
                    await self._fail()
            if self.complete and not self.body_done and not self.gone:
                # RFC 9113 8.1: the response is complete; the unread body is not wanted.
                conn.proto.reset(self.stream_id, http2.ErrorCode.NO_ERROR)
                conn.flush_soon()
        except ClientDisconnected:
            pass  # the connection is gone; the reader ends it
        finally:
            conn.stream_done(self)
        if server.config.access_log:
            client = transport.client
            access_logger.info(
                '%s - "%s %s HTTP/2" %d',
                f"{client[0]}:{client[1]}" if client else "-",
                request.method,
                loggable_path(request.raw_path),
                self.status,
            )

    async def _fail(self) -> None:
        """The app failed: 500 if nothing was sent, else RST_STREAM (INTERNAL_ERROR)."""
        if self.gone or self.complete:
            return
        proto = self.conn.proto
        if self.head_sent:
            proto.reset(self.stream_id, http2.ErrorCode.INTERNAL_ERROR)
        else:
            self.status = 500
            head = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
            try:
                proto.send_headers(self.stream_id, http2.response_block(500, head))
                proto.send_data(self.stream_id, b"Internal Server Error", end_stream=True)
            except http2.ProtocolError:
                return  # the peer reset it meanwhile
            self.complete = True
        await self._flush()

    async def _flush(self) -> None:
        try:
            await self.conn.flush()
        except TransportClosed:
            self.conn._lose()
            raise ClientDisconnected(_GONE) from None

    async def receive(self) -> Message:
        while True:
            if self.gone:
                await trio.lowlevel.checkpoint()
                return _DISCONNECT
            if self.chunks:
                data, flow = self.chunks.popleft()
                self.conn.proto.acknowledge(self.stream_id, flow)
                if not self.body_done:
                    self.conn.body_deadline_armed()
                more = not (self.body_done and not self.chunks)
                self.body_read = not more
                if flow:
                    try:
                        await self.conn.flush()  # the WINDOW_UPDATE, when the core made one
                    except TransportClosed:
                        self.conn._lose()
                else:
                    await trio.lowlevel.checkpoint()
                return {"type": "http.request", "body": data, "more_body": more}
            if self.body_done and not self.body_read:
                self.body_read = True
                await trio.lowlevel.checkpoint()
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.body_read and self.complete:
                await trio.lowlevel.checkpoint()
                return _DISCONNECT
            await self._wait()  # more body, or (all read) the client leaving

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self.head is None and not self.head_sent:
                raise RuntimeError("http.response.body before http.response.start")
            if self.complete:
                raise RuntimeError("http.response.body after the response completed")
            await self._send_body(bytes(message.get("body", b"")), message.get("more_body", False))
        elif kind == "http.response.start":
            if self.head is not None or self.head_sent:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            # Validated now, as on HTTP/1.1: a bad header is the app's error, 500.
            self.head = http2.encode_response_head(self.status, message.get("headers", ()))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an http scope")

    async def _send_body(self, data: bytes, more_body: bool) -> None:
        if self.gone:
            raise ClientDisconnected(_GONE)
        conn = self.conn
        proto = conn.proto
        stream_id = self.stream_id
        if self.request.method == "HEAD":
            data = b""
        try:
            if not self.head_sent:
                assert self.head is not None
                self.head_sent = True
                proto.send_head(stream_id, self.head, end_stream=not data and not more_body)
                self.head = None
                if not data and not more_body:
                    self.complete = True
                    conn.flush_soon()
                    return
            total = len(data)
            offset = 0
            while offset < total:
                size = proto.send_body(stream_id, data, offset, end_stream=not more_body)
                if not size:
                    await self._flush()  # what is queued goes before we wait
                    if self.gone:
                        raise ClientDisconnected(_GONE)
                    # The flush may have let the reader open the window: look again
                    # before waiting, or its wake-up would be lost.
                    if not proto.sendable(stream_id, 1):
                        await self._wait()
                    continue
                offset += size
                if offset == total and not more_body:
                    self.complete = True
                    conn.flush_soon()  # the response is whole: the app need not wait
                else:
                    await self._flush()  # the peer's TCP window is the backpressure
            if not more_body and not self.complete:
                proto.end_stream(stream_id)
                self.complete = True
                conn.flush_soon()
        except http2.ProtocolError:
            # The core refuses frames on a stream the peer reset meanwhile (StreamClosed).
            self.gone = True
            raise ClientDisconnected(_GONE) from None
