"""The event loop's longest pause while one publish reaches N subscribers (issue 16, #11).

The server runs ``benchmarks.fanout_pause:app`` from the command line (so it freezes
its start-up heap as any server process does); N raw WebSocket subscribers connect
and never read (a 64-byte message fits their socket buffers).  Inside the server a
ticker task sleeps 1 ms at a time and records how late it wakes: that lateness is
how long every connection waited.  ``GET /measure`` publishes ``--publishes``
messages 50 ms apart and answers the longest pause, the longest publish() call, the
longest task step in CPU time (``max_step_cpu_ms``: what the server itself held the
loop for, whatever else the machine's cores ran meanwhile) and the full (gen-2)
collections seen::

    python benchmarks/fanout_pause.py --subscribers 19000
    python benchmarks/fanout_pause.py --subscribers 19000 --no-freeze   # A/B gc.freeze()

A measurement, not a test: figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import Server, open_websockets, raise_fd_limit

TOPIC = "fanout"
_worst = {"pause": 0.0, "step": 0.0}
_full_collections = [0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start" and info["generation"] == 2:
        _full_collections[0] += 1


class _StepTimer(trio.abc.Instrument):
    """The longest task step in this thread's CPU time (preemption by other processes
    is not counted, unlike in the ticker's lateness)."""

    def __init__(self) -> None:
        self.started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        step = time.thread_time() - self.started
        if step > _worst["step"]:
            _worst["step"] = step


async def _ticker() -> None:
    while True:
        before = trio.current_time()
        await trio.sleep(0.001)
        late = trio.current_time() - before - 0.001
        if late > _worst["pause"]:
            _worst["pause"] = late


async def _measure(publishes: int, size: int) -> dict[str, Any]:
    from hornbeam_erlang import publish

    if os.environ.get("FANOUT_NO_FREEZE"):
        gc.unfreeze()
    _worst["pause"] = 0.0
    _worst["step"] = 0.0
    _full_collections[0] = 0
    longest_publish = 0.0
    reached = 0
    for i in range(publishes):
        start = time.perf_counter()
        reached = publish(TOPIC, str(i).ljust(size))
        longest_publish = max(longest_publish, time.perf_counter() - start)
        await trio.sleep(0.05)
    return {
        "subscribers": reached,
        "max_pause_ms": round(_worst["pause"] * 1000, 2),
        "max_publish_ms": round(longest_publish * 1000, 2),
        "max_step_cpu_ms": round(_worst["step"] * 1000, 2),
        "full_collections": _full_collections[0],
        "frozen": gc.get_freeze_count(),
    }


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        gc.callbacks.append(_on_gc)
        async with trio.open_nursery() as nursery:
            await receive()
            nursery.start_soon(_ticker)
            trio.lowlevel.add_instrument(_StepTimer())
            await send({"type": "lifespan.startup.complete"})
            await receive()
            nursery.cancel_scope.cancel()
            await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":
        query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        body = json.dumps(
            await _measure(int(query.get("publishes", 40)), int(query.get("size", 64)))
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    from hornbeam_erlang import subscribe

    await send({"type": "websocket.accept"})
    subscribe(TOPIC)
    while (await receive())["type"] != "websocket.disconnect":
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=19_000)
    parser.add_argument("--publishes", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-freeze", action="store_true", help="gc.unfreeze() in the server")
    parser.add_argument("--rounds", type=int, default=3, help="measurements after the first")
    parser.add_argument("server_args", nargs="*", help="after --: more server flags")
    args = parser.parse_args()
    limit = raise_fd_limit()
    count = min(args.subscribers, limit - 100)
    env = {"FANOUT_NO_FREEZE": "1"} if args.no_freeze else {}
    with Server("hornbeam", "benchmarks.fanout_pause:app", *args.server_args, env=env) as server:
        started = time.monotonic()
        socks = open_websockets(server.port, "/", count)
        print(
            f"{count} subscribers in {time.monotonic() - started:.1f} s, "
            f"server RSS {server.rss_mib():.0f} MiB",
            flush=True,
        )
        url = f"http://127.0.0.1:{server.port}/measure?publishes={args.publishes}&size={args.size}"
        # First right after the connections (the collection their growth of the heap
        # makes due lands there), then again: the steady state.
        for phase in ["after connecting"] + ["steady"] * args.rounds:
            with urllib.request.urlopen(url, timeout=120) as response:
                result = json.loads(response.read())
            result["freeze"] = not args.no_freeze
            print(phase, json.dumps(result), flush=True)
        for sock in socks:
            sock.close()


if __name__ == "__main__":
    main()
