"""A room that recovers: ``/?since=POSITION&mode=push|iter`` (tests of topic history).

Both modes send the client the same frames, those of the push form
(``hornbeam_trio.recovery``): first ``{"topic", "recovered", "position"}``, then
``{"topic", "position", "data"}`` per message of ``chat:race``.  ``push`` uses
``subscribe(topic, since=...)``; ``iter`` uses ``subscription(topic, since=...)`` and
frames each ``Message`` itself.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import hornbeam_trio

TOPIC = "chat:race"


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    query = parse_qs(scope["query_string"].decode())
    since = query["since"][0]
    await send({"type": "websocket.accept"})
    if query.get("mode", ["iter"])[0] == "push":
        hornbeam_trio.subscribe(TOPIC, since=since)
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    async with hornbeam_trio.subscription(TOPIC, since=since) as messages:
        first = {"topic": TOPIC, "recovered": messages.recovered, "position": None}
        await send({"type": "websocket.send", "text": json.dumps(first)})
        async for message in messages:
            item = {"topic": TOPIC, "position": str(message.position), "data": message.data}
            await send({"type": "websocket.send", "text": json.dumps(item)})
