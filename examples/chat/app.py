"""A complete chat application on hornbeam_trio's pub/sub, topic history and presence.

Run::

    python -m hornbeam_trio examples.chat.app:app --history 'chat:*=100,300s'

and open http://127.0.0.1:8000/ in two browser windows: pick a name, join the same
room, talk.  Reload a page, or cut its network for a while: it comes back with every
message sent meanwhile, once each, and the list of who is online.  Without
``--history`` the chat still works, live only, and the page says what it is missing.
Everything is one ASGI app, no framework:

=================================  ===================================================
``GET /``                          the page (``index.html`` next to this file: HTML + JS)
``GET /api/rooms``                 ``{"online": n, "rooms": {room: [user, ...]}}``
``GET /api/rooms/<room>``          ``{"room", "users": [...], "history": [...]}``
``WS  /ws/<room>?user=N[&since=P]``  join ``<room>`` as ``N``, recovering after position ``P``
=================================  ===================================================

The WebSocket protocol, all JSON text frames, server -> client:

* ``{"type": "welcome", "room", "user", "member", "members", "history"}`` once, after
  joining: ``member`` is this connection's presence id, ``members`` the room's
  presence snapshot ``{member: {"user": name}}``, ``history`` whether the room keeps
  history (``--history``);
* presence events of the room, pushed by the server as they happen:
  ``{"type": "presence.join", "member", "info"}`` and ``{"type": "presence.leave",
  "member"}``.  The page applies them on top of the snapshot (events that arrived
  before the welcome too: applying one twice changes nothing);
* with history, a recovery frame ``{"topic", "recovered", "position"}``, then every
  message, the missed ones first, as ``{"topic", "position", "data": {"type":
  "message", "user", "text", "ts"}}``.  The page keeps the last ``position`` and sends
  it back as ``since`` when it reconnects; ``recovered`` false means history no longer
  covered the gap (too old, or the server lost its history) and the page says so.
  Without ``since`` (a first visit) the replay is the room's last ``HISTORY`` messages.
  Without history the messages come bare (``{"type": "message", ...}``), live only;
* ``{"type": "error", "error"}`` for a message over ``MAX_TEXT`` characters; a bad
  room, name or ``since`` is accepted and then closed with 1008 and the reason, which a
  browser shows (a refused handshake would only say 1006).

Client -> server: ``{"type": "message", "text": "..."}``; any other text frame is taken
as the message text itself, so ``websocat`` users can simply type.

Where things live: ``chat:<room>`` is the room's topic (history by ``--history
'chat:*=...'``), ``presence:chat:<room>`` its presence events.  Presence is owned by the
connection, so a closed tab, a cut network or a killed server process leaves the list
(over Redis, a killed process's members when its lease runs out).  A name is not unique:
a member is a connection, so one person in two tabs, or a tab reconnecting while the
server has not yet seen its old connection go, is listed once by name.  ``chat:online``
and ``chat:rooms:<room>`` are owned counters (taken back when the connection ends) for
``/api/rooms``.  Every call is the awaitable form, so the app runs unchanged over
``--backend redis://`` and ``--workers``.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from hornbeam_trio import (
    Position,
    presence_join,
    presence_topic,
    publish,
    state,
    subscribe,
)

HISTORY = 50
"""Messages a first visit is shown (the topic may keep more for recovery)."""
MAX_TEXT = 1000
"""Longest message, in characters."""
MAX_NAME = 24
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
INDEX_HTML = (Path(__file__).parent / "index.html").read_bytes()


def room_topic(room: str) -> str:
    return f"chat:{room}"


# -- reading the room -------------------------------------------------------------------
async def room_users(room: str) -> list[str]:
    """The names online in ``room``, each once, sorted."""
    members = await state.presence(room_topic(room))
    return sorted({info["user"] for info in members.values()})


async def recent_history(room: str) -> list[Any] | None:
    """The room's last ``HISTORY`` messages, or None if it keeps no history."""
    try:
        read = await state.history(room_topic(room), limit=HISTORY)
    except LookupError:
        return None
    return [message.data for message in read.messages]


async def first_visit_since(topic: str) -> Position | None:
    """Where a first visit's replay starts: just before the last ``HISTORY`` messages
    (the newest position if there are none); None if the topic keeps no history."""
    try:
        read = await state.history(topic, limit=HISTORY)
    except LookupError:
        return None
    if read.messages:
        first = read.messages[0].position
        return Position(first.offset - 1, first.epoch)
    return read.position


async def active_rooms() -> dict[str, list[str]]:
    """Rooms with someone in them -> their users."""
    prefix = "chat:rooms:"
    counts = await state.get_multi(await state.keys(prefix))
    rooms = sorted(key[len(prefix):] for key, count in counts.items() if count)
    return {room: await room_users(room) for room in rooms}


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


def parse_since(text: str | None) -> Position | None:
    """The client's ``since``; ValueError if it is not a position."""
    return None if text is None else Position.parse(text)


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
    since: Position | None = None
    if not ROOM_NAME.fullmatch(room):
        problem = "room names are 1-32 letters, digits, '-' or '_'"
    else:
        problem = check_name(user)
    try:
        since = parse_since((query.get("since") or [None])[0])
    except ValueError as error:
        problem = problem or str(error)
    if problem is not None:
        await send({"type": "websocket.close", "code": 1008, "reason": problem})
        return

    topic = room_topic(room)
    # Presence: subscribe to the events, then join, then read the snapshot.  An event
    # is published after the change it reports, so the snapshot and the events the
    # page applies on top of it miss nobody (see "Presence" in the README).
    subscribe(presence_topic(topic))
    member = presence_join(topic, {"user": user})
    await state.incr("chat:online", owned=True)
    await state.incr(f"chat:rooms:{room}", owned=True)
    members = await state.presence(topic)
    first = await first_visit_since(topic)
    start = None if first is None else since or first
    await send_json(send, {
        "type": "welcome", "room": room, "user": user, "member": member,
        "members": members, "history": start is not None,
    })
    if start is None:
        subscribe(topic)  # no history kept: live only
    else:
        # Replay after ``start``, then live: none missed, none twice, however publishes
        # race with this; the recovery frame says whether history covered the gap.
        subscribe(topic, since=start)
    while True:
        frame = await receive()
        if frame["type"] == "websocket.disconnect":
            return
        text = message_text(frame)
        if not text:
            continue
        if len(text) > MAX_TEXT:
            await send_json(send, {
                "type": "error", "error": f"messages are at most {MAX_TEXT} characters",
            })
            continue
        publish(topic, {"type": "message", "user": user, "text": text, "ts": time.time()})


async def http_endpoint(scope: dict[str, Any], send: Any) -> None:
    path = scope["path"]
    if scope["method"] != "GET":
        await respond(send, 405, b"method not allowed", b"text/plain")
    elif path == "/":
        await respond(send, 200, INDEX_HTML, b"text/html; charset=utf-8")
    elif path == "/api/rooms":
        await respond_json(send, {"online": await state.get("chat:online") or 0,
                                  "rooms": await active_rooms()})
    elif path.startswith("/api/rooms/") and ROOM_NAME.fullmatch(room := path[11:]):
        await respond_json(send, {"room": room, "users": await room_users(room),
                                  "history": await recent_history(room) or []})
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
