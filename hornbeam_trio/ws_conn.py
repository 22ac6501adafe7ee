"""The Trio shell of one WebSocket connection: one nursery owns it all.

The app runs in the connection's own task, the body of its nursery.  Around it:

* ``ws_session.py``: the sans-I/O state machine (HANDSHAKE, OPEN, CLOSING,
  CLOSED, REJECTED), the order rules of ASGI ``send`` messages and the timer
  decisions; this class is its Trio subclass.
* ``ws_read.py``: how bytes come in: inline in the app's ``receive()`` with the
  readiness hub reading while the app is away (plain TCP), or a reader task
  (TLS, memory streams, other platforms).
* ``ws_handshake.py``: how the opening handshake is answered, a 101 or a response
  on HTTP/1.1, HEADERS on an HTTP/2 stream (RFC 8441, where ``h2_ws.py`` makes the
  stream this connection's transport).
* ``ws_send.py``: the send path (``Writer``, the ``DeliveryBatcher``): the app,
  the protocol's control replies and pub/sub deliveries write with one
  non-blocking ``send()`` and queue only what the kernel did not take.

How a connection ends, whichever side starts it: the connection leaves OPEN in
:meth:`WebSocketConnection._end`, once, and :meth:`WebSocketConnection.release`
gives back in one synchronous step what it holds beyond its tasks
(subscriptions, ``subscription()`` iterators, owned keys, queued deliveries);
the app is told (``websocket.disconnect``) and gets a grace period to return;
then the nursery is cancelled, queued bytes get a bounded last flush, and the
socket closes.  Every rule about frames and close codes lives in
``protocol/websocket.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import checkpoint, current_task

from .protocol import websocket as wsproto
from .protocol.http11 import loggable_path
from .pubsub import COUNTS, Delivery
from .runtime import ConnectionContext, current_connection
from .transport import CHECKPOINT_EVERY, Transport, TransportClosed
from .types import ClientDisconnected
from .ws_handshake import H1Reply
from .ws_read import MAX_QUEUED_EVENTS, InlineReader, Reader, TaskReader
from .ws_send import FIRST, FULL, JOINED, SEND_HIGH_WATER, DeliveryBatcher, Writer
from .ws_session import (
    CLOSED,
    CLOSING,
    HANDSHAKE,
    OPEN,
    REJECTED,
    ConnState,
    ProtocolOrderError,
    TimerAction,
    WebSocketSession,
)

if TYPE_CHECKING:
    from .config import Config
    from .protocol.http11 import Request
    from .runtime import Runtime
    from .server_context import ServerContext
    from .timers import TimerSweeper
    from .types import ASGIApp, Message, Scope
    from .ws_handshake import HandshakeReply

logger = logging.getLogger("hornbeam_trio")


class WebSocketCounts:
    """Messages of this process's WebSockets that have ended, in and out.

    A live connection counts its own (``messages_in``, and ``writer.sent``, which the
    send path keeps anyway: no global on the hot path) and adds them here in the same synchronous
    step that takes it out of ``Runtime.connections``, so the metrics collector
    (metrics.py), which sums these and every live connection's at scrape time, counts
    each message once.
    """

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


WEBSOCKET_COUNTS = WebSocketCounts()
"""The process's one instance, as ``pubsub.COUNTS``."""


def _only_disconnects(exc: BaseException, *, client_gone: bool) -> bool:
    """True when ``exc`` is how an app ends once its client left, not an app error.

    That is a ClientDisconnected (our ``send()`` after the end), a framework's own
    disconnect exception once the client is gone, or an exception group made only of
    these (a sender task in the app's nursery or AnyIO task group met the end too).

    A framework's disconnect is recognised by its class name, ``WebSocketDisconnect``
    (Starlette's, re-exported by FastAPI; Litestar's has the same name), anywhere in
    its MRO: the server imports no framework.  The name alone is not enough:
    ``client_gone`` must say the connection has reported its end (the app was told
    ``websocket.disconnect``, or ``send()`` raised), since Starlette raises it only
    then; the same exception raised while the client is still connected is an app
    error like any other.
    """
    if isinstance(exc, ClientDisconnected):
        return True
    if client_gone and any(cls.__name__ == "WebSocketDisconnect" for cls in type(exc).__mro__):
        return True
    inner = getattr(exc, "exceptions", None)  # an ExceptionGroup (builtin from 3.11)
    return (
        isinstance(inner, tuple)
        and bool(inner)
        and all(_only_disconnects(e, client_gone=client_gone) for e in inner)
    )


class WebSocketConnection(WebSocketSession):
    """ASGI ``receive``/``send`` for one WebSocket: the Trio shell of its session.

    The timer task (``on_timer``), the readiness hub (``on_readable``) and the
    delivery batcher (``deliver``/``flush_batch``) reach the connection from
    outside its task; each asks :attr:`state` first.  :meth:`_end` is the one
    place where the connection leaves OPEN, and :meth:`release` what it gives back.
    """

    __slots__ = (
        "_answer",
        "_app_waiter",
        "_batcher",
        "_events",
        "_failure",
        "_inline",
        "_max_queue_bytes",
        "_nursery",
        "_on_app_error",
        "_pre_accept",
        "_pre_accept_bytes",
        "_queued_bytes",
        "_reader",
        "_recv_unyielded",
        "_tail",
        "_timers",
        "app",
        "config",
        "context",
        "messages_in",
        "protocol",
        "reply",
        "request",
        "runtime",
        "scope",
        "timer_at",
        "timer_key",
        "transport",
        "writer",
    )

    def __init__(
        self,
        *,
        app: ASGIApp,
        scope: Scope,
        request: Request,
        transport: Transport,
        config: Config,
        runtime: Runtime,
        on_app_error: Callable[[BaseException], None],
        batcher: DeliveryBatcher,
        timers: TimerSweeper,
        key: bytes,
        tail: bytes,
        reply: HandshakeReply | None = None,
    ) -> None:
        super().__init__(config)
        self.app = app
        self.scope = scope
        self.request = request
        self.transport = transport
        self.config = config
        self.runtime = runtime
        self.writer = Writer(transport)
        self.protocol: wsproto.ServerProtocol | None = None
        """Set at accept: not None exactly when the connection was accepted."""
        self.context = ConnectionContext(runtime, "websocket", config)
        self.context.pusher = self
        self.reply: HandshakeReply = reply or H1Reply(request, key, transport)
        """How the handshake is answered: HTTP/1.1 (``key`` is its Sec-WebSocket-Key)
        unless the caller passes another (HTTP/2, RFC 8441)."""
        self._batcher = batcher
        self._timers = timers
        self._on_app_error = on_app_error
        self._tail = tail
        self._inline: InlineReader | None = (
            InlineReader(self, transport)  # type: ignore[arg-type]
            if getattr(transport, "hub", None) is not None
            else None
        )
        """Set when the app's task reads its socket in receive() (plain TCP with the hub)."""
        self._reader: Reader = self._inline or TaskReader(self, transport)
        self._events: list[Message] = [{"type": "websocket.connect"}]
        self._queued_bytes = 0
        """Decoded bytes (text: characters) of the messages queued behind the one the app
        takes next (``_events[1:]``): a running count.  The head is bounded by the message
        size limit already, and leaving it out keeps the count off the one-message path."""
        self._max_queue_bytes = config.websocket_max_queue_bytes
        self._app_waiter: trio.lowlevel.Task | None = None
        self._recv_unyielded = 0
        self.messages_in = 0
        """Messages read from the client and queued for the app (not those read after
        our Close, which are dropped)."""
        # Messages out are ``writer.sent``: the app's send() counts them there anyway.
        self._nursery: trio.Nursery | None = None
        self._pre_accept: list[bytes] = []
        """Deliveries to a subscriber whose handshake the app has not accepted yet: bounded
        like any subscriber queue, in messages and bytes; beyond, they are not taken."""
        self._pre_accept_bytes = 0
        self._answer: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        """An HTTP answer still owed when the connection ends (503: refused at shutdown)."""
        self._failure: wsproto.ProtocolFailure | None = None
        """A protocol failure held back until the app has taken the messages before it."""
        self.timer_at = math.inf
        self.timer_key = 0

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run the connection to its end; returns with nothing of it left running.

        The app runs here, in the nursery's body: no task of its own, one task per
        idle connection in all (what a WebSocket costs in memory is mostly tasks).
        """
        token = current_connection.set(self.context)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.writer.attach(nursery)
                error = False
                try:
                    if self.state is REJECTED:
                        return  # the server shut down before the app began: 503 below
                    await self.app(self.scope, self.receive, self.send)
                except Exception as exc:
                    # How an app ends once its client left (see _only_disconnects):
                    # close_code is set before the app hears of the end, whether from
                    # receive() or from a send() that raised.
                    if not _only_disconnects(exc, client_gone=self.close_code is not None):
                        error = True
                        logger.exception(
                            "WebSocket app raised (path %s)", loggable_path(self.request.raw_path)
                        )
                        self._on_app_error(exc)
                finally:
                    self.app_done = True
                await self._after_app(error=error)
                await self._await_close_reply()
                nursery.cancel_scope.cancel()  # whatever the app left running
        finally:
            self.app_done = True
            current_connection.reset(token)
            self._timers.forget(self)
            if self.state is not REJECTED:
                self.state = CLOSED
            self.release()
            # In the step that takes the connection out of runtime.connections: a scrape
            # finds its messages either here or on the live connection, never both.
            WEBSOCKET_COUNTS.received += self.messages_in
            WEBSOCKET_COUNTS.sent += self.writer.sent
            self.context.release()
            with trio.CancelScope(shield=True):
                if self._answer is not None:
                    await self._refuse(*self._answer, timeout=1.0)
                if self.writer.pending:
                    await self.writer.final_flush(1.0)
                await self.transport.close()

    @classmethod
    def for_request(
        cls,
        server: ServerContext,
        request: Request,
        transport: Transport,
        *,
        key: bytes,
        tail: bytes,
        reply: HandshakeReply | None = None,
    ) -> WebSocketConnection:
        """The connection of a WebSocket request, HTTP/1.1 ``Upgrade`` or HTTP/2 extended
        CONNECT: its scope and its server's parts built in one place for both."""
        scope = server.base_scope(request, transport, "websocket")
        scope["subprotocols"] = wsproto.parse_subprotocols(request.headers)
        scope["extensions"] = {"websocket.http.response": {}}
        ws = cls(
            app=server.app,
            scope=scope,
            request=request,
            transport=transport,
            config=server.config,
            runtime=server.runtime,
            on_app_error=server.report_app_error,
            batcher=server.batcher,
            timers=server.timers,
            key=key,
            tail=tail,
            reply=reply,
        )
        if server.shutting_down:
            ws.begin_shutdown()
        return ws

    def release(self) -> None:
        """What the connection gives back when it leaves OPEN: in one synchronous step.

        Deliveries stop (no subscription, no queued batch), every ``subscription()``
        iterator of the connection ends, its owned keys are undone and later owned
        writes refused (``ConnectionContext.end``).  Idempotent, never raises.
        """
        self.writer.drop_batch()
        self._pre_accept.clear()
        self._pre_accept_bytes = 0
        self.context.end()

    def _end(self, state: ConnState, code: int, reason: str = "") -> None:
        """Leave OPEN (or HANDSHAKE) for CLOSING or CLOSED: the app is told once."""
        if self.end(state, code, reason):
            self.release()
            self._events.append({"type": "websocket.disconnect", "code": code, "reason": reason})
            self._wake_app()

    def begin_shutdown(self) -> None:
        """Server shutdown: close 1001 now; the close handshake and app grace still apply.

        A handshake the app has not answered yet gets an HTTP 503 (with Retry-After),
        so the client knows to come back rather than seeing the connection drop.
        """
        state = self.state
        if state is HANDSHAKE or state is REJECTED:
            if state is HANDSHAKE:
                self.reject()
                self._answer = (503, b"server shutting down", [(b"retry-after", b"1")])
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            return
        self.close_now(1001, "server shutdown")

    def close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side (idle timeout, slow consumer, shutdown).

        Deliveries queued and not yet started are dropped: the Close goes next.
        """
        if self.state is not OPEN:
            return
        self.writer.drop_queued_deliveries()
        self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        """Our Close frame goes out and the connection leaves OPEN: nothing follows it."""
        protocol = self.protocol
        if self.state is not OPEN or protocol is None:
            return
        if self._failure is not None:
            self._apply_failure()  # the peer broke the protocol first: that is the close
            return
        self._write_nowait(protocol.send_close(code, reason))  # this pass's batch first
        self.begin_close(trio.current_time())
        self._timers.schedule(self, self.close_deadline)
        self._end(CLOSING, code, reason)
        self._reader.resume()  # read on for the peer's Close, however far behind the app is

    def _apply_failure(self) -> None:
        """Fail the connection now: the app has taken the valid messages before the failure."""
        failure = self._failure
        protocol = self.protocol
        assert failure is not None and protocol is not None
        self._failure = None
        logger.info("closing WebSocket: %s (%d)", failure.reason, failure.code)
        self._write_nowait(protocol.send_close(failure.code, failure.reason))
        self._end(CLOSED, failure.code, failure.reason)
        self._finish_reading()

    def _finish_reading(self) -> None:
        """Reading is over (CLOSED); the app gets a grace period to return, then it is cancelled."""
        self._reader.stop()
        self._wake_app()
        if self.reading_over(trio.current_time()):
            self._timers.schedule(self, self.grace_deadline)

    # ------------------------------------------------------------------ app
    async def _after_app(self, *, error: bool) -> None:
        """The app is done: answer a handshake it left open, close a connection it left open."""
        state = self.state
        if state is HANDSHAKE:
            self.reject()
            await self._refuse(500 if error else 403)
        elif state is OPEN:
            if self._failure is not None:
                self._apply_failure()
            elif error:
                self._send_close(1011, "Internal server error")
            else:
                self._send_close(1000, "")

    async def _await_close_reply(self) -> None:
        """After the app: read until the peer answers our close (the close timer bounds it)."""
        if self.state is not CLOSING:
            return
        reader = self._reader
        if isinstance(reader, TaskReader):
            await reader.wait_finished()
        else:
            while self.state is not CLOSED:
                self._events.clear()  # nobody will receive() them now
                self._queued_bytes = 0
                await self.receive()  # reads on, the app being done

    async def _refuse(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        timeout: float = math.inf,
    ) -> None:
        with trio.move_on_after(timeout):
            try:
                await self.reply.refuse(status, body, headers or ())
            except TransportClosed:
                pass

    # ------------------------------------------------------------------ ASGI receive
    async def receive(self) -> Message:
        events = self._events
        if not events:
            if self._failure is not None:
                self._apply_failure()  # everything valid before it was received: now the close
            inline = self._inline
            state = self.state
            if inline is not None and (state is OPEN or (state is CLOSING and self.app_done)):
                # Read the socket here, in the caller's task, until an event is queued or
                # reading is over (after the app: until the peer answers our close).
                waited = False
                protocol: wsproto.ServerProtocol = self.protocol  # type: ignore[assignment]
                writer = self.writer
                while not events and self.state is not CLOSED:
                    if protocol.more:
                        # What the last read left: one bound of frames per checkpoint.
                        self._received(b"")
                        await checkpoint()
                        waited = True
                        continue
                    if writer.pending and writer.pending_bytes > SEND_HIGH_WATER:
                        # Our replies are not being taken: read no more until they are.
                        try:
                            await writer.settle()
                        except TransportClosed:
                            self._transport_lost()
                            break
                        waited = True
                        continue
                    try:
                        data = inline.poll()
                        if data is None:  # the hub is armed for this task: park
                            try:
                                # Also woken by _wake_app (the loop then sees the disconnect).
                                await inline.waiting  # type: ignore[misc]
                            except trio.ClosedResourceError:
                                self._transport_lost()
                                break
                            waited = True
                            data = inline.recv_nowait()  # readable now: no second poll()
                            if data is None:
                                continue
                    except TransportClosed:
                        self._transport_lost()
                        break
                    if not data:
                        self._transport_lost()
                        break
                    self._received(data)
                    if not events or protocol.more:
                        # Bytes but no message yet (pings, fragments, part of a large
                        # frame), or a full bound of frames parsed: yield before going
                        # on, or a peer that keeps this socket full would hold every
                        # other task of the server.
                        await checkpoint()
                        waited = True
                if waited:
                    # It waited for the socket: a checkpoint, so the counts toward the
                    # next forced one start over (the sends' too: the echo of a lone
                    # connection then never yields between its messages, which would
                    # hand the epoll back to the hub's task, see readiness.py).
                    self._recv_unyielded = 0
                    writer.yield_at = writer.sent + CHECKPOINT_EVERY
                    if events:
                        message = events.pop(0)
                        if events:
                            self._dequeued()
                        return message
        if events:
            self._recv_unyielded += 1
            if self._recv_unyielded >= CHECKPOINT_EVERY:
                self._recv_unyielded = 0
                await checkpoint()
            if len(events) == MAX_QUEUED_EVENTS or self.app_behind():
                self._reader.resume()  # it stopped (or may stop) at a bound: taking one frees it
            message = events.pop(0)
            if events:
                self._dequeued()
            return message
        if self.close_code is not None or self.state is REJECTED:
            await checkpoint()
            return {"type": "websocket.disconnect", "code": self.close_code or 1006}
        # A reader task (or, before accept, nobody) will queue the next event.
        if self._app_waiter is not None:
            raise trio.BusyResourceError("another task is waiting in receive()")
        self._recv_unyielded = 0
        self._app_waiter = current_task()
        self._reader.resume()  # it may have stopped at a message in progress: go on with it
        await trio.lowlevel.wait_task_rescheduled(self._abort_receive)
        if events:
            message = events.pop(0)
            if events:
                self._dequeued()
            return message
        return {"type": "websocket.disconnect", "code": self.close_code or 1006}

    def _dequeued(self) -> None:
        """The app took the head; the next message becomes the head: uncount it."""
        data = self._events[0].get("text")
        if data is None:
            data = self._events[0].get("bytes")
        if data is not None:
            self._queued_bytes -= len(data)

    def more_to_parse(self) -> bool:
        protocol = self.protocol
        return protocol is not None and protocol.more

    def app_behind(self) -> bool:
        """The app has enough to take (messages or bytes): read no more until it takes some.

        The rest stays in the kernel (TCP backpressure); also while our replies are not
        being taken (the writer above its high-water mark).  A message still arriving
        counts too while the app is not waiting in receive(): a 16 MiB message (a deflate
        bomb is 16 KB on the wire) is not assembled for an app that is away, only up to
        ``--websocket-max-queue-bytes``; the app's own receive() goes on with it.
        """
        if (
            len(self._events) >= MAX_QUEUED_EVENTS
            or self._queued_bytes >= self._max_queue_bytes
            or self.writer.pending_bytes > SEND_HIGH_WATER
        ):
            return True
        protocol = self.protocol
        return (
            protocol is not None
            and self._app_waiter is None
            and self._queued_bytes + protocol.message_bytes >= self._max_queue_bytes
        )

    def _read_failed(self) -> None:
        """A bug while reading (ours, or the app's code under us): this connection ends, 1011."""
        logger.exception("reading a WebSocket failed")
        self._end(CLOSED, 1011, "internal error")
        self._finish_reading()
        self.transport.abort()

    def _abort_receive(self, _: Any) -> trio.lowlevel.Abort:
        self._app_waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake_app(self) -> None:
        waiter = self._app_waiter
        if waiter is not None:
            self._app_waiter = None
            trio.lowlevel.reschedule(waiter)
        self._reader.interrupt()

    # ------------------------------------------------------------------ ASGI send
    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.state is not OPEN:
                # A checkpoint on this path too: an app loop that swallows the error
                # still yields, and sees its own cancellation as Cancelled.
                await checkpoint()
                raise ClientDisconnected("WebSocket is closed")
            protocol: wsproto.ServerProtocol = self.protocol  # type: ignore[assignment]
            text = message.get("text")
            if text is not None:
                frame = protocol.send_message(text)
            else:
                data = message.get("bytes")
                if data is None:
                    raise TypeError("websocket.send needs 'text' or 'bytes'")
                frame = protocol.send_message(bytes(data))
            writer = self.writer
            if writer.batch is not None:
                self.flush_batch()
            try:
                if writer.pending or writer.streamed:
                    await writer.write(frame)
                elif writer.write_counted(frame):
                    await writer.settle()
            except TransportClosed:
                self._transport_lost()
                raise ClientDisconnected("WebSocket peer went away") from None
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        if kind == "websocket.accept":
            await self._accept(message)
        elif kind == "websocket.close":
            await self._close(message)
        elif kind == "websocket.http.response.start":
            await self._deny_start(message)
        elif kind == "websocket.http.response.body":
            await self._deny_body(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a WebSocket")

    async def _accept(self, message: Message) -> None:
        self.check_accept()
        config = self.config
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in self.scope["subprotocols"]:
            logger.warning("app accepted subprotocol %r the client did not offer", subprotocol)
        deflate, extensions = wsproto.negotiate_deflate(
            self.request.headers, config.websocket_compress
        )
        protocol = wsproto.ServerProtocol(
            max_message_size=config.websocket_max_frame_size, deflate=deflate
        )
        head = self.reply.accept(
            subprotocol=subprotocol,
            extensions=extensions,
            extra_headers=[(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])],
        )
        self.protocol = protocol
        self.state = OPEN
        self._events.clear()  # the connect event was consumed; nothing else is queued yet
        self._queued_bytes = 0
        self.last_activity = trio.current_time()
        # Through the writer, the connection's one ordered send path: a Close sent while
        # the head is still partly queued (shutdown, say) goes after it, never inside it.
        if head:
            self._write_nowait(head)
        if self.state is not OPEN:
            await checkpoint()
            raise ClientDisconnected("WebSocket peer went away")
        self._timers.schedule(self, self.next_deadline())
        for frame in self._pre_accept:
            self._write_nowait(frame)
        self._pre_accept.clear()
        self._pre_accept_bytes = 0
        if self._tail:
            tail, self._tail = self._tail, b""
            self._received(tail)
        assert self._nursery is not None
        self._reader.start(self._nursery)
        await checkpoint()

    async def _close(self, message: Message) -> None:
        state = self.state
        if state is HANDSHAKE:
            self.reject()  # ASGI: a close before accept is a 403
            await self._refuse(403)
            return
        self._send_close(int(message.get("code") or 1000), message.get("reason") or "")
        await checkpoint()

    async def _deny_start(self, message: Message) -> None:
        self.check_denial()
        self.reply.deny_start(
            int(message["status"]), [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        )
        self.reject()
        await checkpoint()

    async def _deny_body(self, message: Message) -> None:
        if not self.reply.denying:
            raise ProtocolOrderError(
                "websocket.http.response.body without a started denial response"
            )
        more = bool(message.get("more_body", False))
        try:
            await self.reply.deny_body(bytes(message.get("body", b"")), more)
        except TransportClosed:
            raise ClientDisconnected("client went away") from None

    # ------------------------------------------------------------------ bytes in
    def _received(self, data: bytes) -> bool:
        """Bytes from the peer: activity for the timers, frames -> ASGI events.

        True when reading is over.  One function, not two: it runs once per read.
        """
        protocol: wsproto.ServerProtocol = self.protocol  # type: ignore[assignment]
        if self.writer.pending:
            # Earlier bytes still wait: pings in this read leave only their latest pong.
            writer = self.writer
            protocol.hold_pongs = True
            events = protocol.receive_data(data)
            protocol.hold_pongs = False
            pong = protocol.pong
            if pong is not None:
                protocol.pong = None
                writer.owe_pong(pong)
        else:
            events = protocol.receive_data(data)
        # Timers (ws_session.frames_parsed, inlined for a complete frame and nothing
        # else to track): complete frames are activity, bytes of a frame are not.
        if events or protocol.active:
            if self.watching or protocol.receiving_frame:
                if self.frames_parsed(self._timers.clock(), True, protocol.receiving_frame):
                    # Our ping is answered: the next is due one ping interval from now,
                    # earlier than the entry the timers hold.
                    self._timers.schedule(self, self.next_deadline())
            else:
                self.last_activity = self._timers.clock()  # the run's clock, bound: per read
        elif self.watching or protocol.receiving_frame:
            self.frames_parsed(self._timers.clock(), False, protocol.receiving_frame)
        outgoing = protocol.outgoing
        if outgoing:
            failure = events[-1] if events else None
            if (
                isinstance(failure, wsproto.ProtocolFailure)
                and (len(events) > 1 or self._events)
                and self.state is OPEN
                and not self.app_done
            ):
                # Valid messages came before the failure: the app gets them, in order,
                # and may answer them before our Close (the end of ``outgoing``) goes.
                self._failure = failure
                del events[-1]
                protocol.defer_failure_close(failure)
                self.begin_close(self._timers.clock())  # bounded: an app away from receive()
                self._timers.schedule(self, self.close_deadline)
            if outgoing:
                self._write_nowait(bytes(outgoing))
                outgoing.clear()
        if not events:
            if protocol.closed and self._failure is None:
                self._finish_reading()
            return self.state is CLOSED
        queue = self._events
        for event in events:
            cls = event.__class__
            if cls is str:
                if self.state is OPEN:  # after our Close, messages are read and dropped
                    if queue:
                        self._queued_bytes += len(event)  # type: ignore[arg-type]
                    queue.append({"type": "websocket.receive", "text": event})
                    self.messages_in += 1
            elif cls is bytes:
                if self.state is OPEN:
                    if queue:
                        self._queued_bytes += len(event)  # type: ignore[arg-type]
                    queue.append({"type": "websocket.receive", "bytes": event})
                    self.messages_in += 1
            elif cls is wsproto.CloseReceived:
                self._end(CLOSED, event.code, event.reason)  # type: ignore[union-attr]
                self._finish_reading()
            elif cls is wsproto.ProtocolFailure:
                logger.info("closing WebSocket: %s (%d)", event.reason, event.code)  # type: ignore[union-attr]
                self._end(CLOSED, event.code, event.reason)  # type: ignore[union-attr]
                self._finish_reading()
        if self._app_waiter is not None:
            self._wake_app()
        return self.state is CLOSED

    # ------------------------------------------------------------------ timers
    def on_timer(self, now: float) -> None:
        """The server's timer task: a deadline of this connection may be due."""
        action = self.timer_action(now)
        if action is TimerAction.CANCEL_APP:
            # The client is gone and the app did not return in time: end it.
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            return
        if action is TimerAction.CLOSE_TIMED_OUT:
            if self._failure is not None:
                self._apply_failure()  # the app stayed away from receive(): fail it now
            else:
                # Our close frame went unanswered: give up on the handshake.
                self._end(CLOSED, 1006, "close handshake timed out")
                self._finish_reading()
        elif action is TimerAction.IDLE:
            self.close_now(1001, "idle timeout")
        elif action is TimerAction.FRAME_TIMEOUT:
            # Not idle: the peer holds a frame open (bytes trickled).  1008, a policy
            # violation, so it can tell this from the 1001 of a quiet connection.
            logger.info("closing WebSocket: frame not completed in time (1008)")
            self.close_now(1008, "frame not completed in time")
        elif action is TimerAction.PING:
            protocol = self.protocol
            assert protocol is not None
            self._write_nowait(protocol.send_ping(b"hb"))
        deadline = self.next_deadline()
        if deadline != math.inf:
            self._timers.schedule(self, deadline)

    # ------------------------------------------------------------------ send path
    def _write_nowait(self, data: bytes) -> None:
        if self.writer.batch is not None:
            self.flush_batch()
        try:
            self.writer.write_nowait(data)
        except TransportClosed:
            self._transport_lost()

    def _transport_lost(self) -> None:
        self._end(CLOSED, 1006, "connection lost")
        self._finish_reading()
        self._reader.resume()

    # ------------------------------------------------------------------ pub/sub push target
    def deliver(self, delivery: Delivery) -> bool:
        """Called by publish(): never blocks; the slow-consumer policy applies on overflow.

        The bounds count messages and bytes from publish() until the kernel has them
        (``Writer.delivery_count``/``delivery_bytes``), however a burst was batched.
        """
        frame = delivery.frame
        config = self.config
        if self.state is not OPEN:
            if (
                self.state is HANDSHAKE
                and len(self._pre_accept) < config.subscriber_queue_size
                and self._pre_accept_bytes + len(frame) <= config.subscriber_queue_bytes
            ):
                self._pre_accept.append(frame)
                self._pre_accept_bytes += len(frame)
                return True
            return False
        writer = self.writer
        max_messages = config.subscriber_queue_size
        max_bytes = config.subscriber_queue_bytes
        offered = writer.offer(frame, max_messages, max_bytes)
        if offered == FIRST:
            self._batcher.mark(self)
            return True
        if offered == JOINED:
            return True
        if config.slow_consumer == "close":
            COUNTS.slow_consumer_closes += 1
            logger.info(
                "closing WebSocket: slow consumer (%d messages, %d bytes queued)",
                writer.delivery_count,
                writer.delivery_bytes,
            )
            self.close_now(1013, "slow consumer")
            return False
        while (offered := writer.offer(frame, max_messages, max_bytes)) == FULL:
            COUNTS.dropped += 1
            if not writer.drop_oldest_delivery():
                # All that is queued is already on the wire: this message is the one lost.
                return True
        if offered == FIRST:
            self._batcher.mark(self)
        return True

    def flush_batch(self) -> None:
        """Write the deliveries of this scheduler pass in one send() (the batcher calls this)."""
        writer = self.writer
        if writer.batch is None or self.state is not OPEN:
            return
        try:
            writer.flush_deliveries()
        except TransportClosed:
            self._transport_lost()
