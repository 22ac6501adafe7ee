"""A big fan-out is split across checkpoints, in order, bounded (issue 16, finding 11).

Real subscribers only: ``subscription()`` iterators of the process's hub and real
WebSocket connections of a running server (whose task works through the FIFO).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from redis_server import RedisServer, redis_server, skip_or_fail

from hornbeam_erlang import publish, subscribe
from hornbeam_trio import stats, subscription
from hornbeam_trio.fanout import INLINE_LIMIT, MAX_QUEUED, MAX_QUEUED_BYTES, SLICE
from hornbeam_trio.pubsub import Subscription
from hornbeam_trio.runtime import current_runtime, get_runtime
from hornbeam_trio.testing import run_server

pytestmark = pytest.mark.usefixtures("hornbeam_state")

MANY = 5000


async def both_topics_app(scope: Any, receive: Any, send: Any) -> None:
    """Subscribes to ``big`` and ``small``, then says so."""
    if scope["type"] != "websocket":
        return
    await send({"type": "websocket.accept"})
    subscribe("big")
    subscribe("small")
    await send({"type": "websocket.send", "text": "ready"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def open_many(stack: AsyncExitStack, topic: str, count: int) -> list[Subscription]:
    return [
        await stack.enter_async_context(subscription(topic, maxsize=4096)) for _ in range(count)
    ]


async def until(predicate: Any, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.lowlevel.checkpoint()


class DeliveriesPerStep(trio.abc.Instrument):
    """The most messages the watched subscriptions gained in any one task step."""

    def __init__(self, subscriptions: list[Subscription]) -> None:
        self.subscriptions = subscriptions
        self.before = 0
        self.most = 0

    def _total(self) -> int:
        return sum(map(len, self.subscriptions))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.before = self._total()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most = max(self.most, self._total() - self.before)


async def test_no_task_step_delivers_a_big_fan_out_to_more_than_a_slice() -> None:
    async with run_server(both_topics_app), AsyncExitStack() as stack:
        subs = await open_many(stack, "big", MANY)
        watch = DeliveriesPerStep(subs)
        trio.lowlevel.add_instrument(watch)
        try:
            await trio.lowlevel.checkpoint()  # the publish below is in a step it sees
            assert publish("big", "to all") == MANY  # still the subscriber count
            await until(lambda: all(len(sub) == 1 for sub in subs))
            await trio.lowlevel.checkpoint()
        finally:
            trio.lowlevel.remove_instrument(watch)
        assert 0 < watch.most <= SLICE
        assert [sub.get_nowait() for sub in subs[:3]] == ["to all"] * 3


async def test_a_small_publish_after_a_big_one_never_overtakes_it() -> None:
    async with run_server(both_topics_app) as server, AsyncExitStack() as stack:
        subs = await open_many(stack, "big", 3 * SLICE)
        async with server.websocket("/") as client:
            assert await client.receive() == "ready"  # subscribed last: the big job's tail
            assert publish("big", "A") == 3 * SLICE + 1
            assert publish("small", "B") == 1  # queued behind A: 1 still
            last = subs[-1]
            assert len(last) == 0  # A's fan-out is pending, not done inline
            assert await client.receive() == "A"
            assert await client.receive() == "B"
            publish("small", "C")  # the FIFO is empty again: inline, as before
            assert await client.receive() == "C"
            assert [len(sub) for sub in (subs[0], last)] == [1, 1]


async def test_a_subscription_released_while_its_fan_out_is_pending_gets_nothing() -> None:
    async with run_server(both_topics_app), AsyncExitStack() as stack:
        subs = await open_many(stack, "big", 2 * SLICE)
        async with subscription("big") as released:  # the last one the job reaches
            publish("big", "late")
            await until(lambda: len(subs[0]) == 1)  # the job has begun
            assert len(released) == 0
        # Left the block (released) before the job reached it.
        watched = weakref.ref(released)
        del released
        await until(lambda: not get_runtime().hub.fanout.jobs)  # the job is done
        assert len(subs[-1]) == 1
        gc.collect()
        assert watched() is None  # the finished job holds nothing of it
        assert stats()["topics"]["big"] == 2 * SLICE


async def test_a_publisher_outrunning_the_fan_out_delivers_the_backlog_itself() -> None:
    fanout = get_runtime().hub.fanout
    async with run_server(both_topics_app), AsyncExitStack() as stack:
        subs = await open_many(stack, "big", INLINE_LIMIT + 1)
        publishes = 2 * MAX_QUEUED // (INLINE_LIMIT + 2)
        most = 0
        for number in range(publishes):  # never yielding: the task cannot run
            publish("big", number)
            most = max(most, fanout.queued)
        assert most <= MAX_QUEUED
        assert fanout.jobs  # the tail is queued again after the bound was met
        big = "x" * (MAX_QUEUED_BYTES // 3)
        most_bytes = 0
        for _ in range(4):
            publish("big", big)
            most_bytes = max(most_bytes, fanout.queued_bytes)
        assert 0 < most_bytes <= MAX_QUEUED_BYTES
        await until(lambda: not fanout.jobs)
        for sub in (subs[0], subs[-1]):
            got = [sub.get_nowait() for _ in range(len(sub))]
            assert got == [*range(publishes), big, big, big, big]  # in order, none lost


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    skip_or_fail()
    with redis_server() as server:
        yield server


async def test_a_fan_out_arriving_over_redis_is_split_the_same_way(redis: RedisServer) -> None:
    """The Redis subscriber loop delivers locally through the same hub and FIFO."""
    async with run_server(both_topics_app, backend=redis.url) as server, AsyncExitStack() as stack:
        token = current_runtime.set(server.server.runtime)
        try:
            subs = await open_many(stack, "big", 2 * SLICE + 1)
            watch = DeliveriesPerStep(subs)
            trio.lowlevel.add_instrument(watch)
            try:
                await trio.lowlevel.checkpoint()
                publish("big", "A")
                publish("big", "B")
                await until(lambda: all(len(sub) == 2 for sub in subs))
                await trio.lowlevel.checkpoint()
            finally:
                trio.lowlevel.remove_instrument(watch)
            assert 0 < watch.most <= SLICE
            assert [subs[-1].get_nowait(), subs[-1].get_nowait()] == ["A", "B"]
        finally:
            current_runtime.reset(token)
