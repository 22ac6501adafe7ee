"""One Redis outage, as an operator would cause it: the scenario of tests/test_redis_outage.py
and benchmarks/redis_faults.py.

A real redis-server; two server processes of ``tests.apps.outage_app`` on it; in one room,
``receivers`` WebSocket clients on each process and one publisher client on the first
(so the second process only subscribes).  The publisher sends ``{"seq": n}`` at ``rate``
per second throughout; after ``before`` seconds Redis is killed (SIGKILL), restarted on
the same port (empty) ``outage`` seconds later, and the publisher goes on for ``after``
seconds.  With ``freeze``, the second process is stopped (SIGSTOP) from the kill until
``freeze`` seconds after the restart: it comes back to Redis late.  Each client counts
what it received; each process's log is kept.  With ``burst``, the first process
publishes that many at once (numbered on) as the outage begins.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from typing import Any

import trio
from example_server import eventually, example_server, http_get
from redis_server import RedisServer, free_port, redis_server
from trio_websocket import WebSocketConnection, open_websocket_url

APP = "tests.apps.outage_app:app"
LEASE_TTL = 3.0
"""Short, so each process learns of the other (its lease refresh, every third) within 1 s."""


@dataclass
class ClientCount:
    process: int
    received: list[int] = field(default_factory=list)

    def missing(self, sent: int) -> int:
        return len(set(range(sent)) - set(self.received))

    def duplicates(self) -> int:
        return len(self.received) - len(set(self.received))

    def in_order(self) -> bool:
        """First receipts ascending (a batch sent again after a failure repeats a run)."""
        seen: set[int] = set()
        first = []
        for seq in self.received:
            if seq not in seen:
                seen.add(seq)
                first.append(seq)
        return first == sorted(first)


@dataclass
class OutageReport:
    outage: float
    sent: int = 0
    clients: list[ClientCount] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def lines(self, process: int, text: str) -> list[str]:
        return [line for line in self.logs[process].splitlines() if text in line]

    def lost(self) -> int:
        return sum(client.missing(self.sent) for client in self.clients)


async def _count(ws: WebSocketConnection, client: ClientCount, done: trio.Event) -> None:
    assert "pid" in json.loads(await ws.get_message())
    while True:
        seq = json.loads(await ws.get_message())["seq"]
        client.received.append(seq)
        if seq == -1:  # the end marker, sent after the last one
            client.received.pop()
            done.set()


async def run_outage(
    outage: float,
    *,
    receivers: int = 3,
    rate: float = 100.0,
    before: float = 0.5,
    after: float = 1.0,
    deliver_timeout: float = 20.0,
    redis_options: tuple[str, ...] = (),
    freeze: float = 0.0,
    burst: int = 0,
    server_flags: tuple[str, ...] = (),
) -> OutageReport:
    report = OutageReport(outage)
    port = free_port()
    with redis_server(port, *redis_options) as redis:
        url = f"{redis.url}?lease_ttl={LEASE_TTL:g}"
        servers = []
        async with (
            example_server(APP, "--backend", url, *server_flags) as one,
            example_server(APP, "--backend", url, *server_flags) as two,
        ):
            servers = [one, two]
            await _run_clients(
                redis, servers, report, receivers, rate, before, after, deliver_timeout, freeze,
                burst,
            )
        report.logs = [server.log() for server in servers]
    return report


async def _run_clients(
    redis: RedisServer,
    servers: list[Any],
    report: OutageReport,
    receivers: int,
    rate: float,
    before: float,
    after: float,
    deliver_timeout: float,
    freeze: float,
    burst: int,
) -> None:
    async with trio.open_nursery() as nursery:
        dones = []
        sockets = []
        for process, server in enumerate(servers):
            for _ in range(receivers):
                ws = await nursery.start(_open, server.ws_url("/room/r"))
                sockets.append(ws)
                client = ClientCount(process)
                report.clients.append(client)
                done = trio.Event()
                dones.append(done)
                nursery.start_soon(_count, ws, client, done)
        publisher = await nursery.start(_open, servers[0].ws_url("/room/p"))
        assert "pid" in json.loads(await publisher.get_message())

        async def numsub() -> int:
            return int(redis.command("PUBSUB", "NUMSUB", "hornbeam:topic:room:r")[1])

        async def leases() -> int:
            return int(redis.command("ZCARD", "hornbeam:leases"))

        await eventually(numsub, lambda n: n == 2, what="both processes subscribed")
        await eventually(leases, lambda n: n == 2, what="both leases")
        # each process reads the roster of the others at its next lease refresh
        await trio.sleep(LEASE_TTL / 3 + 0.2)

        async def publish_for(seconds: float) -> None:
            end = trio.current_time() + seconds
            while trio.current_time() < end:
                text = json.dumps({"seq": report.sent})
                await publisher.send_message(f'{{"to": "r", "message": {text}}}')
                report.sent += 1
                await trio.sleep(1 / rate)

        await publish_for(before)
        redis.kill()
        if freeze:
            servers[1].process.send_signal(signal.SIGSTOP)
        if burst:
            path = f"/publish/r/{report.sent}/{burst}"
            response = await http_get(servers[0], path, timeout=60)
            assert response.text == f"queued {burst}"
            report.sent += burst
        await publish_for(report.outage)
        redis.restart()
        if freeze:
            await publish_for(freeze)
            servers[1].process.send_signal(signal.SIGCONT)
        await publish_for(after)
        await publisher.send_message('{"to": "r", "message": {"seq": -1}}')
        with trio.move_on_after(deliver_timeout):
            for done in dones:
                await done.wait()
        nursery.cancel_scope.cancel()


async def _open(url: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        await trio.sleep_forever()
