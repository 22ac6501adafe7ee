"""``--metrics-bind``: Prometheus text on a listener of its own, counting what clients did.

Real server processes (``python -m hornbeam_trio``), real clients (trio-websocket,
httpx); every scrape is parsed with prometheus-client's own parser, and the counters
must equal what the test sent, received and published.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from hornbeam_trio.config import Config, ConfigError
from hornbeam_trio.readiness import ReadinessHub
from tests.example_server import ExampleServer, example_server
from tests.test_cli import run_cli

APP = "tests.apps.metrics_app:app"
METRICS_ON = re.compile(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics")
TIMEOUT = 10.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_port(server: ExampleServer) -> int:
    match = METRICS_ON.search(server.log())
    assert match, "no 'Metrics on' line: the listener did not start"
    return int(match.group(1))


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (name, sorted labels), through prometheus' parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@asynccontextmanager
async def subscriber(server: ExampleServer, topic: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(server.ws_url(f"/sub/{topic}")) as ws:
        with trio.fail_after(TIMEOUT):
            assert await ws.get_message() == "subscribed"
        yield ws


async def echo_load(server: ExampleServer, messages: int) -> None:
    async with open_websocket_url(server.ws_url("/echo")) as ws:
        for i in range(messages):
            await ws.send_message(f"e{i}")
            with trio.fail_after(TIMEOUT):
                assert await ws.get_message() == f"e{i}"


async def test_metrics_scraped_during_load_count_the_messages_publishes_and_deliveries() -> None:
    echoers, echoes, subscribers, publishes = 2, 150, 3, 20
    async with example_server(
        APP, "--metrics-bind", "127.0.0.1:0", "--history", "chat:*=100"
    ) as server:
        port = metrics_port(server)
        async with (
            subscriber(server, "chat:room") as first,
            subscriber(server, "chat:room") as second,
            subscriber(server, "chat:room") as third,
        ):
            subs = (first, second, third)
            scrapes: list[Samples] = []
            load_done = trio.Event()

            async def scrape_during_load() -> None:
                while not load_done.is_set():
                    scrapes.append(await scrape(port))
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(scrape_during_load)
                async with trio.open_nursery() as load:
                    for _ in range(echoers):
                        load.start_soon(echo_load, server, echoes)
                load_done.set()
            assert scrapes, "no scrape ran during the load"
            received = [value(s, "hornbeam_websocket_messages_received_total") for s in scrapes]
            assert received == sorted(received)  # a counter never goes back
            assert received[-1] <= echoers * echoes

            async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as app:
                response = await app.get(f"/publish/chat:room/{publishes}")
                assert response.text == str(publishes * subscribers)
                for ws in subs:
                    with trio.fail_after(TIMEOUT):
                        got = [await ws.get_message() for _ in range(publishes)]
                    assert got == [f"m{i}" for i in range(publishes)]
                samples = await scrape(port)  # the keep-alive connection to the app is open
                assert value(samples, "hornbeam_connections", kind="http") == 1

        assert value(samples, "hornbeam_connections", kind="websocket") == subscribers
        assert value(samples, "hornbeam_websocket_messages_received_total") == echoers * echoes
        # The echoes, and one "subscribed" per subscriber; pushes are counted as deliveries.
        assert value(samples, "hornbeam_websocket_messages_sent_total") == (
            echoers * echoes + subscribers
        )
        assert value(samples, "hornbeam_pubsub_published_total") == publishes
        assert value(samples, "hornbeam_pubsub_delivered_total") == publishes * subscribers
        assert value(samples, "hornbeam_pubsub_dropped_total") == 0
        assert value(samples, "hornbeam_pubsub_slow_consumer_closes_total") == 0
        assert value(samples, "hornbeam_pubsub_subscribers", pattern="chat:*") == subscribers
        assert value(samples, "hornbeam_pubsub_subscribers", pattern="(none)") == 0
        assert value(samples, "hornbeam_history_messages", pattern="chat:*") == publishes
        batches = value(samples, "hornbeam_pubsub_delivery_latency_seconds_count")
        assert 1 <= batches <= publishes  # one observation per batch, never per delivery
        assert value(samples, "hornbeam_pubsub_delivery_latency_seconds_bucket", le="+Inf") == (
            batches
        )


@pytest.mark.skipif(not ReadinessHub.available(), reason="needs the readiness hub (Linux epoll)")
@pytest.mark.parametrize("busy_poll_us", [0, 10_000])
async def test_busy_poll_seconds_count_what_a_lone_connections_polls_cost(
    busy_poll_us: int,
) -> None:
    echoes = 100
    async with example_server(
        APP, "--metrics-bind", "127.0.0.1:0", "--busy-poll-us", str(busy_poll_us)
    ) as server:
        await echo_load(server, echoes)
        polled = value(await scrape(metrics_port(server)), "hornbeam_busy_poll_seconds_total")
    if busy_poll_us:
        # This process answers within the 10 ms window: its leads poll, at most a window
        # each (the echoes' leads, and a few of the handshake's and the close's).
        assert 0 < polled <= (echoes + 10) * busy_poll_us / 1e6
    else:
        assert polled == 0


@asynccontextmanager
async def member(server: ExampleServer, topic: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(server.ws_url(f"/presence/{topic}")) as ws:
        with trio.fail_after(TIMEOUT):
            assert await ws.get_message() == "joined"
        yield ws


async def test_presence_members_gauge_counts_members_by_pattern_and_drops_those_that_left() -> None:
    async with example_server(APP, "--metrics-bind", "127.0.0.1:0", "--history", "room:*=10") as (
        server
    ):
        port = metrics_port(server)
        async with (
            subscriber(server, "presence:room:a") as events,
            member(server, "room:a") as leaver,
            member(server, "room:a"),
            member(server, "room:b"),
            member(server, "lobby"),
        ):
            samples = await scrape(port)
            assert value(samples, "hornbeam_presence_members", pattern="room:*") == 3
            assert value(samples, "hornbeam_presence_members", pattern="(none)") == 1

            await leaver.send_message("leave")
            with trio.fail_after(TIMEOUT):
                assert await leaver.get_message() == "left"
            samples = await scrape(port)
            assert value(samples, "hornbeam_presence_members", pattern="room:*") == 2

            async with member(server, "room:a"):
                pass  # a member whose connection ends leaves too
            with trio.fail_after(TIMEOUT):
                kinds = []
                while kinds.count("presence.leave") < 2:
                    kinds.append(json.loads(await events.get_message())["type"])
            samples = await scrape(port)
            assert value(samples, "hornbeam_presence_members", pattern="room:*") == 2
            assert value(samples, "hornbeam_presence_members", pattern="(none)") == 1


@pytest.mark.parametrize("policy", ["close", "drop-oldest"])
async def test_metrics_count_slow_consumer_drops_and_1013_closes(policy: str) -> None:
    """Ten publishes in one go to a subscriber that may queue four: under ``close`` it is
    closed with 1013 at the fifth; under ``drop-oldest`` the six oldest are dropped."""
    flags = ("--metrics-bind", "127.0.0.1:0", "--subscriber-queue-size", "4")
    async with example_server(APP, *flags, "--slow-consumer", policy) as server:
        port = metrics_port(server)
        async with subscriber(server, "feed") as ws:
            async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as app:
                await app.get("/publish/feed/10")
            with trio.fail_after(TIMEOUT):
                if policy == "close":
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            await ws.get_message()
                    assert closed.value.reason.code == 1013
                else:
                    got = [await ws.get_message() for _ in range(4)]
                    assert got == ["m6", "m7", "m8", "m9"]
            samples = await scrape(port)
    if policy == "close":
        assert value(samples, "hornbeam_pubsub_slow_consumer_closes_total") == 1
        assert value(samples, "hornbeam_pubsub_dropped_total") == 0
        assert value(samples, "hornbeam_pubsub_delivered_total") == 4
    else:
        assert value(samples, "hornbeam_pubsub_slow_consumer_closes_total") == 0
        assert value(samples, "hornbeam_pubsub_dropped_total") == 6
        assert value(samples, "hornbeam_pubsub_delivered_total") == 10
    assert value(samples, "hornbeam_pubsub_published_total") == 10


async def test_metrics_listener_is_its_own_port_and_the_app_keeps_its_paths() -> None:
    async with example_server(APP, "--metrics-bind", "127.0.0.1:0") as server:
        port = metrics_port(server)
        assert port != server.port
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            on_app = await client.get(f"{server.http_url}/metrics")
            assert (on_app.status_code, on_app.text) == (200, "app")  # the app's own path
            elsewhere = await client.get(f"http://127.0.0.1:{port}/")
            assert elsewhere.status_code == 404
        assert "hornbeam_connections" in str(await scrape(port))


def test_metrics_bind_on_the_app_port_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        Config(bind=("127.0.0.1:8123",), metrics_bind="0.0.0.0:8123")
    assert error.value.option == "metrics_bind"
    assert Config().metrics_bind is None  # off unless asked for


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("nonsense", "expected host:port or [v6]:port, got 'nonsense'"),
        ("unix:/tmp/metrics.sock", "expected host:port or [v6]:port"),
        ("127.0.0.1:99999", "port out of range"),
        ("127.0.0.1:8124", "is the app's port too"),
    ],
)
def test_bad_metrics_bind_is_a_one_line_error_naming_the_flag(argument: str, message: str) -> None:
    value, *more = argument.split()
    result = run_cli(APP, "--bind", "127.0.0.1:8124", "--metrics-bind", value, *more)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hornbeam-trio: error: --metrics-bind: ")
    assert message in lines[0]


async def test_the_metrics_listener_serves_at_most_max_connections_at_once() -> None:
    """Idle connections to the operator's port hold MAX_CONNECTIONS sockets for at most
    READ_TIMEOUT, not one each: beyond that a connection is closed as it is accepted."""
    from hornbeam_trio import metrics_http
    from hornbeam_trio.config import BindAddress

    async def render() -> bytes:
        return b"up 1\n"

    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            metrics_http.serve_metrics, render, BindAddress("tcp", host="127.0.0.1", port=0)
        )
        idle = [
            await trio.open_tcp_stream("127.0.0.1", address.port)
            for _ in range(metrics_http.MAX_CONNECTIONS)
        ]
        await trio.testing.wait_all_tasks_blocked()
        extra = await trio.open_tcp_stream("127.0.0.1", address.port)
        with trio.fail_after(5):
            assert await extra.receive_some(100) == b""  # closed at once, nothing read
        await extra.aclose()
        await idle.pop().aclose()  # one slot frees up once the server sees it go
        with trio.fail_after(5):
            while True:
                scrape = await trio.open_tcp_stream("127.0.0.1", address.port)
                await scrape.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := await scrape.receive_some(4096):
                    answer += chunk
                await scrape.aclose()
                if answer:
                    break
                await trio.sleep(0.01)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"up 1\n")
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()
