"""Issue 15's "memory stays flat": the server's RSS under HTTP/2 frame floods, measured.

    python benchmarks/h2_flood_memory.py                       # every attack, 20 s each
    python benchmarks/h2_flood_memory.py --only ping_under --seconds 5
    python benchmarks/h2_flood_memory.py --pin                 # a quiet machine only

Each attack gets a fresh ``python -m hornbeam_trio benchmarks.apps:echo`` (``GET /``
answers "hello"; h2c by prior knowledge) and ``--connections`` attacking connections
(default 20) of raw sockets writing hyperframe frames after an ``h2`` client's preface,
each reading (and discarding) what the server sends and reconnecting after the server
closes it:

* ``rapid_reset``, ``settings_flood``, ``ping_flood``: HEADERS then RST_STREAM, empty
  SETTINGS, or PINGs, as fast as the socket takes them: each connection should end with
  GOAWAY(ENHANCE_YOUR_CALM) at once, and again after each reconnect;
* ``*_under``: the same frames just under the buckets of ``protocol/h2_limits.py``:
  90 % of the burst at once, then 90 % of the sustained rate, on connections the server
  never closes: the case where the server keeps serving the attacker and its memory must
  still stay flat;
* ``h2load``: not an attack, ``h2load -c10 -m10`` for the same time: the yardstick.

The server's VmRSS is sampled every 100 ms.  Printed per attack: connections opened,
frames sent, GOAWAYs received (how many ENHANCE_YOUR_CALM), RSS at the start, the peak
and the end (0.5 s after the attack), and the slope of RSS over the second half of the
attack (least squares, KiB/s): flat is a slope near 0.  Nothing is pinned unless
``--pin`` (server on core 0, attackers on core 1, as ``hostile.py``): on a shared machine
the rates, not the bounds, move.
"""

# ruff: noqa: E402 (sys.path is set before the imports it decides)

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, sys.path[0] is benchmarks/, whose h2.py would hide the h2 library:
# the repository's root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import h2.config
import h2.connection
import trio
from hpack import Encoder
from hyperframe.frame import HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from benchmarks.harness import HOST, Server, raise_fd_limit
from hornbeam_trio.protocol import h2_limits

GOAWAY = 0x7
CANCEL = 8
CALM = 0xB
REQUEST = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
UNDER = 0.9
"""Share of a bucket's burst and rate the ``*_under`` attacks use."""


Send = Callable[["Attacker", trio.SocketStream], Awaitable[None]]
"""An attack: what one connection writes after the preface, until the server closes it."""


@dataclass
class Tally:
    connections: int = 0
    frames: int = 0
    goaways: int = 0
    calm: int = 0
    """GOAWAYs with ENHANCE_YOUR_CALM (the others: NO_ERROR, the idle timeout)."""
    samples: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the attack began, VmRSS KiB)."""


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def preface() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client.data_to_send()


class Attacker:
    """One connection at a time: frames out from :meth:`frames`, GOAWAYs counted in."""

    def __init__(self, port: int, tally: Tally) -> None:
        self.port = port
        self.tally = tally
        self.encoder = Encoder()
        self.stream_id = 1

    def get(self) -> bytes:
        """HEADERS: a whole GET, answered by the app."""
        head = HeadersFrame(self.stream_id)
        head.data = self.encoder.encode(REQUEST)
        head.flags.add("END_HEADERS")
        head.flags.add("END_STREAM")
        self.stream_id += 2
        return head.serialize()

    def pair(self) -> bytes:
        """HEADERS (a whole GET) then RST_STREAM(CANCEL) on the next stream."""
        head = HeadersFrame(self.stream_id)
        head.data = self.encoder.encode(REQUEST)
        head.flags.add("END_HEADERS")
        head.flags.add("END_STREAM")
        reset = RstStreamFrame(self.stream_id, error_code=CANCEL)
        self.stream_id += 2
        return head.serialize() + reset.serialize()

    async def run(self, end: float, send: Send) -> None:
        while trio.current_time() < end:
            self.encoder = Encoder()
            self.stream_id = 1
            try:
                stream = await trio.open_tcp_stream(HOST, self.port)
            except OSError:
                await trio.sleep(0.05)
                continue
            self.tally.connections += 1
            with trio.move_on_at(end):
                async with stream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, stream, nursery.cancel_scope)
                    try:
                        await stream.send_all(preface())
                        await send(self, stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    await trio.sleep_forever()  # until the reader sees the close

    async def _read(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        """Frame headers of what the server sends, payloads skipped; the close ends it."""
        buffer = b""
        skip = 0
        try:
            while data := await stream.receive_some(65536):
                if skip:
                    cut = min(skip, len(data))
                    skip -= cut
                    data = data[cut:]
                buffer += data
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    rest = len(buffer) - 9
                    if buffer[3] == GOAWAY and rest < min(length, 8):
                        break  # its error code in the next read
                    if buffer[3] == GOAWAY:
                        self.tally.goaways += 1
                        if rest >= 8 and int.from_bytes(buffer[13:17], "big") == CALM:
                            self.tally.calm += 1
                    if rest >= length:
                        buffer = buffer[9 + length :]
                    else:
                        skip = length - rest
                        buffer = b""
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def flood(make: Callable[[Attacker], bytes], per_write: int) -> Send:
    async def send(attacker: Attacker, stream: trio.SocketStream) -> None:
        while True:
            await stream.send_all(b"".join(make(attacker) for _ in range(per_write)))
            attacker.tally.frames += per_write * (2 if make is Attacker.pair else 1)

    return send


def under(make: Callable[[Attacker], bytes], rate: h2_limits.Rate) -> Send:
    """90 % of the burst now, then 90 % of the rate in 10 writes a second, never more; and
    a GET a second, so the connection is never idle (``--keepalive`` would close it)."""

    async def send(attacker: Attacker, stream: trio.SocketStream) -> None:
        per_frame = 2 if make is Attacker.pair else 1
        count = int(rate.burst * UNDER)
        owed = 0.0
        tick = 0
        while True:
            frames = b"".join(make(attacker) for _ in range(count))
            get = attacker.get() if tick % 10 == 0 else b""  # its stream id after theirs
            await stream.send_all(frames + get)
            attacker.tally.frames += count * per_frame + bool(get)
            tick += 1
            await trio.sleep(0.1)
            owed += rate.per_second * UNDER * 0.1
            count = int(owed)
            owed -= count

    return send


def _ping(attacker: Attacker) -> bytes:
    return PingFrame(0, opaque_data=b"hornbeam").serialize()


def _settings(attacker: Attacker) -> bytes:
    return SettingsFrame(0).serialize()


ATTACKS: dict[str, Send] = {
    "rapid_reset": flood(Attacker.pair, 100),
    "rapid_reset_under": under(Attacker.pair, h2_limits.RESETS),
    "settings_flood": flood(_settings, 1000),
    "settings_under": under(_settings, h2_limits.SETTINGS_FRAMES),
    "ping_flood": flood(_ping, 1000),
    "ping_under": under(_ping, h2_limits.PINGS),
}
NAMES = (*ATTACKS, "h2load")
LEAD = 0.3
"""Seconds of samples before the attack starts."""


async def sample(server: Server, tally: Tally, start: float) -> None:
    while True:
        tally.samples.append((trio.current_time() - start, vm_rss_kib(server.proc.pid)))
        await trio.sleep(0.1)


async def h2load(port: int, seconds: float, tally: Tally) -> None:
    argv = ["h2load", "-c10", "-m10", "-D", str(int(seconds)), f"http://{HOST}:{port}/"]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    requests = re.search(r"requests: (\d+) total", out)
    tally.connections = 10
    tally.frames = int(requests.group(1)) if requests else 0  # requests, one HEADERS each


async def measure(name: str, server: Server, args: argparse.Namespace) -> Tally:
    tally = Tally()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample, server, tally, start)
        await trio.sleep(LEAD)  # the start samples, before any attacker
        end = trio.current_time() + args.seconds
        if name == "h2load":
            await h2load(server.port, args.seconds, tally)
        else:
            async with trio.open_nursery() as attackers:
                for _ in range(args.connections):
                    attackers.start_soon(Attacker(server.port, tally).run, end, ATTACKS[name])
        await trio.sleep(0.5)  # what the server still holds after the attack
        nursery.cancel_scope.cancel()
    return tally


def slope_kib_s(samples: list[tuple[float, int]], since: float, until: float) -> float:
    """Least-squares slope of RSS over [since, until]."""
    points = [(t, rss) for t, rss in samples if since <= t <= until]
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_r = sum(r for _, r in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return cov / var if var else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated: " + ", ".join(NAMES))
    parser.add_argument("--seconds", type=float, default=20.0, help="per attack")
    parser.add_argument("--connections", type=int, default=20, help="attacking connections")
    parser.add_argument(
        "--pin", action="store_true", help="server on core 0, attackers on core 1 (quiet runs)"
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(NAMES)
    unknown = set(names) - set(NAMES)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    if "h2load" in names and shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    raise_fd_limit()
    pinned = args.pin and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {1})  # h2load, a child, inherits it
    print(
        f"{args.connections} attacking connections, {args.seconds:g} s per attack"
        f" ({'pinned' if pinned else 'not pinned'}); RSS in MiB, slope over the second half"
    )
    print(
        "| attack | connections | frames sent | GOAWAYs | RSS start | RSS max | RSS end"
        " | slope KiB/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        with Server("hornbeam", "benchmarks.apps:echo") as server:
            if pinned:
                os.sched_setaffinity(server.proc.pid, {0})
            tally = trio.run(measure, name, server, args)
            alive = server.proc.poll() is None
        rss = [kib for _, kib in tally.samples]
        start_rss = rss[0] if rss else 0
        slope = slope_kib_s(tally.samples, LEAD + args.seconds / 2, LEAD + args.seconds)
        frames = f"{tally.frames:,}" + (" requests" if name == "h2load" else "")
        print(
            f"| {name} | {tally.connections:,} | {frames}"
            f" | {tally.goaways:,} ({tally.calm:,} calm)"
            f" | {start_rss / 1024:.1f} | {max(rss, default=0) / 1024:.1f}"
            f" | {rss[-1] / 1024 if rss else 0:.1f} | {slope:+.1f} |"
            + ("" if alive else " (server died)"),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
