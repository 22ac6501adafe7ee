"""How a WebSocket answers its opening handshake, by the HTTP version it came on.

The connection (``ws_conn.WebSocketConnection``) decides *what* to answer: accept
(with a subprotocol and extensions), refuse with a status (403, 500, 503), or the
app's own denial response.  A :class:`HandshakeReply` decides *how*: over
HTTP/1.1 (:class:`H1Reply`) it is bytes on the socket, a 101 head or a complete
response that ends the connection; over HTTP/2 (``h2_ws.H2Reply``, RFC 8441) it is
HEADERS on the stream (200 to accept) and, for a refusal, its DATA.

Everything after the accept is RFC 6455 framing whatever the reply: the
connection's transport carries it (the socket, or the HTTP/2 stream's DATA).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .protocol import websocket as wsproto
from .protocol.http11 import ResponseEncoder, simple_response

if TYPE_CHECKING:
    from .protocol.http11 import Request
    from .transport import Transport

Headers = Iterable[tuple[bytes, bytes]]


class HandshakeReply(Protocol):
    """The answer to one opening handshake; used at most once (accept or refuse)."""

    @property
    def denying(self) -> bool:
        """A denial response was started and its body is not complete yet."""
        ...

    def accept(
        self, *, subprotocol: str | None, extensions: bytes | None, extra_headers: Headers
    ) -> bytes:
        """Accept; the bytes to write first on the connection's send path (HTTP/1.1's
        101 head), or ``b""`` when the accept went otherwise (HTTP/2: HEADERS, which
        leave before any frame of the connection).  Raises ValueError for an app
        header that may not be sent, before anything is sent."""
        ...

    async def refuse(self, status: int, body: bytes = b"", headers: Headers = ()) -> None:
        """A complete response of the server's own; raises TransportClosed."""
        ...

    def deny_start(self, status: int, headers: Headers) -> None:
        """The app's ``websocket.http.response.start``: validated, held (ValueError)."""
        ...

    async def deny_body(self, body: bytes, more_body: bool) -> None:
        """The app's ``websocket.http.response.body``; raises TransportClosed."""
        ...


class H1Reply:
    """The HTTP/1.1 answer (RFC 6455 4.2.2): a 101 head, or a response, then close."""

    __slots__ = ("_denial", "key", "request", "transport")

    def __init__(self, request: Request, key: bytes, transport: Transport) -> None:
        self.request = request
        self.key = key
        self.transport = transport
        self._denial: ResponseEncoder | None = None

    @property
    def denying(self) -> bool:
        return self._denial is not None and not self._denial.complete

    def accept(
        self, *, subprotocol: str | None, extensions: bytes | None, extra_headers: Headers
    ) -> bytes:
        return wsproto.accept_response(
            self.key, subprotocol=subprotocol, extensions=extensions, extra_headers=extra_headers
        )

    async def refuse(self, status: int, body: bytes = b"", headers: Headers = ()) -> None:
        await self.transport.send_all(simple_response(status, body, headers=headers))

    def deny_start(self, status: int, headers: Headers) -> None:
        encoder = ResponseEncoder(self.request)
        encoder.start(status, headers)
        self._denial = encoder

    async def deny_body(self, body: bytes, more_body: bool) -> None:
        assert self._denial is not None
        await self.transport.send_all(self._denial.body(body, more_body))
