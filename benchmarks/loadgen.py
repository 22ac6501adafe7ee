"""WebSocket load generator: picows on uvloop, one process (run it pinned: taskset -c 1).

Modes (each prints one JSON object per line on stdout; the last line is the result,
{"phase": "t0"} and {"phase": "t1"} bracket the measured interval):

  ws-echo    --url U --conns N --size B --kind text|binary --duration D
             every connection sends one message, waits for its echo, repeats;
             result: round_trips, bytes (echoed payload), seconds, errors.
  idle       --url U --conns N [--sources K]
             opens --warm connections, prints {"phase": "warm"} and waits for a
             line on stdin; opens N more, prints {"phase": "open"} and waits for
             another line (or EOF); closes everything. The caller reads the
             server's RSS at both points.
  broadcast  --url U --conns N --duration D --window W --rate R
             N subscribers on U, one publisher on U + /pub. Warm-up until every
             subscriber received a message; then "max" (publisher keeps W
             messages x N deliveries in flight) and "paced" (R messages/s),
             D seconds each; deliveries/s and publish-to-delivery latency.

Work happens in picows callbacks (no coroutine per message), so one core
generates far more load than one server core can absorb; `loadgen_cpu` in
the result (CPU seconds / wall seconds) shows how busy this process was.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import resource
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CONNECT_CONCURRENCY = 100
PER_SOURCE_LIMIT = 10_000  # connections per 127.0.0.x before another source address is used


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Base(WSListener):
    """Closes politely when the server closes, and remembers that it is gone."""

    transport: WSTransport | None = None
    closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True

    def on_close_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        transport.send_close(frame.get_close_code(), frame.get_close_message())
        transport.disconnect()


L = TypeVar("L", bound=Base)


async def open_all(
    url: str, count: int, factory: Callable[[], L], sources: int, handshake_timeout: float = 30.0
) -> tuple[list[L], list[str]]:
    """Open `count` connections, at most CONNECT_CONCURRENCY handshakes at a time."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    errors: list[str] = []

    async def one(index: int) -> L | None:
        kwargs: dict[str, Any] = {"websocket_handshake_timeout": handshake_timeout}
        if sources > 1:
            kwargs["local_addr"] = (f"127.0.0.{1 + index % sources}", 0)
        async with gate:
            try:
                _, listener = await ws_connect(factory, url, **kwargs)
            except Exception as exc:  # OSError, TimeoutError, WSHandshakeError...: reported
                errors.append(f"{type(exc).__name__}: {exc}")
                return None
        return cast(L, listener)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    return [r for r in results if r is not None], errors


async def close_all(listeners: Sequence[Base], timeout: float = 5.0) -> None:
    transports = [lst.transport for lst in listeners if lst.transport and not lst.closed]
    for transport in transports:
        transport.send_close()
    waits = [t.wait_disconnected() for t in transports]
    if waits:
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except asyncio.TimeoutError:
            for transport in transports:
                transport.disconnect(graceful=False)


def sources_for(count: int, requested: int) -> int:
    return requested if requested > 0 else max(1, math.ceil(count / PER_SOURCE_LIMIT))


# ----------------------------------------------------------------------------- ws-echo


class EchoStats:
    def __init__(self) -> None:
        self.round_trips = 0
        self.bytes = 0
        self.errors = 0
        self.running = True


class EchoClient(Base):
    def __init__(self, payload: bytes, msg_type: WSMsgType, stats: EchoStats) -> None:
        self.payload = payload
        self.msg_type = msg_type
        self.stats = stats
        self.partial = 0
        self.checked = False
        self.chunks: list[bytes] = []

    def start(self) -> None:
        assert self.transport is not None
        self.transport.send(self.msg_type, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            if not self.checked:
                self.chunks.append(frame.get_payload_as_bytes())
            self.partial += frame.payload_size
            if not frame.fin:
                return
            size, self.partial = self.partial, 0
            if not self.checked:  # compare the first echo byte for byte, then sizes only
                self.checked = True
                if b"".join(self.chunks) != self.payload:
                    self.stats.errors += 1
                self.chunks = []
            elif size != len(self.payload):
                self.stats.errors += 1
            stats = self.stats
            stats.round_trips += 1
            stats.bytes += size
            if stats.running:
                transport.send(self.msg_type, self.payload)
        elif msg_type == WSMsgType.CLOSE:
            self.on_close_frame(transport, frame)


async def run_echo(args: argparse.Namespace) -> dict[str, Any]:
    stats = EchoStats()
    if args.kind == "text":
        payload, msg_type = (b"x" * args.size), WSMsgType.TEXT
    else:
        payload, msg_type = (
            bytes(range(256)) * (args.size // 256) + b"\0" * (args.size % 256),
            (WSMsgType.BINARY),
        )
    clients, errors = await open_all(
        args.url,
        args.conns,
        lambda: EchoClient(payload, msg_type, stats),
        sources_for(args.conns, args.sources),
    )
    if errors:
        await close_all(clients)
        return {"ok": False, "error": f"{len(errors)} connections failed: {errors[0]}"}
    for client in clients:
        client.start()
    await asyncio.sleep(args.warmup)
    emit(phase="t0")
    t0, cpu0, n0, b0 = time.perf_counter(), cpu_seconds(), stats.round_trips, stats.bytes
    await asyncio.sleep(args.duration)
    t1, cpu1, n1, b1 = time.perf_counter(), cpu_seconds(), stats.round_trips, stats.bytes
    emit(phase="t1")
    stats.running = False
    lost = sum(1 for c in clients if c.closed)
    await asyncio.sleep(0.05)
    await close_all(clients)
    seconds = t1 - t0
    result: dict[str, Any] = {
        "ok": stats.errors == 0 and lost == 0 and n1 > n0,
        "round_trips": n1 - n0,
        "bytes": b1 - b0,
        "seconds": seconds,
        "round_trips_per_s": (n1 - n0) / seconds,
        "mb_per_s": (b1 - b0) / seconds / 1e6,
        "errors": stats.errors,
        "connections_lost": lost,
        "loadgen_cpu": (cpu1 - cpu0) / seconds,
    }
    if not result["ok"]:
        result["error"] = (
            f"{stats.errors} bad echoes, {lost} connections lost, {n1 - n0} round trips"
        )
    return result


# ----------------------------------------------------------------------------- idle


class IdleClient(Base):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.on_close_frame(transport, frame)


async def read_stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    sources = sources_for(args.conns + args.warm, args.sources)
    warm, errors = await open_all(args.url, args.warm, IdleClient, 1)
    if errors:
        await close_all(warm)
        return {"ok": False, "error": f"warm-up connections failed: {errors[0]}"}
    await asyncio.sleep(0.2)
    emit(phase="warm", open=len(warm))
    await read_stdin_line()
    t0 = time.perf_counter()
    idle, errors = await open_all(args.url, args.conns, IdleClient, sources, handshake_timeout=120)
    seconds = time.perf_counter() - t0
    await asyncio.sleep(args.settle)
    alive = sum(1 for c in idle if not c.closed)
    emit(phase="open", open=alive, failed=len(errors), seconds=seconds)
    await read_stdin_line()
    alive_after = sum(1 for c in idle if not c.closed)
    await close_all([*idle, *warm], timeout=30.0)
    result: dict[str, Any] = {
        "ok": not errors and alive_after == args.conns,
        "conns": args.conns,
        "open": alive,
        "alive_at_end": alive_after,
        "failed": len(errors),
        "sources": sources,
        "open_seconds": seconds,
    }
    if errors:
        result["error"] = f"{len(errors)} of {args.conns} connections failed: {errors[0]}"
    elif alive_after != args.conns:
        result["error"] = f"server closed {args.conns - alive_after} idle connections"
    return result


# ----------------------------------------------------------------------------- broadcast


class Board:
    """Shared counters of the broadcast run; the publisher reacts to deliveries."""

    def __init__(self, subscribers: int, window: int) -> None:
        self.subscribers = subscribers
        self.window_deliveries = window * subscribers
        self.sent_at = array("d")  # seq -> perf_counter() at send
        self.deliveries = 0
        self.record_from = 1 << 62  # only seqs >= this go into `latencies`
        self.latencies = array("d")
        self.bad = 0
        self.publisher: Publisher | None = None
        self.max_mode = False

    def outstanding(self) -> int:
        return len(self.sent_at) * self.subscribers - self.deliveries


class Publisher(Base):
    def __init__(self, board: Board) -> None:
        self.board = board
        self.pad = ""

    def publish(self) -> None:
        board = self.board
        seq = len(board.sent_at)
        now = time.perf_counter()
        head = f'{{"seq":{seq},"ts":{now:.6f},"pad":"'
        text = head + "x" * max(0, 62 - len(head)) + '"}'  # 64 bytes for small seqs
        board.sent_at.append(now)
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, text.encode())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.on_close_frame(transport, frame)


class Subscriber(Base):
    """Counts deliveries; one subscriber in `probe_every` also parses the sequence number
    and records the latency: at 150k deliveries/s the per-frame work of the load generator
    must stay small."""

    def __init__(self, board: Board, probe: bool) -> None:
        self.board = board
        self.probe = probe
        self.got = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self.on_close_frame(transport, frame)
            return
        board = self.board
        self.got += 1
        board.deliveries += 1
        if self.probe:
            now = time.perf_counter()
            payload = frame.get_payload_as_bytes()
            try:  # b'{"seq":N,...': cheaper than json.loads
                if not payload.startswith(b'{"seq":'):
                    raise ValueError(payload[:16])
                seq = int(payload[7 : payload.index(b",", 7)])
                sent = board.sent_at[seq]
            except (ValueError, IndexError):
                board.bad += 1
                return
            if seq >= board.record_from:
                board.latencies.append(now - sent)
        if (
            board.max_mode
            and len(board.sent_at) * board.subscribers - board.deliveries < board.window_deliveries
        ):
            board.publisher.publish()  # type: ignore[union-attr]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    index = min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))
    return values[index]


async def drain(board: Board, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while board.outstanding() > 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)


def latency_summary(board: Board, start_seq: int, end_seq: int) -> dict[str, float]:
    values = sorted(board.latencies)
    board.latencies = array("d")
    board.record_from = 1 << 62
    return {
        "messages": end_seq - start_seq,
        "latency_samples": len(values),
        "p50_ms": percentile(values, 0.50) * 1e3,
        "p99_ms": percentile(values, 0.99) * 1e3,
        "max_ms": (values[-1] if values else math.nan) * 1e3,
    }


async def run_broadcast(args: argparse.Namespace) -> dict[str, Any]:
    board = Board(args.conns, args.window)
    created = itertools.count()
    subs, errors = await open_all(
        args.url,
        args.conns,
        lambda: Subscriber(board, probe=next(created) % args.probe_every == 0),
        sources_for(args.conns, args.sources),
    )
    if errors:
        await close_all(subs)
        return {"ok": False, "error": f"{len(errors)} subscribers failed: {errors[0]}"}
    pubs, errors = await open_all(args.url.rstrip("/") + "/pub", 1, lambda: Publisher(board), 1)
    if errors:
        await close_all(subs)
        return {"ok": False, "error": f"publisher failed: {errors[0]}"}
    publisher = board.publisher = pubs[0]
    everyone: list[Base] = [*subs, *pubs]

    async def fail(reason: str) -> dict[str, Any]:
        await close_all(everyone)
        return {"ok": False, "error": reason}

    # Warm-up: a server may subscribe a connection a moment after its handshake.
    deadline = time.perf_counter() + args.warm_timeout
    while any(s.got == 0 for s in subs):
        if time.perf_counter() > deadline:
            reached = sum(1 for s in subs if s.got)
            return await fail(f"warm-up: only {reached}/{args.conns} subscribers got a message")
        publisher.publish()
        await asyncio.sleep(0.05)
    await drain(board, 5.0)

    result: dict[str, Any] = {"subscribers": args.conns, "window": args.window}

    # Phase "max": keep `window` messages' worth of deliveries in flight.
    start_seq = len(board.sent_at)
    board.record_from = start_seq
    emit(phase="t0")
    t0, cpu0, d0 = time.perf_counter(), cpu_seconds(), board.deliveries
    board.max_mode = True
    for _ in range(args.window):
        publisher.publish()
    await asyncio.sleep(args.duration)
    board.max_mode = False
    t1, cpu1, d1 = time.perf_counter(), cpu_seconds(), board.deliveries
    emit(phase="t1")
    end_seq = len(board.sent_at)
    await drain(board, 10.0)
    result["max"] = {
        "deliveries_per_s": (d1 - d0) / (t1 - t0),
        "seconds": t1 - t0,
        "loadgen_cpu": (cpu1 - cpu0) / (t1 - t0),
        **latency_summary(board, start_seq, end_seq),
    }
    lost_max = board.outstanding()

    # Phase "paced": a steady publish rate, well below saturation.
    if args.rate > 0:
        start_seq = len(board.sent_at)
        board.record_from = start_seq
        interval = 1.0 / args.rate
        t0, d0 = time.perf_counter(), board.deliveries
        next_at = t0
        while time.perf_counter() - t0 < args.duration:
            publisher.publish()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        t1, d1 = time.perf_counter(), board.deliveries
        end_seq = len(board.sent_at)
        await drain(board, 10.0)
        result["paced"] = {
            "rate": args.rate,
            "deliveries_per_s": (d1 - d0) / (t1 - t0),
            **latency_summary(board, start_seq, end_seq),
        }
    lost = board.outstanding()
    dropped = sum(1 for s in everyone if s.closed)
    await close_all(everyone)
    result.update(lost_deliveries=lost, lost_in_max=lost_max, bad=board.bad, closed=dropped)
    result["ok"] = lost == 0 and board.bad == 0 and dropped == 0
    if not result["ok"]:
        result["error"] = (
            f"{lost} deliveries missing, {board.bad} malformed, {dropped} connections closed"
        )
    return result


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("mode", choices=("ws-echo", "idle", "broadcast"))
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="ws-echo: seconds before counting"
    )
    parser.add_argument("--size", type=int, default=16, help="ws-echo: message size in bytes")
    parser.add_argument("--kind", choices=("text", "binary"), default="text")
    parser.add_argument(
        "--sources",
        type=int,
        default=0,
        help="source addresses 127.0.0.1..K (0: one per 10,000 connections)",
    )
    parser.add_argument("--warm", type=int, default=16, help="idle: warm-up connections")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="idle: seconds between the last open and the report",
    )
    parser.add_argument(
        "--window", type=int, default=4, help="broadcast: messages in flight in the max phase"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="broadcast: messages/s in the paced phase (0: skip)",
    )
    parser.add_argument(
        "--probe-every",
        type=int,
        default=10,
        help="broadcast: every k-th subscriber records latencies",
    )
    parser.add_argument("--warm-timeout", type=float, default=10.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_fd_limit()
    runner = {"ws-echo": run_echo, "idle": run_idle, "broadcast": run_broadcast}[args.mode]
    result = uvloop.run(runner(args))
    emit(phase="result", mode=args.mode, **result)


if __name__ == "__main__":
    main()
