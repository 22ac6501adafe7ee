"""ASGI apps for the WebSocket end-to-end tests, and the recorder they report to.

Every app here is built by a factory taking a :class:`Recorder`, so a test can see
the connection from the app's side too: the scope it got, every message its
``receive()`` returned (``websocket.connect`` first, ``websocket.disconnect`` last) and
the subprotocol it accepted.  The apps answer lifespan themselves (start-up and
shut-down complete) and plain HTTP with 404, so they run under any server option.

``echo`` follows the guide: it chooses ``graphql-ws``, else ``json``, else no
subprotocol from what the client offers, and sends every message back as it came
(text as text, bytes as bytes).  Two text commands let a client that cannot see
the handshake (websocat) probe the server: ``!subprotocol`` answers with the
accepted subprotocol (``none`` when there is none) and ``!close CODE REASON`` makes
the app close the connection with that code and reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from hornbeam_trio.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AppError",
    "Recorder",
    "Session",
    "close_before_accept",
    "closing",
    "denial",
    "echo",
    "raise_after_accept",
    "raise_before_accept",
    "return_before_accept",
]


class AppError(Exception):
    """Raised on purpose by the failing apps, so a test can tell it from a real bug."""


class Session:
    """One WebSocket connection as the app saw it."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.received: list[Message] = []
        self.subprotocol: str | None = None
        self.ended = trio.Event()
        """Set when the app has returned (or raised)."""

    @property
    def disconnect(self) -> Message | None:
        """The ``websocket.disconnect`` message the app got, if it got one."""
        for message in self.received:
            if message["type"] == "websocket.disconnect":
                return message
        return None

    async def wait_disconnect(self, timeout: float = 5.0) -> Message:
        """The ``websocket.disconnect`` the app received, once the app has returned."""
        with trio.move_on_after(timeout):
            await self.ended.wait()
        disconnect = self.disconnect
        if disconnect is None:
            raise AssertionError(
                f"the app got no websocket.disconnect within {timeout:g}s; "
                f"it received {[m['type'] for m in self.received]}"
            )
        return disconnect


class Recorder:
    """The sessions of every WebSocket connection an app served, in connection order."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self._new_session = trio.Event()

    def start(self, scope: Scope) -> Session:
        session = Session(scope)
        self.sessions.append(session)
        self._new_session.set()
        self._new_session = trio.Event()
        return session

    async def session(self, index: int = 0, timeout: float = 5.0) -> Session:
        """The ``index``-th connection's session, waiting for it to begin if need be."""
        with trio.move_on_after(timeout):
            while len(self.sessions) <= index:
                await self._new_session.wait()
        if len(self.sessions) <= index:
            raise AssertionError(f"only {len(self.sessions)} WebSocket session(s) began")
        return self.sessions[index]


WebSocketHandler = Callable[[Session, Receive, Send], Awaitable[None]]


def _websocket_app(handler: WebSocketHandler, recorder: Recorder | None) -> ASGIApp:
    """Wrap a WebSocket handler: lifespan and HTTP answered, the session recorded."""
    recorder = recorder if recorder is not None else Recorder()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        session = recorder.start(scope)

        async def recording_receive() -> Message:
            message = await receive()
            session.received.append(message)
            return message

        try:
            await handler(session, recording_receive, send)
        finally:
            session.ended.set()

    return app


def choose_subprotocol(offered: list[str]) -> str | None:
    """The guide's choice: graphql-ws, else json, else none."""
    if "graphql-ws" in offered:
        return "graphql-ws"
    if "json" in offered:
        return "json"
    return None


def echo(
    recorder: Recorder | None = None,
    *,
    accept_headers: list[tuple[bytes, bytes]] | None = None,
) -> ASGIApp:
    """Send every message back as it came; see the module docstring for ``!`` commands."""

    async def handler(session: Session, receive: Receive, send: Send) -> None:
        connect = await receive()
        assert connect["type"] == "websocket.connect", connect
        session.subprotocol = choose_subprotocol(list(session.scope["subprotocols"]))
        accept: dict[str, Any] = {"type": "websocket.accept", "subprotocol": session.subprotocol}
        if accept_headers is not None:
            accept["headers"] = accept_headers
        await send(accept)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None and text.startswith("!"):
                command, _, argument = text.partition(" ")
                if command == "!subprotocol":
                    await send({"type": "websocket.send", "text": session.subprotocol or "none"})
                    continue
                if command == "!close":
                    code, _, reason = argument.partition(" ")
                    await send({"type": "websocket.close", "code": int(code), "reason": reason})
                    continue
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})

    return _websocket_app(handler, recorder)


def closing(recorder: Recorder | None = None, *, code: int, reason: str) -> ASGIApp:
    """Accept, send one text and one binary message, then close with ``code``/``reason``."""

    async def handler(session: Session, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "before close"})
        await send({"type": "websocket.send", "bytes": b"\x00\x01\xfe\xff"})
        await send({"type": "websocket.close", "code": code, "reason": reason})
        # After our close frame the next receive() reports the disconnect.
        message = await receive()
        assert message["type"] == "websocket.disconnect", message

    return _websocket_app(handler, recorder)


def denial(
    recorder: Recorder | None = None,
    *,
    status: int,
    body_chunks: list[bytes],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> ASGIApp:
    """Refuse the handshake with an HTTP response (the websocket.http.response extension)."""

    async def handler(session: Session, receive: Receive, send: Send) -> None:
        await receive()
        assert "websocket.http.response" in session.scope.get("extensions", {})
        await send(
            {"type": "websocket.http.response.start", "status": status, "headers": headers or []}
        )
        for index, chunk in enumerate(body_chunks):
            await send(
                {
                    "type": "websocket.http.response.body",
                    "body": chunk,
                    "more_body": index < len(body_chunks) - 1,
                }
            )

    return _websocket_app(handler, recorder)


def raise_after_accept(recorder: Recorder | None = None) -> ASGIApp:
    """Accept, echo one message, then raise."""

    async def handler(session: Session, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message.get("text") or "?"})
        raise AppError("boom after accept")

    return _websocket_app(handler, recorder)


def raise_before_accept(recorder: Recorder | None = None) -> ASGIApp:
    async def handler(session: Session, receive: Receive, send: Send) -> None:
        await receive()
        raise AppError("boom before accept")

    return _websocket_app(handler, recorder)


def return_before_accept(recorder: Recorder | None = None) -> ASGIApp:
    async def handler(session: Session, receive: Receive, send: Send) -> None:
        await receive()

    return _websocket_app(handler, recorder)


def close_before_accept(recorder: Recorder | None = None) -> ASGIApp:
    async def handler(session: Session, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 4403, "reason": "not allowed"})

    return _websocket_app(handler, recorder)
