"""The testing toolkit's documented guarantees, each shown here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hornbeam_erlang import state_incr, subscribe
from hornbeam_trio import stats
from hornbeam_trio.pubsub import Subscription
from hornbeam_trio.runtime import default_runtime
from hornbeam_trio.testing import (
    AppFailed,
    LeakError,
    assert_closed_with,
    collect,
    receive_within,
    run_server,
)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "websocket.accept"})
    subscribe("toolkit")
    state_incr("toolkit:online", owned=True)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "boom":
            raise ZeroDivisionError("the app's own bug")
        if message.get("text") == "silence":
            continue
        await send({"type": "websocket.send", "text": message.get("text") or ""})


def nothing_left() -> None:
    s = stats()
    assert s["connections"] == 0 and s["topics"] == {} and s["owned_keys"] == []


async def test_a_client_the_test_forgot_to_close_is_torn_down_cleanly() -> None:
    async with run_server(echo) as server:
        forgotten = await server.connect_websocket("/")
        await forgotten.send("hello")
        assert await forgotten.receive() == "hello"
    nothing_left()
    assert forgotten.closed is not None


async def test_a_test_cancelled_by_a_timeout_leaves_nothing_running() -> None:
    me = trio.lowlevel.current_task()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.3):
            async with run_server(echo) as server:
                ws = await server.connect_websocket("/")
                await ws.send("hello")
                await trio.sleep_forever()
    nothing_left()
    assert all(not nursery.child_tasks for nursery in me.child_nurseries)


async def test_an_app_bug_fails_the_test_with_the_apps_traceback() -> None:
    with pytest.raises(AppFailed) as failure:
        async with run_server(echo) as server, server.websocket("/") as ws:
            await ws.send("boom")
            await assert_closed_with(ws, 1011)
    assert isinstance(failure.value.__cause__, ZeroDivisionError)
    frames = [frame.name for frame in traceback.extract_tb(failure.value.__cause__.__traceback__)]
    assert "echo" in frames  # the app's own frame is in the chained traceback
    nothing_left()


async def test_app_errors_can_be_expected_instead() -> None:
    async with run_server(echo, raise_app_errors=False) as server:
        async with server.websocket("/") as ws:
            await ws.send("boom")
            await assert_closed_with(ws, 1011, "Internal server error")
        assert [type(e) for e in server.app_errors] == [ZeroDivisionError]


async def test_a_leak_is_named() -> None:
    leaked = Subscription("forgotten-topic", maxsize=1, policy="close")
    runtime = default_runtime()
    try:
        with pytest.raises(LeakError, match="forgotten-topic"):
            async with run_server(echo):
                runtime.add_subscriber("forgotten-topic", leaked)
    finally:
        runtime.remove_subscriber("forgotten-topic", leaked)


async def test_memory_transport_and_mock_clock_make_timeouts_instant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    real_start = time.perf_counter()
    async with run_server(
        echo, transport="memory", websocket_timeout=60_000, websocket_ping_interval=0
    ) as server:
        ws = await server.connect_websocket("/")
        start = trio.current_time()
        await assert_closed_with(ws, 1001, "idle timeout", timeout=120)
        assert 60 <= trio.current_time() - start < 61
    assert time.perf_counter() - real_start < 5


async def test_receive_within_fails_with_a_clear_message() -> None:
    async with run_server(echo) as server, server.websocket("/") as ws:
        await ws.send("silence")
        with pytest.raises(AssertionError, match=r"no WebSocket message within 0.05s"):
            await receive_within(ws, 0.05)


async def test_assert_closed_with_reports_the_actual_code() -> None:
    async with run_server(echo, raise_app_errors=False) as server, server.websocket("/") as ws:
        await ws.send("boom")
        with pytest.raises(AssertionError, match="closed with 1011"):
            await assert_closed_with(ws, 1000)


async def test_collect_from_a_client_and_abort_versus_close() -> None:
    async with run_server(echo) as server:
        async with server.websocket("/") as ws:
            for text in ("a", "b", "c"):
                await ws.send(text)
            assert await collect(ws, 3) == ["a", "b", "c"]
            with pytest.raises(AssertionError, match="got 0 of 1"):
                await collect(ws, 1, timeout=0.05)
        aborted = await server.connect_websocket("/")
        await aborted.abort()
        response = await server.get("/")
        assert response.status == 200 and response.body == b"ok"
    nothing_left()


PLUGIN_TEST = textwrap.dedent(
    """
    import pytest
    from hornbeam_trio.testing import assert_closed_with

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.close", "code": 4001, "reason": message["text"]})

    {marker}
    async def test_with_the_plugin_fixture(hornbeam_server{extra}):
        async with hornbeam_server(app) as server, server.websocket("/") as ws:
            await ws.send("bye")
            await assert_closed_with(ws, 4001, "bye")
    """
)


ANYIO_TRIO = "@pytest.fixture\ndef anyio_backend():\n    return 'trio'\n\n\n@pytest.mark.anyio"


@pytest.mark.parametrize(
    ("marker", "extra", "args"),
    [
        pytest.param("@pytest.mark.trio", "", ["-p", "no:anyio"], id="pytest-trio"),
        # no mark and no trio_mode: the plugin marks a test that takes its fixture
        pytest.param("", "", ["-p", "no:anyio"], id="pytest-trio-unmarked"),
        pytest.param(ANYIO_TRIO, ", anyio_backend", ["-p", "no:trio"], id="anyio-trio-backend"),
    ],
)
def test_the_pytest_plugin_works_under(
    marker: str, extra: str, args: list[str], tmp_path: Path
) -> None:
    body = PLUGIN_TEST.replace("{marker}", marker).replace("{extra}", extra)
    (tmp_path / "test_plugin_user.py").write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def refuse(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
    await send({"type": "websocket.http.response.body", "body": b"who are you?"})


async def test_a_refused_handshake_raises_in_the_test_not_in_the_server() -> None:
    import trio_websocket

    async with run_server(refuse) as server:
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            await server.connect_websocket("/")
        assert rejected.value.status_code == 401
        assert rejected.value.body == b"who are you?"
        # the server is unharmed
        with pytest.raises(trio_websocket.ConnectionRejected):
            async with server.websocket("/"):
                pass


# --- teardown of a cancelled test: at once, whatever the number of clients ------------


async def open_two_clients_of_each_kind_and_wait(server: Any) -> None:
    first = await server.connect_websocket("/")
    second = await server.connect_websocket("/")
    async with server.websocket("/") as third, server.websocket("/") as fourth:
        for ws in (first, second, third, fourth):
            await ws.send("hello")
            assert await ws.receive() == "hello"
        await trio.sleep_forever()


async def test_a_cancelled_test_with_open_clients_tears_down_at_once_in_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Memory transport and a MockClock: any wait on a close handshake would show as
    virtual seconds (one per connect_websocket client, five per websocket() client)."""
    deadline = trio.current_time() + 1
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(1):
            async with run_server(echo, transport="memory") as server:
                await open_two_clients_of_each_kind_and_wait(server)
    assert trio.current_time() - deadline < 0.1
    nothing_left()


async def test_a_cancelled_test_with_open_clients_tears_down_at_once_over_tcp() -> None:
    """The same over real sockets: a wall-clock bound, so a generous one (a handshake
    waited out would take 12 s here)."""
    deadline = trio.current_time() + 1
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(1):
            async with run_server(echo) as server:
                await open_two_clients_of_each_kind_and_wait(server)
    assert trio.current_time() - deadline < 1.0
    nothing_left()


async def test_a_client_whose_own_block_alone_is_cancelled_still_closes_cleanly() -> None:
    """Only the client's block is cancelled, its reader is not: the close handshake runs,
    and the app hears a clean 1000, not the reset that a cancelled owner gets."""
    codes: list[int] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            pass
        codes.append(message["code"])

    async with run_server(recording) as server:
        with trio.move_on_after(0.05):
            async with server.websocket("/"):
                await trio.sleep_forever()
        await wait_for(lambda: codes == [1000])


async def wait_for(condition: Any, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.001)


# --- what leaves run_server: one plain exception, never a group -------------------------


async def lingering(scope: Any, receive: Any, send: Any) -> None:
    """Echoes, then outlives its client by 30 s, shielded: a connection that will not end."""
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})
    with trio.CancelScope(shield=True):
        await trio.sleep(30)


@pytest.mark.parametrize("exit_by", ["block-end", "cancellation"])
@pytest.mark.parametrize("leak", ["connection-still-open", "subscription-left-over"])
async def test_a_leak_leaves_run_server_as_one_plain_leak_error(
    leak: str, exit_by: str, autojump_clock: trio.testing.MockClock
) -> None:
    leaked = Subscription("forgotten-topic", maxsize=1, policy="close")
    runtime = default_runtime()
    app = lingering if leak == "connection-still-open" else echo
    expected = "still open 5s" if leak == "connection-still-open" else "forgotten-topic"
    try:
        with pytest.raises(LeakError, match=expected) as raised:
            with trio.fail_after(10):
                async with run_server(app, transport="memory") as server:
                    if leak == "subscription-left-over":
                        runtime.add_subscriber("forgotten-topic", leaked)
                    async with server.websocket("/") as ws:
                        await ws.send("hi")
                        assert await ws.receive() == "hi"
                    if exit_by == "cancellation":
                        await trio.sleep_forever()
        assert type(raised.value) is LeakError
    finally:
        runtime.remove_subscriber("forgotten-topic", leaked)
    nothing_left()


async def test_an_app_failure_in_a_cancelled_test_is_reported_not_hidden_by_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(AppFailed) as failure:
        with trio.fail_after(1):
            async with run_server(echo, transport="memory") as server:
                ws = await server.connect_websocket("/")
                await ws.send("boom")
                await trio.Event().wait()  # what the crashed app would have done, never comes
    assert isinstance(failure.value.__cause__, ZeroDivisionError)
    nothing_left()


async def test_the_blocks_own_exception_leaves_run_server_unwrapped() -> None:
    with pytest.raises(KeyError, match="the test's own"):
        async with run_server(echo) as server, server.websocket("/") as ws:
            await ws.send("hi")
            raise KeyError("the test's own")
    nothing_left()


# --- two servers at once: each judges only what is its own -------------------------------


@pytest.mark.parametrize("config", ["each-its-own", "one-config-object-for-both"])
async def test_two_servers_at_once_each_checks_only_its_own_connections(
    config: str, autojump_clock: trio.testing.MockClock
) -> None:
    from hornbeam_trio import Config

    shared = Config(bind=("127.0.0.1:0",), log_level="warning")
    options: dict[str, Any] = {"config": shared} if config != "each-its-own" else {}
    async with run_server(echo, transport="memory", **options) as first:
        live = await first.connect_websocket("/")
        await live.send("still here")
        assert await live.receive() == "still here"
        left_at = None
        async with run_server(echo, transport="memory", **options) as second:
            async with second.websocket("/") as ws:
                await ws.send("hi")
                assert await ws.receive() == "hi"
            left_at = trio.current_time()
        # no LeakError for first's connection, subscription and owned key, and no wait on them
        assert trio.current_time() - left_at < 0.5
        await live.send("and still served")
        assert await live.receive() == "and still served"
        assert stats()["owned_keys"] == ["toolkit:online"]
    nothing_left()


async def test_a_leak_of_one_server_is_named_without_the_other_servers_live_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    leaked = Subscription("second-forgot-this", maxsize=1, policy="close")
    runtime = default_runtime()
    try:
        async with run_server(echo, transport="memory") as first:
            live = await first.connect_websocket("/")
            await live.send("hi")
            assert await live.receive() == "hi"
            with pytest.raises(LeakError) as raised:
                async with run_server(echo, transport="memory"):
                    runtime.add_subscriber("second-forgot-this", leaked)
            # no connection owns it, and it appeared during first's block too: take it back
            # before first judges
            runtime.remove_subscriber("second-forgot-this", leaked)
            message = str(raised.value)
            assert "second-forgot-this" in message
            assert "toolkit" not in message and "connection" not in message
    finally:
        runtime.remove_subscriber("second-forgot-this", leaked)
    nothing_left()
