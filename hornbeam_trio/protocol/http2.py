"""Sans-I/O HTTP/2 for the server side: the ``h2`` library plus our rules.

``h2`` (the engine Hypercorn is built on) owns the frame layer: HPACK, stream
states, flow-control accounting, SETTINGS, PING, and the connection errors of
RFC 9113 (a ``ProtocolError`` from :meth:`H2Protocol.receive_data` means GOAWAY
is queued in :meth:`data_to_send` and the connection must close).  This module
adds what a server decides on top of it, so each rule is unit-tested with plain
bytes:

* the request limits HTTP/1.1 has (``max_request_line_size`` for ``:path``,
  ``max_header_size`` per field, ``max_headers``, ``max_request_head_size`` as
  SETTINGS_MAX_HEADER_LIST_SIZE, ``max_request_body_size``), answered with the
  same statuses (414, 431, 413);
* the ASGI view of a request: method, raw path, decoded path, query, and the
  headers with ``host`` from ``:authority`` when the client sent none;
* response headers: validated as on HTTP/1.1, lowercased, connection-specific
  ones (forbidden in HTTP/2) dropped;
* flow control as a window the shell may fill (:meth:`sendable`), and a
  connection window big enough that one stream's unread body never blocks
  another (invariant: connection window >= max streams x stream window);
* a graceful GOAWAY that, unlike ``h2``'s ``close_connection()``, leaves the
  streams in flight able to finish;
* RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL is offered, and an extended CONNECT
  (``:protocol websocket``) is a request whose stream then carries a WebSocket's
  bytes both ways, outside ``max_request_body_size`` (a tunnel, not a body);
* the bounds on hostile input (see ``h2_limits``): frame floods end the connection with
  GOAWAY(ENHANCE_YOUR_CALM) before ``h2`` sees the chunk; at most
  ``max_concurrent_streams`` requests have a running app (counted until the shell calls
  :meth:`H2Protocol.forget`, so a stream reset by the peer still counts while its app
  runs), beyond that REFUSED_STREAM; a stream opened and reset within one read never
  reaches an app; a request body that makes no progress for ``body_timeout`` seconds
  while its app waits for it is answered 408 (RST_STREAM once the response began).

Imports no event loop and nothing of ours outside ``protocol/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import inf
from typing import ClassVar, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from .h2_limits import FrameScanner
from .h2_request import Malformed, parse_request
from .headers import check_name, check_value
from .http11 import _decode_path

__all__ = [
    "PREFACE",
    "BodyEnded",
    "BodyReceived",
    "ConnectionLost",
    "Flood",
    "H2Protocol",
    "ProtocolError",
    "RequestReceived",
    "RequestRejected",
    "StreamReset",
    "WindowOpened",
    "response_block",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The first bytes of every HTTP/2 connection (RFC 9113 3.4); on a cleartext port they
mean h2c by prior knowledge."""

ProtocolError = h2.exceptions.ProtocolError


class Flood(h2.exceptions.ProtocolError):
    """A per-connection bound broke: GOAWAY(ENHANCE_YOUR_CALM) is queued, close."""

    error_code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


STREAM_WINDOW: Final = 65535
"""Bytes of request body a stream may have unread by its app (SETTINGS_INITIAL_WINDOW_SIZE)."""
MAX_WINDOW: Final = 2**31 - 1

_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
"""Response header names RFC 9113 8.2.2 forbids; an app written for HTTP/1.1 may send them."""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request head that passed our limits; the shell starts its app."""

    stream_id: int
    method: str
    raw_path: bytes
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    end_stream: bool
    protocol: str | None = None
    """``:protocol`` of an extended CONNECT (RFC 8441): ``"websocket"``; None otherwise."""
    http_version: ClassVar[str] = "2"


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request head over a limit: the shell answers ``status`` itself, no app runs."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class BodyReceived:
    """Request body bytes; ``flow_length`` (padding included) is acknowledged as read."""

    stream_id: int
    data: bytes
    flow_length: int


@dataclass(frozen=True, slots=True)
class BodyEnded:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset the stream (or its body broke a limit and we did): no more I/O on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Flow-control room grew; ``stream_id`` 0: for every stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The peer sent GOAWAY: no new streams will come; those in flight may finish."""

    last_stream_id: int


Event = (
    RequestReceived
    | RequestRejected
    | BodyReceived
    | BodyEnded
    | StreamReset
    | WindowOpened
    | ConnectionLost
)


def response_block(
    status: int, headers: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """An app's response head as an HTTP/2 header block: ``:status`` first, names
    lowercased, connection-specific fields dropped.  Raises ValueError for a header
    HTTP/1.1 would refuse too (the same check, ``protocol.headers``)."""
    block: list[tuple[bytes, bytes]] = [(b":status", b"%d" % status)]
    for name, value in headers:
        lname = check_name(name)
        check_value(value)
        if lname in _CONNECTION_SPECIFIC:
            continue
        if lname == b"te" and value.lower() != b"trailers":
            continue
        block.append((lname, bytes(value)))
    return block


CLOSED_STREAMS: Final = 1000
"""Closed streams ``h2`` remembers per connection (its default: 2**16, ~150 bytes each, so
~10 MiB held by a connection that has seen 65,536 streams, honest or a rapid reset under
the limits).  The memory only tells late trailers on a stream we reset (a stream error,
answered RST_STREAM) from HEADERS on a stream long closed (a connection error); frames in
flight arrive within a round trip, when far fewer streams than this have closed since."""


class _Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = CLOSED_STREAMS


class H2Protocol:
    """One server-side HTTP/2 connection: bytes in, events out, bytes to send."""

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        max_request_line_size: int = 4094,
        max_header_size: int = 8190,
        max_headers: int = 100,
        max_head_size: int = 64 * 1024,
        max_body_size: int | None = None,
        body_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_path = max_request_line_size
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        self.max_concurrent_streams = max_concurrent_streams
        self.conn = _Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # response_block() already lowercases, checks and filters every field
                # (the HTTP/1.1 check): h2 doing it again was ~1/6 of a request's CPU.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                # h2_request.parse_request checks every request block (RFC 9113 8.2, 8.3)
                # in one pass, with caches: h2's chain of generators was ~1/4 of a request.
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self.max_head_size = max_head_size
        self.conn.local_settings = self._settings(max_concurrent_streams)
        self.clock = clock
        self.scanner = FrameScanner(max_header_block=max_head_size + 16384, now=clock())
        self.active: set[int] = set()
        """Streams reported to the shell whose task has not ended (:meth:`forget`)."""
        self.body_timeout = body_timeout
        self.body_due: dict[int, float] = {}
        """Deadline of each request body the app waits for: armed while the body is open
        and the app holds none of it unread (a client held back by our window is not late)."""
        self.unread: dict[int, int] = {}
        """Flow-controlled bytes reported and not yet acknowledged, per open body."""
        self.preface_done = False
        """The client's preface and first SETTINGS have arrived."""
        self.body_seen: dict[int, int] = {}
        """Body bytes received per open request stream (for ``max_body_size``)."""
        self.tunnels: set[int] = set()
        """Open extended-CONNECT streams: their DATA is reported unbounded by
        ``max_body_size`` (the WebSocket's own limits apply to it)."""
        self.going_away = False
        """A GOAWAY was sent: streams above ``last_stream_id`` are refused."""
        self.last_stream_id = 0

    def _settings(self, max_streams: int) -> h2.settings.Settings:
        return h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_head_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )

    def initiate(self) -> None:
        """Queue our SETTINGS, and widen the connection window to the invariant above.

        The SETTINGS frame advertises ``max_concurrent_streams``; ``h2`` is then given a
        ceiling twice as high, because ``h2`` answers a stream over its limit with a
        connection error (PROTOCOL_ERROR) where RFC 9113 5.1.2 wants a stream error: we
        refuse those streams ourselves (REFUSED_STREAM).  Only a client opening twice
        the limit within one read meets ``h2``'s connection error.
        """
        self.conn.initiate_connection()
        ceiling = max(2 * self.max_concurrent_streams, self.max_concurrent_streams + 100)
        self.conn.local_settings = self._settings(ceiling)
        extra = min(self.max_concurrent_streams * STREAM_WINDOW, MAX_WINDOW) - STREAM_WINDOW
        if extra > 0:
            self.conn.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def receive_data(self, data: bytes) -> list[Event]:
        """Our events for ``data``.  Raises ProtocolError (or its :class:`Flood`): GOAWAY
        is queued, close after sending it."""
        verdict = self.scanner.scan(data, self.clock())
        if verdict:
            self._calm_down(verdict)
        out: list[Event | None] = []
        opened: dict[int, int] = {}
        """Requests reported in this call, by stream: a reset within the call unreports."""
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self._request(event, out)
                last = out[-1] if out else None
                if isinstance(last, RequestReceived) and last.stream_id == event.stream_id:
                    opened[event.stream_id] = len(out) - 1
            elif isinstance(event, h2.events.DataReceived):
                self._data(event, out)
            elif isinstance(event, h2.events.StreamEnded):
                if self.body_seen.get(event.stream_id) is not None:
                    self._body_closed(event.stream_id)
                    out.append(BodyEnded(event.stream_id))
                elif event.stream_id in self.tunnels:
                    self.tunnels.discard(event.stream_id)
                    out.append(BodyEnded(event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                stream_id = event.stream_id
                self._body_closed(stream_id)
                self.tunnels.discard(stream_id)
                index = opened.pop(stream_id, None)
                if index is not None:
                    # Opened and reset in one read (rapid reset): no app ever runs for it.
                    out[index] = None
                    self.active.discard(stream_id)
                else:
                    out.append(StreamReset(stream_id))
            elif isinstance(event, h2.events.WindowUpdated):
                out.append(WindowOpened(event.stream_id))
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.preface_done = True
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    out.append(WindowOpened(0))
            elif isinstance(event, h2.events.ConnectionTerminated):
                out.append(ConnectionLost(event.last_stream_id or 0))
            # PING, SETTINGS ACK, PRIORITY and trailers need nothing of us: h2 answers
            # what must be answered, and trailers are not passed to the app (ASGI has none).
        return [event for event in out if event is not None]

    def _calm_down(self, reason: str) -> None:
        """End the connection for a broken bound: GOAWAY(ENHANCE_YOUR_CALM), then raise."""
        try:
            self.conn.close_connection(
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self.last_stream_id
            )
        except h2.exceptions.ProtocolError:
            pass  # closed already
        raise Flood(reason)

    def _body_closed(self, stream_id: int) -> None:
        self.body_seen.pop(stream_id, None)
        self.body_due.pop(stream_id, None)
        self.unread.pop(stream_id, None)

    def _request(self, event: h2.events.RequestReceived, out: list[Event | None]) -> None:
        stream_id = event.stream_id
        if self.going_away:
            # After our GOAWAY: never processed (RFC 9113 6.8), the client may retry it.
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self.active) >= self.max_concurrent_streams:
            # Over SETTINGS_MAX_CONCURRENT_STREAMS, counting apps still running for
            # streams the peer reset: a stream error (RFC 9113 5.1.2), and a reset token.
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            if not self.scanner.refused(self.clock()):
                self._calm_down("streams beyond the concurrency limit (rapid reset)")
            return
        self.last_stream_id = stream_id
        try:
            head = parse_request(event.headers or ())
        except Malformed:
            # RFC 9113 8.1.1: a stream error; the connection and its other streams go on.
            # Each costs a reset token, as a refused stream does (a flood of them is one).
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            if not self.scanner.refused(self.clock()):
                self._calm_down("malformed requests (rapid reset)")
            return
        method = head.method
        raw_target = head.path or b""
        authority = head.authority
        protocol = head.protocol
        headers = head.fields
        max_header_size = self.max_header_size
        for name, value in headers:
            if len(name) + len(value) > max_header_size:
                out.append(RequestRejected(stream_id, 431, "header too large"))
                return
        if len(headers) > self.max_headers:
            out.append(RequestRejected(stream_id, 431, "too many headers"))
            return
        if method == b"CONNECT":
            # Plain CONNECT (a TCP tunnel) is no ASGI request; of the extended CONNECT
            # protocols (RFC 8441) only WebSocket is.  parse_request has checked the
            # pseudo-headers an extended CONNECT needs (:scheme, :path).
            if protocol is None:
                out.append(RequestRejected(stream_id, 501, "CONNECT is not supported"))
                return
            if protocol.lower() != b"websocket":
                out.append(RequestRejected(stream_id, 501, "only :protocol websocket"))
                return
        if len(raw_target) > self.max_path:
            out.append(RequestRejected(stream_id, 414, "request line too long"))
            return
        if authority is not None and head.host is None:
            headers.insert(0, (b"host", authority))
        if self.max_body_size is not None:
            for name, value in headers:
                if (
                    name == b"content-length"
                    and value.isdigit()
                    and int(value) > self.max_body_size
                ):
                    out.append(RequestRejected(stream_id, 413, "request body too large"))
                    return
        raw_path, _, query = raw_target.partition(b"#")[0].partition(b"?")
        ended = event.stream_ended is not None
        if protocol is not None:
            if ended:
                out.append(RequestRejected(stream_id, 400, "WebSocket stream ended at once"))
                return
            self.tunnels.add(stream_id)
        elif not ended:
            self.body_seen[stream_id] = 0
            self.unread[stream_id] = 0
            if self.body_timeout is not None:
                self.body_due[stream_id] = self.clock() + self.body_timeout
        self.active.add(stream_id)
        out.append(
            RequestReceived(
                stream_id=stream_id,
                method=method.decode("ascii", "replace"),
                raw_path=raw_path,
                path=_decode_path(raw_path),
                query_string=query,
                headers=headers,
                end_stream=ended,
                protocol=None if protocol is None else "websocket",
            )
        )

    def _data(self, event: h2.events.DataReceived, out: list[Event | None]) -> None:
        stream_id = event.stream_id
        data = event.data or b""
        flow = event.flow_controlled_length or 0
        seen = self.body_seen.get(stream_id)
        if seen is None:
            if stream_id in self.tunnels:
                out.append(BodyReceived(stream_id, data, flow))
                return
            # The body of a stream we rejected (or answered and reset): only the window.
            self.acknowledge(stream_id, flow)
            return
        seen += len(data)
        self.body_seen[stream_id] = seen
        if self.max_body_size is not None and seen > self.max_body_size:
            self._body_closed(stream_id)
            self.acknowledge(stream_id, flow)
            out.append(RequestRejected(stream_id, 413, "request body too large"))
            return
        if flow:
            self.unread[stream_id] += flow
            self.body_due.pop(stream_id, None)  # the app has body to read: not late
        out.append(BodyReceived(stream_id, data, flow))

    # --- what the shell does to a stream ---------------------------------------

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """The app read ``flow_length`` bytes: give them back to the peer's windows.
        Once the app has read all it was given, the body's deadline runs again."""
        if flow_length:
            self.conn.acknowledge_received_data(flow_length, stream_id)
            unread = self.unread.get(stream_id)
            if unread is not None:
                unread -= flow_length
                self.unread[stream_id] = unread
                if not unread and self.body_timeout is not None:
                    self.body_due[stream_id] = self.clock() + self.body_timeout

    def next_deadline(self) -> float:
        """The earliest request-body deadline (``clock`` time), inf when none runs."""
        return min(self.body_due.values()) if self.body_due else inf

    def expired(self) -> list[RequestRejected]:
        """Request bodies past their deadline: each answered 408 by the shell (or reset,
        if its response began); what still arrives of them is only acknowledged."""
        if not self.body_due:
            return []
        now = self.clock()
        late = [stream_id for stream_id, due in self.body_due.items() if due <= now]
        for stream_id in late:
            self._body_closed(stream_id)
        return [RequestRejected(stream_id, 408, "request body timeout") for stream_id in late]

    def forget(self, stream_id: int) -> None:
        """The stream's task is done: a body still arriving is only acknowledged."""
        self._body_closed(stream_id)
        self.active.discard(stream_id)
        self.tunnels.discard(stream_id)

    def send_headers(
        self, stream_id: int, block: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> None:
        """A response head built by :func:`response_block`."""
        self.conn.send_headers(stream_id, block, end_stream=end_stream)

    def sendable(self, stream_id: int, wanted: int) -> int:
        """How many of ``wanted`` body bytes may go now (0: wait for a WindowOpened)."""
        window = self.conn.local_flow_control_window(stream_id)
        return max(0, min(wanted, window, self.conn.max_outbound_frame_size))

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """``data`` must fit :meth:`sendable`."""
        self.conn.send_data(stream_id, data, end_stream=end_stream)
        self.scanner.data_sent()

    def end_stream(self, stream_id: int) -> None:
        self.conn.end_stream(stream_id)

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """RST_STREAM, unless the stream (or the whole connection) is closed already."""
        self._body_closed(stream_id)
        self.tunnels.discard(stream_id)
        try:
            self.conn.reset_stream(stream_id, error_code)
        except h2.exceptions.ProtocolError:
            pass

    def go_away(self) -> None:
        """Graceful shutdown: GOAWAY(NO_ERROR, last stream seen); the streams up to it go on.

        Written as our own frame because ``h2``'s ``close_connection()`` also closes its
        state machine, after which no stream in flight could send its response.
        """
        if self.going_away:
            return
        self.going_away = True
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream_id
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        # h2 queues its own frames in this buffer; ours joins them in order.
        self.conn._data_to_send += frame.serialize()

    def close(self, error_code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Final GOAWAY: nothing more goes on this connection."""
        try:
            self.conn.close_connection(error_code, last_stream_id=self.last_stream_id)
        except h2.exceptions.ProtocolError:
            pass  # closed already (the peer's GOAWAY or a connection error)
