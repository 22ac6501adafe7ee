"""WebSocket over an HTTP/2 stream (RFC 8441): the stream as the WebSocket's transport.

An extended CONNECT (``:protocol websocket``) becomes an :class:`H2WebSocket`
in its connection's ``streams``, running in the connection's nursery like any
request.  It hands the very ``WebSocketConnection`` that HTTP/1.1 upgrades run
(``server.websocket_class``) two things:

* itself as the ``Transport``: ``recv`` is the stream's DATA, given back to the
  peer's window as the connection reads it (so the app's pace, through the
  WebSocket's reader, is the peer's flow control); ``send_all``/``send_some`` are
  DATA within the peer's windows; ``close`` is END_STREAM, ``abort`` RST_STREAM.
  No byte is written without a frame around it, so nothing here can interleave
  with another stream's frames: ``H2Connection.flush`` writes whole frames.
* an :class:`H2Reply` to answer the handshake: 200 HEADERS to accept, the
  same statuses as HTTP/1.1 to refuse (403, 500, 503, the app's own denial).

So pub/sub, owned state, close codes, limits, timeouts and permessage-deflate
are those of HTTP/1.1, and the connection's one release point
(``WebSocketConnection._end``/``release``) covers a stream reset (the reader's
``recv`` raises TransportClosed) and a lost HTTP/2 connection (every stream is
marked gone) alike.

Invariant: a write to the HTTP/2 connection from here is shielded from
cancellation.  The WebSocket cancels its own tasks at its end (a flusher may be
mid-write then); a frame cut in half would break every stream of the connection.
The connection's stall timeout (``--timeout``) bounds such a write instead.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import trio

from .protocol import http2
from .protocol import websocket as wsproto
from .protocol.http11 import Request
from .transport import TransportClosed
from .ws_conn import WebSocketConnection

if TYPE_CHECKING:
    from .server_context import ServerContext
    from .transport import Transport

logger = logging.getLogger("hornbeam_trio")

Headers = Iterable[tuple[bytes, bytes]]


class H2Connection(Protocol):
    """What a stream needs of its connection (``h2_conn.H2Connection``, which imports
    this module)."""

    server: ServerContext
    transport: Transport
    proto: http2.H2Protocol

    async def flush(self) -> None: ...
    def flush_soon(self) -> None: ...
    def stream_done(self, stream: H2WebSocket) -> None: ...
    def _lose(self) -> None: ...
    def _answer(
        self,
        stream_id: int,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None: ...


class H2WebSocket:
    """One extended-CONNECT stream: a ``Transport`` for a ``WebSocketConnection``.

    The attributes the HTTP/2 connection's reader sets (``chunks``, ``body_done``,
    ``gone``) and :meth:`wake` are those of ``h2_conn.H2Stream``: the reader treats
    both alike.
    """

    __slots__ = (
        "_readable",
        "_send_lock",
        "_writable",
        "answered",
        "body_done",
        "chunks",
        "client",
        "conn",
        "ended",
        "gone",
        "head_sent",
        "request",
        "scheme_secure",
        "server",
        "stall_timeout",
        "stream_id",
        "websocket",
    )

    def __init__(self, conn: H2Connection, request: http2.RequestReceived) -> None:
        self.conn = conn
        self.request = request
        self.stream_id = request.stream_id
        self.chunks: deque[tuple[bytes, int]] = deque()
        """DATA received and not yet read, with its flow-controlled sizes."""
        self.body_done = False
        """The peer sent END_STREAM: after ``chunks``, ``recv`` says EOF."""
        self.gone = False
        """Reset (either side) or the connection lost: no more I/O on the stream."""
        self.ended = False
        """We sent END_STREAM."""
        self.head_sent = False
        self.answered = False
        transport = conn.transport
        self.client = transport.client
        self.server = transport.server
        self.scheme_secure = transport.scheme_secure
        self.stall_timeout: float | None = None
        self.websocket: WebSocketConnection | None = None
        self._readable = trio.Event()
        self._writable = trio.Event()
        self._send_lock = trio.StrictFIFOLock()

    def wake(self) -> None:
        """The reader has news (DATA, END_STREAM, window, reset): both sides look again."""
        self._readable.set()
        self._writable.set()

    def begin_shutdown(self) -> None:
        if self.websocket is not None:
            self.websocket.begin_shutdown()

    # ------------------------------------------------------------------ the stream's task
    async def run(self) -> None:
        conn = self.conn
        server = conn.server
        event = self.request
        try:
            try:
                wsproto.check_extended_connect(event.headers)
                wsproto.check_origin(event.headers, server.config.websocket_allowed_origins)
            except wsproto.HandshakeError as exc:
                logger.info("WebSocket handshake from %s refused: %s", self.client, exc)
                self.answered = True
                conn._answer(self.stream_id, exc.status, exc.reason.encode(), exc.headers)
                await self._flush()
                return
            request = Request(
                method="CONNECT",
                raw_path=event.raw_path,
                path=event.path,
                query_string=event.query_string,
                http_version="2",
                headers=event.headers,
                keep_alive=False,
                upgrade=b"websocket",
                expect_continue=False,
            )
            ws = self.websocket = WebSocketConnection.for_request(
                server, request, self, key=b"", tail=b"", reply=H2Reply(self)
            )
            await ws.run()
        except TransportClosed:
            pass  # the connection is gone; its reader ends it
        finally:
            self.websocket = None
            conn.stream_done(self)

    # ------------------------------------------------------------------ Transport
    async def recv(self) -> bytes:
        """The stream's next DATA; ``b""`` after END_STREAM.  Raises TransportClosed."""
        proto = self.conn.proto
        while True:
            if self.gone:
                await trio.lowlevel.checkpoint()
                raise TransportClosed("HTTP/2 stream reset")
            if self.chunks:
                data, flow = self.chunks.popleft()
                proto.acknowledge(self.stream_id, flow)
                if flow:
                    await self._flush()  # the WINDOW_UPDATE, when the core made one
                if data:
                    return data
                continue
            if self.body_done:
                await trio.lowlevel.checkpoint()
                return b""
            event = self._readable = trio.Event()
            await event.wait()

    def try_send(self, data: bytes | memoryview) -> int:
        if self.gone:
            raise TransportClosed("HTTP/2 stream reset")
        return 0  # a stream sends only in send_some/send_all, as a Trio stream does

    def send_nowait(self, data: bytes) -> int:
        return self.try_send(data)

    async def send_rest(self, data: bytes, sent: int) -> None:
        await self.send_all(data[sent:] if sent else data)

    async def send_some(self, data: bytes | memoryview) -> int:
        """One DATA frame of ``data``, as large as the windows allow; waits for room.

        Cancelled only while waiting: once the frame is queued, its write is shielded.
        """
        async with self._send_lock:
            return await self._send_frame(data)

    async def send_all(self, data: bytes | memoryview) -> None:
        async with self._send_lock:
            view = memoryview(data)
            while view:
                view = view[await self._send_frame(view) :]

    async def _send_frame(self, data: bytes | memoryview, *, end_stream: bool = False) -> int:
        proto = self.conn.proto
        while True:
            if self.gone or self.ended:
                await trio.lowlevel.checkpoint()
                raise TransportClosed("HTTP/2 stream closed")
            size = proto.sendable(self.stream_id, len(data))
            if size or not data:
                break
            event = self._writable = trio.Event()
            await event.wait()
        try:
            proto.send_data(
                self.stream_id, bytes(data[:size]), end_stream=end_stream and size == len(data)
            )
        except http2.ProtocolError:
            self.gone = True  # the peer reset it meanwhile
            raise TransportClosed("HTTP/2 stream reset") from None
        if end_stream and size == len(data):
            self.ended = True
        await self._flush()
        return size

    async def _flush(self) -> None:
        """Write what ``h2`` queued, shielded (see the module's invariant)."""
        with trio.CancelScope(shield=True):
            try:
                await self.conn.flush()
            except TransportClosed:
                self.conn._lose()
                raise

    async def close(self) -> None:
        """END_STREAM (the WebSocket's orderly end), and RST_STREAM NO_ERROR if the peer
        has not ended its side: the stream's slot is given back now (RFC 9113 8.1)."""
        if self.gone:
            return
        proto = self.conn.proto
        try:
            if not self.ended:
                self.ended = True
                proto.end_stream(self.stream_id)
        except http2.ProtocolError:
            self.gone = True
            return
        if not self.body_done:
            self.gone = True
            proto.reset(self.stream_id, http2.ErrorCode.NO_ERROR)
        try:
            await self._flush()
        except TransportClosed:
            pass

    def abort(self) -> None:
        """RST_STREAM (CANCEL): the stream ends at once; the connection goes on."""
        if self.gone:
            return
        self.gone = True
        self.conn.proto.reset(self.stream_id, http2.ErrorCode.CANCEL)
        self.wake()
        self.conn.flush_soon()


class H2Reply:
    """The HTTP/2 answer to an extended CONNECT: HEADERS (200 to accept), DATA."""

    __slots__ = ("_denial", "_denying", "stream")

    def __init__(self, stream: H2WebSocket) -> None:
        self.stream = stream
        self._denial: list[tuple[bytes, bytes]] | None = None
        self._denying = False

    @property
    def denying(self) -> bool:
        return self._denying

    def accept(
        self, *, subprotocol: str | None, extensions: bytes | None, extra_headers: Headers
    ) -> bytes:
        block = http2.response_block(
            200,
            wsproto.accept_headers(
                subprotocol=subprotocol, extensions=extensions, extra_headers=extra_headers
            ),
        )
        stream = self.stream
        try:
            stream.conn.proto.send_headers(stream.stream_id, block)
        except http2.ProtocolError:
            stream.gone = True  # reset meanwhile: the WebSocket's reader sees it
        stream.head_sent = True
        stream.conn.flush_soon()  # before any DATA of the stream, whoever flushes first
        return b""

    async def refuse(self, status: int, body: bytes = b"", headers: Headers = ()) -> None:
        head = [*headers]
        if body:
            head.append((b"content-type", b"text/plain; charset=utf-8"))
        head.append((b"content-length", b"%d" % len(body)))
        self._denial = http2.response_block(status, head)
        self._denying = True
        await self.deny_body(body, False)

    def deny_start(self, status: int, headers: Headers) -> None:
        self._denial = http2.response_block(status, headers)
        self._denying = True

    async def deny_body(self, body: bytes, more_body: bool) -> None:
        stream = self.stream
        if stream.gone:
            raise TransportClosed("HTTP/2 stream reset")
        self._denying = more_body
        block, self._denial = self._denial, None
        async with stream._send_lock:
            if block is not None:
                stream.head_sent = True
                last = not body and not more_body
                try:
                    stream.conn.proto.send_headers(stream.stream_id, block, end_stream=last)
                except http2.ProtocolError:
                    stream.gone = True
                    raise TransportClosed("HTTP/2 stream reset") from None
                if last:
                    stream.ended = True
                    await stream._flush()
                    return
            view = memoryview(body)
            if not view and more_body:
                return
            while True:  # at least once: an empty last body is an empty END_STREAM DATA
                view = view[await stream._send_frame(view, end_stream=not more_body) :]
                if not view:
                    return
