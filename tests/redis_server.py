"""A real redis-server for the tests: started on a free port, nothing saved to disk.

``redis_server()`` is a context manager yielding a :class:`RedisServer`; ``skip_or_fail``
says why there is none.  Without the ``redis-server`` binary (Debian: ``apt-get install
-y redis-server``) or the ``coredis`` package the Redis tests skip with that reason,
except when ``HORNBEAM_CI`` is set (``.ci/run`` sets it): there they fail, so CI never
passes by skipping them.  ``command(port, *args)`` sends one command over a plain
socket (hiredis parses the reply), for checks the code under test must not do itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

INSTALL_HINT = "apt-get install -y redis-server"


def missing() -> str | None:
    """Why the Redis tests cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return f"redis-server is not installed ({INSTALL_HINT})"
    try:
        import coredis  # noqa: F401
        import hiredis  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[redis]')"
    return None


def skip_or_fail() -> None:
    reason = missing()
    if reason is None:
        return
    if os.environ.get("HORNBEAM_CI"):
        pytest.fail(f"HORNBEAM_CI is set and the Redis tests cannot run: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    directory: str = ""
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str | int | bytes) -> Any:
        return command(self.port, *args)

    def kill(self) -> None:
        """SIGKILL: no goodbye to any client (as a crash or an OOM kill)."""
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        """A new, empty redis-server on the same port (after ``kill()``)."""
        self.process = _start(self.port, self.directory, self.options)


def command(port: int, *args: str | int | bytes) -> Any:
    import hiredis

    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
    )
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            reader.feed(chunk)


def _start(port: int, directory: str, options: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """redis-server on ``port``, answering PING when this returns."""
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            if command(port, "PING") == b"PONG":
                return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.01)


@contextlib.contextmanager
def redis_server(port: int | None = None, *options: str) -> Iterator[RedisServer]:
    """redis-server on ``port`` (a free one by default) until the block ends;
    ``options`` are more redis-server flags (``"--client-output-buffer-limit", ...``)."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="hornbeam-redis-") as tmp:
        server = RedisServer(port, _start(port, tmp, options), tmp, options)
        try:
            yield server
        finally:
            server.process.terminate()
            try:
                server.process.wait(5)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
