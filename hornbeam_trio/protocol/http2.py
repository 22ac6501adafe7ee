"""Sans-I/O HTTP/2 for the server side (RFC 9113, RFC 8441): bytes in, events out.

Rule: everything about the frames of one connection lives here: reading them, the
stream states (RFC 9113 5.1), flow control both ways, SETTINGS, PING, GOAWAY,
RST_STREAM, header blocks over CONTINUATION, and which violation is a stream error
(RST_STREAM, the connection goes on) or a connection error (:class:`ProtocolError`
from :meth:`H2Protocol.receive_data`: GOAWAY is queued in :meth:`data_to_send`, and
the connection must close).  Frames are written by ``h2_frames``; request header
blocks are decoded by the ``hpack`` library and checked by ``h2_request``.

On top of the frame layer, what a server decides, so each rule is unit-tested with
plain bytes:

* the request limits HTTP/1.1 has (``max_request_line_size`` for ``:path``,
  ``max_header_size`` per field, ``max_headers``, ``max_request_head_size`` as
  SETTINGS_MAX_HEADER_LIST_SIZE, ``max_request_body_size``), answered with the
  same statuses (414, 431, 413);
* the ASGI view of a request: method, raw path, decoded path, query, and the
  headers with ``host`` from ``:authority`` when the client sent none;
* response headers: validated as on HTTP/1.1, lowercased, connection-specific
  ones (forbidden in HTTP/2) dropped;
* flow control as a window the shell may fill (:meth:`H2Protocol.sendable`), received
  body given back only as the app reads it (:meth:`H2Protocol.acknowledge`), and a
  connection window big enough that one stream's unread body never blocks another
  (invariant: connection window >= max streams x stream window);
* a graceful GOAWAY that leaves the streams in flight able to finish, and a client's
  GOAWAY that does the same for its streams;
* RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL is offered, and an extended CONNECT
  (``:protocol websocket``) is a request whose stream then carries a WebSocket's
  bytes both ways, outside ``max_request_body_size`` (a tunnel, not a body);
* the bounds on hostile input (see ``h2_limits``): frame floods end the connection with
  GOAWAY(ENHANCE_YOUR_CALM) before any frame of the chunk is processed; at most
  ``max_concurrent_streams`` requests have a running app (counted until the shell calls
  :meth:`H2Protocol.forget`, so a stream reset by the peer still counts while its app
  runs), beyond that REFUSED_STREAM, each refusal (and each malformed request) costing a
  reset token; a stream opened and reset within one read never reaches an app; a
  request body that makes no progress for ``body_timeout`` seconds while its app waits
  for it is answered 408 (RST_STREAM once the response began).

Memory per connection is bounded: ``streams`` holds the streams not yet closed both
ways (at most ``max_concurrent_streams`` plus those whose app still runs), ``resets``
the last :data:`RESETS_REMEMBERED` streams closed by a reset (frames the peer had in
flight for them are ignored, RFC 9113 5.1), ``blocks`` and ``views`` at most
:data:`BLOCKS_REMEMBERED` small header blocks, the input buffer less than one frame.

Imports no event loop and nothing of ours outside ``protocol/``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import inf
from typing import ClassVar, Final, NoReturn

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from . import h2_frames as f
from .h2_frames import ErrorCode
from .h2_limits import FrameScanner
from .h2_request import MALFORMED, Malformed, RequestView, parse_request, request_view
from .headers import check_name, check_value

__all__ = [
    "PREFACE",
    "BodyEnded",
    "BodyReceived",
    "ConnectionLost",
    "ErrorCode",
    "Flood",
    "H2Protocol",
    "ProtocolError",
    "RequestReceived",
    "RequestRejected",
    "StreamClosed",
    "StreamReset",
    "WindowOpened",
    "response_block",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The first bytes of every HTTP/2 connection (RFC 9113 3.4); on a cleartext port they
mean h2c by prior knowledge."""


class ProtocolError(Exception):
    """A connection error (GOAWAY queued, close), or an operation on a closed stream
    (:class:`StreamClosed`)."""

    error_code: ErrorCode = ErrorCode.PROTOCOL_ERROR

    def __init__(self, reason: str, error_code: ErrorCode | None = None) -> None:
        super().__init__(reason)
        if error_code is not None:
            self.error_code = error_code


class Flood(ProtocolError):
    """A per-connection bound broke: GOAWAY(ENHANCE_YOUR_CALM) is queued, close."""

    error_code = ErrorCode.ENHANCE_YOUR_CALM


class StreamClosed(ProtocolError):
    """The shell wrote to a stream that is closed (reset by the peer meanwhile, or
    ended): nothing was queued, the connection goes on."""

    error_code = ErrorCode.STREAM_CLOSED


STREAM_WINDOW: Final = 65535
"""Bytes of request body a stream may have unread by its app (SETTINGS_INITIAL_WINDOW_SIZE)."""
MAX_WINDOW: Final = f.MAX_WINDOW
RESETS_REMEMBERED: Final = 1024
GAPS_REMEMBERED: Final = 64
BLOCKS_REMEMBERED: Final = 16
"""Header blocks remembered per connection (``H2Protocol.blocks``); only small ones:"""
BLOCK_REMEMBERED_MAX: Final = 256
BLOCK_FIELDS_REMEMBERED_MAX: Final = 32
"""A client's repeated request blocks are all-indexed, a byte or two per field; these
bounds keep a connection's caches under ~100 KiB whatever it sends."""

_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
"""Response header names RFC 9113 8.2.2 forbids; an app written for HTTP/1.1 may send them."""


@dataclass(slots=True)
class RequestReceived:
    """A request head that passed our limits; the shell starts its app.

    Treated as immutable, like the other events, but not frozen: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, once per request."""

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
        lname = bytes(check_name(name))  # a bytearray's lowercase is one too
        check_value(value)
        if lname in _CONNECTION_SPECIFIC:
            continue
        if lname == b"te" and value.lower() != b"trailers":
            continue
        block.append((lname, bytes(value)))
    return block


_response_fields: dict[tuple[bytes, bytes], bytes] = {}
"""An app's response header, as given -> its HPACK field (b"": dropped); bounded."""
_status_fields: dict[int, bytes] = {}


def encode_response_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``h2_frames.encode_block(response_block(status, headers))`` in one pass, each field
    remembered as the app gave it: a dict lookup per header for the app that sends the
    same headers again (every app).  Raises ValueError as :func:`response_block` does;
    ``tests/test_http2_protocol.py::test_encode_response_head_is_response_block_encoded``
    keeps the two in step."""
    encoded = _status_fields.get(status)
    if encoded is None:
        encoded = f.encode_field(b":status", b"%d" % status)
        if len(_status_fields) < 1000:
            _status_fields[status] = encoded
    parts = [encoded]
    cache = _response_fields
    for field in headers:
        try:
            encoded = cache.get(field)
            remember = True
        except TypeError:  # a list, a bytearray: checked, never remembered
            encoded = None
            remember = False
        if encoded is None:
            name, value = field
            lname = bytes(check_name(name))
            check_value(value)
            if lname in _CONNECTION_SPECIFIC or (lname == b"te" and value.lower() != b"trailers"):
                encoded = b""
            else:
                encoded = f.encode_field(lname, bytes(value))
            if remember and len(value) <= f.CACHED_VALUE_MAX_LEN:
                if len(cache) >= f.CACHE_MAX:
                    cache.clear()
                cache[field] = encoded
        if encoded:
            parts.append(encoded)
    return b"".join(parts)


class _Stream:
    """A stream the peer opened that is not closed both ways (RFC 9113 5.1: open or
    half-closed); closed, it leaves :attr:`H2Protocol.streams`."""

    __slots__ = (
        "expected",
        "in_window",
        "local_open",
        "out_window",
        "processed",
        "received",
        "remote_open",
    )

    def __init__(self, out_window: int, remote_open: bool, expected: int | None) -> None:
        self.remote_open = remote_open
        """The peer has not sent END_STREAM."""
        self.local_open = True
        """We have not sent END_STREAM."""
        self.out_window = out_window
        self.in_window = STREAM_WINDOW
        """What the peer may still send on the stream before our next WINDOW_UPDATE."""
        self.processed = 0
        """Body bytes the app read that are not yet given back to the peer."""
        self.expected = expected
        """``content-length``, None if absent: the DATA must add up to it (8.1.1)."""
        self.received = 0


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
        self.max_head_size = max_head_size
        self.clock = clock
        self.scanner = FrameScanner(max_header_block=max_head_size + 16384, now=clock())
        self.decoder = Decoder(max_header_list_size=max_head_size)
        self.out: list[bytes] = []
        """Frames queued for :meth:`data_to_send`, in order."""
        self.buffer = b""
        """The start of a frame not yet complete (less than 9 + 16384 bytes)."""
        self.preface_left = len(PREFACE)
        """Bytes of the client's connection preface not yet received."""
        self.preface_done = False
        """The client's preface and first SETTINGS have arrived."""
        self.closed = False
        """A connection error or the final GOAWAY: nothing more is read or queued."""
        self.streams: dict[int, _Stream] = {}
        self.resets: OrderedDict[int, None] = OrderedDict()
        """The last streams closed by a reset, either side's: frames the peer had in flight
        for them are ignored.  Other streams at or below ``highest`` closed normally, or
        were skipped (``gaps``)."""
        self.gaps: deque[tuple[int, int]] = deque(maxlen=GAPS_REMEMBERED)
        """Ranges of stream ids the peer skipped: a HEADERS on one is no stream reuse but
        an unexpected id (PROTOCOL_ERROR, RFC 9113 5.1.1)."""
        self.blocks: dict[bytes, list[tuple[bytes, bytes]]] = {}
        """Header blocks that decoded without changing the HPACK table, and their fields:
        decoded again, they give the same fields as long as the table has not changed
        (any decode that changes it empties this cache)."""
        self.views: dict[bytes, RequestView] = {}
        """Of those blocks, the ones that opened a stream: their request's view, so a
        repeated block costs no checks either."""
        self.highest = 0
        """The highest stream id the peer opened; streams above it are idle."""
        self.block: list[bytes] | None = None
        """The header block in progress (HEADERS without END_HEADERS, CONTINUATIONs)."""
        self.block_sid = 0
        self.block_flags = 0
        self.block_bad_priority = False
        self.conn_out = 65535
        """Our connection send window."""
        self.conn_in = 65535
        """What the peer may still send on the connection before our next WINDOW_UPDATE."""
        self.conn_window = 65535
        self.conn_processed = 0
        self.peer_initial = 65535
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.table_zeroed = False
        """Our first header block said: dynamic table size 0 (``h2_frames``)."""
        self.opened: dict[int, int] = {}
        """Requests reported by the current receive_data call, by stream: their index in
        its output (a reset within the call unreports them)."""
        self.active: set[int] = set()
        """Streams reported to the shell whose task has not ended (:meth:`forget`)."""
        self.answered: set[int] = set()
        """Those of ``active`` whose response we ended: their apps are finishing."""
        self.body_timeout = body_timeout
        self.body_due: dict[int, float] = {}
        """Deadline of each request body the app waits for: armed while the body is open
        and the app holds none of it unread (a client held back by our window is not late)."""
        self.unread: dict[int, int] = {}
        """Flow-controlled bytes reported and not yet acknowledged, per open body."""
        self.body_seen: dict[int, int] = {}
        """Body bytes received per open request stream (for ``max_body_size``)."""
        self.tunnels: set[int] = set()
        """Open extended-CONNECT streams: their DATA is reported unbounded by
        ``max_body_size`` (the WebSocket's own limits apply to it)."""
        self.going_away = False
        """A GOAWAY was sent: streams above ``last_stream_id`` are refused."""
        self.last_stream_id = 0
        """The last stream handed to the shell (or answered by the core): GOAWAY's."""

    def initiate(self) -> None:
        """Queue our SETTINGS, and widen the connection window to the invariant above."""
        self.out.append(
            f.settings(
                {
                    f.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
                    f.MAX_HEADER_LIST_SIZE: self.max_head_size,
                    f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    f.ENABLE_CONNECT_PROTOCOL: 1,
                }
            )
        )
        window = min(self.max_concurrent_streams * STREAM_WINDOW, MAX_WINDOW)
        if window > self.conn_window:
            self.out.append(f.window_update(0, window - self.conn_window))
            self.conn_in += window - self.conn_window
            self.conn_window = window

    @property
    def pending(self) -> bool:
        """Frames are queued for :meth:`data_to_send`."""
        return bool(self.out)

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    # --- reading ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Our events for ``data``.  Raises ProtocolError (or its :class:`Flood`): GOAWAY
        is queued, close after sending it."""
        if self.closed:
            return []
        verdict = self.scanner.scan(data, self.clock())
        if verdict:
            self._calm_down(verdict)
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        pos = 0
        if self.preface_left:
            done = len(PREFACE) - self.preface_left
            pos = min(self.preface_left, len(data))
            if data[:pos] != PREFACE[done : done + pos]:
                self._error(ErrorCode.PROTOCOL_ERROR, "no HTTP/2 connection preface")
            self.preface_left -= pos
        out: list[Event | None] = []
        self.opened = {}
        end = len(data)
        unpack = f.HEAD.unpack_from
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = high << 16 | low
            if length > f.DEFAULT_MAX_FRAME:
                self._error(ErrorCode.FRAME_SIZE_ERROR, "frame over SETTINGS_MAX_FRAME_SIZE")
            start = pos + 9
            if end - start < length:
                break
            pos = start + length
            payload = data[start:pos]
            stream_id &= 0x7FFFFFFF
            if self.block is not None and kind != f.CONTINUATION:
                self._error(ErrorCode.PROTOCOL_ERROR, "a frame inside a header block")
            if kind == f.DATA:
                self._on_data(flags, stream_id, payload, out)
            elif kind == f.HEADERS:
                self._on_headers(flags, stream_id, payload, out)
            elif not self.preface_done and (kind != f.SETTINGS or flags & f.ACK):
                self._error(ErrorCode.PROTOCOL_ERROR, "the preface's first frame is no SETTINGS")
            elif kind == f.WINDOW_UPDATE:
                self._on_window_update(stream_id, payload, out)
            elif kind == f.RST_STREAM:
                self._on_rst_stream(stream_id, payload, out)
            elif kind == f.SETTINGS:
                self._on_settings(flags, stream_id, payload, out)
            elif kind == f.PING:
                if stream_id:
                    self._error(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    self._error(ErrorCode.FRAME_SIZE_ERROR, "PING of other than 8 bytes")
                if not flags & f.ACK:
                    self.out.append(f.frame(f.PING, f.ACK, 0, payload))
            elif kind == f.CONTINUATION:
                self._on_continuation(flags, stream_id, payload, out)
            elif kind == f.PRIORITY:
                self._on_priority(stream_id, payload, out)
            elif kind == f.GOAWAY:
                if stream_id:
                    self._error(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
                if length < 8:
                    self._error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY under 8 bytes")
                out.append(ConnectionLost(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF))
            elif kind == f.PUSH_PROMISE:
                self._error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # Frames of unknown types are ignored (RFC 9113 5.5).
        if pos < end:
            self.buffer = data[pos:]
        return [event for event in out if event is not None]

    def _on_data(self, flags: int, stream_id: int, payload: bytes, out: list[Event | None]) -> None:
        if not stream_id:
            self._error(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        if not self.preface_done:
            self._error(ErrorCode.PROTOCOL_ERROR, "the preface's first frame is no SETTINGS")
        flow = len(payload)
        self.conn_in -= flow
        if self.conn_in < 0:
            self._error(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        data = payload
        if flags & f.PADDED:
            if not flow or payload[0] >= flow:
                self._error(ErrorCode.PROTOCOL_ERROR, "DATA padding longer than its frame")
            data = payload[1 : flow - payload[0]]
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if stream is None and stream_id > self.highest:
                self._error(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            self._give_back(flow)
            if stream is not None or stream_id not in self.resets:
                self._stream_error(stream_id, ErrorCode.STREAM_CLOSED, out)
            return  # else: reset by us (or long closed), in flight: ignored
        stream.in_window -= flow
        if stream.in_window < 0:
            self._give_back(flow)
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, out)
            return
        stream.received += len(data)
        if stream.expected is not None and stream.received > stream.expected:
            self._give_back(flow)
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, out)
            return
        self._data(stream_id, data, flow, out)
        if flags & f.END_STREAM:
            self._remote_end(stream_id, stream, out)

    def _on_headers(
        self, flags: int, stream_id: int, payload: bytes, out: list[Event | None]
    ) -> None:
        if not stream_id or not stream_id & 1:
            self._error(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if not self.preface_done:
            self._error(ErrorCode.PROTOCOL_ERROR, "the preface's first frame is no SETTINGS")
        block = payload
        if flags & (f.PADDED | f.PRIORITY_FLAG):
            start = 0
            stop = len(payload)
            if flags & f.PADDED:
                if not payload:
                    self._error(ErrorCode.FRAME_SIZE_ERROR, "HEADERS without its pad length")
                start = 1
                stop -= payload[0]
            bad_priority = False
            if flags & f.PRIORITY_FLAG:
                if len(payload) < start + 5:
                    self._error(ErrorCode.FRAME_SIZE_ERROR, "HEADERS without its priority")
                depends = int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF
                bad_priority = depends == stream_id
                start += 5
            if stop < start:
                self._error(ErrorCode.PROTOCOL_ERROR, "HEADERS padding longer than its frame")
            block = payload[start:stop]
            self.block_bad_priority = bad_priority
        else:
            self.block_bad_priority = False
        if flags & f.END_HEADERS:
            self._header_block(stream_id, flags, block, out)
        else:
            self.block = [block]
            self.block_sid = stream_id
            self.block_flags = flags

    def _on_continuation(
        self, flags: int, stream_id: int, payload: bytes, out: list[Event | None]
    ) -> None:
        if self.block is None or stream_id != self.block_sid:
            self._error(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self.block.append(payload)
        if flags & f.END_HEADERS:
            block = b"".join(self.block)
            self.block = None
            self._header_block(stream_id, self.block_flags, block, out)

    def _header_block(
        self, stream_id: int, flags: int, block: bytes, out: list[Event | None]
    ) -> None:
        """A whole header block: decoded whatever becomes of its stream (the HPACK
        table is the connection's), then a request, trailers, or an error."""
        fields = self.blocks.get(block)
        if fields is None:
            fields = self._decode(block)
        end_stream = bool(flags & f.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers
            if not stream.remote_open:
                self._stream_error(stream_id, ErrorCode.STREAM_CLOSED, out)
            elif not end_stream or any(name[:1] == b":" for name, _ in fields):
                self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, out)
            else:
                self._remote_end(stream_id, stream, out)  # trailers are not passed on
            return
        if stream_id <= self.highest:
            if stream_id in self.resets:
                return  # reset, in flight: ignored
            if any(low <= stream_id <= high for low, high in self.gaps):
                self._error(ErrorCode.PROTOCOL_ERROR, "HEADERS on a stream id skipped")
            self._error(ErrorCode.STREAM_CLOSED, "HEADERS on a closed stream")
        if stream_id > self.highest + 2:
            self.gaps.append((self.highest + 2, stream_id - 2))
        self.highest = stream_id
        if self.block_bad_priority:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, out)
            return
        self._request(stream_id, block, fields, end_stream, out)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """HPACK-decode ``block``; remember it if the table is as it was (see ``blocks``).

        The table changed iff its size limit did, or an entry was added: the newest
        entry is then a new tuple, or the table was emptied by an entry too big for it.
        """
        table = self.decoder.header_table
        entries = table.dynamic_entries
        count = len(entries)
        newest = entries[0] if count else None
        limit = table.maxsize
        try:
            fields: list[tuple[bytes, bytes]] = self.decoder.decode(block, raw=True)  # type: ignore[assignment]
        except OversizedHeaderListError:
            self._calm_down("header list over SETTINGS_MAX_HEADER_LIST_SIZE")
        except (HPACKError, IndexError, TypeError, ValueError):
            self._error(ErrorCode.COMPRESSION_ERROR, "undecodable header block")
        blocks = self.blocks
        if (
            len(entries) != count
            or (entries[0] if count else None) is not newest
            or table.maxsize != limit
        ):
            if blocks:
                blocks.clear()
                self.views.clear()
        elif len(block) <= BLOCK_REMEMBERED_MAX and len(fields) <= BLOCK_FIELDS_REMEMBERED_MAX:
            if len(blocks) >= BLOCKS_REMEMBERED:
                blocks.clear()
                self.views.clear()
            blocks[block] = fields
        return fields

    def _on_window_update(self, stream_id: int, payload: bytes, out: list[Event | None]) -> None:
        if len(payload) != 4:
            self._error(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                self._error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_out += increment
            if self.conn_out > MAX_WINDOW:
                self._error(ErrorCode.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            out.append(WindowOpened(0))
            return
        if stream_id > self.highest:
            self._error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # closed: allowed for a while (RFC 9113 6.9)
        if not increment:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, out)
            return
        stream.out_window += increment
        if stream.out_window > MAX_WINDOW:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, out)
            return
        out.append(WindowOpened(stream_id))

    def _on_rst_stream(self, stream_id: int, payload: bytes, out: list[Event | None]) -> None:
        if not stream_id:
            self._error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            self._error(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of other than 4 bytes")
        if stream_id > self.highest:
            self._error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if self.streams.pop(stream_id, None) is None:
            return
        self._remember(stream_id)
        self._unreport(stream_id, out)

    def _on_settings(
        self, flags: int, stream_id: int, payload: bytes, out: list[Event | None]
    ) -> None:
        if stream_id:
            self._error(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                self._error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a length not 6n")
        window_changed = False
        for at in range(0, len(payload), 6):
            code = payload[at] << 8 | payload[at + 1]
            value = int.from_bytes(payload[at + 2 : at + 6], "big")
            if code == f.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._error(ErrorCode.FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta = value - self.peer_initial
                self.peer_initial = value
                for stream in self.streams.values():
                    stream.out_window += delta
                    if stream.out_window > MAX_WINDOW:
                        self._error(ErrorCode.FLOW_CONTROL_ERROR, "a window over 2^31-1")
                window_changed = True
            elif code == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    self._error(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif code in (f.ENABLE_PUSH, f.ENABLE_CONNECT_PROTOCOL) and value > 1:
                self._error(ErrorCode.PROTOCOL_ERROR, "a boolean setting over 1")
            # HEADER_TABLE_SIZE: our blocks use no dynamic table; the rest is advisory.
        self.out.append(f.SETTINGS_ACK)
        self.preface_done = True
        if window_changed:
            out.append(WindowOpened(0))

    def _on_priority(self, stream_id: int, payload: bytes, out: list[Event | None]) -> None:
        """Priorities are not acted on (RFC 9113 5.3.2 lets us); only checked."""
        if not stream_id:
            self._error(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCode.FRAME_SIZE_ERROR, out)
        elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, out)

    # --- stream states ----------------------------------------------------------------

    def _remember(self, stream_id: int) -> None:
        """``stream_id`` was closed by a reset."""
        resets = self.resets
        resets[stream_id] = None
        if len(resets) > RESETS_REMEMBERED:
            resets.popitem(last=False)

    def _remote_end(self, stream_id: int, stream: _Stream, out: list[Event | None]) -> None:
        """The peer's END_STREAM (on DATA or trailers)."""
        if stream.expected is not None and stream.received != stream.expected:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, out)
            return
        stream.remote_open = False
        if not stream.local_open:
            del self.streams[stream_id]
        if self.body_seen.get(stream_id) is not None:
            self._body_closed(stream_id)
            out.append(BodyEnded(stream_id))
        elif stream_id in self.tunnels:
            self.tunnels.discard(stream_id)
            out.append(BodyEnded(stream_id))

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.local_open = False
        if stream_id in self.active:
            self.answered.add(stream_id)
        if not stream.remote_open:
            del self.streams[stream_id]

    def _unreport(self, stream_id: int, out: list[Event | None]) -> None:
        """The stream was reset: its app learns it, or, if it was reported in this very
        read (rapid reset), no app ever runs for it."""
        self._body_closed(stream_id)
        self.tunnels.discard(stream_id)
        index = self.opened.pop(stream_id, None)
        if index is not None:
            out[index] = None
            self.active.discard(stream_id)
            self.answered.discard(stream_id)
        else:
            out.append(StreamReset(stream_id))

    def _stream_error(self, stream_id: int, code: ErrorCode, out: list[Event | None]) -> None:
        """RST_STREAM(``code``) for a peer's mistake on one stream (RFC 9113 5.4.2); each
        costs a reset token, so a stream of mistakes is a flood."""
        self.out.append(f.rst_stream(stream_id, code))
        self._remember(stream_id)
        if self.streams.pop(stream_id, None) is not None:
            self._unreport(stream_id, out)
        if not self.scanner.refused(self.clock()):
            self._calm_down("stream errors (rapid reset)")

    def _refuse(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        """RST_STREAM for a stream never opened to the shell, at a reset token's cost."""
        self.out.append(f.rst_stream(stream_id, code))
        self._remember(stream_id)
        if not self.scanner.refused(self.clock()):
            self._calm_down(reason)

    def _error(self, code: ErrorCode, reason: str) -> NoReturn:
        """A connection error (RFC 9113 5.4.1): GOAWAY(``code``), then raise."""
        if not self.closed:
            self.closed = True
            self.out.append(f.goaway(self.last_stream_id, code))
        raise ProtocolError(reason, code)

    def _calm_down(self, reason: str) -> NoReturn:
        """End the connection for a broken bound: GOAWAY(ENHANCE_YOUR_CALM), then raise."""
        if not self.closed:
            self.closed = True
            self.out.append(f.goaway(self.last_stream_id, ErrorCode.ENHANCE_YOUR_CALM))
        raise Flood(reason)

    # --- our rules on requests --------------------------------------------------------

    def _body_closed(self, stream_id: int) -> None:
        self.body_seen.pop(stream_id, None)
        self.body_due.pop(stream_id, None)
        self.unread.pop(stream_id, None)

    def _request(
        self,
        stream_id: int,
        block: bytes,
        fields: Iterable[tuple[bytes, bytes]],
        ended: bool,
        out: list[Event | None],
    ) -> None:
        if self.going_away:
            # After our GOAWAY: never processed (RFC 9113 6.8), the client may retry it.
            self.out.append(f.rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            self._remember(stream_id)
            return
        limit = self.max_concurrent_streams
        if len(self.active) - len(self.answered) >= limit or len(self.active) >= 2 * limit:
            # Over SETTINGS_MAX_CONCURRENT_STREAMS, counting apps still running for
            # streams the peer reset: a stream error (RFC 9113 5.1.2), and a reset token.
            # An app whose response is complete is not counted (the client may open the
            # next stream as soon as it has the response, before the app returns), up to
            # twice the limit of running apps in all.
            self._refuse(
                stream_id,
                ErrorCode.REFUSED_STREAM,
                "streams beyond the concurrency limit (rapid reset)",
            )
            return
        self.last_stream_id = stream_id
        view = self.views.get(block)
        if view is None:
            try:
                view = request_view(
                    parse_request(fields),
                    max_header_size=self.max_header_size,
                    max_headers=self.max_headers,
                    max_body_size=self.max_body_size,
                    max_path=self.max_path,
                )
            except Malformed:
                view = MALFORMED
            if block in self.blocks:
                self.views[block] = view
        if view.malformed or (ended and view.expected):
            # RFC 9113 8.1.1: a stream error; the connection and its other streams go on.
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, "malformed requests (rapid reset)")
            return
        self._open(stream_id, ended, view.expected)  # None if rejected
        if view.rejected is not None:
            out.append(RequestRejected(stream_id, *view.rejected))
            return
        protocol = view.protocol
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
        self.opened[stream_id] = len(out)
        out.append(
            RequestReceived(
                stream_id,
                view.method,
                view.raw_path,
                view.path,
                view.query_string,
                view.headers.copy(),  # the app's own
                ended,
                protocol,
            )
        )

    def _open(self, stream_id: int, ended: bool, expected: int | None) -> None:
        self.streams[stream_id] = _Stream(self.peer_initial, not ended, expected)

    def _data(self, stream_id: int, data: bytes, flow: int, out: list[Event | None]) -> None:
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

    def _give_back(self, flow: int) -> None:
        """Connection window: given back in one WINDOW_UPDATE once half of it is used."""
        processed = self.conn_processed + flow
        if processed >= self.conn_window // 2:
            self.out.append(f.window_update(0, processed))
            self.conn_in += processed
            processed = 0
        self.conn_processed = processed

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """The app read ``flow_length`` bytes: give them back to the peer's windows (once
        half a window is due).  Once the app has read all it was given, the body's
        deadline runs again."""
        if not flow_length:
            return
        self._give_back(flow_length)
        stream = self.streams.get(stream_id)
        if stream is not None and stream.remote_open:
            processed = stream.processed + flow_length
            if processed >= STREAM_WINDOW // 2:
                self.out.append(f.window_update(stream_id, processed))
                stream.in_window += processed
                processed = 0
            stream.processed = processed
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
        self.answered.discard(stream_id)
        self.tunnels.discard(stream_id)

    def _open_stream(self, stream_id: int) -> _Stream:
        """The stream to write on; raises :class:`StreamClosed` if we may not."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open or self.closed:
            raise StreamClosed(f"stream {stream_id} is closed")
        return stream

    def send_headers(
        self, stream_id: int, block: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> None:
        """A response head built by :func:`response_block`."""
        self.send_head(stream_id, f.encode_block(block), end_stream=end_stream)

    def send_head(self, stream_id: int, encoded: bytes, *, end_stream: bool = False) -> None:
        """A response head encoded by :func:`encode_response_head` (or ``encode_block``)."""
        stream = self._open_stream(stream_id)
        if not self.table_zeroed:
            self.table_zeroed = True
            encoded = f.TABLE_SIZE_ZERO + encoded
        flags = f.END_STREAM if end_stream else 0
        limit = self.peer_max_frame
        if len(encoded) <= limit:
            self.out.append(f.frame(f.HEADERS, flags | f.END_HEADERS, stream_id, encoded))
        else:
            self.out.append(f.frame(f.HEADERS, flags, stream_id, encoded[:limit]))
            for at in range(limit, len(encoded), limit):
                last = at + limit >= len(encoded)
                self.out.append(
                    f.frame(
                        f.CONTINUATION,
                        f.END_HEADERS if last else 0,
                        stream_id,
                        encoded[at : at + limit],
                    )
                )
        if end_stream:
            self._local_end(stream_id, stream)

    def sendable(self, stream_id: int, wanted: int) -> int:
        """How many of ``wanted`` body bytes may go now (0: wait for a WindowOpened).
        Raises StreamClosed."""
        stream = self._open_stream(stream_id)
        return max(0, min(wanted, stream.out_window, self.conn_out, self.peer_max_frame))

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """``data`` must fit :meth:`sendable`.  Raises StreamClosed."""
        stream = self._open_stream(stream_id)
        size = len(data)
        if size > stream.out_window or size > self.conn_out or size > self.peer_max_frame:
            raise ProtocolError(f"{size} bytes do not fit the windows or the frame size")
        stream.out_window -= size
        self.conn_out -= size
        self.out.append(
            f.HEAD.pack(
                size >> 16, size & 0xFFFF, f.DATA, f.END_STREAM if end_stream else 0, stream_id
            )
        )
        if size:
            self.out.append(data)
        if end_stream:
            self._local_end(stream_id, stream)
        self.scanner.data_sent()

    def send_body(self, stream_id: int, data: bytes, offset: int, *, end_stream: bool) -> int:
        """As much of ``data[offset:]`` (not empty) as the windows and the frame size
        allow, in one DATA frame, with END_STREAM if ``end_stream`` and it is the rest;
        the bytes sent (0: wait for a WindowOpened).  :meth:`sendable` and
        :meth:`send_data` in one call, without a copy when all of ``data`` goes.
        Raises StreamClosed."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open or self.closed:
            raise StreamClosed(f"stream {stream_id} is closed")
        size = len(data) - offset
        room = min(stream.out_window, self.conn_out, self.peer_max_frame)
        if size > room:
            if room <= 0:
                return 0
            size = room
            end_stream = False
        stream.out_window -= size
        self.conn_out -= size
        out = self.out
        out.append(
            f.HEAD.pack(
                size >> 16, size & 0xFFFF, f.DATA, f.END_STREAM if end_stream else 0, stream_id
            )
        )
        out.append(data if size == len(data) else data[offset : offset + size])
        if end_stream:
            self._local_end(stream_id, stream)
        self.scanner.data_sent()
        return size

    def end_stream(self, stream_id: int) -> None:
        stream = self._open_stream(stream_id)
        self.out.append(f.frame(f.DATA, f.END_STREAM, stream_id))
        self._local_end(stream_id, stream)

    def reset(self, stream_id: int, error_code: int = ErrorCode.INTERNAL_ERROR) -> None:
        """RST_STREAM, unless the stream (or the whole connection) is closed already."""
        self._body_closed(stream_id)
        self.tunnels.discard(stream_id)
        if self.streams.pop(stream_id, None) is None or self.closed:
            return
        self.out.append(f.rst_stream(stream_id, error_code))
        self._remember(stream_id)

    def go_away(self) -> None:
        """Graceful shutdown: GOAWAY(NO_ERROR, last stream seen); the streams up to it go on."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.out.append(f.goaway(self.last_stream_id, ErrorCode.NO_ERROR))

    def close(self, error_code: int = ErrorCode.NO_ERROR) -> None:
        """Final GOAWAY: nothing more goes on this connection."""
        if not self.closed:
            self.closed = True
            self.out.append(f.goaway(self.last_stream_id, error_code))
