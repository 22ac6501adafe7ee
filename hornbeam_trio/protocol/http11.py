"""Sans-I/O HTTP/1.1 for the server side: bytes in, events out; ASGI messages in, bytes out.

Rule: every HTTP/1.1 decision lives here -- request limits and their status codes,
keep-alive, pipelining, upgrade hand-off, response framing.  The Trio connection
handler only moves bytes between the socket and these objects, so each rule is
unit-tested with byte strings (``tests/test_http_protocol.py``).  Nothing here
imports an event loop.

Parsing is delegated to ``httptools`` (llhttp, in C) because this is the hot path
of a server that has to keep up with uvicorn.  llhttp validates syntax but knows
no size limits, so those are enforced here on the spans it reports as they
arrive -- including partial ones -- and the parser never buffers an unbounded head.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, NoReturn, TypeAlias
from urllib.parse import unquote_to_bytes

import httptools

from .headers import CACHE_MAX, CACHED_VALUE_MAX_LEN, check_name, check_value

__all__ = [
    "CONTINUE_RESPONSE",
    "END_OF_MESSAGE",
    "LINES_PER_STEP",
    "NEED_DATA",
    "SLICE",
    "Event",
    "HTTPError",
    "HTTPParser",
    "Request",
    "ResponseEncoder",
    "Sentinel",
    "loggable_path",
    "simple_response",
]


class HTTPError(Exception):
    """The request cannot be served; answer ``status`` and close the connection.

    Raised by :meth:`HTTPParser.feed`.  The parser is dead afterwards (every later
    ``feed`` raises the same error) because HTTP/1.1 has no way to resynchronise
    after a framing error.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Request:
    """A request head; its body follows as ``bytes`` events, then ``END_OF_MESSAGE``."""

    method: str
    raw_path: bytes
    path: str
    query_string: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    upgrade: bytes | None
    expect_continue: bool


class Sentinel:
    """A named marker event; compare with ``is``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


END_OF_MESSAGE: Final = Sentinel("END_OF_MESSAGE")
NEED_DATA: Final = Sentinel("NEED_DATA")

Event: TypeAlias = Request | bytes | Sentinel

CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# llhttp consumes the bytes of a header line without reporting them until the
# next line starts; this much beyond max_header_size is tolerated for the
# request-line tail, ": ", OWS and CRLF of such an invisible partial line.
_PARTIAL_LINE_SLACK: Final = 64

SLICE: Final = 2048
"""A read parsed in one step at most, once it proves to be made of short lines."""
LINES_PER_STEP: Final = 256
"""More newlines than this in one read: it is parsed in slices of SLICE bytes.

httptools calls back into Python about once per line: per header, per chunk of a
chunked body (two newlines each), per pipelined request.  A 64 KiB read of one-byte
chunks is ~10,000 calls, ~20 ms in one task step, while every other connection
waits.  A read with more lines than this is parsed SLICE bytes per step (at most
~350 calls: a chunk takes 6 bytes), and the connection checkpoints between slices
(see :attr:`HTTPParser.more`).  Counting the newlines is one pass in C, made only
for reads longer than a slice; a Content-Length body (one call per read whatever
its size) or a large-chunked upload has few newlines and is parsed whole."""

REPEAT_READ_MAX: Final = 2048
"""The longest read a connection keeps until its next one, to spot an exact repeat.

A keep-alive client that polls, health-checks or benchmarks sends the same bytes
again and again.  A read that is exactly the one before it (both starting at a
message boundary) is parsed once more and, if it was one whole keep-alive request,
remembered; from then on a read that is that request again (the same head, and a
Content-Length body of the same size) gets the same events without httptools:
~1.5 us of a ~12 us request (five callbacks from C, the checks of every header,
the request view).  A read that is not a repeat costs one bytes comparison.
Held per connection while it is idle: this read, and the remembered request's
head (at most this long) with one tuple of its header pairs."""

DEFAULT_MAX_HEAD_SIZE: Final = 64 * 1024
"""Request line plus headers, and apart chunked trailers (Config.max_request_head_size)."""

_WATCHED_REQUEST_HEADERS: Final = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"expect", b"upgrade")
)

UPGRADE_ACCEPTED: Final = b"websocket"
"""The one protocol a connection may switch to; every other Upgrade offer is declined."""

# Method strings are interned once so a request costs no decode for them.
_METHOD_NAMES: dict[bytes, str] = {}


class _Callbacks:
    """The object httptools calls into.

    httptools looks the callbacks up once, at parser construction, so binding
    them to the parser's private methods costs nothing per call and keeps them
    off :class:`HTTPParser`'s public surface.
    """

    __slots__ = (
        "on_body",
        "on_header",
        "on_headers_complete",
        "on_message_begin",
        "on_message_complete",
        "on_url",
    )

    def __init__(self, parser: HTTPParser) -> None:
        self.on_message_begin = parser._on_message_begin
        self.on_url = parser._on_url
        self.on_header = parser._on_header
        self.on_headers_complete = parser._on_headers_complete
        self.on_body = parser._on_body
        self.on_message_complete = parser._on_message_complete


class _DeclinedUpgradeBody:
    """Callbacks of the second httptools parser that reads a declined upgrade's body.

    llhttp skips the body of any request that offers an upgrade and hands every
    later byte over as the new protocol's.  When the offer is declined, the body
    is still the app's: a fresh parser, primed with a head that carries only the
    request's framing (Content-Length or chunked), reads it with the same rules.
    """

    __slots__ = ("on_body", "on_message_complete")

    def __init__(self, parser: HTTPParser) -> None:
        self.on_body = parser._on_body
        self.on_message_complete = parser._on_last_message_complete


class _Stop(Exception):
    """Raised from a callback to stop httptools after the connection's last request.

    llhttp itself refuses data after a ``Connection: close`` message, but not after
    one this parser decided to close on (a declined upgrade, chunked HTTP/1.0): it
    would go on parsing as if keep-alive.
    """


class HTTPParser:
    """Request parser for one connection; handles pipelined requests in order.

    Events, in order, per request: one :class:`Request`, zero or more non-empty
    ``bytes`` body chunks, ``END_OF_MESSAGE``.  ``NEED_DATA`` means nothing
    complete is buffered.  The body bytes one :meth:`feed` completes come out as
    one event, however many chunks carried them.

    After a request that is not keep-alive has ended, further input is discarded:
    the connection closes after its response, so whatever follows is never served.
    That includes a request whose ``Upgrade`` offer is declined (anything but
    WebSocket, e.g. ``h2c``): it is served over HTTP/1.1, body included, then the
    connection closes.  After a WebSocket upgrade request, parsing stops for good
    and the following bytes (and any fed later, up to ``max_head_size``) collect
    in :attr:`upgrade_tail`.

    Memory: what the parser holds for a request head is bounded by
    ``max_head_size`` (+ ``max_header_size`` for a line httptools has not
    reported yet) plus one feed; a body is handed out as it arrives.  Between
    requests it keeps the last read and the request it was, each at most
    REPEAT_READ_MAX bytes, to serve an exact repeat unparsed.
    """

    __slots__ = (
        "_body_left",
        "_body_parts",
        "_body_size",
        "_chunked",
        "_closed",
        "_content_length",
        "_declined",
        "_error",
        "_events",
        "_expect",
        "_head_size",
        "_headers",
        "_hosts",
        "_in_message",
        "_keep_alive",
        "_last_read",
        "_max_body_size",
        "_max_head_size",
        "_max_header_size",
        "_max_headers",
        "_max_partial",
        "_max_request_line_size",
        "_parser",
        "_partial",
        "_repeat_body",
        "_repeat_head",
        "_repeat_headers",
        "_repeat_read_max",
        "_repeat_request",
        "_repeat_size",
        "_rest",
        "_rest_at",
        "_upgrade",
        "_upgrade_tail",
        "_url",
        "events",
        "more",
    )

    def __init__(
        self,
        *,
        max_request_line_size: int = 4094,
        max_header_size: int = 8190,
        max_headers: int = 100,
        max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
        max_body_size: int | None = None,
        repeat_read_max: int = REPEAT_READ_MAX,
    ) -> None:
        self._max_request_line_size = max_request_line_size
        self._max_header_size = max_header_size
        self._max_headers = max_headers
        self._max_head_size = max_head_size
        self._max_body_size = max_body_size
        self._max_partial = max_header_size + _PARTIAL_LINE_SLACK
        self._events: deque[Event] = deque()
        self.events = self._events
        """The queue :meth:`next_event` pops, for a caller's hot loop: while it is not
        empty, ``events.popleft()`` is what ``next_event()`` would return.  Read and
        pop only; the parser alone appends."""
        self._error: HTTPError | None = None
        self._upgrade_tail: bytearray | None = None
        self._closed = False
        self._in_message = False
        self._keep_alive = True
        self._declined = False
        # Bytes consumed since httptools last reported anything: they sit in its
        # invisible partial header buffer (see feed()).
        self._partial = 0
        # Names and values of the head's headers so far (of its trailers after it).
        self._head_size = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hosts = 0
        self._body_size = 0
        self._body_left = 0
        """Bytes of a Content-Length body still to come: httptools hands them over in one
        call per read, however many newlines they hold, so feed() counts none of them."""
        self._body_parts: list[bytes] = []
        """Body chunks of the current feed, joined into one event at its end."""
        self._content_length: bytes | None = None
        self._chunked = False
        self._expect: bytes | None = None
        self._upgrade: bytes | None = None
        self._parser = httptools.HttpRequestParser(_Callbacks(self))
        self._rest = b""
        self._rest_at = 0
        self._repeat_read_max = repeat_read_max
        """0: never serve a repeat unparsed (tests compare against such a parser)."""
        self._last_read: bytes | None = None
        """The last read that started at a message boundary, if short (REPEAT_READ_MAX)."""
        self._repeat_head: bytes | None = None
        """The head of the remembered request (see REPEAT_READ_MAX), or None: the read
        that brought it, less its body."""
        self._repeat_size = 0
        """Its length with its body (the read a repeat must be, byte for byte).  Kept, not
        derived from the head's: the check runs on every request (~0.7 % of one)."""
        self._repeat_body = 0
        self._repeat_request: tuple[str, bytes, str, bytes, str] = ("", b"", "", b"", "")
        """Its method, raw path, path, query string and HTTP version."""
        self._repeat_headers: tuple[tuple[bytes, bytes], ...] = ()
        """Its header pairs, apart: an app may change the list its scope got."""
        self.more = False
        """Part of the last read is not parsed yet (it is made of short lines, see
        LINES_PER_STEP): checkpoint, then :meth:`resume`, before reading again."""

    # -- public API ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``; ``b""`` means the peer closed its side (EOF).

        Raises :class:`HTTPError` for a malformed or over-limit request, and for
        EOF in the middle of one.  Events for requests completed earlier in the
        same ``data`` stay queued, so they can still be answered first.

        A read of many short lines is only kept: :attr:`more` says so, and
        :meth:`resume` calls parse it one SLICE each, after a checkpoint of the
        caller's (the read that brought it may have run in the same task step as
        the slice before).  ``feed`` is not called again while :attr:`more` is set.
        """
        head = self._repeat_head
        if head is not None:
            if len(data) == self._repeat_size and data.startswith(head):
                self._repeat(data)
                return
            self._repeat_head = None  # what follows is parsed: it may leave a message open
        n = len(data)
        body = self._body_left  # a Content-Length body's newlines cost no calls: not counted
        if n > SLICE and body < n and data.count(b"\n", body) > LINES_PER_STEP:
            self._rest = data
            self._rest_at = 0
            self.more = True
            return
        if self._in_message:
            self._feed(data)
            return
        last = self._last_read
        self._last_read = data if n <= self._repeat_read_max else None
        if data != last:
            self._feed(data)
            return
        # The read before was this one, from a message boundary too: worth remembering.
        events = self._events
        first = len(events)
        self._feed(data)
        if len(events) - first in (2, 3):
            self._remember(data, first)

    def _remember(self, data: bytes, first: int) -> None:
        """Keep ``data`` for :meth:`_repeat` if it was one whole request, read from a
        message boundary to the next, that the connection goes on after."""
        events = self._events
        request = events[first]
        if (
            not isinstance(request, Request)
            or events[-1] is not END_OF_MESSAGE
            or self._in_message
            or self._closed  # not keep-alive: nothing after it is parsed
            or self._chunked
            or request.upgrade is not None
            or request.expect_continue
        ):
            return
        body = len(events[first + 1]) if len(events) - first == 3 else 0  # type: ignore[arg-type]
        size = len(data)
        self._repeat_head = data[: size - body] if body else data
        self._repeat_size = size
        self._repeat_body = body
        self._repeat_request = (
            request.method,
            request.raw_path,
            request.path,
            request.query_string,
            request.http_version,
        )
        self._repeat_headers = tuple(request.headers)

    def _repeat(self, data: bytes) -> None:
        """The events of the remembered request again, for ``data``, its exact repeat.

        The parser is where that request left it (at a message boundary, nothing
        held): every feed that could change that forgets the request first.
        """
        method, raw_path, path, query_string, version = self._repeat_request
        events = self._events
        events.append(
            Request(
                method,
                raw_path,
                path,
                query_string,
                version,
                list(self._repeat_headers),
                True,
                None,
                False,
            )
        )
        if self._repeat_body:
            events.append(data[self._repeat_size - self._repeat_body :])
        events.append(END_OF_MESSAGE)

    def resume(self) -> None:
        """Parse the next slice of a read :meth:`feed` left unparsed (:attr:`more`)."""
        # feed() forgot any remembered request when it left this read for later.
        rest = self._rest
        start = self._rest_at
        end = start + SLICE
        if end >= len(rest):
            self._rest = b""
            self.more = False
            self._feed(rest[start:])
        else:
            self._rest_at = end
            self.more = True
            try:
                self._feed(rest[start:end])
            except HTTPError:
                self._drop_rest()
                raise

    def _drop_rest(self) -> bytes:
        """What :meth:`resume` had left to parse, taken out of the parser."""
        rest = self._rest[self._rest_at :]
        self._rest = b""
        self.more = False
        return rest

    def _feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        tail = self._upgrade_tail
        if tail is not None:
            if len(tail) + len(data) > self._max_head_size:
                self._error = HTTPError(400, "too much data before the upgrade was answered")
                raise self._error
            tail += data
            return
        if self._closed:
            return
        if not data:
            self._closed = True
            if self._in_message:
                self._fail(400, "connection closed in the middle of a request")
            return
        # Assume every byte goes into an unreported partial line; any callback
        # resets the count.  So the invisible buffer httptools keeps between our
        # callbacks is bounded by max_header_size (+slack) plus one feed.
        self._partial += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            after_head = data[exc.args[0] :]
            if self.more:  # the rest of the read follows the head too
                after_head += self._drop_rest()
            if self._declined:
                self._read_declined_upgrade_body(after_head)
            else:
                self._upgrade_tail = bytearray(after_head)
            return
        except httptools.HttpParserError as exc:
            if self._error is not None:  # raised by one of our callbacks
                raise self._error from None
            if self._closed:  # bytes after the last request (_Stop, or llhttp's own error)
                self._drop_rest()
                return
            if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__:
                raise exc.__context__ from None  # a bug in a callback, not a bad request
            self._error = HTTPError(400, str(exc) or "malformed request")
            raise self._error from None
        if self._in_message:  # else every body part went out with its END_OF_MESSAGE
            parts = self._body_parts
            if parts:
                self._events.append(parts[0] if len(parts) == 1 else b"".join(parts))
                parts.clear()
            if self._partial > self._max_partial:
                self._fail(431, "header line too large")
            if self._head_size + len(self._url) + self._partial > self._max_head_size:
                self._fail(431, "request head too large")

    def next_event(self) -> Event:
        """Pop the next event, or return ``NEED_DATA``."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def skip_end_of_message(self) -> bool:
        """Pop ``END_OF_MESSAGE`` if it is the next event (a request without a body)."""
        events = self._events
        if events and events[0] is END_OF_MESSAGE:
            events.popleft()
            return True
        return False

    @property
    def upgrade_tail(self) -> bytes:
        """Bytes after the head of an upgrade request (e.g. the first WebSocket frames)."""
        return bytes(self._upgrade_tail) if self._upgrade_tail is not None else b""

    @property
    def buffered(self) -> int:
        """About how many bytes of input the parser holds: queued events, the head in
        progress, the upgrade tail.  For accounting and tests, not the hot path."""
        held = len(self._upgrade_tail or b"") + self._head_size + self._partial
        held += len(self._rest) - self._rest_at
        for event in self._events:
            if isinstance(event, Request):
                held += len(event.raw_path) + len(event.query_string)
                held += sum(len(n) + len(v) for n, v in event.headers)
            elif isinstance(event, bytes):
                held += len(event)
        return held

    @property
    def at_message_boundary(self) -> bool:
        """True when no partial request is buffered (idle keep-alive, clean EOF)."""
        return not self._in_message

    # -- httptools callbacks --------------------------------------------------

    def _fail(self, status: int, reason: str) -> NoReturn:
        # Remembered before raising: httptools replaces exceptions raised in
        # callbacks by its own HttpParserCallbackError.
        self._error = HTTPError(status, reason)
        raise self._error

    def _on_message_begin(self) -> None:
        self._in_message = True
        self._partial = 0
        self._url = b""
        self._headers = []
        self._hosts = 0
        self._body_size = 0
        self._body_left = 0
        self._content_length = None
        self._chunked = False
        self._expect = None
        self._upgrade = None

    def _on_url(self, part: bytes) -> None:
        self._partial = 0
        url = self._url = self._url + part if self._url else part
        if len(url) > self._max_request_line_size:
            self._fail(414, "request line too long")

    def _on_header(self, name: bytes, value: bytes) -> None:
        # Chunked trailers arrive here too, after _on_headers_complete swapped in a
        # fresh list: they get the same limits and are then dropped with it.
        self._partial = 0
        size = len(name) + len(value)
        self._head_size += size
        headers = self._headers
        if size > self._max_header_size or len(headers) >= self._max_headers:
            too_large = size > self._max_header_size
            self._fail(431, "header too large" if too_large else "too many headers")
        name = name.lower()
        # llhttp keeps trailing OWS, which is not part of the value; it has
        # already rejected every control character but HTAB, so "<= SP" means OWS.
        if value and value[-1] <= 0x20:
            value = value.rstrip(b" \t")
        headers.append((name, value))
        if name in _WATCHED_REQUEST_HEADERS:
            if name == b"host":
                self._hosts += 1
            elif name == b"content-length":
                self._content_length = value
            elif name == b"transfer-encoding":
                self._chunked = True  # llhttp refuses any other final coding
            elif name == b"expect":
                self._expect = value
            else:
                self._upgrade = value

    def _on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fail(505, f"HTTP/{version} is not supported")
        method_bytes = parser.get_method()
        method = _METHOD_NAMES.get(method_bytes)
        if method is None:
            method = _METHOD_NAMES.setdefault(method_bytes, method_bytes.decode("ascii"))
        url = self._url
        # method SP request-target SP HTTP/1.x
        line = len(method_bytes) + len(url) + 10
        if line > self._max_request_line_size:
            self._fail(414, "request line too long")
        # _head_size counted every header's name and value.
        if self._head_size + line > self._max_head_size:
            self._fail(431, "request head too large")
        # Trailers, if any, count from here; the next head starts from them (rarely > 0).
        self._head_size = 0
        hosts = self._hosts
        # RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0.
        if hosts != 1 and (hosts or version == "1.1"):
            self._fail(400, "more than one Host header" if hosts else "no Host header")
        if method == "CONNECT":
            self._fail(501, "CONNECT is not supported")
        target = _origin_targets.get(url)
        if target is not None:
            raw_path, path, query = target
        elif url[:1] == b"/":
            raw_path, path, query = _origin_target(url)
        elif url == b"*":
            raw_path, path, query = url, "*", b""
        else:  # absolute-form
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserError:
                self._fail(400, "invalid request target")
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
            path = _decode_path(raw_path)
        # llhttp has already checked the digits; say 413 before any body arrives.
        max_body = self._max_body_size
        length = self._content_length
        if length is not None and not self._chunked:
            self._body_left = int(length)
            if max_body is not None and self._body_left > max_body:
                self._fail(413, "request body too large")
        self._keep_alive = keep_alive = parser.should_keep_alive()
        if self._chunked and version == "1.0":
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
            # framing; serve it, then close.
            self._keep_alive = keep_alive = False
        upgrade = None
        offer = self._upgrade
        # llhttp upgrades only with an Upgrade header (CONNECT was refused above): no
        # header, no question asked.
        if offer is not None and parser.should_upgrade():
            if _has_token(offer, UPGRADE_ACCEPTED):
                upgrade = UPGRADE_ACCEPTED
            else:
                # Declined (h2c, anything but WebSocket): answered over HTTP/1.1, then
                # the connection closes.  feed() reads the body llhttp skips.
                self._declined = True
                self._keep_alive = keep_alive = False
        expect = self._expect
        headers = self._headers
        self._headers = []  # collects (and limits) trailers, if any
        self._events.append(
            Request(
                method,
                raw_path,
                path,
                query,
                version,
                headers,
                keep_alive,
                upgrade,
                expect is not None and version == "1.1" and expect.lower() == b"100-continue",
            )
        )

    def _on_body(self, chunk: bytes) -> None:
        self._partial = 0
        if self._body_left:
            self._body_left -= len(chunk)
        if self._max_body_size is not None:
            self._body_size += len(chunk)
            if self._body_size > self._max_body_size:
                self._fail(413, "request body too large")
        self._body_parts.append(chunk)

    def _on_message_complete(self) -> None:
        self._partial = 0
        if self._keep_alive:
            self._in_message = False
            events = self._events
            parts = self._body_parts
            if parts:
                events.append(parts[0] if len(parts) == 1 else b"".join(parts))
                parts.clear()
            events.append(END_OF_MESSAGE)
        elif not self._declined:  # declined: httptools skipped the body, feed() reads it
            self._on_last_message_complete()

    def _on_last_message_complete(self) -> NoReturn:
        self._end_of_last_message()
        raise _Stop

    def _end_of_last_message(self) -> None:
        """The request after which the connection closes has ended: parse nothing more."""
        self._in_message = False
        self._closed = True
        parts = self._body_parts
        if parts:
            self._events.append(parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()
        self._events.append(END_OF_MESSAGE)

    def _read_declined_upgrade_body(self, tail: bytes) -> None:
        length = self._content_length
        if self._chunked:
            framing = b"transfer-encoding: chunked"
        elif length is not None and int(length):
            framing = b"content-length: " + length
        else:
            self._end_of_last_message()
            return
        self._parser = httptools.HttpRequestParser(_DeclinedUpgradeBody(self))
        self._parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        self._partial = 0
        if tail:
            self.feed(tail)


# -- response side --------------------------------------------------------------

_STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}
_SERVER_LINE: Final = b"server: hornbeam-trio\r\n"
_CONNECTION_CLOSE: Final = b"connection: close\r\n"
_CONNECTION_KEEP_ALIVE: Final = b"connection: keep-alive\r\n"
_TE_CHUNKED: Final = b"transfer-encoding: chunked\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"

_WATCHED_RESPONSE_HEADERS: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"date", b"server")
)

_date_until = 0.0
"""time.time() from which _date_line is stale (the start of the next second)."""
_date_line = b""
_time = time.time


# Request targets in origin form seen before -> (raw_path, path, query_string); a
# server sees the same few paths again and again.  Bounded: emptied when full.
_origin_targets: dict[bytes, tuple[bytes, str, bytes]] = {}
_TARGET_CACHE_MAX: Final = 1024
_CACHED_TARGET_MAX_LEN: Final = 256


_LOGGABLE_CHARS: Final = bytes(range(0x21, 0x7F))


def loggable_path(raw_path: bytes) -> str:
    """``raw_path`` for a log line: visible ASCII as sent, any other byte percent-encoded.

    The request target comes from the network: decoded, ``%0d%0a`` would forge a
    log line and raw escape sequences would reach a terminal.  Off the hot path:
    only log lines call it.
    """
    if not raw_path.translate(None, _LOGGABLE_CHARS):
        return raw_path.decode("ascii")
    return "".join(chr(byte) if 0x21 <= byte < 0x7F else f"%{byte:02X}" for byte in raw_path)


def _decode_path(raw_path: bytes) -> str:
    # bytes.find, not "in": "in" first tries the argument as an int and pays for
    # a TypeError each time.
    if raw_path.find(b"%") >= 0:
        return unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
    return raw_path.decode("utf-8", "surrogateescape")


def _origin_target(url: bytes) -> tuple[bytes, str, bytes]:
    """Split an origin-form target ("/path?query#fragment"); remembered if short."""
    full = url
    if url.find(b"#") >= 0:
        url = url.partition(b"#")[0]
    raw_path, _, query = url.partition(b"?")
    target = (raw_path, _decode_path(raw_path), query)
    if len(full) <= _CACHED_TARGET_MAX_LEN:
        if len(_origin_targets) >= _TARGET_CACHE_MAX:
            _origin_targets.clear()
        _origin_targets[full] = target
    return target


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES.setdefault(status, b"HTTP/1.1 %d \r\n" % status)
    return line


def _date_header() -> bytes:
    """The ``date`` header line, formatted at most once per second."""
    global _date_until, _date_line
    now = _time()
    if now >= _date_until:
        _date_line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        _date_until = float(int(now) + 1)
    return _date_line


# Header pairs that passed validation before: apps send the same few again and
# again.  Bounded: emptied when full.
_valid_headers: dict[tuple[bytes, bytes], tuple[bytes, bytes, bytes]] = {}
"""Valid (name, value) pair -> (lowercase name, value, its header line)."""


def _check_header(pair: Iterable[bytes]) -> tuple[bytes, bytes, bytes]:
    """Validate one response header: (lowercase name, value, header line), remembered."""
    name, value = pair
    lname = check_name(name)
    check_value(value)
    known = (lname, value, b"".join((name, b": ", value, b"\r\n")))
    if (
        type(pair) is tuple
        and type(name) is bytes
        and type(value) is bytes
        and len(value) <= CACHED_VALUE_MAX_LEN
    ):
        if len(_valid_headers) >= CACHE_MAX:
            _valid_headers.clear()
        _valid_headers[pair] = known
    return known


# Whole response heads (the app's header pairs) that passed validation before:
# most apps answer with the same few.  Bounded: emptied when full.
_known_heads: dict[tuple[tuple[bytes, bytes], ...], tuple[bytes, int | None, bool, bool]] = {}
"""Header pairs -> (their header lines joined, content-length, has date, has server)."""
_KNOWN_HEAD_MAX_HEADERS: Final = 16


def _has_token(value: bytes, token: bytes) -> bool:
    return token in [part.strip() for part in value.lower().split(b",")]


# Response framing modes.
_UNDECIDED: Final = 0
_FIXED: Final = 1  # content-length
_CHUNKED: Final = 2
_CLOSE_DELIMITED: Final = 3
_NO_BODY: Final = 4  # HEAD, 1xx, 204, 304


class ResponseEncoder:
    """One per request: turns ASGI ``http.response.start``/``body`` into bytes.

    The head is held back until the first :meth:`body` call so that a response
    whose whole body arrives at once gets a ``content-length`` instead of
    chunking, and head plus body leave in one write.
    """

    __slots__ = (
        "_app_close",
        "_app_coding",
        "_declared_length",
        "_head",
        "_is_head",
        "_mode",
        "_request",
        "_sent",
        "_status",
        "complete",
        "keep_alive",
        "started",
    )

    def __init__(self, request: Request) -> None:
        self._request = request
        self._is_head = request.method == "HEAD"
        # Once an upgrade request's head is parsed the parser stops, so the
        # connection cannot carry another request whatever the response.
        self.keep_alive = request.keep_alive and request.upgrade is None
        """Whether the connection may carry another request after this response.

        Final once :attr:`complete`; the caller must still drain or discard any
        unread request body before reusing the connection.  (Plain attributes, not
        properties: read on every request.)
        """
        self.started = False
        """http.response.start was accepted."""
        self.complete = False
        """The last body bytes were produced."""
        self._head: list[bytes] | None = None
        self._status = 0
        self._mode = _UNDECIDED
        self._declared_length: int | None = None
        self._app_coding: bytes | None = None
        self._app_close = False
        self._sent = 0

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Validate and remember the head; nothing is written until :meth:`body`."""
        if self.started:
            raise RuntimeError("response already started")
        if type(status) is not int or not 100 <= status <= 999:
            raise ValueError(f"invalid status code {status!r}")
        status_line = _STATUS_LINES.get(status) or _status_line(status)
        pairs = headers if type(headers) is tuple else tuple(headers)
        try:
            known_head = _known_heads.get(pairs)
        except TypeError:  # an unhashable pair (a list, a bytearray): checked, never remembered
            known_head = None
        if known_head is not None:
            lines, self._declared_length, has_date, has_server = known_head
            head = [status_line, lines]
        else:
            head = [status_line]
            has_date, has_server = self._check_headers(pairs, head)
        if not has_date:
            head.append(_date_header())
        if not has_server:
            head.append(_SERVER_LINE)
        self._status = status
        self._head = head
        self.started = True

    def _check_headers(
        self, pairs: tuple[tuple[bytes, bytes], ...], head: list[bytes]
    ) -> tuple[bool, bool]:
        """Validate the app's headers into ``head``; (has date, has server).

        A head of plain, short headers that says nothing about the connection or
        a transfer coding is remembered whole in ``_known_heads``, so the next
        response with the same headers skips this loop.
        """
        start = len(head)
        has_date = has_server = False
        hashable = True
        known_headers = _valid_headers
        for pair in pairs:
            try:
                known = known_headers.get(pair)
            except TypeError:  # unhashable (a list, a bytearray): checked, never remembered
                known = None
                hashable = False
            if known is None:
                known = _check_header(pair)
            lname, value, line = known
            if lname in _WATCHED_RESPONSE_HEADERS:
                if lname == b"content-length":
                    if not value.isdigit():
                        raise ValueError(f"invalid content-length {value!r}")
                    length = int(value)
                    if self._declared_length is not None and self._declared_length != length:
                        raise ValueError("conflicting content-length headers")
                    self._declared_length = length
                elif lname == b"transfer-encoding":
                    # Only the final coding decides the framing.
                    self._app_coding = value.lower().rsplit(b",", 1)[-1].strip()
                    if self._request.http_version == "1.0":
                        continue  # HTTP/1.0 clients know no transfer codings
                elif lname == b"connection":
                    if _has_token(value, b"close"):
                        self._app_close = True
                        self.keep_alive = False
                elif lname == b"date":
                    has_date = True
                else:
                    has_server = True
            head.append(line)
        if self._app_coding is not None and self._declared_length is not None:
            raise ValueError("both content-length and transfer-encoding")
        if (
            hashable
            and self._app_coding is None
            and not self._app_close
            and len(pairs) <= _KNOWN_HEAD_MAX_HEADERS
            and all(known_headers.get(pair) is not None for pair in pairs)
        ):
            if len(_known_heads) >= CACHE_MAX:
                _known_heads.clear()
            _known_heads[pairs] = (
                b"".join(head[start:]),
                self._declared_length,
                has_date,
                has_server,
            )
        return has_date, has_server

    def body(self, data: bytes, more_body: bool) -> bytes:
        """Return the bytes to write now (the head too, on the first call)."""
        if more_body and self._mode == _FIXED and not self.complete:
            # A content-length stream's next chunk, 16 per 1 MiB response: only its
            # bytes are counted (more than declared: the general path below says so).
            sent = self._sent + len(data)
            if sent <= self._declared_length:  # type: ignore[operator]
                self._sent = sent
                return data
        head = self._head
        if head is not None and not more_body:
            # Fast path, the common response: the whole body in the first message,
            # framed by content-length.  The same bytes as _decide_framing's.
            status = self._status
            if not self._is_head and status >= 200 and status != 204 and status != 304:
                length = len(data)
                declared = self._declared_length
                if declared is None and self._app_coding is None:
                    head.append(b"content-length: %d\r\n" % length)
                    declared = self._declared_length = length
                if declared == length:
                    self._head = None
                    self._mode = _FIXED
                    self._sent = length
                    self.complete = True
                    if not self._app_close:
                        if not self.keep_alive:
                            head.append(_CONNECTION_CLOSE)
                        elif self._request.http_version != "1.1":
                            head.append(_CONNECTION_KEEP_ALIVE)
                    head += (b"\r\n", data)
                    return b"".join(head)
        if not self.started:
            raise RuntimeError("response not started")
        if self.complete:
            raise RuntimeError("response already complete")
        if head is not None:
            self._head = None
            self._decide_framing(head, len(data), more_body)
            parts = head
        else:
            parts = []
        mode = self._mode
        if mode == _FIXED:
            assert self._declared_length is not None
            self._sent += len(data)
            if self._sent > self._declared_length:
                raise ValueError(f"response body exceeds content-length {self._declared_length}")
            if data:
                parts.append(data)
            if not more_body and self._sent < self._declared_length:
                self.keep_alive = False  # truncated: only a close tells the client
        elif mode == _CHUNKED:
            if data:
                parts += (b"%x\r\n" % len(data), data, b"\r\n")
            if not more_body:
                parts.append(_LAST_CHUNK)
        elif mode == _CLOSE_DELIMITED and data:
            parts.append(data)
        # _NO_BODY: the app's bytes are dropped.
        if not more_body:
            self.complete = True
        if not parts:
            return b""
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _decide_framing(self, head: list[bytes], first_len: int, more_body: bool) -> None:
        status = self._status
        http11 = self._request.http_version == "1.1"
        coding = self._app_coding
        if self._is_head or status < 200 or status == 204 or status == 304:
            self._mode = _NO_BODY
            # HEAD gets the framing headers the GET would have had.
            if self._is_head and self._declared_length is None and coding is None:
                if not more_body:
                    head.append(b"content-length: %d\r\n" % first_len)
                elif http11:
                    head.append(_TE_CHUNKED)
        elif self._declared_length is not None:
            self._mode = _FIXED
        elif coding is not None:
            if coding == b"chunked" and http11:
                self._mode = _CHUNKED  # the app's own header already says so
            else:
                self._mode = _CLOSE_DELIMITED
                self.keep_alive = False
        elif more_body:
            if http11:
                self._mode = _CHUNKED
                head.append(_TE_CHUNKED)
            else:
                self._mode = _CLOSE_DELIMITED
                self.keep_alive = False
        else:
            self._mode = _FIXED
            self._declared_length = first_len
            head.append(b"content-length: %d\r\n" % first_len)
        if not self._app_close:
            if not self.keep_alive:
                head.append(_CONNECTION_CLOSE)
            elif not http11:
                head.append(_CONNECTION_KEEP_ALIVE)
        head.append(b"\r\n")


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    keep_alive: bool = False,
) -> bytes:
    """A complete response for errors the server answers itself (400, 413, 503...)."""
    parts = [_status_line(status)]
    has_type = has_date = has_server = False
    for name, value in headers:
        lname = name.lower()
        has_type = has_type or lname == b"content-type"
        has_date = has_date or lname == b"date"
        has_server = has_server or lname == b"server"
        parts += (name, b": ", value, b"\r\n")
    if body and not has_type:
        parts.append(b"content-type: text/plain; charset=utf-8\r\n")
    if not has_date:
        parts.append(_date_header())
    if not has_server:
        parts.append(_SERVER_LINE)
    if not keep_alive:
        parts.append(_CONNECTION_CLOSE)
    if not (status < 200 or status == 204 or status == 304):
        parts.append(b"content-length: %d\r\n" % len(body))
        parts += (b"\r\n", body)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)
