"""ASGI 3 type aliases shared across the package (imports nothing of ours)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client is gone (ASGI 2.4: a server-specific OSError)."""


class ConnectionEnded(RuntimeError):
    """An owned write (``owned=True``) for a connection that has already ended.

    Nothing would release such a key, so the write is refused rather than made.
    """
