"""websockets' own Trio server, the Trio peer in the WebSocket rows.

    python benchmarks/ws_trio_server.py --port 8000 --handler echo|broadcast

`echo` sends every message back; `broadcast` mirrors apps.broadcast_loop with
websockets' native `broadcast()`: `/pub` is the publisher, any other path subscribes.
"""

from __future__ import annotations

import argparse
import functools

import trio
from websockets.trio.server import ServerConnection, broadcast, serve

_subscribers: set[ServerConnection] = set()


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def fan_out(ws: ServerConnection) -> None:
    if ws.request is not None and ws.request.path == "/pub":
        async for message in ws:
            await broadcast(_subscribers, message)
        return
    _subscribers.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        _subscribers.discard(ws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--handler", choices=("echo", "broadcast"), default="echo")
    args = parser.parse_args()
    handler = echo if args.handler == "echo" else fan_out
    run = functools.partial(
        serve, handler, args.port, host=args.host, compression=None, max_size=16 * 2**20
    )
    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
