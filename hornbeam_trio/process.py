"""What a server process needs around ``serve()``, shared by its two shapes.

``runner`` runs one server in this process (and the ``--reload`` parent);
``workers`` supervises forked workers, each a server process of its own.  Both
take from here, and neither imports the other at module level: exit codes, the
open-file limit, the signal watcher that turns SIGINT/SIGTERM into a graceful
shutdown (a second one into ``os._exit``), the listening URL logged at start,
and how a failed startup is told in one line.

Exit codes: 0 clean shutdown; 1 forced by a second signal, or the listening
sockets could not be opened; 2 bad usage, configuration or app reference
(reported by the CLI); 3 the app failed its lifespan startup, or the backend
(Redis) was unreachable at startup, or still at shutdown with operations queued.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TypeVar, cast

import trio

from .config import BindAddress, Config
from .logs import logger

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

E = TypeVar("E", bound=BaseException)

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CANNOT_LISTEN = 1
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3


def raise_open_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: each connection costs a descriptor,
    and the usual soft default of 1024 caps a WebSocket server far below what it can hold."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY
        logger.warning("Could not raise the open-file limit above %d: %s", soft, exc)
    else:
        logger.debug("Open-file limit raised from %d to %s", soft, hard)


async def stop_on_signals(signals: AsyncIterator[int], serve_scope: trio.CancelScope) -> None:
    """The first signal cancels ``serve_scope`` (a graceful shutdown); a second exits now."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not serve_scope.cancel_called:
            logger.info("Received %s: shutting down gracefully (send it again to exit now)", name)
            serve_scope.cancel()
        else:
            logger.warning("Received %s again during shutdown: exiting now", name)
            os._exit(EXIT_FORCED)


def describe_address(address: BindAddress, config: Config) -> str:
    """The URL a user can paste: ``http://127.0.0.1:8000``, ``https://[::1]:8443``, ``unix:/p``."""
    if address.kind == "unix":
        return f"unix:{address.path}"
    host = f"[{address.host}]" if ":" in address.host else address.host
    scheme = "https" if config.ssl_enabled else "http"
    return f"{scheme}://{host}:{address.port}"


def startup_failure_code(exc: BaseException) -> int | None:
    """Log a failed startup (app lifespan or backend) in one line; its exit code, else None."""
    # Imported when needed: the CLI's error paths and the reload parent never load the
    # server (tests stand a fake in for hornbeam_trio.server, StartupFailed included).
    from .backends.base import BackendUnavailable
    from .server import StartupFailed

    failure = only_exception(exc, StartupFailed)
    if failure is not None:
        logger.error("Application startup failed: %s", failure)
        return EXIT_STARTUP_FAILED
    unavailable = only_exception(exc, BackendUnavailable)
    if unavailable is not None:
        logger.error("Backend unavailable: %s", unavailable)
        return EXIT_STARTUP_FAILED
    return None


def only_exception(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` if it is a ``kind``, or the first one inside a group made only of them."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kind)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return cast(E, leaf)
    return None


def freeze_startup_heap() -> None:
    """Exclude what start-up made (the app, its imports, lifespan state) from garbage collection.

    A full collection walks every object in the old generation; here it would walk the
    whole app for every one, inside whatever call allocated last (a publish to
    19,000 subscribers, say).  Frozen objects are never examined again (nor freed if
    they were garbage already, which start-up leaves little of).  Done by server
    processes only (``runner`` once listening; ``workers`` before each fork, which also
    spares the workers copies of pages the collector would write to): ``serve()`` inside
    someone else's program or test leaves that heap alone.
    """
    gc.collect()
    gc.freeze()
