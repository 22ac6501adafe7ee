"""Run the server as a process: ``run()``, ``run_config()`` and the CLI's back end.

One server process around ``server.serve()``: logging set-up, signals, exit codes
and development reload; ``--workers`` hands over to ``workers`` (imported only then).
The pieces both shapes share (exit codes, the signal watcher, the open-file limit)
live in ``process``.  ``serve()`` itself knows nothing of processes, so tests and
embedding programs can call it inside their own Trio nursery.

Signals.  The first SIGINT or SIGTERM cancels serve's cancel scope; serve then shuts
down gracefully (WebSockets are closed with 1001, in-flight HTTP responses get
``shutdown_timeout`` seconds) and the process exits 0.  A second SIGINT or SIGTERM
during that shutdown means "now": one log line, then ``os._exit(1)`` without waiting
for anything.

Exit codes: see ``process`` (shared with the ``--workers`` supervisor).

Reload (``--reload``; for development only).  The parent process runs no server: it
watches ``app_dir`` (recursively, ``*.py`` files) with ``watchfiles.run_process`` and
runs the server in a child process spawned fresh, so every module is imported anew.
On a change the parent stops the child with SIGINT (a graceful shutdown, allowed
``shutdown_timeout`` plus a little before SIGKILL) and starts another.  The child moves
to its own process group, so a Ctrl-C in the terminal reaches only the parent, which
then stops the child with exactly one SIGINT; otherwise the child would count two
signals and exit at once.  SIGTERM to the parent does the same (watchfiles turns it
into KeyboardInterrupt).  An app that fails to import in the child is logged in one
line and the parent keeps watching: save a fix and the server comes back.  Reload
needs the app as an import string and the ``watchfiles`` package
(``pip install 'hornbeam_trio[reload]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, cast

import trio

from hornbeam_trio.config import BindAddress, Config, ConfigError
from hornbeam_trio.importer import ImportFromStringError, load_app
from hornbeam_trio.logs import logger, setup_logging
from hornbeam_trio.process import (
    EXIT_CANNOT_LISTEN,
    EXIT_FORCED,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    EXIT_USAGE,
    describe_address,
    freeze_startup_heap,
    only_exception,
    raise_open_file_limit,
    startup_failure_code,
    stop_on_signals,
)
from hornbeam_trio.types import ASGIApp

if TYPE_CHECKING:
    from watchfiles.main import FileChange


def run(app: str | ASGIApp, **options: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, with options named as the Config fields.

    Options go through ``Config.from_options``, the same path the CLI takes, so an
    unknown or bad option raises ConfigError naming it before anything starts.
    """
    run_config(app, Config.from_options(**options))


def run_config(app: str | ASGIApp, config: Config) -> None:
    """Serve ``app`` with a ready Config; raises SystemExit for a non-zero exit code.

    Like ``uvicorn.run``, a startup failure ends the process with its exit code rather
    than returning, so a script that calls ``run()`` last exits the way the CLI does.
    """
    check_supported(app, config)
    if config.reload:
        run_with_reload(cast(str, app), config)
        return
    code = serve_app(resolve_app(app, config), config)
    if code != EXIT_OK:
        raise SystemExit(code)


def check_supported(app: str | ASGIApp, config: Config) -> None:
    """Refuse, before anything starts, what Config accepts but this version cannot run."""
    if config.workers > 1 and config.reload:
        raise ConfigError("workers", "--reload runs one server process: drop --workers or --reload")
    if config.workers > 1 and not hasattr(os, "fork"):
        raise ConfigError("workers", "needs os.fork (Linux, macOS)")
    if config.backend != "memory":
        try:
            from hornbeam_trio.backends.redis import RedisBackend
        except ImportError:
            raise ConfigError(
                "backend", "redis:// needs the coredis package: pip install 'hornbeam_trio[redis]'"
            ) from None
        try:
            RedisBackend(config.backend)  # no I/O: checks the URL's own options
        except ValueError as exc:
            raise ConfigError("backend", str(exc)) from None
    if isinstance(app, str) and not os.path.isdir(config.app_dir):
        raise ConfigError("app_dir", f"{config.app_dir!r} is not a directory")
    if config.reload:
        if not isinstance(app, str):
            raise ConfigError(
                "reload", "needs the app as an import string 'module:attribute', not an object"
            )
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise ConfigError(
                "reload", "needs the watchfiles package: pip install 'hornbeam_trio[reload]'"
            ) from None


def resolve_app(app: str | ASGIApp, config: Config) -> ASGIApp:
    """The application object: imported when given as a string, built when a factory."""
    if isinstance(app, str):
        return load_app(app, factory=config.factory, app_dir=config.app_dir)
    if config.factory:
        built = cast(Any, app)()
        if not callable(built):
            raise ImportFromStringError(
                f"factory {app!r} returned a {type(built).__name__}, not an ASGI application"
            )
        return cast(ASGIApp, built)
    return app


def serve_app(app: ASGIApp, config: Config) -> int:
    """Set up the process, serve until a signal, and return the exit code."""
    if config.workers > 1:  # a supervisor and forked workers (hornbeam_trio/workers.py)
        from hornbeam_trio.workers import serve_workers

        return serve_workers(app, config)
    setup_logging(config.log_level, config.access_log)
    raise_open_file_limit()
    return trio.run(_main, app, config)


async def _main(app: ASGIApp, config: Config) -> int:
    # Imported here, not at the top: the CLI's error paths and the reload parent never
    # need the server, and the import must not cost them its start-up time.
    from hornbeam_trio.server import serve

    serve_scope = trio.CancelScope()
    listening = False
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on_signals, signals, serve_scope)
                with serve_scope:
                    async with trio.open_nursery() as server_nursery:
                        addresses: list[BindAddress] = await server_nursery.start(
                            serve, app, config
                        )
                        listening = True
                        freeze_startup_heap()
                        for address in addresses:
                            logger.info("Listening on %s", describe_address(address, config))
                nursery.cancel_scope.cancel()  # serve is done: stop watching signals
    except BaseException as exc:
        code = startup_failure_code(exc)
        if code is not None:
            return code
        bind_error = None if listening else only_exception(exc, OSError)
        if bind_error is not None:
            logger.error("Cannot listen: %s", bind_error)
            return EXIT_CANNOT_LISTEN
        raise
    logger.info("Server stopped")
    return EXIT_OK


def run_with_reload(app_ref: str, config: Config) -> None:
    """Watch ``app_dir`` and run the server in a child restarted on each change (see above)."""
    import watchfiles

    setup_logging(config.log_level, config.access_log)
    # watchfiles warns (child killed, signal caught) through its own logger: same format.
    watchfiles_logger = logging.getLogger("watchfiles")
    watchfiles_logger.handlers[:] = logger.handlers
    watchfiles_logger.setLevel(logging.WARNING)
    watchfiles_logger.propagate = False
    app_dir = os.path.abspath(config.app_dir)
    logger.info("Reload: watching %s for changes to *.py files", app_dir)
    # KeyboardInterrupt: a signal that landed outside watchfiles' own handling.
    with contextlib.suppress(KeyboardInterrupt):
        watchfiles.run_process(
            app_dir,
            target=_serve_in_child,
            args=(app_ref, dataclasses.replace(config, reload=False)),
            target_type="function",
            watch_filter=watchfiles.PythonFilter(),
            callback=functools.partial(_log_changes, app_dir),
            sigint_timeout=math.ceil(config.shutdown_timeout) + 2,
        )
    logger.info("Reload: stopped")


def _log_changes(app_dir: str, changes: set[FileChange]) -> None:
    paths = sorted({os.path.relpath(path, app_dir) for _change, path in changes})
    logger.info("Reload: %s changed; restarting", ", ".join(paths))


def _serve_in_child(app_ref: str, config: Config) -> None:
    """The reload child's entry point (spawned, so it must be importable by name)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    setup_logging(config.log_level, config.access_log)
    try:
        app = resolve_app(app_ref, config)
    except ImportFromStringError as exc:
        logger.error("%s; waiting for a change", exc)
        sys.exit(EXIT_USAGE)
    sys.exit(serve_app(app, config))


# The exit codes and describe_address are re-exported: the CLI and scripts read them here.
__all__ = [
    "EXIT_CANNOT_LISTEN",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "EXIT_USAGE",
    "check_supported",
    "describe_address",
    "raise_open_file_limit",
    "resolve_app",
    "run",
    "run_config",
    "run_with_reload",
    "serve_app",
]
