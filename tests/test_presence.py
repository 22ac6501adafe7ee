"""Presence on the memory backend, end to end with real WebSocket clients.

A connection's membership is owned by it: these tests end connections every way a
connection ends and check the member is gone from ``presence()`` and that a leave
event said so, in order after the join.  (Over Redis: tests/test_redis_presence.py;
generated app shapes x exit paths: tests/test_guarantees.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

import hornbeam_erlang
import hornbeam_trio
from hornbeam_trio import (
    ConnectionEnded,
    presence,
    presence_join,
    presence_leave,
    presence_topic,
    state,
    subscription,
)
from hornbeam_trio.runtime import current_connection
from hornbeam_trio.testing import run_server

pytestmark = pytest.mark.usefixtures("hornbeam_state")

ROOM = "room:lobby"


async def room_app(scope: Any, receive: Any, send: Any) -> None:
    """Joins ROOM as the name in the path, says its member id, then obeys commands."""
    if scope["type"] != "websocket":
        return
    name = scope["path"].rsplit("/", 1)[-1]
    await send({"type": "websocket.accept"})
    member = presence_join(ROOM, {"name": name})
    await send({"type": "websocket.send", "text": json.dumps({"member": member})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text") or ""
        if text == "raise":
            raise RuntimeError("the app fails on purpose")
        if text == "leave":
            presence_leave(ROOM)
            presence_leave(ROOM)  # a second leave changes nothing
        elif text.startswith("rename:"):
            presence_join(ROOM, {"name": text.removeprefix("rename:")})
        await send({"type": "websocket.send", "text": "ok"})


async def joined(client: Any) -> str:
    member: str = (await client.receive_json())["member"]
    return member


async def next_events(events: Any, count: int) -> list[Any]:
    with trio.fail_after(5):
        return [await events.get() for _ in range(count)]


async def test_presence_lists_each_connection_once_with_its_latest_info() -> None:
    async with run_server(room_app) as server:
        async with server.websocket("/ann") as ann, server.websocket("/bob") as bob:
            ann_id, bob_id = await joined(ann), await joined(bob)
            assert ann_id != bob_id
            assert presence(ROOM) == {ann_id: {"name": "ann"}, bob_id: {"name": "bob"}}
            await ann.send("rename:annie")  # joining again updates, never duplicates
            assert await ann.receive() == "ok"
            assert presence(ROOM) == {ann_id: {"name": "annie"}, bob_id: {"name": "bob"}}
            assert await state.presence(ROOM) == presence(ROOM)  # the awaitable form agrees
            snapshot = presence(ROOM)
            snapshot[ann_id]["name"] = "mallory"  # a copy: the members are unchanged
            assert presence(ROOM)[ann_id] == {"name": "annie"}
            assert presence("room:empty") == {}
            assert hornbeam_erlang.presence is hornbeam_trio.presence


async def _close(client: Any, server: Any) -> None:
    await client.close()


async def _abort(client: Any, server: Any) -> None:
    await client.abort()


async def _app_raises(client: Any, server: Any) -> None:
    await client.send("raise")


async def _server_shutdown(client: Any, server: Any) -> None:
    server.server.begin_shutdown()


async def _explicit_leave(client: Any, server: Any) -> None:
    await client.send("leave")


@pytest.mark.parametrize(
    "end",
    [_close, _abort, _app_raises, _server_shutdown, _explicit_leave],
    ids=["client_close", "client_reset", "app_exception", "server_shutdown", "presence_leave"],
)
async def test_a_member_leaves_with_a_leave_event_on_every_exit_path(end: Any) -> None:
    async with (
        run_server(room_app, raise_app_errors=False) as server,
        subscription(presence_topic(ROOM)) as events,
    ):
        stay = await server.connect_websocket("/stay")
        stay_id = await joined(stay)
        client = await server.connect_websocket("/gone")
        gone_id = await joined(client)
        assert set(presence(ROOM)) == {stay_id, gone_id}
        await next_events(events, 2)  # the two joins
        await end(client, server)
        if end is _server_shutdown:  # both connections end, in no particular order
            left = await next_events(events, 2)
            assert {event["type"] for event in left} == {"presence.leave"}
            assert {event["member"] for event in left} == {stay_id, gone_id}
            assert presence(ROOM) == {}
        else:
            (event,) = await next_events(events, 1)
            assert event == {"type": "presence.leave", "topic": ROOM, "member": gone_id}
            assert presence(ROOM) == {stay_id: {"name": "stay"}}
        if end is _explicit_leave:  # left, still connected: the connection ends later
            assert await client.receive() == "ok"
            await client.close()
    assert presence(ROOM) == {}


async def test_events_come_in_change_order_after_presence_shows_the_change() -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []

    async with run_server(room_app) as server, subscription(presence_topic(ROOM)) as events:

        async def watch() -> None:
            async for event in events:  # each event, with what presence() said on arrival
                seen.append((event, presence(ROOM)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            ann = await server.connect_websocket("/ann")
            ann_id = await joined(ann)
            bob = await server.connect_websocket("/bob")
            bob_id = await joined(bob)
            await ann.send("rename:annie")
            assert await ann.receive() == "ok"
            await ann.close()
            await bob.send("leave")
            assert await bob.receive() == "ok"
            with trio.fail_after(5):
                while len(seen) < 5:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        assert len(events) == 0  # and nothing more (a second leave publishes nothing)
    join, leave = "presence.join", "presence.leave"
    assert [event for event, _ in seen] == [
        {"type": join, "topic": ROOM, "member": ann_id, "info": {"name": "ann"}},
        {"type": join, "topic": ROOM, "member": bob_id, "info": {"name": "bob"}},
        {"type": join, "topic": ROOM, "member": ann_id, "info": {"name": "annie"}},
        {"type": leave, "topic": ROOM, "member": ann_id},
        {"type": leave, "topic": ROOM, "member": bob_id},
    ]
    # A member list rendered from the events alone is presence() at every step.
    members: dict[str, Any] = {}
    for event, shown in seen:
        if event["type"] == join:
            members[event["member"]] = event["info"]
        else:
            members.pop(event["member"])
        assert members == shown


async def presence_misuse_app(scope: Any, receive: Any, send: Any) -> None:
    """Bad info, then a join for a connection that has ended; reports what each raised."""
    if scope["type"] != "websocket":
        return
    await send({"type": "websocket.accept"})
    outcome = []
    try:
        presence_join(ROOM, {1, 2})  # a set is not JSON-like
    except TypeError:
        outcome.append("TypeError")
    outcome.append(str(sorted(presence(ROOM))))
    context = current_connection.get()
    assert context is not None
    context.end()  # as a task that outlives its connection would find it
    try:
        presence_join(ROOM, "late")
    except ConnectionEnded:
        outcome.append("ConnectionEnded")
    outcome.append(str(sorted(presence(ROOM))))
    await send({"type": "websocket.send", "text": ",".join(outcome)})


async def test_a_bad_info_or_an_ended_connection_joins_nothing() -> None:
    with pytest.raises(RuntimeError, match="while handling a connection"):
        presence_join(ROOM, {})
    async with run_server(presence_misuse_app) as server, server.websocket("/") as client:
        reply = await client.receive()
    assert reply == "TypeError,[],ConnectionEnded,[]"
    assert presence(ROOM) == {}


def readme_room_app() -> Any:
    """The app of the README's "Presence" section, run as written."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("### Presence") :]
    code = section[section.index("```python") + len("```python") :]
    namespace: dict[str, Any] = {}
    exec(compile(code[: code.index("```")], "README.md", "exec"), namespace)
    return namespace["room"]


async def test_the_readme_room_renders_the_same_member_list_as_presence() -> None:
    """Each client renders the README's way (snapshot, then every event on top of it)."""

    async def render(client: Any, rendered: dict[str, Any], done: Any) -> None:
        with trio.fail_after(5):
            while not done(rendered):
                message = await client.receive_json()
                if "members" in message:
                    rendered.update(message["members"])
                elif message["type"] == "presence.join":
                    rendered[message["member"]] = message["info"]
                else:
                    rendered.pop(message["member"], None)

    async with run_server(readme_room_app()) as server:
        async with server.websocket("/ann") as ann:
            ann_view: dict[str, Any] = {}
            await render(ann, ann_view, lambda m: len(m) == 1)
            async with server.websocket("/bob") as bob:
                bob_view: dict[str, Any] = {}
                await render(bob, bob_view, lambda m: len(m) == 2)
                await render(ann, ann_view, lambda m: len(m) == 2)
                assert ann_view == bob_view == presence("room:lobby")
                assert sorted(info["name"] for info in ann_view.values()) == ["ann", "bob"]
            await render(ann, ann_view, lambda m: len(m) == 1)
            assert ann_view == presence("room:lobby")
            assert [info["name"] for info in ann_view.values()] == ["ann"]
