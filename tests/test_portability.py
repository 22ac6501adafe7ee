"""What other platforms take, checked on Linux.

macOS, the BSDs and Windows have no epoll, so they serve plain TCP without the
readiness hub, as TLS does everywhere.  ``HORNBEAM_TRIO_READINESS=off`` takes that
path here (``.ci/run`` runs the WebSocket and HTTP suites again with it).  Windows'
Python also lacks ``socket.AF_UNIX``: a process with it removed must still serve TCP
and refuse a ``unix:`` bind in one line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hornbeam_trio.readiness import READINESS_ENV, ReadinessHub
from hornbeam_trio.testing import run_server
from hornbeam_trio.types import Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})
        return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message.get("text")})


async def test_readiness_off_serves_plain_tcp_without_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(READINESS_ENV, "off")
    assert not ReadinessHub.available()
    async with run_server(echo, lifespan="off") as server:
        assert server.server.readiness is None
        assert (await server.get("/")).body == b"plain"
        async with server.websocket("/") as ws:
            await ws.send("hello")
            assert await ws.receive() == "hello"


@pytest.mark.skipif(not hasattr(__import__("select"), "epoll"), reason="needs Linux epoll")
async def test_the_hub_serves_plain_tcp_when_not_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other half: without the switch, the same run has a hub (so the hub-off
    pass of .ci/run really is another path)."""
    monkeypatch.delenv(READINESS_ENV, raising=False)
    async with run_server(echo, lifespan="off") as server:
        assert server.server.readiness is not None
        assert (await server.get("/")).body == b"plain"


WITHOUT_AF_UNIX = textwrap.dedent(
    """
    import socket

    import h11, httptools, trio, trio_websocket  # noqa: F401  # they copy socket's names

    # As on Windows, for every module of ours imported from here on.  Trio's wakeup
    # socketpair (emulated over TCP on Windows) keeps the family it needs.
    real_socketpair, real_af_unix = socket.socketpair, socket.AF_UNIX
    socket.socketpair = lambda family=real_af_unix, *args: real_socketpair(family, *args)
    del socket.AF_UNIX
    from hornbeam_trio import Config, ConfigError
    from hornbeam_trio.testing import run_server

    try:
        Config(bind=("unix:/tmp/hornbeam-portability.sock",))
    except ConfigError as exc:
        print("refused:", exc)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    async def main():
        async with run_server(app, lifespan="off") as server:
            print("answer:", (await server.get("/")).body.decode())

    trio.run(main)
    """
)


def test_without_af_unix_tcp_is_served_and_a_unix_bind_is_refused_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_AF_UNIX],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"refused: bind: unix sockets are not available on {sys.platform}"
    assert lines[1] == "answer: served"
