"""ASGI apps for the HTTP, lifespan and serve() tests (tests/test_http.py, test_lifespan.py,
test_serve.py).

Plain functions are stateless apps.  Classes are apps a test builds fresh so it can
look inside: they record what the server handed them (``seen``) and expose
``trio.Event`` s the test waits on instead of sleeping.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from pydantic import BaseModel

from hornbeam_trio.types import Message, Receive, Scope, Send

Headers = list[tuple[bytes, bytes]]


async def respond(
    send: Send,
    status: int = 200,
    body: bytes = b"",
    headers: Headers | None = None,
    *,
    content_type: bytes = b"text/plain",
) -> None:
    """One response with a single body message (the server adds content-length)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body, and every message receive() returned for it."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return b"".join(m.get("body", b"") for m in messages), messages


async def skip_lifespan(receive: Receive, send: Send) -> None:
    """A lifespan that answers startup and shutdown and does nothing else."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- stateless apps -----------------------------------------------------------------


def _jsonable_scope(scope: Scope) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {key: convert(value) for key, value in scope.items() if key != "state"}


async def scope_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers the http scope as JSON (bytes as latin-1 text, tuples as lists)."""
    if scope["type"] == "lifespan":
        await skip_lifespan(receive, send)
        return
    await read_body(receive)
    body = json.dumps(_jsonable_scope(scope)).encode()
    await respond(send, 200, body, content_type=b"application/json")


async def body_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers JSON: the body it read, and the (length, more_body) of every message."""
    if scope["type"] == "lifespan":
        await skip_lifespan(receive, send)
        return
    body, messages = await read_body(receive)
    report = {
        "body": body.decode("latin-1"),
        "messages": [
            [m["type"], len(m.get("body", b"")), m.get("more_body", False)] for m in messages
        ],
    }
    await respond(send, 200, json.dumps(report).encode(), content_type=b"application/json")


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """``hello`` for every request; never reads lifespan (an app without lifespan support)."""
    assert scope["type"] == "http", scope["type"]
    await read_body(receive)
    await respond(send, 200, b"hello")


async def streamer(scope: Scope, receive: Receive, send: Send) -> None:
    """Three body parts with more_body=True, then an empty final one (chunked framing)."""
    await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"one,", b"two,", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def raises_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    raise RuntimeError("boom before the response")


async def raises_mid_body(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom in the middle of the body")


async def no_response(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)


async def answers_without_reading(scope: Scope, receive: Receive, send: Send) -> None:
    """Rejects every request at once, never calling receive() (Expect: 100-continue tests)."""
    await respond(send, 413, b"too big")


# -- apps a test looks inside ---------------------------------------------------------


class LongPoll:
    """Reads the body, then waits on receive() for the client to go away."""

    def __init__(self) -> None:
        self.waiting = trio.Event()
        self.disconnected = trio.Event()
        self.after_body: Message | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await skip_lifespan(receive, send)
            return
        await read_body(receive)
        self.waiting.set()
        self.after_body = await receive()
        self.disconnected.set()


class Slow:
    """Starts the response, then holds the body until ``release`` is set or ``delay`` passes.

    ``/fast`` answers at once.  ``started`` is set when a slow response has begun.
    WebSockets are echoed.  ``events`` logs lifespan and response milestones in order.
    ``hang_shutdown``: the lifespan takes its shutdown event and never answers it.
    """

    def __init__(self, delay: float | None = None, *, hang_shutdown: bool = False) -> None:
        self.delay = delay
        self.hang_shutdown = hang_shutdown
        self.started = trio.Event()
        self.release = trio.Event()
        self.finished = trio.Event()
        self.cancelled = False
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.shutdown" and self.hang_shutdown:
                    try:
                        await trio.sleep_forever()
                    except trio.Cancelled:
                        self.events.append("lifespan shutdown cancelled")
                        raise
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "websocket":
            await _echo_websocket(receive, send)
            self.events.append("websocket closed")
            return
        await read_body(receive)
        if scope["path"] == "/fast":
            await respond(send, 200, b"fast")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"slow:", "more_body": True})
        self.started.set()
        try:
            if self.delay is None:
                await self.release.wait()
            else:
                await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled = True
            self.events.append("response cancelled")
            raise
        await send({"type": "http.response.body", "body": b"done", "more_body": False})
        self.events.append("response finished")
        self.finished.set()


async def _echo_websocket(receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


class LifespanRecorder:
    """Supports lifespan: records startup/shutdown and request order, fills ``state``."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.lifespan_scope: Scope | None = None
        self.request_states: list[dict[str, Any]] = []
        self.shutdown_done = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.lifespan_scope = scope
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.append("startup")
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    self.shutdown_done.set()
                    return
        self.events.append(f"{scope['type']} {scope['path']}")
        state = scope.get("state")
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps(state)})
            await send({"type": "websocket.close", "code": 1000})
            return
        self.request_states.append(dict(state) if state is not None else {"missing": True})
        await read_body(receive)
        # A request may write to its own copy of the state; other requests must not see it.
        if state is not None:
            state["scribble"] = scope["path"]
        await respond(send, 200, json.dumps(state).encode(), content_type=b"application/json")


class ScriptedLifespan:
    """A lifespan that behaves as told; serves ``hello`` over HTTP.

    ``startup``: "complete", "failed" (with ``message``), "raise" (before receiving
    anything), "raise-after-receive" or "return" (without answering).
    ``shutdown``: "complete", "failed", "raise" or "hang" (never answers).
    ``events`` records what the app saw, in order.
    """

    def __init__(
        self, startup: str = "complete", shutdown: str = "complete", message: str = "no db"
    ) -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.message = message
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            self.events.append(scope["type"] + (" with state" if "state" in scope else ""))
            await hello(scope, receive, send)
            return
        self.events.append("lifespan called")
        if self.startup == "raise":
            raise RuntimeError("lifespan is not supported here")
        if self.startup == "return":
            return
        assert (await receive())["type"] == "lifespan.startup"
        self.events.append("startup")
        if self.startup == "raise-after-receive":
            raise RuntimeError("lifespan is not supported here")
        if self.startup == "failed":
            await send({"type": "lifespan.startup.failed", "message": self.message})
            return
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        self.events.append("shutdown")
        try:
            if self.shutdown == "hang":
                await trio.sleep_forever()
            elif self.shutdown == "raise":
                raise RuntimeError("shutdown went wrong")
            elif self.shutdown == "failed":
                await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
        except trio.Cancelled:
            self.events.append("cancelled")
            raise


class NeverLifespan:
    """Fails the test (through the app-error hook) if ever called with a lifespan scope."""

    def __init__(self) -> None:
        self.scope_types: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope_types.append(scope["type"])
        if scope["type"] == "lifespan":
            raise AssertionError("lifespan must not be called with lifespan='off'")
        assert "state" not in scope, "no lifespan, so no state in the scope"
        await hello(scope, receive, send)


# -- framework apps (they run on Trio through AnyIO) ----------------------------------


def starlette_app(events: list[str] | None = None) -> Any:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    log = events if events is not None else []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        log.append("startup")
        yield {"greeting": "hi from lifespan"}
        log.append("shutdown")

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.state.greeting} {request.url.path}")

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "query": dict(request.query_params),
                "length": len(body),
                "header": request.headers.get("x-test"),
            }
        )

    async def stream(request: Request) -> StreamingResponse:
        async def parts() -> Any:
            for i in range(3):
                yield f"part{i};"

        return StreamingResponse(parts(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
        ],
        lifespan=lifespan,
    )


class Item(BaseModel):
    """FastAPI request model (module level: FastAPI resolves annotations in module globals)."""

    name: str
    price: float


def fastapi_app() -> Any:
    from fastapi import FastAPI, HTTPException

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        if item_id == 404:
            raise HTTPException(status_code=404, detail="no such item")
        return {"item_id": item_id, "q": q}

    @app.post("/items")
    async def create_item(item: Item) -> dict[str, Any]:
        return {"name": item.name, "price_with_tax": round(item.price * 1.2, 2)}

    return app


class BodyRecorder:
    """Hands every receive() result to the test as it happens (``messages``), then echoes.

    The test reads ``messages`` to know the app has consumed one piece of the body
    before it writes the next, so "many receive() calls" is observed, not hoped for.
    """

    def __init__(self) -> None:
        self._send, self.messages = trio.open_memory_channel[Message](100)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await skip_lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            self._send.send_nowait(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await respond(send, 200, b"".join(chunks))


# -- client side: a byte-level HTTP/1.1 response reader ------------------------------------


class IncompleteResponse(AssertionError):
    """The connection ended in the middle of a response."""

    def __init__(self, message: str, partial: bytes) -> None:
        super().__init__(f"{message}; got {partial!r}")
        self.partial = partial


class RawResponse:
    def __init__(
        self, status: int, headers: Headers, body: bytes, *, chunked: bool, head: bytes
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunked = chunked
        self.head = head

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        values = [v.decode("latin-1") for k, v in self.headers if k == wanted]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers!r} {self.body[:80]!r}>"


class RawHTTP:
    """Writes exact bytes and parses the responses itself, so nothing is smoothed over.

    Works over any Trio stream (TCP, unix socket, in-memory).  A TCP reset counts as EOF
    but is remembered in ``reset``.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False
        self.reset = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _until(self, marker: bytes, what: str) -> bytes:
        while (index := self.buffer.find(marker)) < 0:
            if not await self._more():
                raise IncompleteResponse(f"EOF before the end of {what}", bytes(self.buffer))
        data = bytes(self.buffer[: index + len(marker)])
        del self.buffer[: index + len(marker)]
        return data

    async def _exactly(self, size: int, what: str) -> bytes:
        while len(self.buffer) < size:
            if not await self._more():
                raise IncompleteResponse(f"EOF in {what}", bytes(self.buffer))
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_response(self, method: str = "GET") -> RawResponse:
        """The next response (a 1xx is returned on its own, like any other)."""
        head = await self._until(b"\r\n\r\n", "a response head")
        status_line, *lines = head[:-4].split(b"\r\n")
        version, status_text, *_ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1", status_line
        status = int(status_text)
        headers: Headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        names = dict(headers)
        chunked = names.get(b"transfer-encoding", b"").lower() == b"chunked"
        if status < 200 or status in (204, 304) or method == "HEAD":
            body = b""
        elif chunked:
            parts: list[bytes] = []
            try:
                while True:
                    size = int((await self._until(b"\r\n", "a chunk size")).strip(), 16)
                    if size == 0:
                        await self._until(b"\r\n", "the last chunk")
                        break
                    parts.append(await self._exactly(size, "a chunk"))
                    assert await self._exactly(2, "a chunk end") == b"\r\n"
            except IncompleteResponse as exc:
                raise IncompleteResponse(
                    "EOF in a chunked body", b"".join(parts) + exc.partial
                ) from None
            body = b"".join(parts)
        elif b"content-length" in names:
            body = await self._exactly(int(names[b"content-length"]), "a sized body")
        else:
            body = await self.read_to_eof()
        return RawResponse(status, headers, body, chunked=chunked, head=head)

    async def read_to_eof(self) -> bytes:
        """Everything the server still sends before it closes the connection."""
        while await self._more():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def assert_closed(self) -> None:
        """The server closes the connection without sending anything more."""
        rest = await self.read_to_eof()
        assert rest == b"", f"unexpected bytes before close: {rest!r}"
