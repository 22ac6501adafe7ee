"""Slow consumers at scale (issue 16): N subscribers, some never reading, bursts of publishes.

``benchmarks.apps:broadcast`` on hornbeam_trio: subscribers on ``/``, one publisher on
``/pub`` whose every burst is one ``send()`` of ``--burst`` text frames (read in one
recv, so published in one scheduler pass).  Each message carries its send time; a
few of the readers (probes) parse every frame and record publish-to-delivery
latency, the other readers only drain their sockets.

Two phases on one server: the readers alone, then the readers plus ``--slow``
subscribers that never read (receive buffer 4 KiB).  Printed: server RSS peak
against ``subscribers x queue bound + 50 MiB``, how many slow subscribers the
server closed 1013 (its own log lines) or, under ``--slow-consumer drop-oldest``,
how many messages they lost, and the readers' p99 in each phase::

    python benchmarks/slow_consumers.py                       # 900 + 100, close
    python benchmarks/slow_consumers.py -- --slow-consumer drop-oldest

Bounded: 10 s readers alone, 35 s with the slow ones (``--seconds``, ``--slow-seconds``).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import HOST, Server, handshake, masked, raise_fd_limit

DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def open_ws(port: int, path: str, *, rcvbuf: int = 0) -> trio.SocketStream:
    sock = trio.socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((HOST, port))
    stream = trio.SocketStream(sock)
    await stream.send_all(handshake(path))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:60])
    return stream


class Probe:
    """Parses every frame; records latency of each message (its first 20 chars: send time)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.recording = False

    async def run(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while chunk := await stream.receive_some(1 << 16):
            buffer += chunk
            now = time.time()
            at = 0
            while len(buffer) - at >= 4:
                length = buffer[at + 1] & 0x7F
                start = at + 2
                if length == 126:
                    (length,) = struct.unpack_from("!H", buffer, at + 2)
                    start = at + 4
                if len(buffer) < start + length:
                    break
                if self.recording and buffer[at] & 0x0F == 0x1:
                    self.latencies.append(now - float(buffer[start : start + 20]))
                at = start + length
            del buffer[:at]


async def drain(stream: trio.SocketStream) -> None:
    while await stream.receive_some(1 << 18):
        pass


async def publish_for(
    pub: trio.SocketStream, seconds: float, burst: int, size: int, rate: int
) -> int:
    """Bursts of ``burst`` messages, ``rate`` messages/s in all; returns messages sent."""
    sent = 0
    interval = burst / rate
    next_at = trio.current_time()
    end = next_at + seconds
    while trio.current_time() < end:
        stamp = f"{time.time():<20.6f}"
        frame = masked((stamp + "x" * (size - 20)).encode())
        await pub.send_all(frame * burst)
        sent += burst
        next_at += interval
        await trio.sleep_until(next_at)
    return sent


async def phase(
    server: Server,
    pub: trio.SocketStream,
    probes: list[Probe],
    args: argparse.Namespace,
    seconds: float,
) -> dict[str, Any]:
    for probe in probes:
        probe.latencies.clear()
        probe.recording = True
    peak = 0.0
    async with trio.open_nursery() as nursery:

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.rss_mib())
                await trio.sleep(0.2)

        nursery.start_soon(sample)
        cpu = server.cpu()
        sent = await publish_for(pub, seconds, args.burst, args.size, args.rate)
        await trio.sleep(0.5)  # the last bursts arrive
        nursery.cancel_scope.cancel()
    for probe in probes:
        probe.recording = False
    latencies = [x for probe in probes for x in probe.latencies]
    return {
        "published": sent,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "rss_peak_mib": round(peak, 1),
        "server_cpu_s": round(server.cpu() - cpu, 2),
    }


async def slow_outcome(slow: list[trio.SocketStream], published: int) -> dict[str, Any]:
    """What the never-reading subscribers got: read everything the server sent them."""
    received = closed_1013 = still_open = 0
    for stream in slow:
        data = bytearray()
        with trio.move_on_after(0.5) as scope:
            while chunk := await stream.receive_some(1 << 20):
                data += chunk
        still_open += scope.cancelled_caught
        at = 0
        while len(data) - at >= 2:
            opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if len(data) - at < 4:
                    break
                (length,) = struct.unpack_from("!H", data, at + 2)
                start = at + 4
            if len(data) < start + length:
                break
            if opcode == 0x1:
                received += 1
            elif opcode == 0x8 and struct.unpack_from("!H", data, start)[0] == 1013:
                closed_1013 += 1
            at = start + length
        await stream.aclose()
    return {
        "slow_still_open": still_open,
        "slow_1013_frames_seen": closed_1013,
        "slow_messages_received_each": round(received / max(1, len(slow))),
        "slow_messages_lost_each": published - round(received / max(1, len(slow))),
    }


async def main_async(args: argparse.Namespace) -> None:
    queue_bytes = DEFAULT_QUEUE_BYTES
    flags = args.server_args
    if "--subscriber-queue-bytes" in flags:
        queue_bytes = int(flags[flags.index("--subscriber-queue-bytes") + 1])
    # No pings, no idle timeout: raw clients that never write would meet it (the slow
    # ones too); what ends a slow one here is the slow-consumer policy alone.
    quiet = ["--websocket-ping-interval", "0", "--websocket-timeout", "0", "--log-level", "info"]
    with Server("hornbeam", "benchmarks.apps:broadcast", *quiet, *flags) as server:
        idle = server.rss_mib()
        readers = [await open_ws(server.port, "/") for _ in range(args.readers)]
        pub = await open_ws(server.port, "/pub")
        probes = [Probe() for _ in range(args.probes)]
        results: dict[str, Any] = {"server_flags": flags, "rss_idle_mib": round(idle, 1)}
        async with trio.open_nursery() as nursery:
            for i, stream in enumerate(readers):
                if i < args.probes:
                    nursery.start_soon(probes[i].run, stream)
                else:
                    nursery.start_soon(drain, stream)
            results["without_slow"] = await phase(server, pub, probes, args, args.seconds)
            slow = [await open_ws(server.port, "/", rcvbuf=4096) for _ in range(args.slow)]
            results["with_slow"] = await phase(server, pub, probes, args, args.slow_seconds)
            await trio.sleep(1)
            results["with_slow"].update(await slow_outcome(slow, results["with_slow"]["published"]))
            results["with_slow"]["server_logged_1013"] = server.log_text().count("slow consumer")
            subscribers = args.readers + args.slow
            results["rss_bound_mib"] = round(subscribers * queue_bytes / 2**20 + 50, 1)
            nursery.cancel_scope.cancel()
        for stream in readers:
            await stream.aclose()
        await pub.aclose()
    print(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=900)
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--probes", type=int, default=20, help="readers that record latency")
    parser.add_argument("--rate", type=int, default=200, help="messages/s published")
    parser.add_argument("--burst", type=int, default=20, help="messages per publisher send")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message")
    parser.add_argument("--seconds", type=float, default=10.0, help="readers alone")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=35.0,
        help="with the slow ones (their kernel buffers, a few MB each, fill first)",
    )
    parser.add_argument("server_args", nargs="*", help="after --: server flags")
    args = parser.parse_args()
    raise_fd_limit()
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
