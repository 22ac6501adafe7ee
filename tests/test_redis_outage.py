"""Redis outages: what is queued meanwhile reaches everyone or is counted, and each process
says so in two lines.

The outage tests kill a real redis-server (SIGKILL) under two real server processes and
restart it, empty, on the same port (tests/redis_outage_scenario.py); 1 and 5 s here, 12 s
in ``nox -s redis_faults`` (HORNBEAM_REDIS_FAULTS=1).  The outage bookkeeping itself
(``OutageLog``) is tested with plain calls.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from example_server import (
    eventually,
    example_server,
    http_get,
    killable_server,
)
from redis_outage_scenario import APP, OutageReport, run_outage
from redis_server import redis_server, skip_or_fail
from trio_websocket import open_websocket_url

from hornbeam_erlang import publish
from hornbeam_trio import state
from hornbeam_trio.backends.base import BackendUnavailable
from hornbeam_trio.backends.redis_history import history_key, stream_key
from hornbeam_trio.backends.redis_outage import OutageLog, reason
from hornbeam_trio.runtime import current_runtime
from hornbeam_trio.testing import run_server

LONG = os.environ.get("HORNBEAM_REDIS_FAULTS") == "1"
BUFFER_BACKLOG = (40_000, 1000, 3)
"""Publishes queued, characters of padding each, WebSocket clients receiving them."""
LONG_ONLY = "the 12 s outage runs in nox -s redis_faults"


@pytest.fixture
def redis_available() -> None:
    skip_or_fail()


def _assert_nothing_lost_and_two_lines_each(report: OutageReport) -> None:
    assert report.sent > 0
    # before: the subscribe-only process's clients missed 1 or 538 of 625 after 5 s
    missing = [(client.process, client.missing(report.sent)) for client in report.clients]
    assert all(count == 0 for _, count in missing), (report.sent, missing)
    for client in report.clients:
        assert client.in_order(), client.process
        assert client.duplicates() <= 512, client.process  # at most one batch sent again
    for process in (0, 1):  # the publishing one, and the one that only subscribes
        log = report.logs[process]
        assert len(report.lines(process, "unreachable")) == 1, log
        back = report.lines(process, "reachable again")
        assert len(back) == 1, log
        assert "lost while it was not: 0 publishes, 0 writes" in back[0], log
        assert "Traceback" not in log and "ERROR" not in log, log


@pytest.mark.parametrize(
    "outage",
    [1.0, 5.0, pytest.param(12.0, marks=pytest.mark.skipif(not LONG, reason=LONG_ONLY))],
)
async def test_publishes_queued_during_a_redis_outage_reach_every_client_of_both_processes(
    outage: float, redis_available: None
) -> None:
    report = await run_outage(outage)
    _assert_nothing_lost_and_two_lines_each(report)


@pytest.mark.skipif(not LONG, reason=LONG_ONLY)
async def test_an_overflowing_outage_loses_exactly_what_it_logs_once(
    redis_available: None,
) -> None:
    """100,500 publishes at once while Redis is away (the queue holds 100,000): the end
    line's count is exactly what every client missed, and the overflow is one line."""
    # each client is sent the whole backlog at once: its queue must hold it (else 1013)
    flags = ("--subscriber-queue-size", "110000")
    report = await run_outage(1.0, burst=100_500, deliver_timeout=60, server_flags=flags)
    for process in (0, 1):
        assert len(report.lines(process, "unreachable")) == 1, report.logs[process]
        assert len(report.lines(process, "reachable again")) == 1, report.logs[process]
    assert len(report.lines(0, "already wait for Redis")) == 1, report.logs[0]
    (back,) = report.lines(0, "reachable again")
    lost = int(back.split("lost while it was not: ")[1].split(" publishes")[0])
    assert lost >= 500 and back.endswith("(queue full at 100000)"), back
    for client in report.clients:
        assert client.missing(report.sent) == lost, (client.process, lost)
        assert client.in_order()
    assert report.lines(1, "already wait for Redis") == []  # it queued nothing


async def test_a_backlog_waits_until_a_late_peer_process_has_subscribed_again(
    redis_available: None,
) -> None:
    """The second process is frozen through the outage and 1.5 s after Redis is back: the
    first one's backlog waits for its channel (without that wait, its clients missed the
    whole backlog)."""
    report = await run_outage(1.0, freeze=1.5)
    _assert_nothing_lost_and_two_lines_each(report)


async def test_a_backlog_drains_without_overrunning_a_small_pubsub_output_buffer(
    redis_available: None,
) -> None:
    """A backlog of 20 MB for the subscriber connection against Redis allowing it 1 MB: the
    drain is paced by the subscriber, so Redis never drops it and nothing is missed (sent
    as fast as Redis takes it, Redis dropped the subscriber within a second)."""
    limit = ("--client-output-buffer-limit", "pubsub 1mb 0 0")
    queued, pad, clients = BUFFER_BACKLOG
    # The whole backlog reaches the WebSocket clients faster than they read it: room for
    # all of it, since what is under test is the pacing against Redis, not the
    # slow-consumer bound (which would rightly close them 1013 at 1,024 behind).
    room = (
        "--subscriber-queue-size",
        str(queued),
        "--subscriber-queue-bytes",
        str(queued * pad * 2),
    )
    with redis_server(None, *limit) as redis:
        async with (
            example_server(APP, "--backend", redis.url, *room) as server,
            trio.open_nursery() as nursery,
        ):
            counts: list[int] = []
            done = trio.Event()
            for index in range(clients):
                ws = await nursery.start(_open, server.ws_url("/room/r"))
                await ws.get_message()  # {"pid": ...}
                counts.append(0)
                nursery.start_soon(_count_to, ws, counts, index, queued, done)
            await eventually(
                lambda: _async(redis.command("PUBSUB", "NUMSUB", "hornbeam:topic:room:r")[1]),
                lambda n: n == 1,
                what="subscribed",
            )
            redis.kill()
            response = await http_get(server, f"/publish/r/0/{queued}/{pad}", timeout=30)
            assert response.text == f"queued {queued}"
            redis.restart()
            with trio.move_on_after(30):
                await done.wait()
            nursery.cancel_scope.cancel()
        log = server.log()
    assert counts == [queued] * clients, log
    assert len([line for line in log.splitlines() if "unreachable" in line]) == 1, log


async def _async(value: object) -> object:
    return value


async def _open(url: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


async def _count_to(ws: Any, counts: list[int], index: int, total: int, done: trio.Event) -> None:
    while True:
        assert json.loads(await ws.get_message())["seq"] == counts[index]
        counts[index] += 1
        if all(count == total for count in counts):
            done.set()


# -- shutdown with a backlog -----------------------------------------------------
@pytest.mark.parametrize(("queued", "overflow"), [(999, 0), (100_000, 500)])
async def test_shutdown_with_redis_down_logs_the_exact_backlog_dropped_and_exits_3(
    queued: int, overflow: int, redis_available: None
) -> None:
    with redis_server() as redis:
        url = f"{redis.url}?flush_timeout=0.5"
        async with killable_server(APP, "--backend", url) as server:
            async with open_websocket_url(server.ws_url("/room/r")) as ws:
                await ws.get_message()  # {"pid": ...}: subscribed once the next one is
                redis.kill()
                response = await http_get(server, f"/publish/r/0/{queued + overflow}")
                assert response.text == f"queued {queued + overflow}"
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                code = await server.process.wait()
            log = server.log()
    assert code == 3, log
    dropped = [line for line in log.splitlines() if "at shutdown" in line]
    assert dropped == [
        f"ERROR:    Backend unavailable: Redis at {redis.url} unreachable at shutdown: "
        f"dropped {queued} queued publishes and 0 writes (flush_timeout 0.5s)"
    ], log
    full = [line for line in log.splitlines() if "already wait for Redis" in line]
    assert len(full) == (1 if overflow else 0), log
    assert "dropping a publish" not in log, log


# -- OutageLog: the lines, with plain calls -------------------------------------------
def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_outage_log_says_one_line_when_the_first_part_goes_and_one_when_the_last_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = OutageLog("redis://r:6379/0", 100)
    outage.part_down("subscriber", "Redis closed the subscriber connection", 10.0)
    outage.part_down("writer", "Connection refused", 10.1)
    outage.part_down("writer", "Connection refused", 10.5)  # retries say nothing
    outage.part_up("subscriber", 14.0)
    assert outage.down  # the writer still has its backlog to send
    outage.sent(512)
    outage.sent(88)
    outage.part_up("writer", 14.2)
    assert not outage.down
    assert _warnings(caplog) == [
        "Redis at redis://r:6379/0 unreachable (Redis closed the subscriber connection); "
        "publishes and writes stay queued (at most 100), retrying with backoff",
        "Redis at redis://r:6379/0 reachable again after 4.2s; sent 600 queued operations; "
        "lost while it was not: 0 publishes, 0 writes",
    ]


def test_outage_log_counts_an_overflow_in_one_line_and_gives_the_exact_number_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = OutageLog("redis://r:6379/0", 100_000)
    outage.lost(publish=True)  # an overflow before the writer noticed the outage counts too
    outage.part_down("writer", "timed out", 1.0)
    for _ in range(49_999):
        outage.lost(publish=True)
    outage.lost(publish=False)
    outage.part_up("writer", 13.0)
    lines = _warnings(caplog)
    assert len(lines) == 3, lines
    assert "new publishes and writes are dropped and counted" in lines[0]
    assert lines[2].endswith(
        "lost while it was not: 50000 publishes, 1 writes (queue full at 100000)"
    )
    # the next outage counts from zero
    outage.part_down("writer", "timed out", 20.0)
    outage.part_up("writer", 21.0)
    assert _warnings(caplog)[-1].endswith("lost while it was not: 0 publishes, 0 writes")


def test_outage_log_closes_an_overflow_without_outage_when_the_queue_drains(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = OutageLog("redis://r:6379/0", 10)
    for _ in range(7):
        outage.lost(publish=True)
    outage.drained()
    outage.drained()
    lines = _warnings(caplog)
    assert len(lines) == 2 and lines[1].endswith("dropped 7 publishes, 0 writes"), lines


def test_a_timeout_is_named_never_an_empty_reason() -> None:
    assert reason(trio.TooSlowError()) == "timed out"
    assert reason(TimeoutError()) == "timed out"
    assert reason(OSError(111, "Connection refused")) == "[Errno 111] Connection refused"
    assert reason(ConnectionResetError()) == "ConnectionResetError"


async def test_a_publish_before_the_first_subscription_is_no_outage(
    redis_available: None, caplog: pytest.LogCaptureFixture
) -> None:
    """At startup the writer waits for the subscriber's first subscription, silently."""

    async def announce_at_startup(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            publish("news", "started")
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    with redis_server() as redis:
        async with run_server(announce_at_startup, backend=redis.url) as server:
            token = current_runtime.set(server.server.runtime)  # this task's façade
            try:
                assert await state.get("nothing") is None  # after the publish, in order
            finally:
                current_runtime.reset(token)
    assert "unreachable" not in caplog.text and "reachable again" not in caplog.text


class ReplyEater:
    """A TCP proxy in front of Redis.  Armed with a marker, it passes on the write that
    holds it, takes Redis's replies and drops the connection without handing them on:
    Redis ran the commands, and the client cannot know it did."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = 0
        self.marker: bytes | None = None
        self.eaten = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._forward, listeners)

    def arm(self, marker: bytes) -> None:
        self.marker = marker
        self.eaten = trio.Event()

    async def _forward(self, client: trio.SocketStream) -> None:
        eat = False
        async with client, await trio.open_tcp_stream("127.0.0.1", self.redis_port) as redis:

            async def up(nursery: trio.Nursery) -> None:
                nonlocal eat
                async for data in client:
                    if self.marker is not None and self.marker in data:
                        self.marker = None
                        eat = True  # before Redis can answer
                    await redis.send_all(data)
                nursery.cancel_scope.cancel()

            async def down(nursery: trio.Nursery) -> None:
                async for data in redis:
                    if eat:
                        self.eaten.set()
                        break  # both ends close: the replies are lost
                    await client.send_all(data)
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(up, nursery)
                nursery.start_soon(down, nursery)


async def _ok_again(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` once the writer is back: it goes after the batch sent again."""
    with trio.fail_after(10):
        while True:
            try:
                return await call()
            except BackendUnavailable:
                await trio.sleep(0.02)


async def test_a_batch_redis_ran_but_whose_replies_were_lost_runs_its_counted_writes_once(
    redis_available: None,
) -> None:
    """The writer sends a batch cut off mid-flight again (at-least-once).  An owned
    counter's release (an increment queued without waiting) and a publish to a topic
    that keeps history must not run twice: the second would leave the counter short and
    give the message a second offset.  Each carries its process's sequence number, which
    the script that runs it checks against the last one Redis ran (APPLIED_ONCE)."""

    async def idle(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    with redis_server() as redis:
        async with trio.open_nursery() as nursery:
            proxy: ReplyEater = await nursery.start(ReplyEater(redis.port).serve)
            url = f"redis://127.0.0.1:{proxy.port}/0"
            async with run_server(idle, backend=url, history=("kept:*=10",)) as server:
                backend: Any = server.server.runtime.backend
                token = current_runtime.set(server.server.runtime)
                try:
                    assert await state.incr("online", 5) == 5
                    proxy.arm(b"online")
                    backend.incr_nowait("online", -5)  # what a connection's end sends
                    with trio.fail_after(10):
                        await proxy.eaten.wait()
                    assert await _ok_again(lambda: state.get("online")) == 0  # not -5

                    proxy.arm(b"kept:room")
                    publish("kept:room", "once")
                    with trio.fail_after(10):
                        await proxy.eaten.wait()
                    await _ok_again(lambda: state.get("online"))
                finally:
                    current_runtime.reset(token)
                assert redis.command("XLEN", stream_key("hornbeam", "kept:room")) == 1
                assert redis.command("HGET", history_key("hornbeam", "kept:room"), "top") == b"1"
                assert redis.command("KEYS", "hornbeam:applied:*") != []
            nursery.cancel_scope.cancel()
        assert redis.command("KEYS", "hornbeam:applied:*") == []  # a clean stop drops it
