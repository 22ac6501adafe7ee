"""The one validation of header fields an app asks the server to send.

HTTP responses (``http11.ResponseEncoder``, the WebSocket denial response) and the
WebSocket 101 (``websocket.accept_response``) check names and values here, so a
header refused on one path is refused on every path: a name must be a token
(RFC 9110 5.1: no empty name, no NUL, CR, LF, space or colon) and a value may
hold HTAB, visible ASCII and obs-text only (5.5: no NUL, CR or LF, so no
response splitting).  A bad header raises ``ValueError`` inside the app's
``send()``, which the server answers as an app error: 500 before anything of
the response was written.

Names and short values that passed are remembered (a dict lookup is ~10x
cheaper than ``bytes.translate``); the caches are bounded: emptied when full.
Nothing here imports an event loop or anything else of ours.
"""

from __future__ import annotations

from typing import Final

__all__ = ["check_name", "check_value"]

# bytes.translate(None, delete) leaves exactly the characters that are not allowed.
_TOKEN_CHARS: Final = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_FIELD_VALUE_CHARS: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))

CACHE_MAX: Final = 1024
CACHED_VALUE_MAX_LEN: Final = 64

_valid_names: dict[bytes, bytes] = {}
"""Valid header name -> its lowercase form."""
_valid_values: set[bytes] = set()


def check_name(name: bytes) -> bytes:
    """Validate a header name; its lowercase form.  Raises ValueError."""
    try:
        lname = _valid_names.get(name)
    except TypeError:  # unhashable (bytearray): checked, never remembered
        lname = None
    if lname is not None:
        return lname
    if not name or name.translate(None, _TOKEN_CHARS):
        raise ValueError(f"invalid header name {name!r}")
    lname = name.lower()
    if type(name) is bytes:
        if len(_valid_names) >= CACHE_MAX:
            _valid_names.clear()
        _valid_names[name] = lname
    return lname


def check_value(value: bytes) -> None:
    """Validate a header value (HTAB, visible ASCII, obs-text).  Raises ValueError."""
    try:
        if value in _valid_values:
            return
    except TypeError:  # unhashable (bytearray): checked, never remembered
        pass
    if value.translate(None, _FIELD_VALUE_CHARS):
        raise ValueError(f"invalid header value {value!r}")
    if type(value) is bytes and len(value) <= CACHED_VALUE_MAX_LEN:
        if len(_valid_values) >= CACHE_MAX:
            _valid_values.clear()
        _valid_values.add(value)
