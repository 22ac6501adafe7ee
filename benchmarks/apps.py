"""ASGI apps under benchmark.

`echo`: HTTP `GET /` answers 200 "hello" (text/plain); a WebSocket echoes every
message back as it came (text as text, bytes as bytes).

`broadcast`: Hornbeam-style pub/sub. A connection to `/pub` is the publisher:
every text message it sends is handed to `hornbeam_erlang.publish("bench", text)`.
Any other path is a subscriber: it calls `subscribe("bench")` after accept and then
only waits for its disconnect; the server itself pushes published messages to it.

`broadcast_loop`: the same shape for servers without pub/sub: a module-global set of
subscriber `send` callables, and the publisher loops over it for every message.

`hello_read`: the same hello (to `GET /` or `POST /`), but the app reads its request
body with `receive()` until `more_body` is false before it answers.

`hello_fastapi`, `hello_starlette`: the same hello `GET /` through FastAPI and through
Starlette (created on first use, so servers without them can import this module).

`stream_1m`: `GET /` answers a 1 MiB body sent in 64 KiB chunks (`more_body`); a
POST reads its whole upload and answers its length as text.

`hornbeam_erlang` is imported inside `broadcast` so that servers other than
hornbeam_trio can import this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOPIC = "bench"
PUBLISHER_PATH = "/pub"

_HELLO_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
}
_HELLO_BODY = {"type": "http.response.body", "body": b"hello"}
_NOT_FOUND_START = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")],
}
_NOT_FOUND_BODY = {"type": "http.response.body", "body": b"not found"}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _hello(scope: Scope, send: Send, method: str = "GET") -> None:
    if scope["method"] == method and scope["path"] == "/":
        await send(_HELLO_START)
        await send(_HELLO_BODY)
    else:
        await send(_NOT_FOUND_START)
        await send(_NOT_FOUND_BODY)


async def _read_body(receive: Receive) -> int:
    """Read the request body to its end; its length."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return size


async def _accept(receive: Receive, send: Send) -> bool:
    """Wait for websocket.connect and accept; False if the client left first."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return False
    await send({"type": "websocket.accept"})
    return True


async def _echo_ws(receive: Receive, send: Send) -> None:
    if not await _accept(receive, send):
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes")})
        elif message["type"] == "websocket.disconnect":
            return


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await _echo_ws(receive, send)
    elif kind == "http":
        await _hello(scope, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)


async def broadcast(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind == "http":
        await _hello(scope, send)
        return
    from hornbeam_erlang import publish, subscribe, unsubscribe

    if not await _accept(receive, send):
        return
    if scope["path"] == PUBLISHER_PATH:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                publish(TOPIC, message["text"])
            elif message["type"] == "websocket.disconnect":
                return
    subscribe(TOPIC)
    try:
        await _wait_disconnect(receive)
    finally:
        unsubscribe(TOPIC)


_subscribers: set[Send] = set()


async def broadcast_loop(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind == "http":
        await _hello(scope, send)
        return
    if not await _accept(receive, send):
        return
    if scope["path"] == PUBLISHER_PATH:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                out = {"type": "websocket.send", "text": message["text"]}
                for subscriber in tuple(_subscribers):
                    try:
                        await subscriber(out)
                    except OSError:  # uvicorn's ClientDisconnected: the subscriber just left
                        _subscribers.discard(subscriber)
            elif message["type"] == "websocket.disconnect":
                return
    _subscribers.add(send)
    try:
        await _wait_disconnect(receive)
    finally:
        _subscribers.discard(send)


async def hello_read(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        await _read_body(receive)
        await _hello(scope, send, scope["method"] if scope["method"] == "POST" else "GET")
    elif kind == "websocket":
        await _echo_ws(receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)


STREAM_CHUNK = 64 * 1024
STREAM_TOTAL = 1024 * 1024
_STREAM_CHUNK_BODY = {"type": "http.response.body", "body": b"x" * STREAM_CHUNK, "more_body": True}


async def stream_1m(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        return
    if scope["method"] == "POST":
        size = str(await _read_body(receive)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(size)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": size})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", b"%d" % STREAM_TOTAL),
            ],
        }
    )
    for _ in range(STREAM_TOTAL // STREAM_CHUNK - 1):
        await send(_STREAM_CHUNK_BODY)
    await send({"type": "http.response.body", "body": b"x" * STREAM_CHUNK})


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)])


def _fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/", response_class=PlainTextResponse)
    async def hello() -> str:
        return "hello"

    return app


def _lazy(build: Callable[[], Any]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    built: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if not built:
            built.append(build())
        await built[0](scope, receive, send)

    return app


hello_starlette = _lazy(_starlette_app)
hello_fastapi = _lazy(_fastapi_app)
