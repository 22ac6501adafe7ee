"""The app of the shutdown-under-load tests (tests/test_shutdown_load.py), run as a process.

* WebSocket ``/ws/<room>``: subscribes to the room, sends ``ready``, echoes text.
* HTTP ``/slow?<seconds>``: sends ``start`` at once, then ``end`` after that many
  seconds (a response in flight that a test can see has started).
* HTTP anything else: ``hello``.
"""

from __future__ import annotations

import trio

from hornbeam_erlang import subscribe
from hornbeam_trio.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return  # no lifespan
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        subscribe("room:" + scope["path"].rsplit("/", 1)[-1])
        await send({"type": "websocket.send", "text": "ready"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})
        return
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/slow":
        await send({"type": "http.response.body", "body": b"start\n", "more_body": True})
        await trio.sleep(float(scope["query_string"] or b"1"))
        await send({"type": "http.response.body", "body": b"end\n"})
    else:
        await send({"type": "http.response.body", "body": b"hello"})
