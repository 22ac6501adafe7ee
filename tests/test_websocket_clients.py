"""One echo app, three independent WebSocket clients.

The same :func:`ws_apps.echo` app is driven by the ``websockets`` asyncio client (in
a worker thread, since a Trio test cannot run asyncio itself), by trio-websocket
(through the testing toolkit) and by the ``websocat`` binary (a subprocess fed on
stdin).  Each client exchanges text and binary messages, negotiates a subprotocol,
closes with its own code, and reports the code the app closed with: any client a
Hornbeam user points at the server gets the same answers.

websocat cannot show the handshake, so every client also asks the app which
subprotocol it accepted (the ``!subprotocol`` command of the echo app), and the
close frame websocat received is read from its debug log (``-vv``).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import ws_apps
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed
from ws_apps import Recorder

from hornbeam_trio.testing import TestServer, assert_closed_with, run_server

TIMEOUT = 5.0
WEBSOCAT = Path(sys.executable).with_name("websocat")


class Client:
    """What a test asks of a client; one subclass per library."""

    name = ""

    async def echo(self, server: TestServer, messages: list[str | bytes]) -> list[str | bytes]:
        """Send each message, collect each echo, close normally."""
        raise NotImplementedError

    async def subprotocol(self, server: TestServer, offered: list[str]) -> tuple[Any, str]:
        """(the subprotocol the client negotiated or ``...`` if it cannot tell, the app's answer
        to ``!subprotocol``)."""
        raise NotImplementedError

    async def close_with(self, server: TestServer, code: int, reason: str) -> None:
        """Connect, then close from the client side with ``code`` and ``reason``."""
        raise NotImplementedError

    async def closed_by_server(self, server: TestServer, code: int, reason: str) -> tuple[int, str]:
        """Ask the app to close with ``code``/``reason``; the close frame's code and reason."""
        raise NotImplementedError


# --------------------------------------------------------------------------- websockets (asyncio)


async def in_asyncio(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run an asyncio coroutine function to completion in a worker thread."""

    async def bounded() -> Any:
        async with asyncio.timeout(TIMEOUT):
            return await main()

    return await trio.to_thread.run_sync(lambda: asyncio.run(bounded()))


class WebsocketsClient(Client):
    name = "websockets"

    async def echo(self, server: TestServer, messages: list[str | bytes]) -> list[str | bytes]:
        async def main() -> list[str | bytes]:
            async with websockets_connect(server.ws_url("/"), max_size=None) as ws:
                echoes = []
                for message in messages:
                    await ws.send(message)
                    echoes.append(await ws.recv())
                return echoes

        result: list[str | bytes] = await in_asyncio(main)
        return result

    async def subprotocol(self, server: TestServer, offered: list[str]) -> tuple[Any, str]:
        async def main() -> tuple[Any, str]:
            async with websockets_connect(
                server.ws_url("/"),
                subprotocols=offered,  # type: ignore[arg-type]  # Subprotocol is a NewType of str
            ) as ws:
                await ws.send("!subprotocol")
                answer = await ws.recv()
                assert isinstance(answer, str)
                return ws.subprotocol, answer

        result: tuple[Any, str] = await in_asyncio(main)
        return result

    async def close_with(self, server: TestServer, code: int, reason: str) -> None:
        async def main() -> None:
            async with websockets_connect(server.ws_url("/")) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                await ws.close(code, reason)

        await in_asyncio(main)

    async def closed_by_server(self, server: TestServer, code: int, reason: str) -> tuple[int, str]:
        async def main() -> tuple[int, str]:
            async with websockets_connect(server.ws_url("/")) as ws:
                await ws.send(f"!close {code} {reason}")
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None, "no close frame received"
                return closed.value.rcvd.code, closed.value.rcvd.reason

        result: tuple[int, str] = await in_asyncio(main)
        return result


# --------------------------------------------------------------------------- trio-websocket


class TrioWebsocketClient(Client):
    name = "trio-websocket"

    async def echo(self, server: TestServer, messages: list[str | bytes]) -> list[str | bytes]:
        async with server.websocket("/") as ws:
            echoes = []
            for message in messages:
                await ws.send(message)
                echoes.append(await ws.receive())
            return echoes

    async def subprotocol(self, server: TestServer, offered: list[str]) -> tuple[Any, str]:
        async with server.websocket("/", subprotocols=offered) as ws:
            await ws.send("!subprotocol")
            answer = await ws.receive()
            assert isinstance(answer, str)
            return ws.subprotocol, answer

    async def close_with(self, server: TestServer, code: int, reason: str) -> None:
        async with server.websocket("/") as ws:
            await ws.send("hi")
            assert await ws.receive() == "hi"
            await ws.close(code, reason)

    async def closed_by_server(self, server: TestServer, code: int, reason: str) -> tuple[int, str]:
        async with server.websocket("/") as ws:
            await ws.send(f"!close {code} {reason}")
            await assert_closed_with(ws, code)
            closed = ws.closed
            assert closed is not None
            return closed.code, closed.reason or ""


# --------------------------------------------------------------------------- websocat

_CLOSE_LOG = re.compile(r'CloseData \{ status_code: (\d+), reason: "(.*?)" \}')


async def websocat(server: TestServer, *args: str, stdin: bytes) -> tuple[bytes, str]:
    """Run websocat against the server; (stdout, stderr).  It must exit 0, in time."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [str(WEBSOCAT), *args, server.ws_url("/")],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"websocat exited {result.returncode}: {stderr}"
    return result.stdout, stderr


class WebsocatClient(Client):
    """``-1``: one message each way, then a normal close; text lines lose their newline."""

    name = "websocat"

    async def echo(self, server: TestServer, messages: list[str | bytes]) -> list[str | bytes]:
        echoes: list[str | bytes] = []
        for message in messages:
            if isinstance(message, str):
                assert "\n" not in message
                out, _ = await websocat(
                    server, "-1", "--linemode-strip-newlines", stdin=message.encode() + b"\n"
                )
                assert out.endswith(b"\n")
                echoes.append(out[:-1].decode())
            else:
                out, _ = await websocat(server, "-1", "--binary", stdin=message)
                echoes.append(out)
        return echoes

    async def subprotocol(self, server: TestServer, offered: list[str]) -> tuple[Any, str]:
        out, _ = await websocat(
            server,
            "-1",
            "--linemode-strip-newlines",
            "--protocol",
            ", ".join(offered),
            stdin=b"!subprotocol\n",
        )
        return ..., out.decode().rstrip("\n")

    async def close_with(self, server: TestServer, code: int, reason: str) -> None:
        await websocat(
            server,
            "--close-status-code",
            str(code),
            "--close-reason",
            reason,
            stdin=b"",
        )

    async def closed_by_server(self, server: TestServer, code: int, reason: str) -> tuple[int, str]:
        _, log = await websocat(
            server, "-vv", "--linemode-strip-newlines", stdin=f"!close {code} {reason}\n".encode()
        )
        match = _CLOSE_LOG.search(log)
        assert match is not None, f"websocat logged no close frame: {log}"
        return int(match.group(1)), match.group(2)


CLIENTS = [WebsocketsClient(), TrioWebsocketClient(), WebsocatClient()]
clients = pytest.mark.parametrize("client", CLIENTS, ids=[c.name for c in CLIENTS])


# --------------------------------------------------------------------------- the tests


@clients
async def test_text_round_trip(client: Client) -> None:
    messages: list[str | bytes] = ["hello", "ünïcödé ✓ 🐝", "x" * 5000]
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        assert await client.echo(server, messages) == messages
    received = [
        m["text"]
        for session in recorder.sessions
        for m in session.received
        if m["type"] == "websocket.receive"
    ]
    assert received == messages
    for session in recorder.sessions:
        assert session.received[0]["type"] == "websocket.connect"
        assert session.received[-1]["type"] == "websocket.disconnect"


@clients
async def test_binary_round_trip(client: Client) -> None:
    messages: list[str | bytes] = [b"\x00\x01\xfe\xff", bytes(range(256)) * 16]
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        assert await client.echo(server, messages) == messages
    received = [
        m["bytes"]
        for session in recorder.sessions
        for m in session.received
        if m["type"] == "websocket.receive"
    ]
    assert received == messages


@clients
@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["graphql-ws", "json"], "graphql-ws"), (["mqtt", "json"], "json"), (["mqtt"], None)],
)
async def test_subprotocol_negotiation(
    client: Client, offered: list[str], chosen: str | None
) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        negotiated, answer = await client.subprotocol(server, offered)
    assert answer == (chosen or "none")
    if negotiated is not ...:
        assert negotiated == chosen
    session = await recorder.session()
    assert session.scope["subprotocols"] == offered
    assert session.subprotocol == chosen


@clients
@pytest.mark.parametrize(("code", "reason"), [(1000, "normal"), (4000, "custom bye")])
async def test_client_close_code_reaches_the_app(client: Client, code: int, reason: str) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        await client.close_with(server, code, reason)
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == code
    assert disconnect.get("reason", reason) == reason


@clients
@pytest.mark.parametrize(("code", "reason"), [(1000, "done"), (4001, "gone away")])
async def test_app_close_code_reaches_the_client(client: Client, code: int, reason: str) -> None:
    recorder = Recorder()
    async with run_server(ws_apps.echo(recorder)) as server:
        assert await client.closed_by_server(server, code, reason) == (code, reason)
        disconnect = await (await recorder.session()).wait_disconnect()
    assert disconnect["code"] == code
