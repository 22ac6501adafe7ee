"""Topic history over Redis Streams, against a real redis-server, across processes.

The central promise of the memory backend's tests holds across processes: a client
that reconnects again and again with ``since``, to one server process then another,
while ~1,000 messages a second are published, sees every offset exactly once, in both
the iterator form (``subscription(since=)``) and the push form (``subscribe(since=)``).
And history lost in Redis (FLUSHALL, a restart without persistence) changes the epoch,
and a client coming back with a position of before is told.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from example_server import example_server
from redis_server import RedisServer, redis_server, skip_or_fail
from trio_websocket import open_websocket_url

import hornbeam_trio
from hornbeam_trio import Position, state
from hornbeam_trio.runtime import current_runtime
from hornbeam_trio.testing import TestServer, run_server
from tests.apps.history_race import TOPIC, app

HISTORY = "chat:*=5000,300s"


@contextmanager
def façade_of(server: TestServer) -> Iterator[None]:
    """Make the Hornbeam calls in this test task use ``server``'s runtime."""
    token = current_runtime.set(server.server.runtime)
    try:
        yield
    finally:
        current_runtime.reset(token)


async def receive_json(client: Any) -> Any:
    with trio.fail_after(10):
        return json.loads(await client.get_message())


async def test_two_processes_a_client_reconnecting_under_1000_publishes_a_second_sees_every_offset_once(  # noqa: E501
    redis_url: str,
) -> None:
    total = 1000
    seen: list[int] = []
    visits = racing = 0
    flags = ("--backend", redis_url, "--history", HISTORY)
    async with (
        run_server(app, backend=redis_url, history=(HISTORY,)) as here,
        example_server("tests.apps.history_race:app", *flags) as there,
    ):
        with façade_of(here):
            position = (await state.history(TOPIC)).position
            assert position.offset == 0
            published = trio.Event()

            async def publisher() -> None:
                start = trio.current_time()
                for n in range(total):
                    hornbeam_trio.publish(TOPIC, n)
                    # ~1,000 a second, paced against the clock (a sleep may oversleep)
                    await trio.sleep_until(start + (n + 1) / 1000)
                published.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                with trio.fail_after(90):
                    while len(seen) < total:
                        port = (here.port, there.port)[visits % 2]
                        mode = ("iter", "push", "push", "iter")[visits % 4]
                        url = f"ws://127.0.0.1:{port}/?since={position}&mode={mode}"
                        async with open_websocket_url(url) as client:
                            first = await receive_json(client)
                            assert first["recovered"] is True, (visits, mode, first)
                            visits += 1
                            racing += not published.is_set()
                            # A short visit, then away: what is published meanwhile
                            # is replayed on the next visit, through the other process.
                            for _ in range(1 + visits % 40):
                                item = await receive_json(client)
                                position = Position.parse(item["position"])
                                assert item["data"] == position.offset - 1
                                seen.append(position.offset)
                                if len(seen) == total:
                                    break
    assert seen == list(range(1, total + 1))  # no gap, no duplicate, in order
    assert racing > 10  # reconnects made while the publisher was still at it


async def test_a_redis_flush_changes_the_epoch_and_a_client_coming_back_is_told(
    redis_url: str, redis: RedisServer
) -> None:
    async with run_server(app, backend=redis_url, history=(HISTORY,)) as server:
        with façade_of(server):
            for n in range(3):
                hornbeam_trio.publish(TOPIC, n)
            before = await state.history(TOPIC)
            assert [m.data for m in before.messages] == [0, 1, 2]
            assert before.recovered is True
            redis.command("FLUSHALL")  # history lost, as a restart without persistence
            hornbeam_trio.publish(TOPIC, "after")
            for mode in ("iter", "push"):
                async with server.websocket(f"/?since={before.position}&mode={mode}") as client:
                    first = json.loads(await client.receive())
                    assert first["recovered"] is False
                    item = json.loads(await client.receive())
                    position = Position.parse(item["position"])
                    assert position.epoch != before.position.epoch
                    assert (item["data"], position.offset) == ("after", 1)
            after = await state.history(TOPIC, since=before.position)
            assert after.recovered is False and after.position.epoch != before.position.epoch


async def test_a_redis_restart_without_persistence_changes_the_epoch() -> None:
    skip_or_fail()
    with redis_server() as redis:
        async with run_server(app, backend=redis.url, history=(HISTORY,)) as server:
            with façade_of(server):
                hornbeam_trio.publish(TOPIC, "before")
                before = (await state.history(TOPIC)).position
                assert before.offset == 1
                redis.kill()
                redis.restart()
                with trio.fail_after(20):
                    while True:  # the backend reconnects (backoff at most 1 s)
                        try:
                            after = await state.history(TOPIC, since=before)
                            break
                        except hornbeam_trio.BackendUnavailable:
                            await trio.sleep(0.1)
                assert after.recovered is False
                assert after.position.epoch != before.epoch and after.position.offset == 0


async def test_history_over_redis_keeps_size_and_age_limits_and_reads_with_a_limit(
    redis_url: str,
) -> None:
    async with run_server(app, backend=redis_url, history=("feed=3", "chat:*=100,1s")) as server:
        with façade_of(server):
            for n in range(5):
                hornbeam_trio.publish("feed", n)
            read = await state.history("feed")
            assert [(m.data, m.position.offset) for m in read.messages] == [(2, 3), (3, 4), (4, 5)]
            assert read.recovered is False  # 1 and 2 are past the size
            since = await state.history("feed", since=Position(2, read.position.epoch))
            assert [m.data for m in since.messages] == [2, 3, 4] and since.recovered is True
            newest = await state.history("feed", since=Position(2, read.position.epoch), limit=1)
            assert [m.data for m in newest.messages] == [4] and newest.recovered is False
            with pytest.raises(hornbeam_trio.SyncUnavailable, match=r"state\.history"):
                hornbeam_trio.history("feed")
            hornbeam_trio.publish("chat:old", "old")
            await trio.sleep(1.2)  # Redis's clock: no MockClock for a server of its own
            hornbeam_trio.publish("chat:old", "new")
            aged = await state.history("chat:old")
            assert [m.data for m in aged.messages] == ["new"] and aged.recovered is False
            mine = await state.history("chat:old", since=Position(1, aged.position.epoch))
            assert mine.recovered is True  # expired, but this client had it
