"""What an HTTP/2 request header block must be (RFC 9113 8.2, 8.3; RFC 8441 4), and what
it means under our limits.

:func:`parse_request` takes the decoded fields of one request's HEADERS (+CONTINUATION)
block and returns a :class:`RequestHead`, or raises :class:`Malformed`: the caller
answers that with a stream error of type PROTOCOL_ERROR (RFC 9113 8.1.1), and no app
sees the request.  A request is malformed when:

* a field name is empty, holds uppercase, a control, a space, DEL, non-ASCII, or a
  colon after the first byte (8.2.1); a value holds NUL, CR or LF, or begins or ends
  with a space or HTAB (8.2.1);
* a connection-specific field is present (``connection``, ``keep-alive``,
  ``proxy-connection``, ``transfer-encoding``, ``upgrade``), or ``te`` is anything
  but ``trailers`` (8.2.2);
* a pseudo-header is unknown, repeated, follows a regular field, or is a response's
  ``:status`` (8.3); ``:method`` is missing; a request other than CONNECT lacks
  ``:scheme`` or has an empty or missing ``:path``; a plain CONNECT has ``:scheme``
  or ``:path`` or no ``:authority`` (8.5); ``:protocol`` comes without CONNECT
  (RFC 8441 4);
* neither ``:authority`` nor ``host`` is present, ``host`` is repeated, or both are
  present and differ (8.3.1).

:func:`request_view` then applies the limits HTTP/1.1 has to a valid head (a
:class:`RequestView`: a rejection with HTTP/1.1's status, or the request's ASGI view),
once per distinct header block: the HTTP/2 core remembers views with their blocks.

Cookie fields split for compression are joined with ``"; "`` (8.2.3).  Valid names and
short values are remembered (bounded caches), so a client repeating its fields, as
every client does, pays a dict lookup per field.  Imports nothing of ours outside
``protocol/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .http11 import _decode_path

__all__ = ["MALFORMED", "Malformed", "RequestHead", "RequestView", "parse_request", "request_view"]


class Malformed(ValueError):
    """A malformed request: RST_STREAM(PROTOCOL_ERROR), no app runs."""


_NAME_CHARS: Final = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x41)) + bytes(range(0x5B, 0x7F))
"""What a regular field name may hold: visible ASCII but uppercase and colon."""
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_PSEUDO: Final = frozenset((b":method", b":scheme", b":path", b":authority", b":protocol"))

CACHE_MAX: Final = 1024
CACHED_VALUE_MAX_LEN: Final = 128
_good_names: set[bytes] = set()
_good_values: set[bytes] = set()


def _check_name(name: bytes) -> None:
    if name in _good_names:
        return
    if not name or name.translate(None, _NAME_CHARS):
        raise Malformed(f"invalid field name {name!r}")
    if name in _CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name.decode()!r}")
    if len(_good_names) >= CACHE_MAX:
        _good_names.clear()
    if name != b"te":  # its value decides
        _good_names.add(name)


def _check_value(value: bytes) -> None:
    if not value or value in _good_values:
        return
    if value.find(b"\r") >= 0 or value.find(b"\n") >= 0 or value.find(b"\0") >= 0:
        raise Malformed("NUL, CR or LF in a field value")
    if value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09):
        raise Malformed("a field value begins or ends with whitespace")
    if len(value) <= CACHED_VALUE_MAX_LEN:
        if len(_good_values) >= CACHE_MAX:
            _good_values.clear()
        _good_values.add(value)


class RequestHead:
    """The pseudo-headers of a valid request and its regular fields, in order."""

    __slots__ = ("authority", "fields", "host", "method", "path", "protocol", "scheme")

    def __init__(self) -> None:
        self.method = b""
        self.scheme: bytes | None = None
        self.path: bytes | None = None
        self.authority: bytes | None = None
        self.protocol: bytes | None = None
        self.host: bytes | None = None
        self.fields: list[tuple[bytes, bytes]] = []


def parse_request(block: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """Check a request's decoded header block; its head.  Raises :class:`Malformed`."""
    head = RequestHead()
    fields = head.fields
    pseudo: set[bytes] = set()
    cookies = -1
    """Index in ``fields`` of the first cookie, -1: none yet."""
    for name, value in block:
        if name[:1] == b":":
            if fields:
                raise Malformed(f"pseudo-header {name.decode(errors='replace')} after a field")
            if name not in _PSEUDO:
                raise Malformed(f"pseudo-header {name.decode(errors='replace')} in a request")
            if name in pseudo:
                raise Malformed(f"repeated {name.decode()}")
            pseudo.add(name)
            _check_value(value)
            if name == b":method":
                head.method = value
            elif name == b":path":
                head.path = value
            elif name == b":authority":
                head.authority = value
            elif name == b":scheme":
                head.scheme = value
            else:
                head.protocol = value
            continue
        _check_name(name)
        _check_value(value)
        if name == b"host":
            if head.host is not None:
                raise Malformed("repeated host")
            head.host = value
        elif name == b"te":
            if value.lower() != b"trailers":
                raise Malformed("te other than trailers")
        elif name == b"cookie":
            if cookies >= 0:
                fields[cookies] = (b"cookie", fields[cookies][1] + b"; " + value)
                continue
            cookies = len(fields)
        fields.append((name, value))
    if not head.method:
        raise Malformed(":method missing")
    if head.method == b"CONNECT" and head.protocol is None:
        if head.scheme is not None or head.path is not None or head.authority is None:
            raise Malformed("CONNECT needs :authority only")
    else:
        if head.protocol is not None and head.method != b"CONNECT":
            raise Malformed(":protocol without CONNECT")
        if head.scheme is None or not head.path:
            raise Malformed(":scheme or :path missing")
    if head.authority is None:
        if head.host is None:
            raise Malformed("neither :authority nor host")
    elif head.host is not None and head.host != head.authority:
        raise Malformed(":authority and host differ")
    return head


class RequestView:
    """A request head as our limits see it (:func:`request_view`): a rejection, or the
    request's ASGI view.  The HTTP/2 core shares one among the streams that send the
    same header block: treated as immutable (each stream copies ``headers``)."""

    __slots__ = (
        "expected",
        "headers",
        "malformed",
        "method",
        "path",
        "protocol",
        "query_string",
        "raw_path",
        "rejected",
    )

    def __init__(self) -> None:
        self.rejected: tuple[int, str] | None = None
        """Status and reason the request is answered with (no app runs)."""
        self.malformed = False
        """An invalid ``content-length``: RST_STREAM(PROTOCOL_ERROR)."""
        self.expected: int | None = None
        """``content-length``; None too when rejected (the body is discarded, whatever
        its length)."""
        self.method = ""
        self.raw_path = b""
        self.path = ""
        self.query_string = b""
        self.headers: list[tuple[bytes, bytes]] = []
        """The app's headers: no pseudo-headers, ``host`` from ``:authority``."""
        self.protocol: str | None = None


MALFORMED: Final = RequestView()
MALFORMED.malformed = True


def request_view(
    head: RequestHead,
    *,
    max_header_size: int,
    max_headers: int,
    max_body_size: int | None,
    max_path: int,
) -> RequestView:
    """What a valid request head means under the limits HTTP/1.1 has (the same statuses:
    431, 413, 414; 501 for a CONNECT that is no WebSocket), and its ASGI view: the path
    split and decoded, ``host`` from ``:authority`` when the client sent none.
    :data:`MALFORMED` for an invalid ``content-length``."""
    view = RequestView()
    headers = head.fields.copy()
    expected: int | None = None
    for name, value in headers:
        if len(name) + len(value) > max_header_size:
            view.rejected = (431, "header too large")
            return view
        if name == b"content-length":
            if not value.isdigit() or (expected is not None and int(value) != expected):
                return MALFORMED
            expected = int(value)
    if expected is not None and max_body_size is not None and expected > max_body_size:
        view.rejected = (413, "request body too large")
        return view
    if len(headers) > max_headers:
        view.rejected = (431, "too many headers")
        return view
    method = head.method
    protocol = head.protocol
    if method == b"CONNECT":
        # Plain CONNECT (a TCP tunnel) is no ASGI request; of the extended CONNECT
        # protocols (RFC 8441) only WebSocket is.
        if protocol is None:
            view.rejected = (501, "CONNECT is not supported")
            return view
        if protocol.lower() != b"websocket":
            view.rejected = (501, "only :protocol websocket")
            return view
        view.protocol = "websocket"
    raw_target = head.path or b""
    if len(raw_target) > max_path:
        view.rejected = (414, "request line too long")
        return view
    if head.authority is not None and head.host is None:
        headers.insert(0, (b"host", head.authority))
    if raw_target.find(b"#") >= 0:
        raw_target = raw_target.partition(b"#")[0]
    view.raw_path, _, view.query_string = raw_target.partition(b"?")
    view.path = _decode_path(view.raw_path)
    view.method = method.decode("ascii", "replace")
    view.headers = headers
    view.expected = expected
    return view
