"""examples/chat/app.py at the protocol level: history, recovery and presence.

The example runs as its own process, started with the flags of the README's first
command (``python -m hornbeam_trio examples.chat.app:app --history 'chat:*=100,300s'``),
and real WebSocket clients (trio-websocket, and a bare TCP stream for a client that
vanishes) talk to it.
``tests/test_browser_chat.py`` drives the page itself in Chromium.  One test runs two
server processes over a real redis-server (HORNBEAM_CI=1; skipped, saying why, without).

Frames interleave: the room's presence events are pushed by the server, the welcome is
sent by the app, so a client reads until the kind it waits for and keeps the others.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from example_server import (
    ExampleServer,
    abort,
    eventually,
    example_server,
    http_get,
    raw_websocket,
)
from redis_server import RedisServer, redis_server, skip_or_fail
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

TIMEOUT = 5.0
"""Seconds any single expected frame or close may take."""
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_chat_flags() -> tuple[str, ...]:
    """The flags of the README's first command, the one that starts the chat: the tests
    run the example as a reader of the README would."""
    for line in README.read_text().splitlines():
        if "-m hornbeam_trio examples.chat.app:app" in line:
            return tuple(shlex.split(line.partition("examples.chat.app:app")[2]))
    raise AssertionError("the README has no command starting examples.chat.app:app")


HISTORY = readme_chat_flags()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    skip_or_fail()
    with redis_server() as server:
        server.command("FLUSHALL")
        yield server


def kind(frame: dict[str, Any]) -> str:
    if "recovered" in frame:
        return "recovery"
    if "topic" in frame and "position" in frame:
        return "message"
    return str(frame["type"])


class Client:
    """A chat client: the frames it got, by kind, in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.unread: list[dict[str, Any]] = []

    async def next(self, wanted: str) -> dict[str, Any]:
        """The first unread frame of kind ``wanted``; frames of other kinds stay unread."""
        for frame in self.unread:
            if kind(frame) == wanted:
                self.unread.remove(frame)
                return frame
        with trio.fail_after(TIMEOUT):
            while True:
                frame = json.loads(await self.ws.get_message())
                if kind(frame) == wanted:
                    return frame
                self.unread.append(frame)

    async def say(self, text: str) -> None:
        await self.ws.send_message(json.dumps({"type": "message", "text": text}))


def offset(frame: dict[str, Any]) -> int:
    return int(frame["position"].rpartition("-")[2])


async def closed_with(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        try:
            message = await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason
    raise AssertionError(f"expected the connection to close, got {message!r}")


async def test_chat_app_messages_carry_positions_and_presence_lists_who_is_online() -> None:
    async with example_server("examples.chat.app:app", *HISTORY) as server:

        async def room(name: str) -> Any:
            return (await http_get(server, f"/api/rooms/{name}")).json()

        async def rooms() -> Any:
            return (await http_get(server, "/api/rooms")).json()

        page = await http_get(server, "/")
        assert "<title>hornbeam_trio chat</title>" in page.text

        async with open_websocket_url(server.ws_url("/ws/lobby?user=alice")) as ws_a:
            alice = Client(ws_a)
            welcome = await alice.next("welcome")
            assert (welcome["room"], welcome["user"], welcome["history"]) == (
                "lobby", "alice", True
            )
            assert welcome["members"] == {welcome["member"]: {"user": "alice"}}
            assert (await alice.next("presence.join"))["member"] == welcome["member"]  # her own
            recovery = await alice.next("recovery")
            assert (recovery["topic"], recovery["recovered"]) == ("chat:lobby", True)

            async with open_websocket_url(server.ws_url("/ws/lobby?user=bob")) as ws_b:
                bob = Client(ws_b)
                bob_welcome = await bob.next("welcome")
                assert sorted(i["user"] for i in bob_welcome["members"].values()) == [
                    "alice", "bob"
                ]
                joined = await alice.next("presence.join")
                assert joined["member"] == bob_welcome["member"]
                assert joined["info"] == {"user": "bob"}

                await alice.say("hi bob")
                for client in (alice, bob):
                    frame = await client.next("message")
                    assert (frame["topic"], offset(frame)) == ("chat:lobby", 1)
                    assert (frame["data"]["user"], frame["data"]["text"]) == ("alice", "hi bob")
                await ws_b.send_message("plain text works too")  # websocat style
                assert (await alice.next("message"))["data"]["text"] == "plain text works too"
                assert offset(await bob.next("message")) == 2
                await bob.say("x" * 1001)
                assert (await bob.next("error"))["error"].startswith("messages are at most")

                # Another room hears nothing of the lobby and numbers its own messages.
                async with open_websocket_url(server.ws_url("/ws/kitchen?user=carol")) as ws_c:
                    carol = Client(ws_c)
                    await carol.say("soup?")
                    assert offset(await carol.next("message")) == 1
                    assert await rooms() == {
                        "online": 3, "rooms": {"kitchen": ["carol"], "lobby": ["alice", "bob"]}
                    }

                # A latecomer's first visit replays the room's recent messages.
                stream, _ = await raw_websocket(server.port, "/ws/lobby?user=dave")
                await alice.next("presence.join")
                lobby = await room("lobby")
                assert [m["text"] for m in lobby["history"]] == ["hi bob", "plain text works too"]
                assert lobby["users"] == ["alice", "bob", "dave"]
                # dave vanishes without a close frame: his membership is owned by the
                # connection, so it goes with it and the others are told.
                await abort(stream)
                left = await alice.next("presence.leave")
                assert left["member"] not in (welcome["member"], bob_welcome["member"])
                assert (await room("lobby"))["users"] == ["alice", "bob"]
            assert (await alice.next("presence.leave"))["member"] == bob_welcome["member"]
        await eventually(rooms, lambda r: r == {"online": 0, "rooms": {}}, what="all gone")
        # History outlives the people; it is the room's, not theirs.
        assert len((await room("lobby"))["history"]) == 2


async def test_chat_app_first_visit_replays_the_recent_messages_then_goes_live() -> None:
    async with example_server("examples.chat.app:app", *HISTORY) as server:
        async with open_websocket_url(server.ws_url("/ws/r?user=ann")) as ws_a:
            ann = Client(ws_a)
            for n in range(60):
                await ann.say(f"m{n}")
            assert offset(await ann.next("message")) == 1
            for n in range(2, 61):
                assert offset(await ann.next("message")) == n
            async with open_websocket_url(server.ws_url("/ws/r?user=ben")) as ws_b:
                ben = Client(ws_b)
                assert (await ben.next("recovery"))["recovered"] is True
                replayed = [await ben.next("message") for _ in range(50)]  # HISTORY
                assert [offset(f) for f in replayed] == list(range(11, 61))
                await ann.say("live")
                live = await ben.next("message")
                assert (offset(live), live["data"]["text"]) == (61, "live")


async def reconnect_under_load(
    ann_server: ExampleServer, ben_servers: list[ExampleServer], total: int = 300
) -> tuple[list[int], list[bool]]:
    """ann sends ``total`` messages, paced, while ben disconnects every 0.1 s and comes
    back with the last position he saw, to each of ``ben_servers`` in turn.  Returns the
    offsets ben saw and what each recovery frame said."""
    seen: list[int] = []
    recoveries: list[bool] = []

    async def ben_reconnecting() -> None:
        since = None
        for round_ in itertools.count():
            server = ben_servers[round_ % len(ben_servers)]
            url = "/ws/r?user=ben" + (f"&since={since}" if since else "")
            async with open_websocket_url(server.ws_url(url)) as ws:
                ben = Client(ws)
                recoveries.append((await ben.next("recovery"))["recovered"])
                with trio.move_on_after(0.1):
                    while not seen or seen[-1] < total:
                        frame = await ben.next("message")
                        seen.append(offset(frame))
                        since = frame["position"]
            if seen and seen[-1] == total:
                return

    async with open_websocket_url(ann_server.ws_url("/ws/r?user=ann")) as ws_a:
        ann = Client(ws_a)
        await ann.next("welcome")
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ben_reconnecting)
                for n in range(total):
                    await ann.say(f"n{n}")
                    await trio.sleep(0.005)
    return seen, recoveries


async def test_chat_app_reconnecting_client_sees_every_message_once_under_load() -> None:
    async with example_server("examples.chat.app:app", *HISTORY) as server:
        seen, recoveries = await reconnect_under_load(server, [server])
    assert seen == list(range(1, 301))
    assert len(recoveries) > 3 and all(recoveries)


async def test_chat_app_over_redis_recovers_across_processes_and_shares_presence(
    redis: RedisServer,
) -> None:
    """Two server processes over one Redis: ben alternates between them while ann,
    on the first, talks; every message reaches him once.  Either process lists the
    members of both."""
    flags = (*HISTORY, "--backend", redis.url)
    async with (
        example_server("examples.chat.app:app", *flags) as one,
        example_server("examples.chat.app:app", *flags) as two,
    ):
        seen, recoveries = await reconnect_under_load(one, [two, one])
        assert seen == list(range(1, 301))
        assert len(recoveries) > 3 and all(recoveries)
        async with (
            open_websocket_url(one.ws_url("/ws/lobby?user=ann")) as ws_a,
            open_websocket_url(two.ws_url("/ws/lobby?user=ben")) as ws_b,
        ):
            await Client(ws_a).next("welcome")
            await Client(ws_b).next("welcome")
            for server in (one, two):
                lobby = (await http_get(server, "/api/rooms/lobby")).json()
                assert lobby["users"] == ["ann", "ben"]


async def test_chat_app_says_when_history_no_longer_covers_the_gap() -> None:
    async with example_server("examples.chat.app:app", "--history", "chat:*=5") as server:
        async with open_websocket_url(server.ws_url("/ws/r?user=ann")) as ws_a:
            ann = Client(ws_a)
            await ann.say("first")
            since = (await ann.next("message"))["position"]
            for n in range(10):
                await ann.say(f"n{n}")
            for _ in range(10):
                await ann.next("message")
            async with open_websocket_url(server.ws_url(f"/ws/r?user=ben&since={since}")) as ws:
                ben = Client(ws)
                assert (await ben.next("recovery"))["recovered"] is False
                assert [offset(await ben.next("message")) for _ in range(5)] == [7, 8, 9, 10, 11]
            # A position of another epoch (the server lost its history) is a gap too.
            other = f"0123456789abcdef-{since.rpartition('-')[2]}"
            async with open_websocket_url(server.ws_url(f"/ws/r?user=ben&since={other}")) as ws:
                assert (await Client(ws).next("recovery"))["recovered"] is False


async def test_chat_app_without_history_is_a_live_chat_with_presence() -> None:
    async with example_server("examples.chat.app:app") as server:
        async with open_websocket_url(server.ws_url("/ws/r?user=ann&since=abc-3")) as ws_a:
            ann = Client(ws_a)
            welcome = await ann.next("welcome")
            assert welcome["history"] is False
            await ann.next("presence.join")  # her own
            async with open_websocket_url(server.ws_url("/ws/r?user=ben")) as ws_b:
                ben = Client(ws_b)
                await ben.next("welcome")
                assert (await ann.next("presence.join"))["info"] == {"user": "ben"}
                await ann.say("hello")
                message = await ben.next("message")
                assert (message["type"], message["user"], message["text"]) == (
                    "message", "ann", "hello"
                )
        await eventually(
            lambda: http_get(server, "/api/rooms/r"),
            lambda r: r.json() == {"room": "r", "users": [], "history": []},
            what="both gone, nothing kept",
        )


BAD_JOINS = [
    ("/ws/lobby", "a name is required"),
    ("/ws/lobby?user=", "a name is required"),
    ("/ws/lobby?user=" + "n" * 25, "at most 24"),
    ("/ws/lobby?user=a%07b", "control characters"),
    ("/ws/bad%20room?user=ann", "room names"),
    ("/ws/?user=ann", "room names"),
    ("/ws/lobby?user=ann&since=yesterday", "not a history position"),
]


async def test_chat_app_refuses_bad_rooms_names_and_positions() -> None:
    async with example_server("examples.chat.app:app", *HISTORY) as server:
        for path, reason_part in BAD_JOINS:
            async with open_websocket_url(server.ws_url(path)) as ws:
                reason = await closed_with(ws)
                assert reason.code == 1008 and reason_part in reason.reason, (path, reason)
        assert (await http_get(server, "/api/rooms")).json() == {"online": 0, "rooms": {}}
