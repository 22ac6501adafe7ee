"""Run an example as its own process, as a user would, and talk to it.

``async with example_server("examples.echo:application") as server:`` starts
``python -m hornbeam_trio examples.echo:application --bind 127.0.0.1:0`` from the
repository root, waits (bounded) for its ``Listening on http://127.0.0.1:PORT`` line
and yields a handle with the port.  On exit it sends SIGTERM and requires a clean
shutdown: exit status 0, ``Server stopped`` logged and, unless the test expects
errors, no traceback anywhere in the log.  The server's output goes to a file, not a
pipe, so a chatty server can never block on a full pipe; the whole log is printed
when a test fails, and pytest shows it.

Also here: ``http_get`` (httpx on Trio), ``eventually`` (poll a probe until a
condition holds, bounded) and ``raw_websocket``/``abort`` (a handshake over a bare
TCP stream, so a test can vanish without a close frame, as a crashed client would).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from hornbeam_trio.transport import LINGER_RESET

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0
"""Seconds for a server to start: imports (FastAPI) on a busy two-core machine."""
STOP_TIMEOUT = 15.0
"""Seconds for a graceful stop (WebSockets closed with 1001, close handshakes awaited)."""
POLL = 0.02

T = TypeVar("T")


@dataclass
class ExampleServer:
    process: trio.Process
    log_path: Path
    port: int = 0
    final_log: str | None = None
    """The whole log, kept once the server has stopped (its file is gone then)."""

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"ws://{host}:{self.port}{path}"

    def log(self) -> str:
        if self.final_log is not None:
            return self.final_log
        return self.log_path.read_text(errors="replace")


def server_command(spec: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "hornbeam_trio", spec, "--bind", "127.0.0.1:0", *flags]


@asynccontextmanager
async def example_server(
    spec: str = "",
    *flags: str,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    expect_errors: bool = False,
) -> AsyncIterator[ExampleServer]:
    """Run ``python -m hornbeam_trio SPEC --bind 127.0.0.1:0 FLAGS`` (or ``command``)."""
    argv = list(command) if command is not None else server_command(spec, *flags)
    with tempfile.TemporaryDirectory(prefix="hornbeam-example-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log_file:
            process = await trio.lowlevel.open_process(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        server = ExampleServer(process, log_path)
        try:
            server.port = await _wait_listening(server)
            yield server
        except BaseException:
            with trio.CancelScope(shield=True):
                await _stop(server)
            server.final_log = server.log()
            print(f"--- log of {' '.join(argv)} ---\n{server.final_log}")
            raise
        with trio.CancelScope(shield=True):
            code = await _stop(server)
        log = server.final_log = server.log()
        print(f"--- log of {' '.join(argv)} ---\n{log}")
        assert code == 0, f"server exited with {code} after SIGTERM"
        assert "Server stopped" in log, "no 'Server stopped' line: not a graceful shutdown"
        if not expect_errors:
            assert "Traceback" not in log and "ERROR" not in log, "the server logged an error"


@asynccontextmanager
async def killable_server(spec: str, *flags: str) -> AsyncIterator[ExampleServer]:
    """Like example_server, for a test that stops or kills the server itself and checks
    its exit code (nothing is asserted here on the way out; a live process is killed)."""
    with tempfile.TemporaryDirectory(prefix="hornbeam-killable-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log_file:
            process = await trio.lowlevel.open_process(
                server_command(spec, *flags),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = ExampleServer(process, log_path)
        try:
            server.port = await _wait_listening(server)
            yield server
        finally:
            if process.poll() is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def _wait_listening(server: ExampleServer) -> int:
    with trio.move_on_after(START_TIMEOUT):
        while True:
            match = LISTENING.search(server.log())
            if match:
                return int(match.group(1))
            if server.process.poll() is not None:
                raise AssertionError(f"server exited with {server.process.returncode} at start")
            await trio.sleep(POLL)
    raise AssertionError(f"no 'Listening on' line within {START_TIMEOUT:g}s")


async def _stop(server: ExampleServer) -> int:
    process = server.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
            raise AssertionError(f"server still running {STOP_TIMEOUT:g}s after SIGTERM")
    return process.returncode


# -- clients ---------------------------------------------------------------------------
async def http_get(server: ExampleServer, path: str, timeout: float = 5.0) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=timeout) as client:
        return await client.get(path)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    condition: Callable[[T], bool],
    *,
    timeout: float = 5.0,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``condition(value)`` holds; fail, showing the last value, if it
    does not within ``timeout`` seconds."""
    value: Any = None
    with trio.move_on_after(timeout):
        while True:
            value = await probe()
            if condition(value):
                return value  # type: ignore[no-any-return]
            await trio.sleep(POLL)
    raise AssertionError(f"{what} not reached within {timeout:g}s; last value: {value!r}")


async def raw_websocket(port: int, path: str) -> tuple[trio.SocketStream, bytes]:
    """Open a WebSocket by hand; returns the stream and whatever followed the 101 head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    received = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"connection closed during the handshake: {received!r}")
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, rest


async def abort(stream: trio.SocketStream) -> None:
    """Vanish: TCP reset, no close frame."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    await trio.aclose_forcefully(stream)


def masked_text_frame(text: str) -> bytes:
    """A client text frame (always masked), for raw_websocket streams; payload < 126 bytes."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked
