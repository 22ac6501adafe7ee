"""An app that says which worker process serves it (for ``--workers`` tests).

HTTP: the worker's pid as text.  WebSocket ``/room/<name>``: first a
``{"pid": ...}`` message, then the guide's chat room (sync subscribe/publish).
WebSocket ``/own/<user>``: owns ``presence:<user>`` and one ``online`` increment for
as long as it is connected, then says ``{"pid": ...}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hornbeam_erlang import publish, subscribe
from hornbeam_trio import state


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        if scope["path"].startswith("/own/"):
            user = scope["path"].rsplit("/", 1)[-1]
            await state.set(f"presence:{user}", {"user": user}, owned=True)
            await state.incr("online", owned=True)
            await send({"type": "websocket.send", "text": json.dumps({"pid": os.getpid()})})
            while (await receive())["type"] == "websocket.receive":
                pass
            return
        topic = "room:" + scope["path"].rsplit("/", 1)[-1]
        await send({"type": "websocket.send", "text": json.dumps({"pid": os.getpid()})})
        subscribe(topic)
        while (message := await receive())["type"] == "websocket.receive":
            publish(topic, json.loads(message["text"]))
    elif scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
