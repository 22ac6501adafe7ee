"""An app for the Redis outage tests and benchmarks/redis_faults.py.

WebSocket ``/room/<name>``: says ``{"pid": ...}``, subscribes to ``room:<name>``, then
publishes every JSON text it receives there (the guide's chat room), or, for
``{"to": other, "message": m}``, ``m`` to ``room:<other>`` (a publisher that reads nothing).  HTTP
``/publish/<name>/<start>/<count>[/<pad>]``: publishes ``{"seq": start}`` ...
``{"seq": start + count - 1}`` to ``room:<name>`` (with ``"pad": "xx..."`` of ``pad``
characters) and answers ``queued <count>`` once they are all queued (synchronous
publish: queued at the call).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hornbeam_erlang import publish, subscribe


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        _, _, name, start, count, *pad = scope["path"].split("/")
        padding = "x" * int(pad[0]) if pad else ""
        for seq in range(int(start), int(start) + int(count)):
            publish(f"room:{name}", {"seq": seq, "pad": padding} if padding else {"seq": seq})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"queued {count}".encode()})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        topic = "room:" + scope["path"].rsplit("/", 1)[-1]
        await send({"type": "websocket.send", "text": json.dumps({"pid": os.getpid()})})
        subscribe(topic)
        while (message := await receive())["type"] == "websocket.receive":
            data = json.loads(message["text"])
            if isinstance(data, dict) and "to" in data:  # {"to": name, "message": ...}
                publish("room:" + data["to"], data["message"])
            else:
                publish(topic, data)
    elif scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
