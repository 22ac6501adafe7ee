"""How values and messages travel through Redis: one type-tag byte, then the payload.

Rule: what ``decode_*`` returns equals what was given to ``encode_*`` for every
JSON-like value (str, int, float, bool, None, list, dict with str keys) and bytes,
nested or not; tuples come back as lists, as they do from the memory backend.

State values (``encode_value`` / ``decode_value``)::

    -12, 0, 42 ...      an int in Redis' signed 64-bit range: plain decimal, untagged,
                        so INCRBY works on it atomically (and on a missing key)
    s<utf-8>            str
    b<raw>              bytes
    j<json>             anything else JSON-like without bytes inside (floats exactly,
                        big ints, bools, None, lists, dicts)
    x<json>             JSON-like with bytes inside: ``[paths, value]`` where each
                        path (list of dict keys / list indexes) names a spot in
                        ``value`` holding the base64 of bytes

Tags are letters and an untagged int starts with a digit or ``-``, so decoding is
never ambiguous.  Pub/sub messages (``encode_message`` / ``decode_message``) use
``s``, ``b`` and ``j`` with the memory backend's rules: str is a text frame, bytes a
binary frame, anything else must be JSON (nested bytes raise ``TypeError`` at the
publish, with or without Redis).  A received JSON message is handed on as
:class:`EncodedJSON`, so the receiving process frames the publisher's text as it
is, once, whatever its number of subscribers.

This module imports nothing of ours but the value checks: it is unit-tested with bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .values import checked_copy

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_dumps = json.JSONEncoder(separators=(",", ":")).encode
"""Compact JSON, as the hub frames it (one encoder: ``json.dumps(x, separators=...)``
builds a new one per call, a third of a publish's cost)."""


class EncodedJSON:
    """A message already encoded as JSON text (received from another process)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"EncodedJSON({self.text!r})"


# -- state values ------------------------------------------------------------
def encode_value(value: Any) -> bytes:
    """The bytes stored in Redis for ``value``; TypeError for what is not JSON-like."""
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return str(value).encode()
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"b" + value
    plain = checked_copy(value)  # validates and gives us a copy we may rewrite
    paths: list[list[str | int]] = []
    plain = _bytes_to_base64(plain, [], paths)
    if paths:
        return b"x" + _dumps([paths, plain]).encode()
    return b"j" + _dumps(plain).encode()


def decode_value(raw: bytes | None) -> Any:
    """The value for bytes read from Redis (None for a missing key)."""
    if raw is None:
        return None
    if not raw:
        return b""  # not written by us; the closest faithful answer
    tag = raw[0]
    if tag == 0x73:  # s
        return raw[1:].decode("utf-8", "surrogatepass")
    if tag == 0x62:  # b
        return bytes(raw[1:])
    if tag == 0x6A:  # j
        return json.loads(raw[1:])
    if tag == 0x78:  # x
        paths, plain = json.loads(raw[1:])
        for path in paths:
            plain = _put(plain, path)
        return plain
    try:
        return int(raw)
    except ValueError:
        return bytes(raw)  # a foreign value in our namespace: hand back the bytes


def _bytes_to_base64(value: Any, path: list[str | int], paths: list[list[str | int]]) -> Any:
    if isinstance(value, bytes):
        paths.append(list(path))
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        for key, item in value.items():
            path.append(key)
            value[key] = _bytes_to_base64(item, path, paths)
            path.pop()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            path.append(index)
            value[index] = _bytes_to_base64(item, path, paths)
            path.pop()
    return value


def _put(root: Any, path: list[Any]) -> Any:
    """Replace the base64 text at ``path`` in ``root`` by its bytes; returns the root."""
    if not path:
        return base64.b64decode(root)
    container = root
    for step in path[:-1]:
        container = container[step]
    container[path[-1]] = base64.b64decode(container[path[-1]])
    return root


# -- pub/sub messages --------------------------------------------------------
def encode_message(message: Any) -> bytes:
    """The PUBLISH payload; TypeError (at the publisher) for what is not JSON."""
    if isinstance(message, str):
        return b"s" + message.encode("utf-8", "surrogatepass")
    if isinstance(message, bytes):
        return b"b" + message
    return b"j" + _dumps(message).encode()


def decode_message(raw: bytes) -> Any:
    """What the local hub delivers: str, bytes, or :class:`EncodedJSON` (framed as is)."""
    tag = raw[:1]
    if tag == b"s":
        return raw[1:].decode("utf-8", "surrogatepass")
    if tag == b"b":
        return bytes(raw[1:])
    if tag == b"j":
        return EncodedJSON(raw[1:].decode())
    raise ValueError(f"not a hornbeam_trio message: {raw[:20]!r}")
