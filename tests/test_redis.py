"""The Redis backend against a real redis-server (started by these tests on a free port).

State through the awaitable façade (``hornbeam_trio.state``) and the synchronous one,
pub/sub between WebSocket clients through Redis, connection-owned keys, the errors a
user sees (SyncUnavailable, Redis down at startup), and the point of it all: two server
processes sharing one Redis, a client on each in the same room.  Without redis-server
these skip with the reason, or fail when HORNBEAM_CI is set (see tests/redis_server.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from example_server import (
    ROOT,
    eventually,
    example_server,
    http_get,
    killable_server,
)
from redis_server import RedisServer, free_port, redis_server, skip_or_fail
from trio_websocket import open_websocket_url

import hornbeam_trio
from hornbeam_erlang import (
    publish,
    state_delete,
    state_get,
    state_get_multi,
    state_incr,
    state_keys,
    state_set,
    subscribe,
)
from hornbeam_trio import state
from hornbeam_trio.backends.base import BackendUnavailable
from hornbeam_trio.runtime import current_runtime
from hornbeam_trio.testing import TestServer, run_server
from hornbeam_trio.types import Receive, Scope, Send


@pytest.fixture
def redis_available() -> None:
    """For a test that starts redis-server itself (a skip inside a Trio test loses its
    reason)."""
    skip_or_fail()


# -- apps --------------------------------------------------------------------
async def chat(scope: Scope, receive: Receive, send: Send) -> None:
    """The README's chat room: sync subscribe/publish, unchanged for Redis."""
    await send({"type": "websocket.accept"})
    topic = "chat:" + scope["path"].rsplit("/", 1)[-1]
    subscribe(topic)
    while (message := await receive())["type"] == "websocket.receive":
        if message.get("bytes") is not None:
            publish(topic, message["bytes"])
        else:
            publish(topic, json.loads(message["text"]))


async def presence(scope: Scope, receive: Receive, send: Send) -> None:
    """Connection-owned keys over Redis: awaitable and synchronous forms."""
    await send({"type": "websocket.accept"})
    user = scope["path"].rsplit("/", 1)[-1]
    await state.set(f"presence:{user}", {"user": user}, owned=True)
    online = await state.incr("online", owned=True)
    state_set(f"sync:{user}", True, owned=True)  # fire-and-forget, still owned
    await send({"type": "websocket.send", "text": json.dumps({"online": online})})
    while (await receive())["type"] == "websocket.receive":
        pass


@contextmanager
def façade_of(server: TestServer) -> Iterator[None]:
    """Make the Hornbeam calls in this test task use ``server``'s runtime."""
    token = current_runtime.set(server.server.runtime)
    try:
        yield
    finally:
        current_runtime.reset(token)


async def noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


# -- state -------------------------------------------------------------------
ROUND_TRIP_VALUES: list[Any] = [
    0,
    -7,
    2**63 - 1,
    -(2**63),
    2**80,
    1.5,
    -0.1,
    1e308,
    True,
    False,
    None,
    "",
    "héllo wörld ✓",
    "42",
    b"",
    b"\x00\xff binary",
    [],
    {},
    [1, "two", 3.0, None, True, [b"\x01"]],
    {"user": "ann", "tags": ["a", "b"], "avatar": b"\x89PNG", "nested": {"$b": "not bytes"}},
]


async def test_state_values_round_trip_exactly(redis_url: str) -> None:
    async with run_server(noop_app, backend=redis_url) as server:
        with façade_of(server):
            for index, value in enumerate(ROUND_TRIP_VALUES):
                await state.set(f"v{index}", value)
            for index, value in enumerate(ROUND_TRIP_VALUES):
                got = await state.get(f"v{index}")
                assert got == value and type(got) is type(value), (index, value, got)
            assert await state.get("missing") is None
            many = await state.get_multi(["v0", "missing", "v19"])
            assert many == {"v0": 0, "missing": None, "v19": ROUND_TRIP_VALUES[19]}
            await state.delete("v0")
            await state.delete("never-there")  # not an error
            assert await state.get("v0") is None
            # a copy, as with the memory backend
            value = await state.get("v19")
            value["user"] = "changed"
            assert (await state.get("v19"))["user"] == "ann"
            with pytest.raises(TypeError, match="set"):
                await state.set("bad", {1, 2})
            with pytest.raises(TypeError, match="keys of stored"):
                await state.set("bad", {1: "x"})


async def test_incr_is_atomic_across_tasks_and_processes(redis_url: str) -> None:
    async with (
        run_server(noop_app, backend=redis_url) as one,
        run_server(noop_app, backend=redis_url) as two,
    ):
        # two servers = two runtimes = two Redis clients, as two processes would have

        async def hammer(server: TestServer) -> None:
            with façade_of(server):
                for _ in range(50):
                    await state.incr("hits")

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(hammer, one)
                nursery.start_soon(hammer, two)
        with façade_of(one):
            assert await state.get("hits") == 1000
            assert await state.incr("fresh", 5) == 5  # a missing key counts from 0
            assert await state.decr("fresh", 7) == -2
            await state.set("text", "abc")
            with pytest.raises(TypeError, match="holds a str, not an int"):
                await state.incr("text")
            with pytest.raises(TypeError, match="delta must be an int"):
                await state.incr("fresh", 1.5)  # type: ignore[arg-type]
            await state.set("int", 40)  # a stored int is what INCRBY works on
            assert await state.incr("int", 2) == 42


async def test_keys_by_prefix_use_scan_and_escape_glob_characters(
    redis_url: str, redis: RedisServer
) -> None:
    async with run_server(noop_app, backend=redis_url) as server:
        with façade_of(server):
            for key in ["user:1", "user:2", "user:*", "us?r:3", "room:1"]:
                await state.set(key, 1)
            for n in range(1500):  # more than one SCAN page
                await state.set(f"bulk:{n}", n)
            assert sorted(await state.keys("user:")) == ["user:*", "user:1", "user:2"]
            assert await state.keys("user:*") == ["user:*"]
            assert await state.keys("us?") == ["us?r:3"]
            assert len(await state.keys("bulk:")) == 1500
            assert len(await state.keys()) == 1505
            assert await state.keys("nothing:") == []
    # stored under a namespace, never with KEYS
    assert redis.command("EXISTS", "hornbeam:state:user:1") == 1


async def test_sync_reads_raise_sync_unavailable_naming_the_awaitable_form(
    redis_url: str,
) -> None:
    async with run_server(noop_app, backend=redis_url) as server:
        with façade_of(server):
            cases = [
                (lambda: state_get("k"), "state_get", "await hornbeam_trio.state.get(key)"),
                (lambda: state_incr("k"), "state_incr", "await hornbeam_trio.state.incr("),
                (lambda: state_keys("k"), "state_keys", "await hornbeam_trio.state.keys("),
                (
                    lambda: state_get_multi(["k"]),
                    "state_get_multi",
                    "await hornbeam_trio.state.get_multi(",
                ),
            ]
            for call, name, hint in cases:
                with pytest.raises(hornbeam_trio.SyncUnavailable) as info:
                    call()
                assert str(info.value).startswith(f"{name}() cannot answer without waiting")
                assert hint in str(info.value)


async def test_sync_writes_are_queued_in_order_and_read_back_by_the_same_process(
    redis_url: str, redis: RedisServer
) -> None:
    async with run_server(noop_app, backend=redis_url) as server:
        with façade_of(server):
            for n in range(100):
                state_set("counter", n)  # fire-and-forget
            state_set("gone", "soon")
            state_delete("gone")
            # an awaitable call first waits for this process's queued writes
            assert await state.get("counter") == 99
            assert await state.get("gone") is None
            with pytest.raises(TypeError):
                state_set("bad", object())  # refused at the call, not later
            with trio.CancelScope() as scope:
                scope.cancel()
                await state.set("abandoned", 1)  # cancelled before it was sent...
            assert await state.get("abandoned") is None  # ...so never sent
    assert redis.command("GET", "hornbeam:state:counter") == b"99"


# -- pub/sub -----------------------------------------------------------------
async def test_pubsub_between_two_websocket_clients_through_redis(
    redis_url: str, redis: RedisServer
) -> None:
    async with run_server(chat, backend=redis_url) as server:
        async with server.websocket("/chat/lobby") as ann, server.websocket("/chat/lobby") as bob:
            await eventually(_numsub(redis, "chat:lobby"), lambda n: n == 1, what="one SUBSCRIBE")
            await ann.send_json({"user": "ann", "text": "hi"})
            assert await bob.receive_json() == {"user": "ann", "text": "hi"}
            assert await ann.receive_json() == {"user": "ann", "text": "hi"}  # exactly once
            await bob.send(b"\x00\x01")
            assert await ann.receive() == b"\x00\x01"
            assert await bob.receive() == b"\x00\x01"
            for n in range(50):
                await ann.send_json({"n": n})
            assert [(await bob.receive_json())["n"] for _ in range(50)] == list(range(50))
            assert [(await ann.receive_json())["n"] for _ in range(50)] == list(range(50))
            # one Redis subscription for the process, however many local subscribers
            assert redis.command("PUBSUB", "NUMSUB", "hornbeam:topic:chat:lobby")[1] == 1
            with façade_of(server):
                assert publish("chat:lobby", "local count") == 2
                assert publish("chat:nobody", "x") == 0
            assert await bob.receive() == "local count"
    # the last local subscriber gone: the process unsubscribed from Redis
    await eventually(_numsub(redis, "chat:lobby"), lambda n: n == 0, what="UNSUBSCRIBE")


async def test_publish_reaches_a_subscriber_of_another_runtime(
    redis_url: str, redis: RedisServer
) -> None:
    async with (
        run_server(chat, backend=redis_url) as one,
        run_server(chat, backend=redis_url) as two,
        one.websocket("/chat/room") as ann,
        two.websocket("/chat/room") as bob,
    ):
        await eventually(_numsub(redis, "chat:room"), lambda n: n == 2, what="two SUBSCRIBEs")
        await ann.send_json({"from": "one"})
        await bob.send_json({"from": "two"})
        got_ann = [await ann.receive_json(), await ann.receive_json()]
        got_bob = [await bob.receive_json(), await bob.receive_json()]
        assert got_ann == got_bob  # one order per topic, whoever published
        assert sorted(m["from"] for m in got_ann) == ["one", "two"]
        with pytest.raises(TypeError):
            with façade_of(one):
                publish("chat:room", {"not json": {1, 2}})  # refused at the publisher


async def test_subscribe_then_publish_reaches_the_publisher_itself(redis_url: str) -> None:
    """The writer waits for a pending SUBSCRIBE before sending a publish to its topic."""

    async def join_and_announce(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        subscribe(f"other:{scope['path']}")
        await trio.sleep(0)  # the subscription manager is now waiting for that SUBSCRIBE
        subscribe("room")
        publish("room", {"joined": True})  # would overtake the SUBSCRIBE of "room"
        while (await receive())["type"] == "websocket.receive":
            pass

    async with run_server(join_and_announce, backend=redis_url) as server:
        for n in range(5):
            async with server.websocket(f"/{n}") as ws:
                assert await ws.receive_json() == {"joined": True}


async def test_connection_owned_keys_are_released_through_redis(
    redis_url: str, redis: RedisServer
) -> None:
    async with run_server(presence, backend=redis_url) as server:
        async with server.websocket("/p/ann") as ann:
            assert await ann.receive_json() == {"online": 1}
            async with server.websocket("/p/bob") as bob:
                assert await bob.receive_json() == {"online": 2}
                with façade_of(server):
                    assert sorted(await state.keys("presence:")) == [
                        "presence:ann",
                        "presence:bob",
                    ]
            await ann.abort()  # an abrupt exit path too
        with façade_of(server):

            async def snapshot() -> Any:
                return (
                    await state.get("online"),
                    await state.keys("presence:"),
                    await state.keys("sync:"),
                )

            await eventually(snapshot, lambda s: s == (0, [], []), what="owned keys released")
        assert redis.command("KEYS", "hornbeam:owned:*") == []  # lease records gone too


# -- errors and processes ----------------------------------------------------
def test_redis_down_at_startup_is_one_clear_line_and_exit_code_3() -> None:
    skip_or_fail()
    port = free_port()  # nothing listens there
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "hornbeam_trio",
            "tests.apps.simple:hello",
            "--bind",
            "127.0.0.1:0",
            "--backend",
            f"redis://:secret@127.0.0.1:{port}/0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = (completed.stdout + completed.stderr).strip()
    assert completed.returncode == 3, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert "Backend unavailable: cannot reach Redis at redis://:***@127.0.0.1:" in lines[0]
    assert "secret" not in output and "Listening" not in output


async def test_two_server_processes_share_a_room_through_one_redis(
    redis_url: str, redis: RedisServer
) -> None:
    flags = ("--backend", redis_url)
    async with (
        example_server("examples.chat:application", *flags) as first,
        example_server("examples.chat:application", *flags) as second,
        open_websocket_url(first.ws_url("/chat/lobby")) as ann,
        open_websocket_url(second.ws_url("/chat/lobby")) as bob,
        open_websocket_url(second.ws_url("/chat/kitchen")) as cat,
    ):
        assert first.port != second.port
        await eventually(_numsub(redis, "chat:lobby"), lambda n: n == 2, what="both processes")
        await ann.send_message(json.dumps({"user": "ann", "text": "from the first"}))
        expected = {"type": "message", "user": "ann", "text": "from the first"}
        assert await _receive_json(bob) == expected
        assert await _receive_json(ann) == expected
        await bob.send_message(json.dumps({"user": "bob", "text": "from the second"}))
        expected = {"type": "message", "user": "bob", "text": "from the second"}
        assert await _receive_json(ann) == expected
        assert await _receive_json(bob) == expected
        await cat.send_message(json.dumps({"user": "cat", "text": "kitchen only"}))
        assert (await _receive_json(cat))["text"] == "kitchen only"
        await ann.send_message(json.dumps({"user": "ann", "text": "last"}))
        assert (await _receive_json(bob))["text"] == "last"  # nothing of the kitchen before


def _numsub(redis: RedisServer, topic: str) -> Any:
    async def probe() -> int:
        reply = redis.command("PUBSUB", "NUMSUB", f"hornbeam:topic:{topic}")
        return int(reply[1])

    return probe


async def _receive_json(ws: Any, timeout: float = 5.0) -> Any:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def test_redis_restart_reconnects_resubscribes_and_delivers_what_was_queued(
    caplog: pytest.LogCaptureFixture, redis_available: None
) -> None:
    port = free_port()
    with redis_server(port) as redis:
        async with run_server(chat, backend=redis.url) as server:
            async with server.websocket("/chat/r") as ann, server.websocket("/chat/r") as bob:
                await eventually(_numsub(redis, "chat:r"), lambda n: n == 1, what="SUBSCRIBE")
                await ann.send_json({"n": 1})
                assert (await bob.receive_json())["n"] == 1
                redis.process.terminate()
                redis.process.wait()
                with façade_of(server), pytest.raises(BackendUnavailable, match=r"state\.get"):
                    await state.get("anything")  # a read cannot wait for Redis to return
                backend: Any = server.server.runtime.backend
                await ann.send_json({"n": 2})  # queued while Redis is away
                await trio.sleep(0.3)  # the writer holds it until subscribed again
                backend.max_pending = 3
                with façade_of(server):
                    for n in range(5):
                        publish("chat:elsewhere", n)  # 3 queued, 2 dropped and counted
                with redis_server(port) as again:
                    # a new, empty Redis on the same address
                    assert (await bob.receive_json(timeout=10))["n"] == 2
                    assert (await ann.receive_json())["n"] == 1
                    assert (await ann.receive_json())["n"] == 2
                    await bob.send_json({"n": 3})
                    assert (await ann.receive_json())["n"] == 3
                    assert (await bob.receive_json())["n"] == 3
                    assert again.command("PUBSUB", "NUMSUB", "hornbeam:topic:chat:r")[1] == 1
                    assert backend.lost_publishes == 2
    text = caplog.text
    assert "unreachable" in text and "reachable again" in text
    assert "lost while it was not: 2 publishes, 0 writes" in text


# -- --workers N -------------------------------------------------------------
async def test_workers_share_the_port_and_their_clients_share_rooms(
    redis_url: str, redis: RedisServer
) -> None:
    flags = ("--workers", "3", "--backend", redis_url)
    async with example_server("tests.apps.workers_app:app", *flags) as server:
        pids: set[int] = set()

        async def worker_pids() -> set[int]:
            pids.add(int((await http_get(server, "/")).text))
            return pids

        # each new connection goes to one of the workers that share the socket
        await eventually(worker_pids, lambda p: len(p) == 3, timeout=15, what="3 workers")
        assert server.process.pid not in pids

        async with AsyncExitStack() as stack:
            by_pid: dict[int, Any] = {}
            for _ in range(60):
                ws = await stack.enter_async_context(open_websocket_url(server.ws_url("/r/x")))
                by_pid.setdefault((await _receive_json(ws))["pid"], ws)
                if len(by_pid) == 2:
                    break
            assert len(by_pid) == 2, "60 connections, all on one worker"
            ann, bob = by_pid.values()
            await eventually(_numsub(redis, "room:x"), lambda n: n >= 2, what="2 workers")
            await ann.send_message(json.dumps({"from": "ann"}))
            assert await _receive_json(bob) == {"from": "ann"}
            await bob.send_message(json.dumps({"from": "bob"}))
            assert await _receive_json(ann) == {"from": "ann"}
            assert await _receive_json(ann) == {"from": "bob"}
    log = server.log()
    assert log.count("Listening on") == 1
    assert log.count("Started worker") == 3


async def test_a_worker_that_dies_is_replaced(redis_url: str) -> None:
    flags = ("--workers", "2", "--backend", redis_url)
    async with example_server("tests.apps.workers_app:app", *flags, expect_errors=True) as server:
        victim = int((await http_get(server, "/")).text)
        os.kill(victim, signal.SIGKILL)
        pids: set[int] = set()

        async def worker_pids() -> set[int]:
            pids.add(int((await http_get(server, "/")).text))
            return pids - {victim}

        await eventually(worker_pids, lambda p: len(p) == 2, timeout=15, what="a new worker")
    assert f"(pid {victim}) exited with -9: starting another" in server.log()


async def _get_over_unix(path: str) -> bytes:
    """GET / over a unix socket; the response body (here: the worker's pid)."""
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body


async def test_a_replaced_worker_leaves_the_unix_socket_path_to_the_others(
    redis_url: str,
) -> None:
    """A worker stops (SIGTERM to it alone) and is replaced: the socket file must stay."""
    with tempfile.TemporaryDirectory(prefix="hornbeam-unix-") as tmp:
        path = str(Path(tmp) / "app.sock")
        log_path = Path(tmp) / "server.log"
        argv = [
            sys.executable, "-m", "hornbeam_trio", "tests.apps.workers_app:app",
            "--bind", f"unix:{path}", "--workers", "2", "--backend", redis_url,
        ]  # fmt: skip
        with log_path.open("wb") as log_file:
            process = await trio.lowlevel.open_process(
                argv, cwd=Path(__file__).resolve().parent.parent, stdout=log_file,
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            with trio.fail_after(30):
                while log_path.read_text().count("Started worker") < 2 or not os.path.exists(path):
                    await trio.sleep(0.05)
                victim = int(await _get_over_unix(path))
                os.kill(victim, signal.SIGTERM)  # graceful stop of that worker alone
                while "starting another" not in log_path.read_text():
                    await trio.sleep(0.05)
                assert os.path.exists(path), "the stopped worker unlinked the socket file"
                pids = {int(await _get_over_unix(path)) for _ in range(20)}
                assert victim not in pids
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await process.wait()
        log = log_path.read_text()
        assert process.returncode == 0, log
        assert not os.path.exists(path), "the parent removes the socket file at the end"


def test_workers_with_redis_down_is_one_line_and_exit_code_3() -> None:
    skip_or_fail()
    completed = subprocess.run(
        [
            sys.executable, "-m", "hornbeam_trio", "tests.apps.workers_app:app",
            "--bind", "127.0.0.1:0", "--workers", "2",
            "--backend", f"redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    output = (completed.stdout + completed.stderr).strip()
    assert completed.returncode == 3, output
    assert (
        output.splitlines() == [output.splitlines()[0]]
        and "Backend unavailable: cannot reach Redis" in output
    ), output


async def test_owned_keys_of_a_killed_process_are_released_when_its_lease_expires(
    redis_url: str, redis: RedisServer
) -> None:
    url = redis_url + "?lease_ttl=1"
    async with run_server(noop_app, backend=url) as survivor:
        async with killable_server("tests.apps.workers_app:app", "--backend", url) as doomed:
            async with (
                open_websocket_url(doomed.ws_url("/own/ann")) as ann,
                open_websocket_url(doomed.ws_url("/own/bob")) as bob,
            ):
                await _receive_json(ann)
                await _receive_json(bob)
                with façade_of(survivor):
                    await state.incr("online")  # the survivor's own, not owned
                    assert await state.get("online") == 3
                    assert len(await state.keys("presence:")) == 2

                async def lease_records() -> int:
                    hashes = redis.command("KEYS", "hornbeam:owned:*")
                    return sum(redis.command("HLEN", name) for name in hashes)

                # the doomed process records each ownership right after the write itself
                await eventually(lease_records, lambda n: n == 4, what="lease records")
                doomed.process.kill()  # no release, no goodbye
                await doomed.process.wait()
                with façade_of(survivor):

                    async def snapshot() -> Any:
                        return await state.get("online"), await state.keys("presence:")

                    await eventually(
                        snapshot, lambda s: s == (1, []), timeout=5, what="keys released"
                    )
        assert redis.command("ZCARD", "hornbeam:leases") == 1  # the survivor's only
    assert redis.command("ZCARD", "hornbeam:leases") == 0  # a clean stop leaves none
    assert redis.command("KEYS", "hornbeam:owned:*") == []


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("redis://127.0.0.1:1/0?lease_ttl=soon", "lease_ttl must be a number of seconds"),
        ("redis://127.0.0.1:1/0?lease_ttl=0", "lease_ttl must be > 0 seconds"),
    ],
)
def test_a_bad_redis_option_is_a_usage_error(
    backend: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hornbeam_trio.cli import main

    assert main(["tests.apps.simple:hello", "--backend", backend]) == 2
    assert f"hornbeam-trio: error: --backend: {message}" in capsys.readouterr().err
