"""Pub/sub and connection-owned state, end to end over real sockets.

Every exit path of a connection must give back its subscriptions and owned
keys: the leak check of ``run_server`` asserts it on exit of every test here,
and the tests below assert it explicitly, mid-run, per exit path.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import trio
import trio.testing

import hornbeam_trio
from hornbeam_erlang import publish, state_get, state_incr, state_set, subscribe, unsubscribe
from hornbeam_trio import pubsub, serve, stats, subscription
from hornbeam_trio.config import Config
from hornbeam_trio.testing import assert_closed_with, collect, run_server

pytestmark = pytest.mark.usefixtures("hornbeam_state")


async def room_app(scope: Any, receive: Any, send: Any) -> None:
    """The guide's chat shape, with owned presence: subscribe, publish, let the server push."""
    if scope["type"] != "websocket":
        return
    room = scope["path"].rsplit("/", 1)[-1] or "default"
    topic = f"chat:{room}"
    await send({"type": "websocket.accept"})
    subscribe(topic)
    state_incr(f"online:{room}", owned=True)
    state_set(f"presence:{room}:{id(send)}", {"room": room}, owned=True)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "raise":
            raise RuntimeError("app bug on purpose")
        if text == "unsubscribe":
            unsubscribe(topic)
            await send({"type": "websocket.send", "text": "unsubscribed"})
        elif text is not None:
            publish(topic, json.loads(text))
        else:
            publish(topic, message["bytes"])


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


def online(room: str) -> int:
    return int(state_get(f"online:{room}") or 0)


async def test_publish_pushes_json_text_and_binary_to_every_subscriber() -> None:
    async with run_server(room_app) as server:
        async with server.websocket("/chat/a") as alice, server.websocket("/chat/a") as bob:
            async with server.websocket("/chat/b") as carol:
                await wait_until(lambda: stats()["topics"].get("chat:a") == 2)
                await alice.send(json.dumps({"user": "alice", "text": "hi"}))
                assert await bob.receive_json() == {"user": "alice", "text": "hi"}
                assert await alice.receive_json() == {"user": "alice", "text": "hi"}
                await bob.send(b"\x00\x01binary")
                assert await alice.receive() == b"\x00\x01binary"
                assert publish("chat:a", "plain text") == 2
                assert await alice.receive() == "plain text"
                # carol is in another room: the next thing she gets is her own room's message
                assert publish("chat:b", [1, 2, 3]) == 1
                assert await carol.receive_json() == [1, 2, 3]


async def test_publish_counts_reached_subscribers_and_unsubscribe_stops_delivery() -> None:
    async with run_server(room_app) as server:
        assert publish("chat:x", {"n": 1}) == 0
        async with server.websocket("/chat/x") as ws:
            await wait_until(lambda: stats()["topics"].get("chat:x") == 1)
            assert publish("chat:x", {"n": 2}) == 1
            assert await ws.receive_json() == {"n": 2}
            await ws.send("unsubscribe")
            assert await ws.receive() == "unsubscribed"
            assert "chat:x" not in stats()["topics"]
            assert publish("chat:x", {"n": 3}) == 0


async def test_message_is_encoded_once_for_many_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    real = pubsub.encode_text

    def counting(text: str) -> bytes:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(pubsub, "encode_text", counting)
    async with run_server(room_app) as server:
        clients = [await server.connect_websocket("/chat/many") for _ in range(20)]
        await wait_until(lambda: stats()["topics"].get("chat:many") == 20)
        assert publish("chat:many", {"hello": "all"}) == 20
        for client in clients:
            assert await client.receive_json() == {"hello": "all"}
        assert calls == ['{"hello":"all"}']


async def test_publish_of_a_non_json_value_fails_the_publisher() -> None:
    with pytest.raises(TypeError):
        publish("anything", {"a": object()})


async def test_subscribe_outside_a_websocket_says_what_to_use_instead() -> None:
    with pytest.raises(RuntimeError, match="subscription"):
        subscribe("topic")


async def test_subscription_iterator_outside_a_connection_gets_copies() -> None:
    async with subscription("feed") as messages:
        original = {"items": [1, 2]}
        assert publish("feed", original) == 1
        got = await messages.get()
        assert got == original
        got["items"].append(3)
        assert original == {"items": [1, 2]}
        publish("feed", "two")
        publish("feed", b"three")
        assert await collect(messages, 2) == ["two", b"three"]
    assert "feed" not in stats()["topics"]


async def filtering_app(scope: Any, receive: Any, send: Any) -> None:
    """Trio-native delivery: transform before sending, inside the connection's nursery."""
    await send({"type": "websocket.accept"})
    async with trio.open_nursery() as nursery, subscription("numbers") as numbers:

        async def forward() -> None:
            async for value in numbers:
                if value % 2 == 0:
                    await send({"type": "websocket.send", "text": f"even {value}"})

        nursery.start_soon(forward)
        while (await receive())["type"] != "websocket.disconnect":
            pass
        nursery.cancel_scope.cancel()


async def test_subscription_iterator_inside_a_websocket_app() -> None:
    async with run_server(filtering_app) as server, server.websocket("/") as ws:
        await wait_until(lambda: stats()["topics"].get("numbers") == 1)
        for n in range(5):
            publish("numbers", n)
        assert await collect(ws, 3) == ["even 0", "even 2", "even 4"]
    assert stats()["topics"] == {}


async def test_subscription_overflow_under_close_policy_raises_slow_consumer() -> None:
    async with subscription("burst", maxsize=3) as messages:
        for n in range(3):
            assert publish("burst", n) == 1
        assert publish("burst", 3) == 0  # the overflow: this subscriber is no longer reached
        with pytest.raises(hornbeam_trio.SlowConsumer):
            for _ in range(4):
                await messages.get()


async def test_subscription_drop_oldest_keeps_the_newest() -> None:
    sub = pubsub.Subscription("t", maxsize=3, policy="drop-oldest")
    for n in range(10):
        assert sub.deliver(pubsub.Delivery(n))
    assert [sub.get_nowait() for _ in range(3)] == [7, 8, 9]
    assert sub.dropped == 7
    assert sub.get_nowait() is None


# ---------------------------------------------------------------- every exit path releases


async def test_clean_close_releases_subscriptions_and_owned_state() -> None:
    async with run_server(room_app) as server:
        before = online("r1")
        async with server.websocket("/chat/r1"):
            await wait_until(lambda: online("r1") == before + 1)
            assert stats()["owned_keys"] != []
        await wait_until(lambda: stats()["connections"] == 0)
        assert online("r1") == before
        assert stats()["topics"] == {}
        assert stats()["owned_keys"] == []
        assert state_get("online:r1") == 0


async def test_abrupt_reset_releases_everything() -> None:
    async with run_server(room_app) as server:
        ws = await server.connect_websocket("/chat/r2")
        await wait_until(lambda: online("r2") == 1)
        await ws.abort()
        await wait_until(lambda: stats()["connections"] == 0)
        assert online("r2") == 0
        assert stats()["topics"] == {}


async def test_app_exception_closes_1011_and_releases_everything() -> None:
    async with run_server(room_app, raise_app_errors=False) as server:
        async with server.websocket("/chat/r3") as ws:
            await wait_until(lambda: online("r3") == 1)
            await ws.send("raise")
            await assert_closed_with(ws, 1011)
        await wait_until(lambda: stats()["connections"] == 0)
        assert online("r3") == 0
        assert len(server.app_errors) == 1


async def test_idle_timeout_releases_everything(autojump_clock: trio.testing.MockClock) -> None:
    async with run_server(
        room_app, transport="memory", websocket_timeout=1000, websocket_ping_interval=0
    ) as server:
        ws = await server.connect_websocket("/chat/r4")
        await wait_until(lambda: online("r4") == 1)
        start = trio.current_time()
        await assert_closed_with(ws, 1001, "idle timeout", timeout=30)
        assert 1.0 <= trio.current_time() - start < 2.0
        await wait_until(lambda: stats()["connections"] == 0)
        assert online("r4") == 0


async def test_server_shutdown_closes_1001_and_releases_everything() -> None:
    from trio_websocket import ConnectionClosed, open_websocket_url

    server_scope = trio.CancelScope()
    config = Config(bind=("127.0.0.1:0",), log_level="warning")

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await serve(room_app, config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(run)
        async with open_websocket_url(f"ws://127.0.0.1:{addresses[0].port}/chat/r5") as ws:
            await wait_until(lambda: online("r5") == 1)
            server_scope.cancel()
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1001
    assert online("r5") == 0
    assert stats()["connections"] == 0
    assert stats()["topics"] == {}


async def test_cancellation_from_outside_serve_releases_everything() -> None:
    with trio.move_on_after(0.5) as outer:
        async with trio.open_nursery() as nursery:
            config = Config(bind=("127.0.0.1:0",), log_level="warning", shutdown_timeout=0.2)
            addresses = await nursery.start(serve, room_app, config)
            client = await trio.open_tcp_stream("127.0.0.1", addresses[0].port)
            await client.send_all(_handshake("/chat/r6"))
            await client.receive_some(4096)
            await wait_until(lambda: online("r6") == 1)
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert online("r6") == 0
    assert stats()["connections"] == 0
    await client.aclose()


def _handshake(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _raw_subscriber(server: Any, path: str) -> trio.SocketStream:
    """A WebSocket client that completes the handshake and then never reads."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    await stream.send_all(_handshake(path))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101")
    return stream


async def test_slow_consumer_is_closed_1013_and_others_keep_receiving() -> None:
    async with run_server(room_app, subscriber_queue_size=4, slow_consumer="close") as server:
        slow = await _raw_subscriber(server, "/chat/r7")
        async with server.websocket("/chat/r7") as fast:
            await wait_until(lambda: stats()["topics"].get("chat:r7") == 2)
            payload = b"x" * (256 * 1024)
            reached = []
            with trio.fail_after(10):
                while stats()["topics"].get("chat:r7") == 2:
                    reached.append(publish("chat:r7", payload))
                    assert await fast.receive() == payload  # never delayed by the slow one
            assert reached[-1] == 1  # the overflowing publish no longer counts the slow one
            assert stats()["topics"] == {"chat:r7": 1}
        # the slow client finally reads: its stream ends with a close frame carrying 1013
        data = bytearray()
        with trio.fail_after(10):
            while chunk := await slow.receive_some(1 << 20):
                data += chunk
        assert b"\x88" in data
        close_at = data.rindex(b"\x88")
        assert struct.unpack("!H", data[close_at + 2 : close_at + 4])[0] == 1013
        await slow.aclose()
        await wait_until(lambda: online("r7") == 0)


async def test_drop_oldest_keeps_a_slow_consumer_connected() -> None:
    async with run_server(room_app, subscriber_queue_size=4, slow_consumer="drop-oldest") as server:
        slow = await _raw_subscriber(server, "/chat/r8")
        await wait_until(lambda: stats()["topics"].get("chat:r8") == 1)
        for _ in range(200):
            assert publish("chat:r8", b"y" * (64 * 1024)) == 1
        assert stats()["topics"].get("chat:r8") == 1
        assert online("r8") == 1
        await slow.aclose()
        await wait_until(lambda: stats()["connections"] == 0)


async def test_thousand_connections_churned_leave_nothing_behind() -> None:
    async with run_server(room_app) as server:
        for batch in range(20):
            clients = [await server.connect_websocket(f"/chat/churn{batch % 3}") for _ in range(50)]
            for i, client in enumerate(clients):
                if i % 2:
                    await client.abort()
                else:
                    await client.close()
        await wait_until(lambda: stats()["connections"] == 0, timeout=20)
        assert stats()["topics"] == {}
        assert stats()["owned_keys"] == []
        assert all(online(f"churn{n}") == 0 for n in range(3))
