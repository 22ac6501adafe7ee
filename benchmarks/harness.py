"""Unpinned helpers for the attack and fan-out benchmarks: a server subprocess, raw clients.

``run.py`` pins the server and the load generator to their cores for throughput
figures; these benchmarks measure bounds (RSS, CPU seconds, pauses, tail latency),
share the machine, and pin nothing.
"""

from __future__ import annotations

import base64
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import UVICORN_FLAGS, cpu_seconds, free_port, rss_kib

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

__all__ = ["HOST", "ROOT", "Server", "cpu_seconds", "free_port", "raise_fd_limit", "rss_kib"]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Server:
    """A server process on a free port: ``hornbeam`` or ``uvicorn`` with the given app."""

    def __init__(self, kind: str, app: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "hornbeam":
            argv = [sys.executable, "-m", "hornbeam_trio", app, "--bind", f"{HOST}:{self.port}"]
            argv += ["--log-level", "warning", *extra]
        else:
            argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(self.port)]
            argv += [*UVICORN_FLAGS, *extra]
        # A file, not a pipe: a chatty server must never block on a full pipe.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.peak_rss = 0
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {self.log_text()[-500:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def rss_mib(self) -> float:
        rss = rss_kib(self.proc.pid) / 1024
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def cpu(self) -> float:
        return float(cpu_seconds(self.proc.pid))

    def stop(self) -> None:
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def open_websockets(port: int, path: str, count: int, *, rcvbuf: int = 0) -> list[socket.socket]:
    """``count`` WebSockets past their 101, in groups the listen backlog takes at once."""
    socks: list[socket.socket] = []
    request = handshake(path)
    while len(socks) < count:
        group = []
        for _ in range(min(500, count - len(socks))):
            sock = socket.socket()
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.connect((HOST, port))
            sock.sendall(request)
            group.append(sock)
        for sock in group:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("closed during the handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head[:80].decode(errors="replace"))
        socks.extend(group)
    return socks


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A client frame (masked with a zero key: the payload goes as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload
