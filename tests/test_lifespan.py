"""The ASGI lifespan protocol as the server runs it: modes auto/on/off, startup failures,
``state`` handed to request scopes, and shutdown ordered after the last connection."""

from __future__ import annotations

import logging

import http_apps
import pytest
import trio
import trio.testing
from http_apps import RawHTTP

from hornbeam_trio import Config, StartupFailed, serve
from hornbeam_trio.config import BindAddress
from hornbeam_trio.testing import assert_closed_with, run_server


def config(**options: object) -> Config:
    return Config.from_options(**{"bind": ("127.0.0.1:0",), "log_level": "warning", **options})


async def test_auto_runs_startup_before_serving_and_shutdown_after() -> None:
    app = http_apps.LifespanRecorder()
    async with run_server(app) as server:
        # run_server returns once the server listens, which is after startup completed.
        assert app.events == ["startup"]
        first = await server.get("/a")
        await server.get("/b")
        assert app.events == ["startup", "http /a", "http /b"]
    assert app.events == ["startup", "http /a", "http /b", "shutdown"]
    assert app.lifespan_scope is not None
    assert app.lifespan_scope["type"] == "lifespan"
    assert app.lifespan_scope["asgi"]["version"] == "3.0"
    # The state the lifespan filled reaches every request ...
    assert first.json()["db"] == "connected"
    # ... as a copy: what request /a wrote into its scope's state, /b does not see.
    assert first.json()["scribble"] == "/a"
    assert app.request_states == [{"db": "connected"}, {"db": "connected"}]
    assert app.lifespan_scope["state"] == {"db": "connected"}


async def test_state_reaches_websocket_scopes_too() -> None:
    app = http_apps.LifespanRecorder()
    async with run_server(app) as server, server.websocket("/ws") as ws:
        state = await ws.receive_json()
        await assert_closed_with(ws, 1000)
    assert state == {"db": "connected"}
    assert app.events == ["startup", "websocket /ws", "shutdown"]


@pytest.mark.parametrize("startup", ["raise", "raise-after-receive", "return"])
async def test_auto_goes_on_without_lifespan(startup: str) -> None:
    app = http_apps.ScriptedLifespan(startup=startup)
    async with run_server(app, lifespan="auto") as server:
        response = await server.get("/")
    assert response.status == 200
    assert response.text == "hello"
    # Called once for lifespan, never again (no shutdown for an app without lifespan).
    assert app.events.count("lifespan called") == 1
    assert "shutdown" not in app.events
    assert app.events[-1] == "http"  # and no lifespan state in its scope


async def test_auto_with_lifespan_puts_state_in_scope() -> None:
    app = http_apps.ScriptedLifespan()
    async with run_server(app, lifespan="auto") as server:
        await server.get("/")
    assert app.events == ["lifespan called", "startup", "http with state", "shutdown"]


@pytest.mark.parametrize(
    ("startup", "reason"),
    [
        ("raise", "RuntimeError"),
        ("raise-after-receive", "RuntimeError"),
        ("return", "without answering startup"),
    ],
)
async def test_on_refuses_an_app_without_lifespan(startup: str, reason: str) -> None:
    app = http_apps.ScriptedLifespan(startup=startup)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupFailed, match=reason):
                await nursery.start(serve, app, config(lifespan="on"))
    assert "http" not in app.events


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_startup_failed_message_is_raised(mode: str) -> None:
    app = http_apps.ScriptedLifespan(startup="failed", message="database unreachable")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupFailed, match="database unreachable"):
                await nursery.start(serve, app, config(lifespan=mode))
    assert app.events == ["lifespan called", "startup"]


async def test_startup_failed_closes_the_listener() -> None:
    app = http_apps.ScriptedLifespan(startup="failed")
    # Find a free port, then ask for it explicitly so we can check it is released.
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cfg = Config(bind=(f"127.0.0.1:{port}",), log_level="warning")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupFailed):
                await nursery.start(serve, app, cfg)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_off_never_calls_the_app_with_lifespan() -> None:
    app = http_apps.NeverLifespan()
    async with run_server(app, lifespan="off") as server:
        response = await server.get("/")
    assert response.status == 200
    assert app.scope_types == ["http"]


async def test_shutdown_runs_after_the_last_connection_ends() -> None:
    app = http_apps.Slow()
    async with trio.open_nursery() as nursery:
        serve_scope = trio.CancelScope()

        async def run_serve(task_status: trio.TaskStatus[list[BindAddress]]) -> None:
            with serve_scope:
                await serve(app, config(), task_status=task_status)

        (address,) = await nursery.start(run_serve)
        client = RawHTTP(await trio.open_tcp_stream("127.0.0.1", address.port))
        await client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            await app.started.wait()
        serve_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # The server is shutting down but a response is in flight: no lifespan shutdown yet.
        assert app.events == ["lifespan.startup"]
        app.release.set()
        with trio.fail_after(5):
            response = await client.read_response()
            await client.assert_closed()
    assert response.body == b"slow:done"
    assert app.events == ["lifespan.startup", "response finished", "lifespan.shutdown"]


async def test_shutdown_that_hangs_is_abandoned_after_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = http_apps.ScriptedLifespan(shutdown="hang")
    async with run_server(app, transport="memory", shutdown_timeout=7) as server:
        assert (await server.get("/")).status == 200
        stopping = trio.current_time()
    waited = trio.current_time() - stopping
    assert app.events[-2:] == ["shutdown", "cancelled"]
    assert 7 <= waited < 8


@pytest.mark.parametrize("shutdown", ["failed", "raise"])
async def test_failed_shutdown_is_logged_and_serve_returns(
    shutdown: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = http_apps.ScriptedLifespan(shutdown=shutdown)
    with caplog.at_level(logging.ERROR, logger="hornbeam_trio"), trio.fail_after(5):
        async with run_server(app, transport="memory") as server:
            assert (await server.get("/")).status == 200
    assert app.events[-1] == "shutdown"
    assert any(r.levelno >= logging.ERROR for r in caplog.records), caplog.text
