"""Shutdown under load, with the real process: ``python -m hornbeam_trio`` holding 1,000
WebSockets and slow HTTP responses in flight gets SIGTERM.

Every WebSocket gets close 1001, every in-flight response completes within the grace
period, and the process exits 0 without a traceback.  A second signal during that
shutdown ends the process at once (exit 1).
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import trio
from raw_ws import RawWebSocket, masked

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Listening on http://127\.0\.0\.1:(\d+)")
WEBSOCKETS = 1000
SLOW_REQUESTS = 20


class Server:
    """The server process; its stderr is read all along (a full pipe would stall it)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = b""
        self.changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(65536):
            self.stderr += chunk
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, pattern: re.Pattern[bytes], timeout: float = 20) -> re.Match[bytes]:
        with trio.fail_after(timeout):
            while (match := pattern.search(self.stderr)) is None:
                if self.process.returncode is not None:
                    raise AssertionError(f"server exited: {self.stderr.decode()}")
                await self.changed.wait()
        return match


async def start_server(nursery: trio.Nursery, *flags: str) -> tuple[Server, int]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "hornbeam_trio", "tests.apps.hardening:app",
         "--bind", "127.0.0.1:0", *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    server = Server(process)
    nursery.start_soon(server.pump)
    port = int((await server.wait_for(LISTENING)).group(1))
    return server, port


async def slow_request(port: int, seconds: float, started: list[int]) -> bytes:
    """A GET /slow whose response is known to be in flight once ``started`` grows."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /slow?%g HTTP/1.1\r\nHost: t\r\n\r\n" % seconds)
        data = b""
        while b"start\n" not in data:
            data += await stream.receive_some(65536)
        started.append(1)
        while not data.endswith(b"0\r\n\r\n"):  # the chunked body's end
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # a server that exits at once may reset
                break
            if not chunk:
                break
            data += chunk
    return data


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


async def test_sigterm_under_load_closes_1001_finishes_responses_and_exits_0() -> None:
    raise_fd_limit(WEBSOCKETS + 500)
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery, "--shutdown-timeout", "10")
        clients: list[RawWebSocket] = []

        async def connect(i: int) -> None:
            ws = await RawWebSocket.connect("127.0.0.1", port, f"/ws/{i % 10}")
            clients.append(ws)
            assert await ws.receive_text() == "ready"

        with trio.fail_after(60):
            for start in range(0, WEBSOCKETS, 100):
                async with trio.open_nursery() as batch:
                    for i in range(start, start + 100):
                        batch.start_soon(connect, i)
        assert len(clients) == WEBSOCKETS

        started: list[int] = []
        responses: list[bytes] = []

        async def in_flight() -> None:
            responses.append(await slow_request(port, 1.5, started))

        async with trio.open_nursery() as requests:
            for _ in range(SLOW_REQUESTS):
                requests.start_soon(in_flight)
            with trio.fail_after(20):
                while len(started) < SLOW_REQUESTS:
                    await trio.sleep(0.01)
            sigterm_at = trio.current_time()
            server.process.send_signal(signal.SIGTERM)

            codes: list[int] = []

            async def closed(ws: RawWebSocket) -> None:
                codes.append(await ws.receive_close())
                await ws.stream.send_all(masked(0x8, b"\x03\xe9"))  # answer the close
                await ws.aclose()

            with trio.fail_after(20):
                async with trio.open_nursery() as closing:
                    for ws in clients:
                        closing.start_soon(closed, ws)
        with trio.fail_after(20):
            code = await server.process.wait()
        elapsed = trio.current_time() - sigterm_at
        nursery.cancel_scope.cancel()

    stderr = server.stderr.decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert codes == [1001] * WEBSOCKETS
    assert len(responses) == SLOW_REQUESTS
    assert all(
        r.startswith(b"HTTP/1.1 200 ") and b"start\n" in r and b"end\n" in r for r in responses
    )
    assert elapsed < 10  # the responses needed 1.5 s of the 10 s grace period
    assert "Received SIGTERM: shutting down gracefully" in stderr


async def test_a_second_signal_during_shutdown_exits_at_once() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery, "--shutdown-timeout", "60")
        started: list[int] = []
        nursery.start_soon(slow_request, port, 60, started)  # would hold shutdown for 60 s
        with trio.fail_after(20):
            while not started:
                await trio.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        await server.wait_for(re.compile(rb"shutting down gracefully"))
        second_at = trio.current_time()
        server.process.send_signal(signal.SIGINT)
        with trio.fail_after(5):
            code = await server.process.wait()
        assert trio.current_time() - second_at < 2
        await server.wait_for(re.compile(rb"Received SIGINT again during shutdown: exiting now"))
        nursery.cancel_scope.cancel()
    assert code == 1
