"""The ASGI lifespan protocol, run in its own task for the server's lifetime.

``auto``: an app that raises or returns before answering startup simply has
no lifespan (Hypercorn refuses to start such an app; uvicorn and the ASGI spec
do not).  ``on``: the same is a startup failure.  ``startup.failed`` always is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from .types import ASGI_VERSION

if TYPE_CHECKING:
    from .types import ASGIApp, Message

logger = logging.getLogger("hornbeam_trio")


class StartupFailed(Exception):
    """The app's lifespan startup failed; the server does not start."""


class Lifespan:
    def __init__(self, app: ASGIApp, mode: str) -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._send_to_app, self._app_inbox = trio.open_memory_channel[Any](2)
        self._startup_answer = trio.Event()
        self._shutdown_answer = trio.Event()
        self._failure: str | None = None
        self._app_done = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Task body: runs the app's lifespan coroutine; started() once startup is answered."""
        if self.mode == "off":
            task_status.started()
            return
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        started = False

        async def receive() -> Message:
            return await self._app_inbox.receive()  # type: ignore[no-any-return]

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._startup_answer.set()
            elif kind == "lifespan.startup.failed":
                self._failure = str(message.get("message", "")) or "lifespan.startup.failed"
                self._startup_answer.set()
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if kind.endswith("failed"):
                    logger.error("lifespan shutdown failed: %s", message.get("message", ""))
                self._shutdown_answer.set()
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} in lifespan")

        await self._send_to_app.send({"type": "lifespan.startup"})
        async with trio.open_nursery() as nursery:

            async def watch_startup() -> None:
                nonlocal started
                await self._startup_answer.wait()
                started = True
                task_status.started()

            nursery.start_soon(watch_startup)
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if not self._startup_answer.is_set():
                    if self.mode == "on":
                        self._failure = f"lifespan startup raised {exc!r}"
                        logger.exception("lifespan startup raised")
                    else:
                        logger.debug("app does not support lifespan (%r); going on without", exc)
                        self.supported = False
                else:
                    logger.exception("lifespan task raised")
            else:
                if not self._startup_answer.is_set():
                    if self.mode == "on":
                        self._failure = "app returned from lifespan without answering startup"
                    else:
                        self.supported = False
            finally:
                self._app_done.set()
                self._shutdown_answer.set()
                if not self._startup_answer.is_set():
                    self._startup_answer.set()
        if not started:
            task_status.started()

    def check_startup(self) -> None:
        if self._failure is not None:
            raise StartupFailed(self._failure)

    async def shutdown(self, deadline: float) -> None:
        """Ask the app to shut down and wait for its answer until ``deadline`` (Trio time).

        The deadline is the server's one shutdown budget, shared with the connections
        (see server._run_shielded), so it may already have passed.  The event is still
        handed over: the app's shutdown handler runs up to its first checkpoint before
        the caller cancels the lifespan task.
        """
        if not self.supported or self._app_done.is_set():
            return
        # Never blocks: the channel holds two messages, and only startup and this are sent.
        self._send_to_app.send_nowait({"type": "lifespan.shutdown"})
        with trio.move_on_at(deadline) as scope:
            await self._shutdown_answer.wait()
        if scope.cancelled_caught:
            logger.warning("lifespan shutdown did not complete within the shutdown timeout")
