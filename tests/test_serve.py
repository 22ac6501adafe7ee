"""``serve()``: what it binds and reports, graceful shutdown when cancelled, what it
leaves behind (nothing), and the validation of the ``Config`` it is given."""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import http_apps
import pytest
import trio
import trio.testing
import trio_websocket
from http_apps import RawHTTP

import hornbeam_trio
from hornbeam_trio import Config, ConfigError, serve
from hornbeam_trio.config import BindAddress
from hornbeam_trio.runtime import default_runtime
from hornbeam_trio.server import Server, serve_server
from hornbeam_trio.transport import StreamTransport
from hornbeam_trio.types import ASGIApp

GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of this run, walking down from the root task."""
    tasks: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None or task in tasks:
            continue
        tasks.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return tasks


@dataclass
class Running:
    """A serve() task the test can cancel and watch end."""

    scope: trio.CancelScope
    stopped: trio.Event
    addresses: list[BindAddress]
    server: Server | None = None
    stopped_at: float = 0.0
    cancelled_at: float = 0.0
    memory_peers: list[trio.abc.Stream] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled_at = trio.current_time()
        self.scope.cancel()

    async def wait_stopped(self, timeout: float = 5) -> float:
        """Wait for serve() to return; the seconds it took after cancel()."""
        with trio.fail_after(timeout):
            await self.stopped.wait()
        return self.stopped_at - self.cancelled_at

    @property
    def port(self) -> int:
        return self.addresses[0].port

    async def connect(self) -> RawHTTP:
        return RawHTTP(await trio.open_tcp_stream("127.0.0.1", self.port))

    def connect_memory(self) -> RawHTTP:
        assert self.server is not None and self.server.connections_nursery is not None
        client, server_side = trio.testing.memory_stream_pair()
        self.server.connections_nursery.start_soon(
            self.server.handle_transport,
            StreamTransport(server_side, client=("127.0.0.1", 50000), server=("127.0.0.1", 80)),
        )
        return RawHTTP(client)


@asynccontextmanager
async def running(start: Callable[..., Any]) -> AsyncIterator[Running]:
    """Run ``start`` (a serve-like coroutine function taking task_status) in a task."""
    scope = trio.CancelScope()
    stopped = trio.Event()
    handle: Running | None = None

    async def body(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await start(task_status=task_status)
        finally:
            if handle is not None:
                handle.stopped_at = trio.current_time()
            stopped.set()

    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(body)
        handle = Running(scope, stopped, addresses)
        try:
            yield handle
        finally:
            scope.cancel()


def tcp_config(**options: Any) -> Config:
    return Config.from_options(**{"bind": ("127.0.0.1:0",), "log_level": "warning", **options})


def serving(app: ASGIApp, config: Config) -> Callable[..., Any]:
    return partial(serve, app, config)


@asynccontextmanager
async def memory_serving(app: ASGIApp, **options: Any) -> AsyncIterator[Running]:
    """serve_server with no listeners; connections are in-memory streams (mock clock)."""
    config = Config.from_options(log_level="warning", **options)
    server = Server(app, config, default_runtime())
    async with running(partial(serve_server, server, [])) as handle:
        handle.server = server
        yield handle


# -- what serve() binds ------------------------------------------------------------------


async def test_serve_reports_a_real_port_and_serves_it() -> None:
    before = all_tasks()
    async with running(serving(http_apps.hello, tcp_config(lifespan="off"))) as run:
        (address,) = run.addresses
        assert address.kind == "tcp"
        assert address.host == "127.0.0.1"
        assert address.port > 0
        client = await run.connect()
        await client.send(GET % b"/")
        response = await client.read_response()
        assert response.body == b"hello"
        await client.stream.aclose()
        run.cancel()
        await run.wait_stopped()
    assert all_tasks() == before
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", address.port)


async def test_serve_takes_keyword_options() -> None:
    start = partial(serve, http_apps.hello, bind=("127.0.0.1:0",), lifespan="off", keepalive=1)
    async with running(start) as run:
        client = await run.connect()
        await client.send(GET % b"/")
        assert (await client.read_response()).status == 200


async def test_serve_merges_keyword_options_into_a_config() -> None:
    config = Config(bind=("127.0.0.1:0",), log_level="warning", lifespan="off")
    start = partial(serve, http_apps.scope_echo, config, root_path="/base")
    async with running(start) as run:
        client = await run.connect()
        await client.send(GET % b"/x")
        assert (await client.read_response()).json()["path"] == "/base/x"


async def test_serve_rejects_an_unknown_option() -> None:
    with pytest.raises(ConfigError, match="no_such_thing"):
        await serve(http_apps.hello, bind=("127.0.0.1:0",), no_such_thing=1)


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_several_binds_tcp_ipv6_and_unix() -> None:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hornbeam.sock")
        config = tcp_config(bind=("127.0.0.1:0", "[::1]:0", f"unix:{path}"))
        async with running(serving(http_apps.scope_echo, config)) as run:
            v4, v6, unix = run.addresses
            assert (v4.kind, v4.host) == ("tcp", "127.0.0.1")
            assert (v6.kind, v6.host) == ("tcp", "::1")
            assert (unix.kind, unix.path) == ("unix", path)
            assert v4.port > 0 and v6.port > 0

            scopes = []
            for stream in (
                await trio.open_tcp_stream("127.0.0.1", v4.port),
                await trio.open_tcp_stream("::1", v6.port),
                await trio.open_unix_socket(path),
            ):
                client = RawHTTP(stream)
                await client.send(b"GET /where HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                response = await client.read_response()
                assert response.status == 200
                scopes.append(response.json())
                await stream.aclose()
            run.cancel()
            await run.wait_stopped()
            assert not os.path.exists(path), "the unix socket file outlived serve()"
    assert scopes[0]["server"] == ["127.0.0.1", v4.port]
    assert scopes[1]["server"] == ["::1", v6.port]
    assert scopes[1]["client"][0] == "::1"
    assert scopes[2]["path"] == "/where"
    for port, host in ((v4.port, "127.0.0.1"), (v6.port, "::1")):
        with pytest.raises(OSError):
            await trio.open_tcp_stream(host, port)
    with pytest.raises(OSError):
        await trio.open_unix_socket(path)


async def test_bind_failure_is_an_oserror_and_leaves_nothing() -> None:
    async with running(serving(http_apps.hello, tcp_config(lifespan="off"))) as run:
        taken = run.port
        with pytest.raises(OSError):
            await serve(http_apps.hello, tcp_config(bind=("127.0.0.1:0", f"127.0.0.1:{taken}")))


# -- graceful shutdown -----------------------------------------------------------------


async def test_cancel_drains_gracefully() -> None:
    """In flight: finishes.  Idle keep-alive: closed.  WebSocket: 1001.  New: refused."""
    app = http_apps.Slow()
    before = all_tasks()
    config = tcp_config(shutdown_timeout=10)
    async with running(serving(app, config)) as run, trio.open_nursery() as clients:
        slow = await run.connect()
        await slow.send(GET % b"/slow")
        idle = await run.connect()
        await idle.send(GET % b"/fast")
        assert (await idle.read_response()).body == b"fast"
        ws = await trio_websocket.connect_websocket_url(clients, f"ws://127.0.0.1:{run.port}/ws")
        await ws.send_message("ping")
        assert await ws.get_message() == "ping"
        with trio.fail_after(5):
            await app.started.wait()

        run.cancel()

        with trio.fail_after(5):
            await idle.assert_closed()
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1001
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", run.port)
        # The in-flight response is still being waited for, and lifespan has not shut down.
        assert not run.stopped.is_set()
        assert "lifespan.shutdown" not in app.events

        app.release.set()
        with trio.fail_after(5):
            response = await slow.read_response()
            await slow.assert_closed()
        assert response.body == b"slow:done"
        waited = await run.wait_stopped()
        assert waited < 5
    assert app.events == [
        "lifespan.startup",
        "websocket closed",
        "response finished",
        "lifespan.shutdown",
    ]
    assert not app.cancelled
    assert all_tasks() == before
    assert hornbeam_trio.stats()["connections"] == 0


async def test_cancel_with_nothing_open_returns_at_once() -> None:
    async with running(serving(http_apps.hello, tcp_config(shutdown_timeout=30))) as run:
        run.cancel()
        assert await run.wait_stopped() < 1


async def test_response_within_shutdown_timeout_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = http_apps.Slow(delay=8)
    async with memory_serving(app, shutdown_timeout=10) as run:
        client = run.connect_memory()
        await client.send(GET % b"/slow")
        await app.started.wait()
        run.cancel()
        response = await client.read_response()
        waited = await run.wait_stopped(timeout=60)
    assert response.body == b"slow:done"
    assert app.events[-2:] == ["response finished", "lifespan.shutdown"]
    assert 8 <= waited < 8.5


async def test_response_slower_than_shutdown_timeout_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = http_apps.Slow(delay=60)
    async with memory_serving(app, shutdown_timeout=10) as run:
        client = run.connect_memory()
        await client.send(GET % b"/slow")
        await app.started.wait()
        run.cancel()
        with pytest.raises(http_apps.IncompleteResponse) as info:
            await client.read_response()
        cut_after = trio.current_time() - run.cancelled_at
        waited = await run.wait_stopped(timeout=60)
    assert info.value.partial == b"slow:"
    assert app.cancelled
    assert 10 <= cut_after < 10.5
    assert waited < 10.5  # lifespan shutdown shares the budget the response used up
    assert app.events == ["lifespan.startup", "response cancelled", "lifespan.shutdown"]


async def test_one_shutdown_budget_for_lingering_connection_and_hanging_lifespan(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A response that outlives the budget and a lifespan that never answers its shutdown:
    serve() returns after shutdown_timeout in all, not once for each (README: one budget)."""
    app = http_apps.Slow(delay=60, hang_shutdown=True)
    async with memory_serving(app, shutdown_timeout=10) as run:
        client = run.connect_memory()
        await client.send(GET % b"/slow")
        await app.started.wait()
        run.cancel()
        with pytest.raises(http_apps.IncompleteResponse):
            await client.read_response()
        waited = await run.wait_stopped(timeout=60)
    assert 10 <= waited < 10.5
    assert app.events == [
        "lifespan.startup",
        "response cancelled",
        "lifespan.shutdown",
        "lifespan shutdown cancelled",
    ]


async def test_lifespan_shutdown_gets_what_the_connections_left_of_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A response that ends 3 s into a 10 s budget leaves the hanging lifespan 7 s."""
    app = http_apps.Slow(delay=3, hang_shutdown=True)
    async with memory_serving(app, shutdown_timeout=10) as run:
        client = run.connect_memory()
        await client.send(GET % b"/slow")
        await app.started.wait()
        run.cancel()
        response = await client.read_response()
        waited = await run.wait_stopped(timeout=60)
    assert response.body == b"slow:done"
    assert 10 <= waited < 10.5
    assert app.events[-3:] == [
        "response finished",
        "lifespan.shutdown",
        "lifespan shutdown cancelled",
    ]


async def test_slow_response_cut_off_over_tcp() -> None:
    app = http_apps.Slow()
    async with running(serving(app, tcp_config(shutdown_timeout=0.3))) as run:
        client = await run.connect()
        await client.send(GET % b"/slow")
        with trio.fail_after(5):
            await app.started.wait()
        run.cancel()
        with trio.fail_after(5), pytest.raises(http_apps.IncompleteResponse):
            await client.read_response()
        waited = await run.wait_stopped()
    assert app.cancelled
    assert 0.3 <= waited < 3


async def test_request_arriving_on_a_keep_alive_connection_during_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection busy with its first response when shutdown begins gets no second one."""
    app = http_apps.Slow(delay=1)
    async with memory_serving(app, shutdown_timeout=10) as run:
        client = run.connect_memory()
        await client.send(GET % b"/slow" + GET % b"/fast")
        await app.started.wait()
        run.cancel()
        first = await client.read_response()
        await client.assert_closed()
        await run.wait_stopped(timeout=60)
    assert first.body == b"slow:done"


# -- Config ------------------------------------------------------------------------------


def test_defaults_follow_hornbeam() -> None:
    config = Config()
    assert config.bind == ("127.0.0.1:8000",)
    assert config.timeout == 30000
    assert config.keepalive == 2.0
    assert config.lifespan == "auto"
    assert config.root_path == ""
    assert config.websocket_timeout == 60000
    assert config.websocket_max_frame_size == 16 * 1024 * 1024
    assert config.websocket_compress is False
    assert (config.max_request_line_size, config.max_header_size, config.max_headers) == (
        4094,
        8190,
        100,
    )


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.keepalive = 5  # type: ignore[misc]


def test_single_bind_string_becomes_a_tuple() -> None:
    assert Config(bind="127.0.0.1:9000").bind == ("127.0.0.1:9000",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"bind": ()}, "bind"),
        ({"bind": ("localhost",)}, "bind"),
        ({"bind": ("127.0.0.1:http",)}, "bind"),
        ({"bind": ("127.0.0.1:70000",)}, "bind"),
        ({"bind": ("unix:",)}, "bind"),
        ({"workers": 0}, "workers"),
        ({"workers": 2}, "workers"),  # the memory backend is one process
        ({"backlog": -1}, "backlog"),
        ({"max_headers": True}, "max_headers"),
        ({"max_header_size": 0}, "max_header_size"),
        ({"max_request_line_size": "4094"}, "max_request_line_size"),
        ({"timeout": 1.5}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"websocket_timeout": None}, "websocket_timeout"),
        ({"keepalive": -1}, "keepalive"),
        ({"keepalive": "soon"}, "keepalive"),
        ({"shutdown_timeout": False}, "shutdown_timeout"),
        ({"lifespan": "maybe"}, "lifespan"),
        ({"slow_consumer": "ignore"}, "slow_consumer"),
        ({"log_level": "loud"}, "log_level"),
        ({"certfile": "cert.pem"}, "certfile"),
        ({"root_path": "api"}, "root_path"),
        ({"root_path": "/api/"}, "root_path"),
        ({"backend": "mysql://db"}, "backend"),
    ],
)
def test_bad_values_name_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_options(**options)
    assert info.value.option == option
    assert str(info.value).startswith(f"{option}: ")


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_options(keep_alive=3)
    assert info.value.option == "keep_alive"
    assert "unknown option" in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"bind": ("0.0.0.0:0", "[::]:8080", "unix:/tmp/x.sock")},
        {"timeout": 0, "keepalive": 0, "shutdown_timeout": 0},
        {"keepalive": 2.5, "shutdown_timeout": 1},
        {"root_path": "/api/v1"},
        {"backend": "redis://localhost:6379/0", "workers": 4},
        {"certfile": "cert.pem", "keyfile": "key.pem"},
    ],
)
def test_good_values_are_accepted(options: dict[str, Any]) -> None:
    config = Config.from_options(**options)
    for name, value in options.items():
        assert getattr(config, name) == (tuple(value) if name == "bind" else value)


async def test_cancelled_during_a_slow_lifespan_startup_serve_still_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SIGINT while the app's startup runs: serve() used to wait forever for a shutdown
    signal that its cancelled start() never gave (the server kept running)."""
    shut_down = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await trio.sleep(3)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        shut_down.set()
        await send({"type": "lifespan.shutdown.complete"})

    with trio.move_on_after(1):  # before the fix: a hang (pytest-timeout fails it)
        await serve(app, Config(bind=("127.0.0.1:0",), log_level="warning"))
    assert shut_down.is_set()  # it finished starting, then shut down properly
