"""An app for tests/test_metrics.py: WebSocket echo, push subscribers and a publisher.

* ``ws /echo``: every message sent back.
* ``ws /sub/TOPIC``: ``subscribe(TOPIC)`` (server push), then ``"subscribed"`` is sent,
  then it only waits for the client to leave.
* ``ws /presence/TOPIC``: ``presence_join(TOPIC)``, then ``"joined"`` is sent; a
  message ``leave`` leaves (answered ``"left"``); otherwise it waits for the client to go.
* ``GET /publish/TOPIC/N``: N publishes to TOPIC in one go (no checkpoint between
  them: one batch for the delivery batcher); the body is how many subscribers they
  reached in all.
* any other HTTP request: ``app`` (also ``/metrics``: it is the app's port).
"""

from __future__ import annotations

import hornbeam_trio
from hornbeam_trio.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    path: str = scope["path"]
    body = b"app"
    if path.startswith("/publish/"):
        _, _, topic, count = path.split("/")
        reached = sum(hornbeam_trio.publish(topic, f"m{i}") for i in range(int(count)))
        body = str(reached).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    path: str = scope["path"]
    if path.startswith("/sub/"):
        hornbeam_trio.subscribe(path.removeprefix("/sub/"))
        await send({"type": "websocket.send", "text": "subscribed"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if path.startswith("/presence/"):
        topic = path.removeprefix("/presence/")
        hornbeam_trio.presence_join(topic, {"path": path})
        await send({"type": "websocket.send", "text": "joined"})
        while (message := await receive())["type"] != "websocket.disconnect":
            if message.get("text") == "leave":
                hornbeam_trio.presence_leave(topic)
                await send({"type": "websocket.send", "text": "left"})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
