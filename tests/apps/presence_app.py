"""A room with presence, for the Redis presence tests (run as its own server process).

WebSocket ``/<name>``: the client is pushed the room's presence events, joins the room
as ``{"name": name, "pid": ...}``, is told ``{"member": id}``, and stays until it leaves.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hornbeam_erlang import presence_join, presence_topic, subscribe

ROOM = "room:lobby"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        subscribe(presence_topic(ROOM))
        name = scope["path"].rsplit("/", 1)[-1]
        member = presence_join(ROOM, {"name": name, "pid": os.getpid()})
        await send({"type": "websocket.send", "text": json.dumps({"member": member})})
        while (await receive())["type"] == "websocket.receive":
            pass
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
