"""Minimal ASGI 3 apps for the CLI and server tests.

``hello`` answers every HTTP request with ``hello``; ``echo`` sends every WebSocket
message back; ``create_app`` is a factory for ``--factory``; ``apps.hello`` is reachable
by a dotted attribute; ``failing_startup`` refuses its lifespan startup; ``stuck``
holds every response open after its first bytes and never answers its lifespan
shutdown; ``NOT_AN_APP`` is not callable.  A module that raises on import is written
by the tests themselves (into a temporary ``--app-dir``), since this one has to import
cleanly.
"""

from __future__ import annotations

import types
from typing import Any

import trio

from hornbeam_trio.types import Receive, Scope, Send

NOT_AN_APP = 42


async def _lifespan(
    receive: Receive, send: Send, *, fail: bool = False, hang: bool = False
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if fail:
                await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if hang:
                await trio.sleep_forever()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    assert scope["type"] == "http"
    while (await receive()).get("more_body", False):
        pass
    body = b"hello"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "websocket":
        await hello(scope, receive, send)
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        reply: dict[str, Any] = {"type": "websocket.send"}
        if message.get("text") is not None:
            reply["text"] = message["text"]
        else:
            reply["bytes"] = message.get("bytes") or b""
        await send(reply)


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, fail=True)
        return
    await hello(scope, receive, send)


async def stuck(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, hang=True)
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"stuck:", "more_body": True})
    await trio.sleep_forever()


def create_app() -> Any:
    """Factory for ``--factory``: the app is built at start-up."""
    return hello


apps = types.SimpleNamespace(hello=hello, echo=echo)
