"""Starlette WebSocket endpoints whose client leaves, over real sockets.

Starlette turns a departed client into its own ``WebSocketDisconnect``: raised by
``receive_text()`` once the server reports ``websocket.disconnect``, and by
``send_text()`` when the server's ``send()`` raises ``OSError``.  An endpoint that runs
a background sender in an AnyIO task group then ends with an ``ExceptionGroup`` of
them.  That is how such an app ends when its client leaves: the server must neither
log it as an app error nor report it (``run_server`` would raise ``AppFailed``).  A
real error raised alongside those disconnects is still an app error.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
import trio

from hornbeam_trio.testing import run_server

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

TICK_INTERVAL = 0.005


def ticker_app(*, wait_in: str, cleanup_bug: bool = False) -> Any:
    """A Starlette endpoint that pushes ``tick`` from an AnyIO task group.

    ``wait_in="receive"``: the endpoint's own task loops in ``receive_text()``, so it
    meets the disconnect first and the pusher is cancelled.  ``wait_in="sleep"``: the
    endpoint's task sleeps, so the pusher's ``send_text()`` meets the disconnect.
    ``cleanup_bug``: the pusher raises RuntimeError when it is stopped, a genuine bug
    that ends up in the same group as the WebSocketDisconnect.
    """
    import anyio
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def pusher(websocket: WebSocket) -> None:
        try:
            while True:
                await websocket.send_text("tick")
                await anyio.sleep(TICK_INTERVAL)
        except BaseException:
            if cleanup_bug:
                raise RuntimeError("the pusher's cleanup failed") from None
            raise

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async with anyio.create_task_group() as group:
            group.start_soon(pusher, websocket)
            if wait_in == "receive":
                while True:
                    await websocket.receive_text()
            else:
                await anyio.sleep_forever()

    return Starlette(routes=[WebSocketRoute("/ticks", endpoint)])


def app_errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "WebSocket app raised" in r.getMessage()]


@pytest.mark.parametrize("wait_in", ["receive", "sleep"])
@pytest.mark.parametrize("leaves_by", ["close", "reset"])
async def test_starlette_task_group_meeting_the_disconnect_is_a_normal_end(
    wait_in: str, leaves_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ExceptionGroup[WebSocketDisconnect] from an endpoint whose client left: no error
    logged, none reported (run_server raises AppFailed for any reported app error)."""
    with caplog.at_level(logging.ERROR, logger="hornbeam_trio"), trio.fail_after(10):
        async with run_server(ticker_app(wait_in=wait_in)) as server:
            ws = await server.connect_websocket("/ticks")
            assert await ws.receive() == "tick"
            if leaves_by == "close":
                await ws.close()
            else:
                await ws.abort()
    assert app_errors_logged(caplog) == []


async def test_starlette_endpoint_raising_websocket_disconnect_alone_is_a_normal_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The plain Starlette loop ``while True: await ws.receive_text()`` ends with a bare
    WebSocketDisconnect when its client closes."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            await websocket.send_text(await websocket.receive_text())

    app = Starlette(routes=[WebSocketRoute("/echo", endpoint)])
    with caplog.at_level(logging.ERROR, logger="hornbeam_trio"), trio.fail_after(10):
        async with run_server(app) as server:
            ws = await server.connect_websocket("/echo")
            await ws.send("hi")
            assert await ws.receive() == "hi"
            await ws.close()
    assert app_errors_logged(caplog) == []


async def test_a_real_error_in_a_group_of_disconnects_is_still_logged_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="hornbeam_trio"), trio.fail_after(10):
        async with run_server(
            ticker_app(wait_in="receive", cleanup_bug=True), raise_app_errors=False
        ) as server:
            ws = await server.connect_websocket("/ticks")
            assert await ws.receive() == "tick"
            await ws.close()
    (error,) = server.app_errors
    assert isinstance(error, BaseExceptionGroup)
    bugs = error.subgroup(RuntimeError)
    assert bugs is not None and "cleanup failed" in str(bugs.exceptions[0])
    assert len(app_errors_logged(caplog)) == 1


async def test_websocket_disconnect_while_the_client_is_still_there_is_an_app_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The name alone does not make a normal end: an app that raises WebSocketDisconnect
    itself, its client still connected, is told apart from a client that left (close
    1011, reported)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise WebSocketDisconnect(1000)

    app = Starlette(routes=[WebSocketRoute("/", endpoint)])
    with caplog.at_level(logging.ERROR, logger="hornbeam_trio"), trio.fail_after(10):
        async with run_server(app, raise_app_errors=False) as server:
            async with server.websocket("/") as ws:
                await ws.send("go")
                with pytest.raises(Exception, match="1011"):
                    await ws.receive()
    assert [type(e).__name__ for e in server.app_errors] == ["WebSocketDisconnect"]
    assert len(app_errors_logged(caplog)) == 1
