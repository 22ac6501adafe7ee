"""Instructions per HTTP/1.1 keep-alive request (or WebSocket echo), counted by callgrind.

A dev tool.  ``--ws`` drives WebSocket echo instead: each connection does the
handshake, then every round sends one 16-byte masked text frame on every
connection and reads every echo back.

Wall-clock req/s on a shared, noisy machine moves by 10-20 % between runs; the
instruction count of the server process does not.  This runs
``python -m hornbeam_trio benchmarks.apps:echo`` under
``valgrind --tool=callgrind`` (pinned to one core), opens ``--connections``
keep-alive connections from a plain-socket client in this process, and drives
``--requests`` GET / on each, one request in flight per connection: every round
sends one request on every connection, then reads every response.  Then the
connections close and the server gets SIGINT.

A baseline run does the same with zero requests (start, connect, close, stop), so
``(total - baseline) / requests`` is what a request costs, without start-up,
accept and shutdown::

    .venv/bin/python benchmarks/http_instructions.py            # 20 x 300, twice
    .venv/bin/python benchmarks/http_instructions.py --runs 1 --connections 10 --requests 100
    .venv/bin/python benchmarks/http_instructions.py --keep out/  # keep callgrind.out files
    .venv/bin/python benchmarks/http_instructions.py --ws --connections 100 --requests 100

``callgrind_annotate out/callgrind.run1.out`` then shows where they went.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: http-instructions\r\nAccept: */*\r\n\r\n"
)
EXPECTED_BODY = b"hello"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not accept within {timeout:g}s")


def read_response(sock: socket.socket, buf: bytearray) -> None:
    """Read one response (content-length framed) from ``sock``; leftovers stay in buf."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            match = re.search(rb"\r\ncontent-length: *(\d+)", head)
            if not head.startswith(b"http/1.1 200") or match is None:
                raise RuntimeError(f"unexpected response head {head!r}")
            total = end + 4 + int(match.group(1))
            if len(buf) >= total:
                if bytes(buf[end + 4 : total]) != EXPECTED_BODY:
                    raise RuntimeError("unexpected body")
                del buf[:total]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk


WS_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
WS_PAYLOAD = b"0123456789abcdef"
WS_FRAME = bytes((0x81, 0x80 | len(WS_PAYLOAD))) + b"\x00\x00\x00\x00" + WS_PAYLOAD  # zero mask
WS_ECHO = bytes((0x81, len(WS_PAYLOAD))) + WS_PAYLOAD


def read_exactly(sock: socket.socket, buf: bytearray, expected: bytes) -> None:
    while len(buf) < len(expected):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
    if bytes(buf[: len(expected)]) != expected:
        raise RuntimeError(f"unexpected bytes {bytes(buf[:40])!r}")
    del buf[: len(expected)]


def connect_all(port: int, connections: int, handshake: bytes | None) -> list[socket.socket]:
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if handshake is not None:
            sock.sendall(handshake)
            head = bytearray()
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {bytes(head)!r}")
        socks.append(sock)
    return socks


def drive(port: int, connections: int, requests: int, *, ws: bool = False) -> None:
    """``requests`` rounds: one message out on every connection, then every answer read."""
    socks = connect_all(port, connections, WS_HANDSHAKE if ws else None)
    message = WS_FRAME if ws else REQUEST
    buffers = [bytearray() for _ in socks]
    for _ in range(requests):
        for sock in socks:
            sock.sendall(message)
        for sock, buf in zip(socks, buffers, strict=True):
            if ws:
                read_exactly(sock, buf, WS_ECHO)
            else:
                read_response(sock, buf)
    for sock in socks:
        sock.close()


def count_instructions(out_file: Path) -> int:
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out_file}")


def run_once(out_file: Path, connections: int, requests: int, app: str, *, ws: bool = False) -> int:
    port = free_port()
    cmd = [
        "taskset",
        "-c",
        "0",
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "hornbeam_trio",
        app,
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_accepting(port, proc)
        drive(port, connections, requests, ws=ws)
        time.sleep(0.5)  # let the server notice the closed connections
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode not in (0, 130, -signal.SIGINT):
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise RuntimeError(f"server exited with code {proc.returncode}")
    return count_instructions(out_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300, help="per connection")
    parser.add_argument("--runs", type=int, default=2, help="measured runs (one baseline)")
    parser.add_argument("--app", default="benchmarks.apps:echo")
    parser.add_argument("--keep", type=Path, help="directory to keep callgrind.out files in")
    parser.add_argument("--ws", action="store_true", help="WebSocket echo round trips")
    args = parser.parse_args()
    try:  # the client on the other core, away from the server
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    out_dir = args.keep or Path(tempfile.mkdtemp(prefix="http-instructions-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = run_once(
        out_dir / "callgrind.baseline.out", args.connections, 0, args.app, ws=args.ws
    )
    print(f"baseline (0 requests): {baseline:,} instructions", flush=True)
    total_requests = args.connections * args.requests
    results = []
    for i in range(1, args.runs + 1):
        total = run_once(
            out_dir / f"callgrind.run{i}.out", args.connections, args.requests, args.app, ws=args.ws
        )
        per_request = (total - baseline) / total_requests
        results.append(per_request)
        print(
            f"run {i}: {total:,} instructions, {total_requests} requests "
            f"({args.connections} x {args.requests}): {per_request:,.0f} instructions/request",
            flush=True,
        )
    if len(results) > 1:
        spread = (max(results) - min(results)) / min(results) * 100
        mean = sum(results) / len(results)
        print(f"mean {mean:,.0f} instructions/request, spread {spread:.1f} %")
    if args.keep is None:
        for path in out_dir.iterdir():
            path.unlink()
        out_dir.rmdir()


if __name__ == "__main__":
    main()
