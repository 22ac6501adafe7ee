"""HTTP/2 frames as bytes (RFC 9113 4, 6) and response header blocks (RFC 7541).

The numbers of the protocol (frame types, flags, error codes, settings) and the frames
a server writes, each built with one ``struct`` call and a concatenation.  Reading
frames is the connection's job (``http2.H2Protocol``), which needs its state anyway.

Response header blocks are HPACK without the dynamic table: every field is an indexed
static entry (``:status 200``) or a literal *without indexing* (RFC 7541 6.2.2), so a
field's encoding depends on nothing but the field and is remembered (bounded cache).
The first block of a connection opens with a dynamic table size update to 0 (6.3),
valid under any SETTINGS_HEADER_TABLE_SIZE the client sends.  Request blocks are
decoded by the ``hpack`` library's Decoder, which bounds the decoded size.

Imports nothing of ours.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Final

from hpack.table import HeaderTable

__all__ = [
    "ErrorCode",
    "encode_block",
    "encode_field",
    "frame",
    "goaway",
    "rst_stream",
    "settings",
    "window_update",
]

# Frame types (RFC 9113 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags.
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Settings (RFC 9113 6.5.2, RFC 8441 3).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

DEFAULT_MAX_FRAME: Final = 16384
"""SETTINGS_MAX_FRAME_SIZE both ways until the peer says otherwise (we never do)."""
MAX_WINDOW: Final = 2**31 - 1


class ErrorCode(IntEnum):
    """RFC 9113 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


HEAD: Final = struct.Struct(">BHBBL")
"""A frame header: length (high byte, low 16 bits), type, flags, stream id."""
_U32: Final = struct.Struct(">L")
_SETTING: Final = struct.Struct(">HL")
_GOAWAY: Final = struct.Struct(">LL")

SETTINGS_ACK: Final = HEAD.pack(0, 0, SETTINGS, ACK, 0)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


def window_update(stream_id: int, increment: int) -> bytes:
    return HEAD.pack(0, 4, WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


def rst_stream(stream_id: int, code: int) -> bytes:
    return HEAD.pack(0, 4, RST_STREAM, 0, stream_id) + _U32.pack(code)


def goaway(last_stream_id: int, code: int) -> bytes:
    return HEAD.pack(0, 8, GOAWAY, 0, 0) + _GOAWAY.pack(last_stream_id, code)


# --- HPACK for responses ---------------------------------------------------------------

_STATIC_FIELD: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FIELD.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)

_NEVER_INDEXED: Final = frozenset((b"set-cookie", b"authorization", b"proxy-authorization"))
"""Literal never-indexed (RFC 7541 6.2.3): intermediaries must not index them either."""

TABLE_SIZE_ZERO: Final = b"\x20"
"""A dynamic table size update to 0: our encoder's table stays empty."""

CACHE_MAX: Final = 1024
CACHED_VALUE_MAX_LEN: Final = 128
_fields: dict[tuple[bytes, bytes], bytes] = {}


def _integer(value: int, prefix_bits: int, pattern: int) -> bytes:
    """RFC 7541 5.1: ``value`` in an N-bit prefix whose high bits are ``pattern``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((pattern | value,))
    out = bytearray((pattern | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """A string literal, not Huffman-coded (RFC 7541 5.2)."""
    return _integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One lowercase field, as :func:`encode_block` encodes it (not remembered)."""
    index = _STATIC_FIELD.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    pattern = 0x10 if name in _NEVER_INDEXED else 0x00
    index = _STATIC_NAME.get(name)
    if index is not None:
        return _integer(index, 4, pattern) + _string(value)
    return bytes((pattern,)) + _string(name) + _string(value)


def encode_block(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block of lowercase ``fields`` that leaves the dynamic table untouched."""
    parts = []
    cache = _fields
    for field in fields:
        encoded = cache.get(field)
        if encoded is None:
            encoded = encode_field(*field)
            if len(field[1]) <= CACHED_VALUE_MAX_LEN:
                if len(cache) >= CACHE_MAX:
                    cache.clear()
                cache[field] = encoded
        parts.append(encoded)
    return b"".join(parts)
