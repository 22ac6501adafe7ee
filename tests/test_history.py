"""Topic history and recovery (memory backend): positions, limits, replay then live.

The central promise is checked over real sockets: a client that reconnects again and
again with ``since`` while 1,000 messages are published sees every offset exactly once.
The ring's rules (contiguous offsets, size and age limits, ``recovered``) are checked
on the sans-I/O :class:`TopicRing`, and through the façade on a runtime of the test's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import trio
import trio.testing

import hornbeam_trio
from hornbeam_trio import HistoryUnavailable, Message, Position, cli
from hornbeam_trio.backends.history import HistoryRule, TopicRing
from hornbeam_trio.backends.memory import MemoryBackend
from hornbeam_trio.config import Config, ConfigError
from hornbeam_trio.runtime import Runtime, current_runtime
from hornbeam_trio.testing import run_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def memory() -> Iterator[MemoryBackend]:
    """A runtime of this test's own, keeping history for ``chat:*`` (5 messages, 60 s)."""
    backend = MemoryBackend()
    backend.configure_history([HistoryRule("chat:*", 5, 60.0)])
    token = current_runtime.set(Runtime(backend))
    try:
        yield backend
    finally:
        current_runtime.reset(token)


# -- positions and the ring (no I/O) ---------------------------------------------------
def test_a_position_survives_its_text_form_and_garbage_is_refused() -> None:
    position = Position(42, "0badc0ffee")
    assert Position.parse(str(position)) == position
    for bad in ("", "42", "epoch-", "-42", "epoch-4x2"):
        with pytest.raises(ValueError, match="not a history position"):
            Position.parse(bad)


def test_offsets_count_from_one_and_never_go_back_when_the_ring_trims() -> None:
    ring = TopicRing(3, None)
    assert [ring.append(f"m{i}", now=0.0) for i in range(10)] == list(range(1, 11))
    items, recovered = ring.since(None, now=0.0)
    assert items == [(8, "m7"), (9, "m8"), (10, "m9")]
    assert recovered is False  # 1..7 are gone
    assert ring.since(7, now=0.0) == ([(8, "m7"), (9, "m8"), (10, "m9")], True)
    assert ring.since(9, now=0.0) == ([(10, "m9")], True)
    assert ring.since(10, now=0.0) == ([], True)  # up to date
    assert ring.since(6, now=0.0)[1] is False  # 7 was trimmed: a gap
    assert ring.since(11, now=0.0)[1] is False  # a future offset is no position of ours
    assert ring.since(7, now=0.0, limit=2) == ([(9, "m8"), (10, "m9")], False)


def test_the_age_limit_drops_old_messages_but_keeps_counting() -> None:
    ring = TopicRing(100, 10.0)
    ring.append("old", now=0.0)
    ring.append("new", now=5.0)
    assert ring.since(None, now=9.0) == ([(1, "old"), (2, "new")], True)
    assert ring.since(None, now=12.0) == ([(2, "new")], False)
    assert ring.since(None, now=20.0) == ([], False)
    assert ring.since(2, now=20.0) == ([], True)  # expired, but this client had them
    assert ring.append("next", now=20.0) == 3


# -- through the façade ------------------------------------------------------------------
def test_topics_without_a_pattern_keep_no_history_and_publish_stays_plain(
    memory: MemoryBackend,
) -> None:
    hornbeam_trio.publish("news", {"n": 1})
    with pytest.raises(LookupError, match="'news' keeps no history"):
        hornbeam_trio.history("news")
    assert memory.keeps_history("news") is False
    plain = MemoryBackend()
    assert "publish" not in vars(plain)  # no --history: the class's publish, untouched
    plain.configure_history([HistoryRule("a*", 1, None)])
    assert "publish" in vars(plain)
    plain.configure_history([])
    assert "publish" not in vars(plain)


def test_history_reads_positions_and_keeps_only_the_newest_size(memory: MemoryBackend) -> None:
    for n in range(8):
        hornbeam_trio.publish("chat:a", {"n": n})
    read = hornbeam_trio.history("chat:a")
    assert [m.data["n"] for m in read.messages] == [3, 4, 5, 6, 7]
    assert [m.position.offset for m in read.messages] == [4, 5, 6, 7, 8]
    assert {m.position.epoch for m in read.messages} == {memory.epoch}
    assert read.position == Position(8, memory.epoch)
    assert read.recovered is False  # 1..3 fell out of the ring
    since = hornbeam_trio.history("chat:a", since=str(Position(5, memory.epoch)))
    assert [m.data["n"] for m in since.messages] == [5, 6, 7]
    assert since.recovered is True
    newest = hornbeam_trio.history("chat:a", since=Position(5, memory.epoch), limit=1)
    assert [m.data["n"] for m in newest.messages] == [7] and newest.recovered is False


def test_a_message_is_kept_as_published_even_if_the_publisher_mutates_it_afterwards(
    memory: MemoryBackend,
) -> None:
    payload = {"n": 1}
    hornbeam_trio.publish("chat:a", payload)
    payload["n"] = 2
    assert hornbeam_trio.history("chat:a").messages[0].data == {"n": 1}
    with pytest.raises(TypeError):
        hornbeam_trio.publish("chat:a", {"bad": object()})
    assert hornbeam_trio.history("chat:a").position.offset == 1  # the bad one took no offset


async def test_the_age_limit_follows_trios_clock(
    memory: MemoryBackend, autojump_clock: trio.testing.MockClock
) -> None:
    hornbeam_trio.publish("chat:a", "early")
    await trio.sleep(45)
    hornbeam_trio.publish("chat:a", "late")
    assert [m.data for m in hornbeam_trio.history("chat:a").messages] == ["early", "late"]
    await trio.sleep(30)  # "early" is 75 s old, past the 60 s limit
    read = hornbeam_trio.history("chat:a")
    assert [m.data for m in read.messages] == ["late"] and read.recovered is False


async def test_a_position_of_another_epoch_is_reported_and_replay_starts_at_the_oldest_kept(
    memory: MemoryBackend,
) -> None:
    hornbeam_trio.publish("chat:a", "before the loss")
    old = hornbeam_trio.history("chat:a").position
    memory.clear()  # history lost, as a process restart loses it
    assert memory.epoch != old.epoch
    hornbeam_trio.publish("chat:a", "after")
    async with hornbeam_trio.subscription("chat:a", since=old) as messages:
        assert messages.recovered is False
        first = await messages.get()
        assert first == Message("after", Position(1, memory.epoch))
        hornbeam_trio.publish("chat:a", "live")
        assert (await messages.get()).position == Position(2, memory.epoch)


async def test_a_position_still_kept_is_recovered_exactly(memory: MemoryBackend) -> None:
    for n in range(4):
        hornbeam_trio.publish("chat:a", n)
    since = Position(2, memory.epoch)
    async with hornbeam_trio.subscription("chat:a", since=str(since)) as messages:
        assert messages.recovered is True
        assert len(messages) == 2
        hornbeam_trio.publish("chat:a", 4)
        got = [await messages.get() for _ in range(3)]
    assert [(m.data, m.position.offset) for m in got] == [(2, 3), (3, 4), (4, 5)]


async def test_plain_subscriptions_still_yield_bare_values(memory: MemoryBackend) -> None:
    async with hornbeam_trio.subscription("chat:a") as plain:
        async with hornbeam_trio.subscription("chat:a", with_positions=True) as positioned:
            hornbeam_trio.publish("chat:a", {"x": 1})
            assert await plain.get() == {"x": 1}
            assert await positioned.get() == Message({"x": 1}, Position(1, memory.epoch))


async def test_since_on_a_topic_without_history_or_a_backend_without_it_is_a_clear_error(
    memory: MemoryBackend,
) -> None:
    with pytest.raises(LookupError, match="no --history pattern matches it"):
        async with hornbeam_trio.subscription("news", since=Position(0, memory.epoch)):
            pass

    class NoHistory:
        name = "nohistory"

    token = current_runtime.set(Runtime(NoHistory()))  # type: ignore[arg-type]
    try:
        with pytest.raises(HistoryUnavailable, match="the nohistory backend keeps none"):
            hornbeam_trio.history("chat:a")
    finally:
        current_runtime.reset(token)


# -- replay and live, racing, over real sockets ------------------------------------------
async def reconnecting_app(scope: Any, receive: Any, send: Any) -> None:
    """Sends ``{"recovered": ...}``, then each message of chat:race with its position."""
    if scope["type"] != "websocket":
        return
    since = parse_qs(scope["query_string"].decode())["since"][0]
    await send({"type": "websocket.accept"})
    async with hornbeam_trio.subscription("chat:race", since=since) as messages:
        await send({"type": "websocket.send", "text": json.dumps(messages.recovered)})
        async for message in messages:
            text = json.dumps({"n": message.data, "position": str(message.position)})
            await send({"type": "websocket.send", "text": text})


async def publish_racing(total: int, published: trio.Event) -> None:
    """0..total-1 on ``chat:race``, ~1,000 a second, sometimes several in one step."""
    for n in range(total):
        hornbeam_trio.publish("chat:race", n)
        await trio.sleep(0.001 if n % 7 else 0)
    published.set()


async def test_a_client_reconnecting_under_1000_publishes_sees_every_offset_exactly_once(
    hornbeam_state: Any,
) -> None:
    total = 1000
    seen: list[int] = []
    reconnects = racing = 0
    async with run_server(reconnecting_app, history=("chat:*=2000,300s",)) as server:
        position = hornbeam_trio.history("chat:race").position  # offset 0 of this epoch
        published = trio.Event()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_racing, total, published)
            with trio.fail_after(60):
                while len(seen) < total:
                    async with server.websocket(f"/?since={position}") as client:
                        assert json.loads(await client.receive()) is True  # recovered
                        reconnects += 1
                        racing += not published.is_set()
                        # A short visit, then away: what is published meanwhile is replayed.
                        for _ in range(1 + reconnects % 40):
                            item = json.loads(await client.receive())
                            position = Position.parse(item["position"])
                            assert item["n"] == position.offset - 1
                            seen.append(position.offset)
                            if len(seen) == total:
                                break
    assert seen == list(range(1, total + 1))  # no gap, no duplicate, in order
    assert racing > 20  # reconnects made while the publisher was still at it


# -- configuration -------------------------------------------------------------------------
def test_the_history_option_parses_patterns_sizes_and_ages() -> None:
    config = Config(history=("chat:*=100,300s", "feed=5", "x=2,1.5"))
    assert config.history_rules == (("chat:*", 100, 300.0), ("feed", 5, None), ("x", 2, 1.5))
    _, from_cli = cli.parse_args(["m:app", "--history", "chat:*=100,300s", "--history", "feed=5"])
    assert from_cli.history == ("chat:*=100,300s", "feed=5")
    assert Config().history == ()


@pytest.mark.parametrize(
    "entry", ["chat:*", "=10", "chat:*=0", "chat:*=ten", "chat:*=10,", "chat:*=10,-5s", "a=1,xs"]
)
def test_a_bad_history_value_names_the_option(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"^history: expected PATTERN=SIZE\[,AGEs\]"):
        Config(history=(entry,))


def test_a_bad_history_flag_is_one_line_naming_the_flag_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hornbeam_trio", "tests.apps.simple:hello", "--history", "chat:*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "hornbeam-trio: error: --history: expected PATTERN=SIZE[,AGEs] such as "
        "'chat:*=100,300s', got 'chat:*'"
    ]


def readme_room_app() -> Any:
    """The app of the README's "Topic history and recovery" section, run as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Topic history and recovery") :]
    code = section[section.index("```python") + len("```python") :]
    namespace: dict[str, Any] = {}
    exec(compile(code[: code.index("```")], "README.md", "exec"), namespace)
    return namespace["room"]


async def test_the_readme_example_shows_recent_messages_then_recovers_what_was_missed(
    hornbeam_state: Any,
) -> None:
    async with run_server(readme_room_app(), history=("chat:*=100,300s",)) as server:
        for n in range(3):
            hornbeam_trio.publish("chat:lobby", {"n": n})
        async with server.websocket("/") as client:
            first = [json.loads(await client.receive()) for _ in range(3)]
            assert [m["data"]["n"] for m in first] == [0, 1, 2]
        hornbeam_trio.publish("chat:lobby", {"n": 3})  # published while the client is away
        async with server.websocket(f"/?since={first[-1]['position']}") as client:
            hornbeam_trio.publish("chat:lobby", {"n": 4})
            again = [json.loads(await client.receive()) for _ in range(2)]
            assert [m["data"]["n"] for m in again] == [3, 4]
        hornbeam_state.clear()  # history lost: the next reconnect is told
        async with server.websocket(f"/?since={again[-1]['position']}") as client:
            assert json.loads(await client.receive()) == {"gap": True}


def test_dropping_a_topics_history_by_reconfiguring_changes_the_epoch(
    memory: MemoryBackend,
) -> None:
    hornbeam_trio.publish("chat:a", "kept")
    epoch = memory.epoch
    memory.configure_history([HistoryRule("chat:*", 10, None)])  # same topics, new limits
    assert memory.epoch == epoch
    assert [m.data for m in hornbeam_trio.history("chat:a").messages] == ["kept"]
    memory.configure_history([HistoryRule("feed", 10, None)])  # chat:a's history is dropped
    memory.configure_history([HistoryRule("chat:*", 10, None)])
    assert memory.epoch != epoch
    hornbeam_trio.publish("chat:a", "counted from 1 again")
    read = hornbeam_trio.history("chat:a", since=Position(0, epoch))
    assert read.recovered is False
    assert read.messages[0].position == Position(1, memory.epoch)


def test_a_topic_is_matched_against_the_patterns_once_then_cached(
    memory: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hornbeam_trio.backends.memory as memory_module

    calls: list[str] = []

    def counting(topic: str, pattern: str) -> bool:
        calls.append(topic)
        return fnmatchcase(topic, pattern)

    monkeypatch.setattr(memory_module, "fnmatchcase", counting)
    for _ in range(100):
        hornbeam_trio.publish("news", 1)
        hornbeam_trio.publish("chat:a", 1)
    assert calls == ["news", "chat:a"]
    assert hornbeam_trio.history("chat:a").position.offset == 100


# -- the push form: subscribe(topic, since=...) -------------------------------------------
async def test_push_subscribe_since_replays_what_was_missed_then_goes_live_with_positions(
    hornbeam_state: Any,
) -> None:
    from tests.apps.history_race import app

    async with run_server(app, history=("chat:*=100,300s",)) as server:
        for n in range(3):
            hornbeam_trio.publish("chat:race", n)
        epoch = hornbeam_trio.history("chat:race").position.epoch
        async with server.websocket(f"/?since={Position(1, epoch)}&mode=push") as client:
            first = json.loads(await client.receive())
            assert first == {"topic": "chat:race", "recovered": True, "position": f"{epoch}-3"}
            replayed = [json.loads(await client.receive()) for _ in range(2)]
            assert replayed == [
                {"topic": "chat:race", "position": f"{epoch}-2", "data": 1},
                {"topic": "chat:race", "position": f"{epoch}-3", "data": 2},
            ]
            hornbeam_trio.publish("chat:race", 3)
            live = json.loads(await client.receive())
            assert live == {"topic": "chat:race", "position": f"{epoch}-4", "data": 3}
        async with server.websocket(f"/?since={Position(9, 'another')}&mode=push") as client:
            first = json.loads(await client.receive())
            assert first["recovered"] is False  # another epoch: the replay starts at the oldest
            again = [json.loads(await client.receive())["data"] for _ in range(4)]
            assert again == [0, 1, 2, 3]


async def test_a_push_client_reconnecting_under_1000_publishes_sees_every_offset_exactly_once(
    hornbeam_state: Any,
) -> None:
    from tests.apps.history_race import app

    total = 1000
    seen: list[int] = []
    visits = racing = 0
    async with run_server(app, history=("chat:*=2000,300s",)) as server:
        position = hornbeam_trio.history("chat:race").position
        published = trio.Event()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_racing, total, published)
            with trio.fail_after(60):
                while len(seen) < total:
                    async with server.websocket(f"/?since={position}&mode=push") as client:
                        assert json.loads(await client.receive())["recovered"] is True
                        visits += 1
                        racing += not published.is_set()
                        for _ in range(1 + visits % 40):
                            item = json.loads(await client.receive())
                            position = Position.parse(item["position"])
                            assert item["data"] == position.offset - 1
                            seen.append(position.offset)
                            if len(seen) == total:
                                break
    assert seen == list(range(1, total + 1))
    assert racing > 20


async def test_unsubscribe_ends_a_push_subscription_made_with_since(
    memory: MemoryBackend,
) -> None:
    """The positioned push subscriber stands for its connection: one per topic, and
    ``unsubscribe(topic)`` (or the connection's end) finds it."""
    from hornbeam_trio.runtime import ConnectionContext, current_connection

    pushed: list[bytes] = []

    class Pusher:
        def deliver(self, delivery: Any) -> bool:
            pushed.append(delivery.frame)
            return True

    runtime = current_runtime.get()
    assert runtime is not None
    context = ConnectionContext(runtime, "websocket", Config())
    context.pusher = Pusher()
    token = current_connection.set(context)
    try:
        hornbeam_trio.subscribe("chat:a")
        hornbeam_trio.subscribe("chat:a", since=Position(0, memory.epoch))  # replaces it
        assert runtime.hub.subscriber_counts() == {"chat:a": 1}
        hornbeam_trio.publish("chat:a", "x")
        assert len(pushed) == 2 and b'"data":"x"' in pushed[1]  # recovery frame, then x
        hornbeam_trio.unsubscribe("chat:a")
        assert runtime.hub.subscriber_counts() == {}
        hornbeam_trio.subscribe("chat:a", since=Position(0, memory.epoch))
        context.release()
        assert runtime.hub.subscriber_counts() == {}
    finally:
        current_connection.reset(token)
