"""The ``--metrics-bind`` listener: ``GET /metrics`` and nothing else, one request per
connection.

A listener of its own, never the app's port: Prometheus (or a firewall rule) reaches
it apart, and the app never sees a scrape.  It runs as Trio tasks in the server's
nursery, not as prometheus-client's threaded server: no thread reads the counters
while the server's task changes them, and it stops with the server.  Each request is
bounded (``MAX_HEAD`` bytes within ``READ_TIMEOUT`` seconds) so an idle or endless
client holds one socket for a while and nothing more; and at most ``MAX_CONNECTIONS``
are served at once, so many idle clients hold that many sockets, not one per connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .config import BindAddress

MAX_HEAD = 8 * 1024
READ_TIMEOUT = 10.0
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_CONNECTIONS = 16
"""Scrapes served at once.  One Prometheus scrapes one target at a time; a connection
beyond this is closed as soon as it is accepted (the scraper sees the failure and
retries at its next interval), never queued."""


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    head = b""
    with trio.move_on_after(READ_TIMEOUT):
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            data = await stream.receive_some(MAX_HEAD)
            if not data:
                return None
            head += data
        return head
    return None


Render = Callable[[], Awaitable[bytes]]
"""What a scrape answers: the Prometheus text, as of now (asked over unix sockets from
the workers' collector, metrics_workers.py, hence awaitable)."""


async def handle_scrape(render: Render, stream: trio.SocketStream) -> None:
    """Answer one request on ``stream``, then close it."""
    try:
        head = await _read_head(stream)
        if head is None:
            return
        method, _, rest = head.partition(b"\r\n")[0].partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            answer = _response(b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n")
        elif target != b"/metrics":
            answer = _response(b"404 Not Found", b"text/plain", b"metrics are at /metrics\n")
        else:
            answer = _response(b"200 OK", CONTENT_TYPE, await render())
            if method == b"HEAD":
                answer = answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        with trio.move_on_after(READ_TIMEOUT):
            await stream.send_all(answer)
    except (trio.BrokenResourceError, OSError):
        pass  # the scraper went away: nothing to tell it
    finally:
        await trio.aclose_forcefully(stream)


async def serve_metrics(
    render: Render,
    address: BindAddress,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``address`` and answer scrapes with ``render()`` until cancelled.

    ``task_status.started`` gets the bound address (the real port where 0 was asked);
    a port that cannot be bound raises OSError from the ``nursery.start``.
    """
    listeners = await trio.open_tcp_listeners(address.port, host=address.host or None)
    name = listeners[0].socket.getsockname()
    task_status.started(BindAddress("tcp", host=str(name[0]), port=int(name[1])))
    busy = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal busy
        if busy >= MAX_CONNECTIONS:
            await trio.aclose_forcefully(stream)
            return
        busy += 1
        try:
            await handle_scrape(render, stream)
        finally:
            busy -= 1

    await trio.serve_listeners(handle, listeners)


__all__ = ["Render", "handle_scrape", "serve_metrics"]
