"""Answers whether what start-up made is out of the garbage collector's reach (frozen)."""

from __future__ import annotations

import gc
import json
from typing import Any

MADE_AT_IMPORT: list[Any] = [object()]


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    tracked = any(obj is MADE_AT_IMPORT for obj in gc.get_objects())
    body = json.dumps({"frozen": gc.get_freeze_count(), "import_heap_tracked": tracked})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})
