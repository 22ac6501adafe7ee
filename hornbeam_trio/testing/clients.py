"""The toolkit's WebSocket client, its helpers, and how a client leaves.

A client's reader is a trio-websocket task hosted in :func:`run_server`'s nursery
(see ``TestServer._host_client``), not in the test's own task.  A clean close is a
handshake: the test task sends Close and waits until that reader sees the server's
answer.  When the test is cancelled (``trio.fail_after`` around ``run_server``) the
reader is cancelled too, so no answer can ever be seen.  Invariant kept here: once
the reader has stopped, nothing waits for a close handshake -- the reader's host
calls :meth:`WebSocketClient._reader_stopped`, which aborts the socket if the
client had not begun closing, or ends the close already waiting.  Teardown under
cancellation is therefore immediate, whatever the number of clients.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import trio
import trio_websocket

from ..transport import LINGER_RESET

DEFAULT_TIMEOUT = 5.0


class WebSocketClient:
    """A trio-websocket client that also knows how to vanish abruptly."""

    def __init__(
        self, connection: trio_websocket.WebSocketConnection, stream: trio.abc.Stream
    ) -> None:
        self.connection = connection
        self._stream = stream
        self._reader_gone = False
        self._closing: trio.CancelScope | None = None
        """The scope of a close waiting for the server's answer (ended if the reader stops)."""

    @property
    def subprotocol(self) -> str | None:
        return self.connection.subprotocol

    @property
    def closed(self) -> trio_websocket.CloseReason | None:
        return self.connection.closed

    async def send(self, message: str | bytes) -> None:
        await self.connection.send_message(message)

    async def send_json(self, value: Any) -> None:
        await self.connection.send_message(json.dumps(value))

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
        return await receive_within(self, timeout)

    async def receive_json(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        message = await receive_within(self, timeout)
        return json.loads(message)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Clean close: the closing handshake, then TCP close.

        If the client's reader has stopped (its ``run_server`` was cancelled), the socket
        was already aborted and this returns at once.
        """
        with trio.CancelScope() as scope:
            await self._close_in(scope, code, reason)

    async def abort(self) -> None:
        """Abrupt disconnect: a TCP reset, no close frame (or a dropped in-memory stream)."""
        await _abort_stream(self._stream)

    async def _close_within(self, timeout: float) -> None:
        """A clean close for teardown: bounded by ``timeout``, shielded from the caller's
        cancellation (the handshake still runs when only the test body was cancelled)."""
        with trio.CancelScope(shield=True), trio.move_on_after(timeout) as scope:
            await self._close_in(scope, 1000, None)

    async def _close_in(self, scope: trio.CancelScope, code: int, reason: str | None) -> None:
        if self._reader_gone:
            return  # nobody can read the server's answer; _reader_stopped aborted the socket
        self._closing = scope
        try:
            await self.connection.aclose(code, reason)
        finally:
            self._closing = None

    async def _reader_stopped(self) -> None:
        """Called by the reader's host when the reader task has ended, for any reason.

        Ended with the connection open (its owner was cancelled): abort the socket, so the
        server sees the client leave now rather than at its idle timeout.  Ended while a
        close waits for the answer: end that wait, as the answer can no longer arrive.
        """
        self._reader_gone = True
        if self._closing is not None:
            self._closing.cancel()
        elif self.connection.closed is None:
            await _abort_stream(self._stream)


async def _abort_stream(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once; for TCP with a reset (SO_LINGER 0), not a FIN."""
    if isinstance(stream, trio.SocketStream) and stream.socket.fileno() != -1:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    await trio.aclose_forcefully(stream)


async def receive_within(client: WebSocketClient, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
    """The next message, or a test failure that says how long it waited."""
    with trio.move_on_after(timeout):
        try:
            return await client.connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise AssertionError(
                f"connection closed while waiting for a message: {exc.reason}"
            ) from None
    raise AssertionError(f"no WebSocket message within {timeout:g}s")


async def assert_closed_with(
    client: WebSocketClient,
    code: int,
    reason: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Wait for the server's close (skipping messages still queued) and check its code/reason."""
    with trio.move_on_after(timeout):
        while client.connection.closed is None:
            try:
                await client.connection.get_message()
            except trio_websocket.ConnectionClosed:
                break
    closed = client.connection.closed
    if closed is None:
        raise AssertionError(f"connection not closed within {timeout:g}s (expected {code})")
    if closed.code != code:
        raise AssertionError(f"closed with {closed.code} {closed.reason!r}, expected {code}")
    if reason is not None and closed.reason != reason:
        raise AssertionError(f"closed with reason {closed.reason!r}, expected {reason!r}")


async def collect(source: Any, count: int, *, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    """``count`` messages from a WebSocketClient or a pub/sub Subscription, or a clear failure."""
    out: list[Any] = []
    with trio.move_on_after(timeout):
        while len(out) < count:
            if isinstance(source, WebSocketClient):
                out.append(await source.connection.get_message())
            else:
                out.append(await source.get())
    if len(out) < count:
        raise AssertionError(f"got {len(out)} of {count} messages within {timeout:g}s: {out!r}")
    return out
