"""A complete chat application on Hornbeam's pub/sub and shared state.

Run::

    python -m hornbeam_trio examples.chat.app:app

and open http://127.0.0.1:8000/ in two browser windows: pick a name, join the same
room, talk.  Everything is one ASGI app, no framework:

==========================  ==========================================================
``GET /``                   the page (``index.html`` next to this file: HTML + JS)
``GET /api/rooms``          ``{"online": n, "rooms": {room: [user, ...]}}``
``GET /api/rooms/<room>``   ``{"room", "users": [...], "history": [...]}``
``WS  /ws/<room>?user=N``   join ``<room>`` as ``N``
==========================  ==========================================================

The WebSocket protocol, all JSON text frames:

* server -> client, once, right after joining: ``{"type": "welcome", "room", "user",
  "users", "history"}`` (the recent messages, oldest first);
* server -> everyone in the room (pub/sub): ``{"type": "join" | "leave", "user",
  "users", "ts"}`` and ``{"type": "message", "id", "user", "text", "ts"}``;
* client -> server: ``{"type": "message", "text": "..."}``; any other text frame is
  taken as the message text itself, so ``websocat`` users can simply type;
* a bad room or name, or a name already in the room, is accepted and then closed with
  1008 and the reason, which a browser shows (a refused handshake would only say
  1006).  A message over ``MAX_TEXT`` characters gets ``{"type": "error"}``.

Where things live (Hornbeam's ``hornbeam_erlang`` API, with hornbeam_trio's
``owned=True``):

* ``chat:<room>`` is the room's pub/sub topic.  ``subscribe()`` makes the server push
  every event published to it to this client; no task of ours forwards anything.
* ``chat:<room>:presence:<user>`` is set with ``owned=True``: the server deletes it
  when this connection ends, however it ends (client close, network loss, idle
  timeout, an exception here, server shutdown), so the user list cannot keep ghosts.
  It also makes names unique within a room.
* ``chat:online`` is incremented with ``owned=True``: the server takes the increment
  back when the connection ends, so it always counts the connected clients.
* ``chat:<room>:history`` holds the last ``HISTORY`` messages and ``chat:<room>:seq``
  numbers them (``state_incr`` is atomic).  The history update is a read-modify-write
  with no ``await`` in between, which makes it atomic in one process (the memory
  backend); across several workers sharing Redis, two messages at the same instant
  could overwrite each other's history entry (their ids stay unique).
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from hornbeam_erlang import (
    publish,
    state_get,
    state_get_multi,
    state_incr,
    state_keys,
    state_set,
    subscribe,
)

HISTORY = 50
"""Messages kept per room and sent to whoever joins."""
MAX_TEXT = 1000
"""Longest message, in characters."""
MAX_NAME = 24
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
INDEX_HTML = (Path(__file__).parent / "index.html").read_bytes()


# -- the shared state, one function per key ----------------------------------------
def presence_key(room: str, user: str) -> str:
    return f"chat:{room}:presence:{user}"


def room_users(room: str) -> list[str]:
    values = state_get_multi(state_keys(f"chat:{room}:presence:")).values()
    return sorted(value["user"] for value in values if value is not None)


def room_history(room: str) -> list[dict[str, Any]]:
    return state_get(f"chat:{room}:history") or []


def append_history(room: str, message: dict[str, Any]) -> None:
    key = f"chat:{room}:history"
    state_set(key, [*(state_get(key) or []), message][-HISTORY:])


def active_rooms() -> dict[str, list[str]]:
    """Rooms with someone in them -> their users."""
    rooms = set()
    for key in state_keys("chat:"):
        parts = key.split(":", 3)
        if len(parts) == 4 and parts[2] == "presence":
            rooms.add(parts[1])
    return {room: room_users(room) for room in sorted(rooms)}


# -- validation -----------------------------------------------------------------------
def check_name(user: str) -> str | None:
    """Why ``user`` is not a usable name, or None."""
    if not user:
        return "a name is required (?user=...)"
    if len(user) > MAX_NAME:
        return f"names are at most {MAX_NAME} characters"
    if any(unicodedata.category(char).startswith("C") for char in user):
        return "names cannot contain control characters"
    return None


def message_text(frame: dict[str, Any]) -> str:
    """The chat text a client frame carries: JSON ``{"type": "message", "text": ...}``,
    or the frame's text itself."""
    raw = frame.get("text")
    if raw is None:
        raw = (frame.get("bytes") or b"").decode("utf-8", "replace")
    try:
        value = json.loads(raw)
    except ValueError:
        return raw.strip()
    if isinstance(value, dict) and value.get("type") == "message":
        return str(value.get("text", "")).strip()
    return raw.strip()


# -- the app ---------------------------------------------------------------------------
async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await chat_session(scope, receive, send)
    elif scope["type"] == "http":
        await http_endpoint(scope, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)


async def chat_session(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})
    room = scope["path"].removeprefix("/ws/")
    query = parse_qs(scope["query_string"].decode("latin-1"))
    user = (query.get("user") or [""])[0].strip()
    problem = None
    if not ROOM_NAME.fullmatch(room):
        problem = "room names are 1-32 letters, digits, '-' or '_'"
    else:
        problem = check_name(user)
        if problem is None and state_get(presence_key(room, user)) is not None:
            problem = f"{user!r} is already in {room}"
    if problem is not None:
        await send({"type": "websocket.close", "code": 1008, "reason": problem})
        return

    topic = f"chat:{room}"
    # Subscribe, then read users and history with no await in between: every message
    # is either in the welcome's history or pushed to us afterwards, never lost.  (A
    # pushed one may overtake the welcome on the wire; the page orders by id.)
    subscribe(topic)
    state_set(presence_key(room, user), {"user": user, "since": time.time()}, owned=True)
    state_incr("chat:online", owned=True)
    users = room_users(room)
    await send_json(send, {
        "type": "welcome", "room": room, "user": user,
        "users": users, "history": room_history(room),
    })
    publish(topic, {"type": "join", "user": user, "users": users, "ts": time.time()})
    try:
        while True:
            frame = await receive()
            if frame["type"] == "websocket.disconnect":
                break
            text = message_text(frame)
            if not text:
                continue
            if len(text) > MAX_TEXT:
                await send_json(send, {
                    "type": "error", "error": f"messages are at most {MAX_TEXT} characters",
                })
                continue
            message = {
                "type": "message",
                "id": state_incr(f"chat:{room}:seq"),
                "user": user,
                "text": text,
                "ts": time.time(),
            }
            append_history(room, message)
            publish(topic, message)
    finally:
        # Runs however the session ends, cancellation included (nothing here awaits).
        # The presence key is owned: the server has removed it if the client is gone
        # already, and will once the connection is over otherwise, so the leave notice
        # lists the others by hand either way.
        others = [name for name in room_users(room) if name != user]
        publish(topic, {"type": "leave", "user": user, "users": others, "ts": time.time()})


async def http_endpoint(scope: dict[str, Any], send: Any) -> None:
    path = scope["path"]
    if scope["method"] != "GET":
        await respond(send, 405, b"method not allowed", b"text/plain")
    elif path == "/":
        await respond(send, 200, INDEX_HTML, b"text/html; charset=utf-8")
    elif path == "/api/rooms":
        await respond_json(send, {"online": state_get("chat:online") or 0,
                                  "rooms": active_rooms()})
    elif path.startswith("/api/rooms/") and ROOM_NAME.fullmatch(room := path[11:]):
        await respond_json(send, {"room": room, "users": room_users(room),
                                  "history": room_history(room)})
    else:
        await respond(send, 404, b"not found", b"text/plain")


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_json(send: Any, value: Any) -> None:
    await send({"type": "websocket.send", "text": json.dumps(value)})


async def respond_json(send: Any, value: Any) -> None:
    await respond(send, 200, json.dumps(value).encode(), b"application/json")


async def respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ],
    })
    await send({"type": "http.response.body", "body": body})
