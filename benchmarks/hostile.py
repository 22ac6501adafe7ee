"""Issue 16's attacks against hornbeam_trio and uvicorn, side by side.

Each attack runs for ``--seconds`` (default 3) from ``--connections`` attacking
connections (default 20) against a fresh server process (hornbeam_trio, then
uvicorn with ``--loop uvloop --http httptools --ws websockets-sansio``), while one
other client (``hostile_probe.py``, a process of its own) sends ``GET /`` on a
keep-alive connection every 5 ms.  Printed per attack and server: peak RSS, CPU
seconds the server spent, its CPU per KiB the attackers sent (µs; ``echo_baseline``,
1 KiB messages echoed, is the yardstick), and that other client's p99 (and how many of its
requests failed).  A server over ``--rss-cap`` MiB is killed and shown as ``>cap``.  With two
cores or more the server runs on core 0, the attackers and the probe on core 1; the
figures still move with the load of the machine: read them side by side::

    python benchmarks/hostile.py                                   # every attack
    python benchmarks/hostile.py --only ping_flood,slow_consumer --seconds 2
    python benchmarks/hostile.py --no-pin      # a shared machine: pin nothing

Finding 12 of the issue (log quoting, accept header checks, ...) is about what is
answered, not what it costs, and has no attack here.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import HOST, Server, handshake, masked, raise_fd_limit

# --------------------------------------------------------------------------- the app


async def app(scope: Any, receive: Any, send: Any) -> None:
    """One app for both servers: hello, long-poll, body sink, WebSocket echo/away/pub-sub."""
    kind, path = scope["type"], scope.get("path", "")
    if kind == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if kind == "http":
        if path == "/lp":  # long-poll: answer when the client leaves
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if path == "/body":
            while (await receive()).get("more_body"):
                pass
        headers = [(b"content-length", b"5")]  # the probe reads to the end of "hello"
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if path == "/away":  # never reads: what the server queues for it is the question
        await trio_or_asyncio_sleep(3600)
        return
    if path == "/sub":
        try:
            from hornbeam_erlang import subscribe

            subscribe("hostile")  # hornbeam_trio pushes; the app only waits
        except Exception:
            _subscribers.add(send)  # uvicorn: the publisher's loop sends to each in turn
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            _subscribers.discard(send)
        return
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if path == "/pub":
            await _publish(message.get("text") or "")
        else:
            await send(
                {
                    "type": "websocket.send",
                    **{k: message[k] for k in ("text", "bytes") if message.get(k) is not None},
                }
            )


_subscribers: set[Any] = set()


async def _publish(text: str) -> None:
    if not _subscribers:  # hornbeam_trio: its pub/sub (publish() works anywhere: check first)
        from hornbeam_erlang import publish

        publish("hostile", text)
        return
    for send in tuple(_subscribers):
        try:
            await send({"type": "websocket.send", "text": text})
        except Exception:
            _subscribers.discard(send)


async def trio_or_asyncio_sleep(seconds: float) -> None:
    try:
        await trio.sleep(seconds)
    except RuntimeError:  # not in Trio: uvicorn
        import asyncio

        await asyncio.sleep(seconds)


# --------------------------------------------------------------------------- attacks

Attack = Callable[[int, float], Awaitable[None]]


SENT = [0]
"""Bytes the attackers' send_all() calls returned from: what the server was sent (less
what still sat in kernel buffers when the attack ended, a few MiB at most)."""


class CountingStream:
    """A ``trio.SocketStream`` (final: not subclassable) that counts what it sent."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)
        SENT[0] += len(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(port: int, *, rcvbuf: int = 4096) -> CountingStream:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((HOST, port))
    return CountingStream(trio.SocketStream(sock))


async def websocket(port: int, path: str, extra: str = "") -> CountingStream:
    stream = await connect(port)
    request = handshake(path)
    if extra:
        request = request[:-2] + extra.encode() + b"\r\n"
    await stream.send_all(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(1)
        if not chunk:
            raise OSError("closed during the handshake")
        head += chunk
    return stream


async def keep_sending(
    port: int,
    seconds: float,
    opener: Callable[[], Awaitable[CountingStream]],
    chunks: Callable[[], bytes],
) -> None:
    """Open, send ``chunks()`` until the time is up; reconnect when the server closes."""
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        try:
            stream = await opener()
            with trio.move_on_at(end):
                while True:
                    await stream.send_all(chunks())
                    await trio.sleep(0)
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.sleep(0.05)


async def declined_upgrade(port: int, seconds: float) -> None:
    async def opener() -> CountingStream:
        stream = await connect(port)
        await stream.send_all(
            b"GET /lp HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        return stream

    await keep_sending(port, seconds, opener, lambda: b"A" * 65536)


async def ping_flood(port: int, seconds: float) -> None:
    ping = masked(b"p" * 125, opcode=0x9) * 64
    await keep_sending(port, seconds, lambda: websocket(port, "/echo"), lambda: ping)


BOMB = zlib.compressobj(wbits=-15)
BOMB_PAYLOAD = (BOMB.compress(b"\0" * (16 * 1024 * 1024 - 64)) + BOMB.flush(zlib.Z_SYNC_FLUSH))[:-4]
BOMB_FRAME = bytes([0xC2]) + masked(BOMB_PAYLOAD, opcode=0x2)[1:]  # FIN + RSV1, binary


async def deflate_bomb(port: int, seconds: float) -> None:
    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    await keep_sending(
        port, seconds, lambda: websocket(port, "/away", extension), lambda: BOMB_FRAME
    )


async def one_byte_continuations(port: int, seconds: float) -> None:
    first = [True]

    async def opener() -> CountingStream:
        first[0] = True
        return await websocket(port, "/echo")

    def chunks() -> bytes:
        if first[0]:
            first[0] = False
            return masked(b"a", opcode=0x1, fin=False)
        return masked(b"a", opcode=0x0, fin=False) * 4096

    await keep_sending(port, seconds, opener, chunks)


async def partial_frame(port: int, seconds: float) -> None:
    """A text frame announced at 16 MiB - 1, all of it but the last byte sent, then held."""
    length = 16 * 1024 * 1024 - 1
    head = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big") + b"\0\0\0\0"
    with trio.move_on_after(seconds):
        try:
            stream = await websocket(port, "/echo")
            await stream.send_all(head)
            sent = 0
            while sent < length - 1:
                piece = min(1 << 20, length - 1 - sent)
                await stream.send_all(b"a" * piece)
                sent += piece
            while True:  # then one byte now and then: a trickle
                await trio.sleep(seconds)
        except (OSError, trio.BrokenResourceError):
            pass


async def longpoll_pipelining(port: int, seconds: float) -> None:
    pipelined = b"GET /lp HTTP/1.1\r\nHost: a\r\n\r\n" * 71

    async def once() -> None:
        stream = await connect(port)
        await stream.send_all(pipelined)
        await trio.sleep(0.05)
        await stream.aclose()

    end = trio.current_time() + seconds
    while trio.current_time() < end:
        try:
            await once()
        except OSError:
            await trio.sleep(0.05)


async def one_byte_chunks(port: int, seconds: float) -> None:
    async def opener() -> CountingStream:
        stream = await connect(port)
        await stream.send_all(
            b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        return stream

    await keep_sending(port, seconds, opener, lambda: b"1\r\na\r\n" * 8192)


async def huge_heads(port: int, seconds: float) -> None:
    """100 headers of 8,190 bytes, the head never finished; held, then again."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"v" * 8180) for i in range(100)
    )
    end = trio.current_time() + seconds
    held = []
    while trio.current_time() < end:
        try:
            stream = await connect(port)
            await stream.send_all(head)
            held.append(stream)
        except (OSError, trio.BrokenResourceError):
            await trio.sleep(0.05)
        if len(held) > 10:
            await held.pop(0).aclose()
    for stream in held:
        await stream.aclose()


async def slow_consumer(port: int, seconds: float) -> None:
    """A subscriber that never reads, and (per attacker) a publisher of 1 KiB bursts."""
    held: list[CountingStream] = []
    with trio.move_on_after(seconds):
        try:
            held.append(await websocket(port, "/sub"))
            pub = await websocket(port, "/pub")
            burst = masked(b"m" * 1024) * 50
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, pub)
                while True:
                    await pub.send_all(burst)
                    await trio.sleep(0.005)
        except (OSError, trio.BrokenResourceError):
            await trio.sleep(seconds)
    for stream in held:
        await stream.aclose()


async def _drain(stream: CountingStream) -> None:
    while await stream.receive_some(1 << 16):
        pass


async def echo_load(port: int, seconds: float, burst: bytes) -> None:
    """Not an attack: ``burst`` sent again and again to the echo app, every echo read."""
    with trio.move_on_after(seconds):
        try:
            stream = await websocket(port, "/echo")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, stream)
                while True:
                    await stream.send_all(burst)
        except (OSError, trio.BrokenResourceError):
            pass


async def echo_baseline(port: int, seconds: float) -> None:
    """1 KiB text messages echoed and read back: the yardstick for the CPU per KiB
    received that each attack costs (issue 16: no more than a plain echo)."""
    await echo_load(port, seconds, masked(b"e" * 1024) * 16)


async def echo_tiny_frames(port: int, seconds: float) -> None:
    """The bytes of ``one_byte_continuations``, but each 64 fragments end their message,
    which the app echoes and the client reads: the plain echo of the same bytes, what
    issue 16 measures a flood of tiny frames against."""
    message = masked(b"a", opcode=0x1, fin=False)
    message += masked(b"a", opcode=0x0, fin=False) * 62 + masked(b"a", opcode=0x0)
    await echo_load(port, seconds, message * 64)


ATTACKS: dict[str, Attack] = {
    "echo_baseline": echo_baseline,
    "echo_tiny_frames": echo_tiny_frames,
    "declined_upgrade": declined_upgrade,
    "ping_flood": ping_flood,
    "deflate_bomb": deflate_bomb,
    "one_byte_continuations": one_byte_continuations,
    "partial_frame": partial_frame,
    "longpoll_pipelining": longpoll_pipelining,
    "one_byte_chunks": one_byte_chunks,
    "huge_heads": huge_heads,
    "slow_consumer": slow_consumer,
}

# --------------------------------------------------------------------------- the run


async def measure(server: Server, attack: Attack, args: argparse.Namespace) -> dict[str, Any]:
    peak = server.rss_mib()
    capped = False
    cpu = server.cpu()
    SENT[0] = 0
    # The other client is a process of its own on the attackers' core (see hostile_probe.py).
    probe = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("hostile_probe.py")),
            str(server.port),
            str(args.seconds + 0.5),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    async with trio.open_nursery() as nursery:

        async def attackers() -> None:
            async with trio.open_nursery() as inner:
                for _ in range(args.connections):
                    inner.start_soon(bounded, attack, server.port, args.seconds)
            await trio.sleep(0.5)  # what the server still does after the attack
            nursery.cancel_scope.cancel()

        nursery.start_soon(attackers)
        while True:
            peak = max(peak, server.rss_mib())
            if peak > args.rss_cap:
                capped = True
                server.stop()
                nursery.cancel_scope.cancel()
            await trio.sleep(0.1)
    alive = server.proc.poll() is None
    used = server.cpu() - cpu if alive else float("nan")
    received = SENT[0]
    out, _ = await trio.to_thread.run_sync(probe.communicate)
    p99_text, failed, _count = out.split()
    return {
        "rss": peak,
        "capped": capped,
        "cpu": used,
        "us_per_kib": used * 1e6 / (received / 1024) if received > 0 else float("nan"),
        "p99": float(p99_text),
        "failed": int(failed),
    }


async def bounded(attack: Attack, port: int, seconds: float) -> None:
    """An attack whose send blocks (the server stopped reading) still ends on time."""
    with trio.move_on_after(seconds + 1):
        await attack(port, seconds)


def start(kind: str) -> Server:
    if kind == "hornbeam":
        return Server(
            kind, "benchmarks.hostile:app", "--websocket-compress", "--websocket-timeout", "3000"
        )
    return Server(kind, "benchmarks.hostile:app", "--ws-ping-timeout", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated attacks: " + ", ".join(ATTACKS))
    parser.add_argument("--seconds", type=float, default=3.0, help="per attack")
    parser.add_argument("--connections", type=int, default=20, help="attacking connections")
    parser.add_argument("--rss-cap", type=float, default=1500.0, help="MiB; above: killed")
    parser.add_argument("--servers", default="hornbeam,uvicorn")
    parser.add_argument(
        "--no-pin", action="store_true", help="pin nothing (a machine shared with others)"
    )
    args = parser.parse_args()
    raise_fd_limit()
    # Server on core 0; attackers and the probe (a child: it inherits this) on core 1.
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {1})
    names = args.only.split(",") if args.only else list(ATTACKS)
    servers = args.servers.split(",")
    unknown = set(servers) - {"hornbeam", "uvicorn"}
    if unknown:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))} (hornbeam, uvicorn)")
    names_unknown = set(args.only.split(",") if args.only else []) - set(ATTACKS)
    if names_unknown:
        parser.error(f"--only: unknown {', '.join(sorted(names_unknown))}")
    header = f"{'attack':<24}" + "".join(
        f"| {s + ' RSS MiB':>18} {'CPU s':>6} {'us/KiB':>7} {'p99 ms':>8} {'fail':>4} "
        for s in servers
    )
    print(f"{args.connections} attacking connections, {args.seconds:g} s per attack")
    print(header)
    for name in names:
        row = f"{name:<24}"
        for kind in servers:
            with start(kind) as server:
                if pinned:
                    os.sched_setaffinity(server.proc.pid, {0})
                result = trio.run(measure, server, ATTACKS[name], args)
            rss = f">{args.rss_cap:.0f}" if result["capped"] else f"{result['rss']:.0f}"
            row += (
                f"| {rss:>18} {result['cpu']:>6.2f} {result['us_per_kib']:>7.2f}"
                f" {result['p99']:>8.1f} {result['failed']:>4} "
            )
        print(row, flush=True)


if __name__ == "__main__":
    main()
