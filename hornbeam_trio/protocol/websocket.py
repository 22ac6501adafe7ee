"""Server side of RFC 6455 (and RFC 7692 permessage-deflate), without I/O.

Rule 1: every decision about frames, close codes, UTF-8, size limits and compression
lives here.  The Trio connection handler only moves bytes: it feeds what it reads to
``ServerProtocol.receive_data``, delivers the returned events, writes
``ServerProtocol.outgoing`` and whatever ``send_*`` returns, and closes the socket once
``closed`` is true.  Nothing in this module imports an event loop, so each rule is
unit-tested with plain byte strings.

Rule 2: this sits on the hot path of WebSocket echo.  ``receive_data`` has a fast path
for the common case (one small, complete, masked, unfragmented frame and nothing
buffered) that allocates only the payload and the result list; everything else goes
through one loop that parses every complete frame in a single bytearray with a read
offset, so a burst of frames costs one buffer append, not one slice per frame.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import fnmatch
import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from websockets.exceptions import InvalidHeaderFormat
from websockets.headers import parse_extension

from .headers import check_name, check_value

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseReceived",
    "DeflateParams",
    "Event",
    "HandshakeError",
    "ProtocolFailure",
    "ServerProtocol",
    "accept_headers",
    "accept_response",
    "check_extended_connect",
    "check_handshake",
    "check_origin",
    "encode_binary",
    "encode_close",
    "encode_frame",
    "encode_text",
    "negotiate_deflate",
    "parse_subprotocols",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DEFLATE_TAIL = b"\x00\x00\xff\xff"

FRAGMENT_OVERHEAD = 64
"""Bytes charged against ``max_message_size`` for each frame of a fragmented message,
beyond its payload: about what parsing and tracking one frame costs.  A message of
one-byte fragments is refused (1009) after ``max_message_size / 65`` of them, where
it would otherwise cost as much CPU as 64 times its size in large frames."""

INFLATE_PER_CALL = 256 * 1024
"""Decompressed bytes one ``receive_data`` call may produce: what a burst of small
compressed frames can decode at once before the caller decides whether to go on.
The caller checkpoints between calls, so this bounds one task step: ~0.5 ms of zlib
(1 MiB was ~2 ms a call, and 20 peers sending deflate bombs held the others ~40 ms)."""

FRAMES_PER_CALL = 256
"""Frames one ``receive_data`` call parses; the rest waits for ``receive_data(b"")``.

What bounds one call's CPU when a read holds thousands of tiny frames (a 64 KiB read
of one-byte continuations is 9,362 frames, ~7 ms): the caller checkpoints between
calls, so 20 such peers cost the others ~0.2 ms each per pass, not 7.  A read of
ordinary frames is a handful of them and never meets the bound."""

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """XOR through one big int: far faster than a per-byte loop when the C helper is missing."""
    n = len(data)
    if not n:
        return b""
    key = (bytes(mask) * ((n + 3) // 4))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


_apply_mask: Callable[[bytes | bytearray | memoryview, bytes | bytearray], bytes]
try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the fallback itself is tested directly
    _apply_mask = _apply_mask_py

# --------------------------------------------------------------------------- encoding

_pack16 = struct.Struct("!BBH").pack
_pack64 = struct.Struct("!BBQ").pack
# Two-byte headers for short unfragmented messages, built once so the send path
# (and pub/sub fan-out) does one concatenation per frame.
_TEXT_HDR = tuple(bytes((0x81, n)) for n in range(126))
_BINARY_HDR = tuple(bytes((0x82, n)) for n in range(126))


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    *,
    fin: bool = True,
    rsv1: bool = False,
) -> bytes:
    """Server frames are never masked (RFC 6455 5.1), so the header is all there is to add."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 0x10000:
        return _pack16(b0, 126, n) + payload
    return _pack64(b0, 127, n) + payload


def encode_text(text: str) -> bytes:
    """Module-level so one pub/sub message is encoded once for all its subscribers."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return _TEXT_HDR[n] + payload
    if n < 0x10000:
        return _pack16(0x81, 126, n) + payload
    return _pack64(0x81, 127, n) + payload


def encode_binary(data: bytes | bytearray | memoryview) -> bytes:
    """Module-level for the same reason as ``encode_text``."""
    n = len(data)
    if n < 126:
        return _BINARY_HDR[n] + data
    if n < 0x10000:
        return _pack16(0x82, 126, n) + data
    return _pack64(0x82, 127, n) + data


def encode_close(code: int | None = None, reason: str = "") -> bytes:
    """A close frame; ``None`` or 1005 ("no status") sends an empty body, as RFC 6455 7.1.5 implies.

    The reason is cut at a character boundary so the control payload stays within 125 bytes.
    1006 and 1015 describe what happened to a connection and must never be sent, so they,
    and codes outside 1000-4999, raise ``ValueError`` rather than produce a frame the peer
    must reject.
    """
    if code is None or code == 1005:
        return b"\x88\x00"
    if not 1000 <= code <= 4999 or code in (1006, 1015):
        raise ValueError(f"close code {code} may not be sent")
    raw = reason.encode()
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode()
    return bytes((0x88, 2 + len(raw))) + code.to_bytes(2, "big") + raw


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame; ``code`` is 1005 when its frame carried no status."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailure:
    """We failed the connection; a close frame with ``code`` is already in ``outgoing``."""

    code: int
    reason: str


Event = str | bytes | CloseReceived | ProtocolFailure


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What permessage-deflate negotiation settled on (RFC 7692 section 7).

    ``server_*`` govern what we compress, ``client_*`` what we decompress.  A window
    of 8 bits is accepted although zlib cannot compress with it: we then compress
    Huffman-only, which emits no back-references and so fits any window.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15

    def __post_init__(self) -> None:
        if not (8 <= self.server_max_window_bits <= 15 and 8 <= self.client_max_window_bits <= 15):
            raise ValueError("window bits must be within 8..15")


def _valid_close_code(code: int) -> bool:
    # 1004-1006 and 1015 are reserved or never sent; 1016-2999 are unassigned.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


# --------------------------------------------------------------------------- connection


class ServerProtocol:
    """One server-side WebSocket connection after the 101 response."""

    __slots__ = (
        "_buf",
        "_cnct",
        "_cwbits",
        "_deflate",
        "_deflater",
        "_done",
        "_failed",
        "_fast_n",
        "_frag",
        "_inflater",
        "_max",
        "_msg_op",
        "_msg_out",
        "_msg_size",
        "_msg_z",
        "_need",
        "_poff",
        "_pos",
        "_snct",
        "_swbits",
        "_utf8",
        "_zfin",
        "_zleft",
        "_zlimit",
        "_zrest",
        "active",
        "close_received",
        "close_sent",
        "hold_pongs",
        "more",
        "outgoing",
        "pong",
        "receiving_frame",
    )

    def __init__(
        self,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        deflate: DeflateParams | None = None,
        max_inflate_per_call: int = INFLATE_PER_CALL,
    ) -> None:
        if max_message_size < 1 or max_inflate_per_call < 1:
            raise ValueError("max_message_size and max_inflate_per_call must be positive")
        self.outgoing = bytearray()
        self.close_sent = False
        self.close_received = False
        self._failed = False
        self._done = False  # set by close or failure: later data is ignored
        self._max = max_message_size
        # The fast path takes frames of up to this many bytes: 7-bit length, within limit.
        self._fast_n = min(max_message_size, 125) + 6
        self._buf = bytearray()
        self._pos = 0  # read offset into _buf
        self._need = 0  # bytes from _pos that must be buffered before parsing can progress
        self._poff = 0  # payload bytes of the partial frame at _pos already validated as text
        # The fragmented message in progress (its first frame is complete).
        self._msg_op = 0  # OP_TEXT / OP_BINARY, 0 when none
        self._msg_z = False  # compressed
        self._msg_size = 0  # wire bytes so far + FRAGMENT_OVERHEAD a frame, checked against _max
        self._msg_out = 0  # decompressed bytes so far
        self._frag = bytearray()  # the message's payload so far (decompressed), text or binary
        self._utf8 = _Utf8Decoder()  # validates text as it comes; its output is dropped
        self._zlimit = max_inflate_per_call
        self._zleft = max_inflate_per_call  # inflated bytes this call may still produce
        self._zrest: bytes | None = None  # input of a frame whose inflation hit _zleft
        self._zfin = False  # that frame ends its message
        self.more = False
        """Parsing stopped at the call's inflate or frame bound: ``receive_data(b"")`` goes on."""
        self.active = False
        """The last ``receive_data`` parsed a complete frame other than a ping (a call
        that returns events may leave it stale: events are activity already)."""
        self.hold_pongs = False
        """Set by the caller while its earlier output is not sent: pings then leave only
        the latest pong in :attr:`pong` (RFC 6455 5.5.3), not one each in ``outgoing``."""
        self.pong: bytes | None = None
        self.receiving_frame = False
        """Bytes of a data frame not yet complete (or not yet parsed: :attr:`more`) are
        held: the frame's own deadline runs.  A control frame held in part does not count."""
        self._deflate = deflate
        self._inflater: zlib._Decompress | None = None
        self._deflater: zlib._Compress | None = None
        if deflate is not None:
            self._snct = deflate.server_no_context_takeover
            self._cnct = deflate.client_no_context_takeover
            self._swbits = deflate.server_max_window_bits
            self._cwbits = deflate.client_max_window_bits
        else:
            self._snct = self._cnct = False
            self._swbits = self._cwbits = 15

    @property
    def message_bytes(self) -> int:
        """Bytes held for the message in progress: its payload so far (inflated) and
        the input not parsed yet (a frame still arriving, or left at a call's bound)."""
        return len(self._frag) + len(self._buf) - self._pos

    @property
    def closed(self) -> bool:
        """True once the closing handshake is complete or we failed: the caller closes TCP."""
        return self._failed or (self.close_sent and self.close_received)

    # ------------------------------------------------------------------ sending

    def send_message(self, data: str | bytes) -> bytes:
        """Frame a message; returns b"" after our close, since no data may follow it."""
        if self.close_sent:
            return b""
        if self._deflate is None:
            if type(data) is str:
                return encode_text(data)
            return encode_binary(data)  # type: ignore[arg-type]
        if isinstance(data, str):
            return encode_frame(OP_TEXT, self._compress(data.encode()), rsv1=True)
        return encode_frame(OP_BINARY, self._compress(data), rsv1=True)

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start (or finish) the closing handshake; b"" if our close already went out."""
        if self.close_sent:
            return b""
        frame = encode_close(code, reason)
        self.close_sent = True
        return frame

    def defer_failure_close(self, failure: ProtocolFailure) -> None:
        """Take the failure's Close back out of ``outgoing`` (it is always the last thing
        there) and allow sending again: the caller first lets its app answer the valid
        messages parsed before the failure, then sends ``send_close(failure.code,
        failure.reason)``.  Reading stays over (``closed`` is still true)."""
        close = encode_close(failure.code, failure.reason)
        assert self._failed and self.outgoing.endswith(close)
        del self.outgoing[-len(close) :]
        self.close_sent = False

    def send_ping(self, payload: bytes = b"") -> bytes:
        """Keepalive probe; the payload must fit a control frame (125 bytes)."""
        if len(payload) > 125:
            raise ValueError("ping payload longer than 125 bytes")
        return encode_frame(OP_PING, payload)

    def _compress(self, data: bytes | bytearray | memoryview) -> bytes:
        c = self._deflater
        if c is None:
            if self._swbits == 8:
                c = zlib.compressobj(wbits=-9, strategy=zlib.Z_HUFFMAN_ONLY)
            else:
                c = zlib.compressobj(wbits=-self._swbits)
            if not self._snct:
                self._deflater = c
        out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        # A sync flush always ends with the empty stored block RFC 7692 7.2.1 says to drop.
        return out[:-4]

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse every complete frame in ``data`` (plus what was buffered); see module docs.

        Inflated output is bounded per call (``max_inflate_per_call``): once it is spent,
        parsing stops and :attr:`more` says so; ``receive_data(b"")`` goes on from there.
        """
        if self._done:
            return []
        buf = self._buf
        if not buf:
            n = len(data)
            # One whole masked frame with a 7-bit length that fills ``data`` exactly:
            # data[1] == 0x80 | (n - 6).
            if 5 < n <= self._fast_n and data[1] == n + 122 and not self._msg_op:
                b0 = data[0]
                if b0 == 0x82:
                    return [_apply_mask(data[6:], data[2:6])]
                if b0 == 0x81:
                    try:
                        return [_apply_mask(data[6:], data[2:6]).decode()]
                    except UnicodeDecodeError:
                        pass  # the general path reports it
            self.active = False
            src: bytes | bytearray = data
            pos = 0
        else:
            self.active = False
            buf += data
            pos = self._pos
            if len(buf) - pos < self._need and self._zrest is None:
                return []
            src = buf
        self.more = False
        self._zleft = self._zlimit
        events: list[Event] = []
        with memoryview(src) as mv:
            pos = self._parse(src, mv, pos, events)
        if self._done:
            buf.clear()
            self._pos = self._need = self._poff = 0
        elif src is buf:
            left = len(buf) - pos
            if not left:
                buf.clear()
                self._pos = 0
            elif pos >= left:  # moving the tail costs no more than what was consumed
                del buf[:pos]
                self._pos = 0
            else:
                self._pos = pos
        elif pos < len(data):
            buf += memoryview(data)[pos:]
            self._pos = 0
        # A data frame held in part (or held whole past the call's bound, or mid-inflate).
        # Not a control frame: those are 131 bytes at most and prove nothing, and counting
        # them let a ping flood renew the frame deadline at every read that ended on a
        # frame boundary, so it never idled out.
        pos = self._pos
        self.receiving_frame = (len(buf) > pos and not buf[pos] & 0x08) or self._zrest is not None
        return events

    def _fail(self, events: list[Event], code: int, reason: str) -> int:
        """Fail the connection (RFC 6455 7.1.7); returns -1 so the parser can ``return`` it."""
        self._done = self._failed = True
        if not self.close_sent:
            self.close_sent = True
            self.outgoing += encode_close(code, reason)
        events.append(ProtocolFailure(code, reason))
        self._frag.clear()
        self._zrest = None
        self.more = False
        return -1

    def _parse(self, src: bytes | bytearray, mv: memoryview, pos: int, events: list[Event]) -> int:
        """Consume complete frames from ``src[pos:]``; return where the unconsumed bytes start.

        Checks that need only the first two bytes (reserved bits, opcode, masking,
        control-frame shape, fragmentation order) run before anything else arrives, and
        the size limit runs as soon as the length is known, before any payload.
        """
        if self._zrest is not None:
            # A frame whose inflation stopped at the last call's output bound: go on with it.
            rest = self._zrest
            fin = self._zfin
            resumed = self._inflate(rest, fin, events, resumed=True)
            if resumed is None or not self._append(resumed, fin, events):
                return -1
            if self._zrest is not None:
                self.more = True
                self._need = 0
                return pos
        end = len(src)
        frames = FRAMES_PER_CALL
        while True:
            avail = end - pos
            if avail < 2:
                self._need = 0
                return pos
            frames -= 1
            if self._zleft <= 0 or frames < 0:
                # This call's inflated output or frame count is spent: the rest waits
                # for the next call.
                self.more = True
                self._need = 0
                return pos
            b0 = src[pos]
            b1 = src[pos + 1]
            op = b0 & 0x0F
            if b0 & 0x70:
                # RSV1 means "compressed", valid only on the first frame of a data message.
                if b0 & 0x30 or self._deflate is None or not 0 < op < 3:
                    return self._fail(events, 1002, "reserved bits set")
                z = True
            else:
                z = False
            if op > 2:
                if not 8 <= op <= 10:
                    return self._fail(events, 1002, "unknown opcode")
                if not b0 & 0x80:
                    return self._fail(events, 1002, "fragmented control frame")
                if (b1 & 0x7F) > 125:
                    return self._fail(events, 1002, "control frame too long")
            elif op:
                if self._msg_op:
                    return self._fail(events, 1002, "expected a continuation frame")
            elif not self._msg_op:
                return self._fail(events, 1002, "unexpected continuation frame")
            if not b1 & 0x80:
                return self._fail(events, 1002, "unmasked client frame")
            ln = b1 & 0x7F
            if ln < 126:
                hdr = 6
            elif ln == 126:
                if avail < 4:
                    self._need = 0
                    return pos
                ln = (src[pos + 2] << 8) | src[pos + 3]
                hdr = 8
            else:
                if avail < 10:
                    self._need = 0
                    return pos
                ln = int.from_bytes(src[pos + 2 : pos + 10], "big")
                if ln >> 63:
                    return self._fail(events, 1002, "frame length has its top bit set")
                hdr = 14
            if op < 3 and self._msg_size + ln > self._max:
                return self._fail(events, 1009, "message too big")
            total = hdr + ln
            start = pos + hdr
            if avail < total:
                # Text is validated as it arrives so invalid UTF-8 fails fast even inside
                # one large frame; the decoded text is dropped (the frame is decoded once
                # whole), so a partial frame is held once, as received.  Other payloads
                # wait for the whole frame.
                if (op == 1 and not z) or (op == 0 and self._msg_op == 1 and not self._msg_z):
                    got = avail - hdr
                    poff = self._poff
                    if got > poff:
                        if op == 1 and not poff:
                            self._utf8.reset()
                        mask = src[start - 4 : start]
                        if poff & 3:
                            mask = mask[poff & 3 :] + mask[: poff & 3]
                        chunk = _apply_mask(mv[start + poff : pos + avail], mask)
                        try:
                            self._utf8.decode(chunk)
                        except UnicodeDecodeError:
                            return self._fail(events, 1007, "invalid UTF-8")
                        self._poff = got
                    self._need = 0
                else:
                    self._need = total
                return pos
            payload = _apply_mask(mv[start : pos + total], src[start - 4 : start])
            poff = self._poff
            if poff:
                self._poff = 0
            pos += total
            fin = b0 & 0x80 != 0

            if op > 2:
                if op == OP_PING:
                    if not self.close_sent:
                        if self.hold_pongs:
                            self.pong = encode_frame(OP_PONG, payload)
                        else:
                            out = self.outgoing
                            out.append(0x8A)
                            out.append(ln)
                            out += payload
                    continue  # a ping proves the peer writes, not that it reads
                self.active = True
                if op == OP_CLOSE:
                    self._on_close(payload, events)
                    return pos
                continue  # pongs only prove liveness

            self.active = True
            if op and fin and not z:
                # A whole uncompressed message in one frame: the common case.  A streamed
                # text frame had its prefix validated already; decode() checks it all.
                if op == OP_TEXT:
                    try:
                        events.append(payload.decode())
                    except UnicodeDecodeError:
                        return self._fail(events, 1007, "invalid UTF-8")
                else:
                    events.append(payload)
                continue

            if op:  # first frame of a fragmented or compressed message
                self._msg_out = 0
                if fin:  # compressed, in one frame
                    inflated = self._inflate(payload, True, events)
                    if inflated is None:
                        return -1
                    if self._zrest is None:  # inflated whole within this call's bound
                        if op == OP_TEXT:
                            try:
                                events.append(inflated.decode())
                            except UnicodeDecodeError:
                                return self._fail(events, 1007, "invalid UTF-8")
                        else:
                            events.append(inflated)
                        continue
                self._msg_op = op
                self._msg_z = z
                self._msg_size = 0
                if op == OP_TEXT and not poff:
                    self._utf8.reset()
                if fin:  # the rest of its inflation comes in later calls
                    if not self._append(inflated, True, events):
                        return -1
                    self.more = True
                    self._need = 0
                    return pos
            else:
                z = self._msg_z
            # Every frame of a fragmented message costs parsing and bookkeeping beyond
            # its payload: charged against the limit, so tiny fragments run out first.
            self._msg_size += ln + FRAGMENT_OVERHEAD
            if z:
                inflated = self._inflate(payload, fin, events)
                if inflated is None or not self._append(inflated, fin, events):
                    return -1
                if self._zrest is not None:
                    self.more = True
                    self._need = 0
                    return pos
            elif not self._append(payload, fin, events, validated=poff):
                return -1

    def _append(self, data: bytes, fin: bool, events: list[Event], *, validated: int = 0) -> bool:
        """Add decoded bytes to the message in progress (one bytearray); emit it when whole.

        Text is validated as it comes (its first ``validated`` bytes already were), so
        invalid UTF-8 fails at once, and decoded once, whole, at the end.  False when
        the connection failed.
        """
        last = fin and self._zrest is None
        if self._msg_op == OP_TEXT:
            try:
                self._utf8.decode(memoryview(data)[validated:] if validated else data, last)
            except UnicodeDecodeError:
                self._fail(events, 1007, "invalid UTF-8")
                return False
        frag = self._frag
        frag += data
        if last:
            events.append(frag.decode() if self._msg_op == OP_TEXT else bytes(frag))
            frag.clear()
            self._msg_op = self._msg_size = 0
        return True

    def _inflate(
        self, payload: bytes, fin: bool, events: list[Event], *, resumed: bool = False
    ) -> bytes | None:
        """Decompress (part of) one frame of a compressed message; ``None`` when that failed.

        zlib's ``max_length`` caps the output at one byte over the message's remaining
        budget, so a decompression bomb costs at most ``max_message_size`` before it is
        refused; and at what is left of this call's ``max_inflate_per_call``, so a burst
        of bombs is inflated one bound at a time.  Output that reached the call's bound
        may have more behind it: the unconsumed input waits in ``_zrest``.
        """
        d = self._inflater
        if d is None:
            d = self._inflater = zlib.decompressobj(wbits=-self._cwbits)
        if fin and not resumed:
            payload += _DEFLATE_TAIL
        budget = self._max - self._msg_out
        left = self._zleft
        limit = budget + 1 if budget < left else left
        try:
            out = d.decompress(payload, limit)
        except zlib.error:
            self._fail(events, 1007, "invalid compressed data")
            return None
        n = len(out)
        if n > budget:
            self._fail(events, 1009, "message too big")
            return None
        self._msg_out += n
        self._zleft = left - n
        if n == limit:
            self._zrest = d.unconsumed_tail
            self._zfin = fin
            return out
        self._zrest = None
        if fin and (self._cnct or d.eof):
            # No context takeover, or the peer ended the deflate stream: start afresh.
            self._inflater = None
        return out

    def _on_close(self, payload: bytes, events: list[Event]) -> None:
        n = len(payload)
        if not n:
            code = 1005
            reason = ""
        elif n == 1:
            self._fail(events, 1002, "close frame with a 1-byte payload")
            return
        else:
            code = (payload[0] << 8) | payload[1]
            if not _valid_close_code(code):
                self._fail(events, 1002, "invalid close code")
                return
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                self._fail(events, 1007, "invalid UTF-8 in close reason")
                return
        self.close_received = True
        self._done = True
        if not self.close_sent:
            self.close_sent = True
            self.outgoing += encode_close(1000 if code == 1005 else code)
        events.append(CloseReceived(code, reason))


# --------------------------------------------------------------------------- handshake


class HandshakeError(Exception):
    """The upgrade request is not a valid WebSocket handshake: answer with ``status``."""

    def __init__(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers: list[tuple[bytes, bytes]] = headers if headers is not None else []

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def _header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k == name]


def _tokens(values: list[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",")}


def check_handshake(method: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Validate an opening handshake (RFC 6455 4.2.1) and return its Sec-WebSocket-Key.

    A wrong or missing version gets 426 with the version we speak (4.2.2), so clients
    can retry; every other defect is a plain 400.
    """
    if method != "GET":
        raise HandshakeError(400, "WebSocket handshake must use GET")
    if "websocket" not in _tokens(_header_values(headers, b"upgrade")):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if "upgrade" not in _tokens(_header_values(headers, b"connection")):
        raise HandshakeError(400, "missing Connection: upgrade")
    versions = _header_values(headers, b"sec-websocket-version")
    if len(versions) != 1 or versions[0].strip() != "13":
        raise HandshakeError(
            426, "unsupported WebSocket version", [(b"sec-websocket-version", b"13")]
        )
    keys = [v for k, v in headers if k == b"sec-websocket-key"]
    if len(keys) != 1:
        raise HandshakeError(400, "expected exactly one Sec-WebSocket-Key")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not 16 base64-encoded bytes")
    return key


def check_extended_connect(headers: list[tuple[bytes, bytes]]) -> None:
    """Validate a WebSocket opened by an HTTP/2 extended CONNECT (RFC 8441 5).

    The method, ``:protocol`` and the pseudo-headers were checked by the HTTP/2
    layer; RFC 8441 drops Upgrade, Connection and Sec-WebSocket-Key (the stream
    is the upgrade), and keeps the version rule, answered as in 4.2.2 (426).
    """
    versions = _header_values(headers, b"sec-websocket-version")
    if len(versions) != 1 or versions[0].strip() != "13":
        raise HandshakeError(
            426, "unsupported WebSocket version", [(b"sec-websocket-version", b"13")]
        )


def check_origin(headers: Iterable[tuple[bytes, bytes]], allowed: Iterable[str]) -> None:
    """Refuse (403) a handshake whose Origin matches none of ``allowed``.

    ``allowed`` holds exact origins or fnmatch patterns (``https://*.example.com``),
    compared case-insensitively; empty allows every origin.  A request without Origin
    passes: browsers always send one (RFC 6454 7.2), so only non-browser clients omit it,
    and they are not what cross-site WebSocket hijacking abuses.  Several Origin headers
    are refused as ambiguous.
    """
    patterns = [p.lower() for p in allowed]
    if not patterns:
        return
    origins = _header_values(headers, b"origin")
    if not origins:
        return
    if len(origins) > 1:
        raise HandshakeError(403, "more than one Origin header")
    origin = origins[0].strip().lower()
    if not any(fnmatch.fnmatchcase(origin, pattern) for pattern in patterns):
        raise HandshakeError(403, "origin not allowed")


def parse_subprotocols(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Offered subprotocols in the client's order of preference, across repeated headers."""
    return [
        t.strip()
        for v in _header_values(headers, b"sec-websocket-protocol")
        for t in v.split(",")
        if t.strip()
    ]


_WINDOW_BITS = frozenset(str(bits) for bits in range(8, 16))


def _deflate_offer(params: Iterable[tuple[str, str | None]]) -> tuple[DeflateParams, bytes] | None:
    """Accept one permessage-deflate offer as RFC 7692 7.1 allows, or ``None`` to decline it."""
    seen: set[str] = set()
    snct = cnct = False
    swbits = cwbits = 15
    reply = [b"permessage-deflate"]
    for name, value in params:
        if name in seen:
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            if name[0] == "s":
                snct = True
            else:
                cnct = True
            reply.append(name.encode())
        elif name in ("server_max_window_bits", "client_max_window_bits"):
            if value is None:
                if name[0] == "s":
                    return None
                # "client_max_window_bits" alone only says the client could honour a
                # limit; not replying with one leaves it at 15, which we decompress.
                continue
            if value not in _WINDOW_BITS:
                return None
            if name[0] == "s":
                swbits = int(value)
            else:
                cwbits = int(value)
            reply.append(f"{name}={value}".encode())
        else:
            return None
    return DeflateParams(snct, cnct, swbits, cwbits), b"; ".join(reply)


def negotiate_deflate(
    headers: Iterable[tuple[bytes, bytes]], enabled: bool
) -> tuple[DeflateParams | None, bytes | None]:
    """Pick the first acceptable permessage-deflate offer; other extensions are ignored.

    A malformed Sec-WebSocket-Extensions header declines compression rather than the
    connection: the client may still talk uncompressed.  Each header line is a
    complete list (RFC 9110 5.3), so only the lines that mention
    ``permessage-deflate`` are parsed, in order, up to the first acceptable offer:
    parsing is linear in the head (bounded by ``max_request_head_size``), and
    lines of other extensions cost a substring search.
    """
    if not enabled:
        return None, None
    for value in _header_values(headers, b"sec-websocket-extensions"):
        if "permessage-deflate" not in value:
            continue
        try:
            offers = parse_extension(value)
        except InvalidHeaderFormat:
            return None, None
        for name, params in offers:
            if name == "permessage-deflate":
                accepted = _deflate_offer(params)
                if accepted is not None:
                    return accepted
    return None, None


_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding"))


def accept_response(
    key: bytes,
    *,
    subprotocol: str | None = None,
    extensions: bytes | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """The 101 response head; raises ValueError for a header the app may not send.

    App-supplied headers pass the one validation HTTP responses get
    (``protocol/headers.py``: token names, no NUL/CR/LF in values), and a 101
    carries no message framing (RFC 9110 8.6, RFC 9112 6.1), so Content-Length
    and Transfer-Encoding are refused too.  The server answers such an accept as
    an app error: HTTP 500, before any byte of the handshake.
    """
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept,
    ]
    if subprotocol is not None:
        value = subprotocol.encode()
        check_value(value)
        lines.append(b"Sec-WebSocket-Protocol: " + value)
    if extensions is not None:
        lines.append(b"Sec-WebSocket-Extensions: " + extensions)  # ours (negotiate_deflate)
    for name, value in extra_headers:
        if check_name(name) in _FRAMING_HEADERS:
            raise ValueError(f"a 101 response carries no {name.decode()} header")
        check_value(value)
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def accept_headers(
    *,
    subprotocol: str | None = None,
    extensions: bytes | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> list[tuple[bytes, bytes]]:
    """The headers of an HTTP/2 accept (RFC 8441 5: a 200 with no Sec-WebSocket-Accept);
    the same checks as :func:`accept_response`, so an app's accept fails alike on
    either protocol."""
    headers: list[tuple[bytes, bytes]] = []
    if subprotocol is not None:
        value = subprotocol.encode()
        check_value(value)
        headers.append((b"sec-websocket-protocol", value))
    if extensions is not None:
        headers.append((b"sec-websocket-extensions", extensions))
    for name, value in extra_headers:
        if check_name(name) in _FRAMING_HEADERS:
            raise ValueError(f"a WebSocket accept carries no {name.decode()} header")
        check_value(value)
        headers.append((name, value))
    return headers
