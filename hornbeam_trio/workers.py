"""``--workers N``: N server processes sharing the listening sockets (pub/sub over Redis).

The parent binds every ``--bind`` address once, logs ``Listening on ...`` once, then
forks N workers; each inherits the listening sockets and runs its own Trio loop,
server and backend connection, and the kernel hands each new connection to one of them.
The parent runs no Trio and no app code: it only supervises.

* **Signals.**  Workers live in their own process group, so a Ctrl-C in the terminal
  reaches the parent only.  The first SIGINT/SIGTERM to the parent is forwarded as one
  SIGTERM to every worker (each then shuts down gracefully: close 1001, grace period);
  a second one is forwarded too, which makes the workers exit at once.
* **A worker that cannot start** (exit 3: app startup failed, Redis unreachable; exit 2)
  stops the whole server with that exit code.  A worker that dies otherwise (crash,
  SIGKILL, out of memory) is logged and replaced, so one crash never takes the port
  down; one that dies within a second of its start is replaced a second later.
* Exit code: 0 when every worker stopped cleanly after a signal, else the first
  non-zero worker code.
* **Metrics** (``--metrics-bind``): the parent binds that port too, and forks one more
  child, the collector (number 0, supervised and replaced like a worker), which serves
  it and sums what every worker answers on its private unix socket
  (metrics_workers.py).

Fork is used (not spawn) so the app is imported once, in the parent, before the
workers exist (like gunicorn's ``--preload``): import errors are reported once, with
exit code 2, by the CLI.  POSIX only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from types import FrameType
from typing import TYPE_CHECKING

import trio

from .backends.base import BackendUnavailable
from .config import Config, parse_metrics_bind
from .logs import logger, setup_logging
from .process import (
    EXIT_CANNOT_LISTEN,
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
from .server import (
    Server,
    _make_runtime,
    bound_address,
    make_listeners,
    serve_server,
)

if TYPE_CHECKING:
    from .types import ASGIApp

COLLECTOR = 0
"""The supervised child number of the metrics collector (workers are 1..N)."""

RESTART_DELAY = 1.0
"""A worker that dies sooner than this after its start is replaced only this much later."""


def serve_workers(app: ASGIApp, config: Config) -> int:
    """Bind, fork ``config.workers`` workers, supervise them; the exit code."""
    setup_logging(config.log_level, config.access_log)
    raise_open_file_limit()
    problem = trio.run(_check_backend, config)  # one line, not one per worker
    if problem is not None:
        logger.error("Backend unavailable: %s", problem)
        return EXIT_STARTUP_FAILED
    try:
        listeners = make_listeners(config)
    except OSError as exc:
        logger.error("Cannot listen: %s", exc)
        return EXIT_CANNOT_LISTEN
    metrics: _Metrics | None = None
    if config.metrics_bind is not None:
        try:
            metrics = _Metrics(config.metrics_bind, config.workers)
        except OSError as exc:
            for sock in listeners:
                sock.close()
            logger.error("Cannot listen for metrics: %s", exc)
            return EXIT_CANNOT_LISTEN
    for sock in listeners:
        logger.info("Listening on %s", describe_address(bound_address(sock), config))
    supervisor = _Supervisor(app, config, listeners, metrics)
    try:
        code = supervisor.run()
    finally:
        if metrics is not None:
            metrics.close()
        for sock in listeners:
            if sock.family == socket.AF_UNIX:
                try:
                    os.unlink(sock.getsockname())
                except OSError:
                    pass
            sock.close()
    if code == EXIT_OK:
        logger.info("Server stopped")
    return code


def _name(number: int) -> str:
    return "Metrics collector" if number == COLLECTOR else f"Worker {number}"


class _Metrics:
    """The parent's part of ``--metrics-bind`` with workers: the bound port and the
    directory of the workers' sockets (its own, 0700, removed at the end)."""

    def __init__(self, bind: str, workers: int) -> None:
        address = parse_metrics_bind(bind)
        host = address.host
        if host:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.listener = socket.create_server((host, address.port), family=family)
        elif socket.has_dualstack_ipv6():
            self.listener = socket.create_server(
                ("", address.port), family=socket.AF_INET6, dualstack_ipv6=True
            )
        else:
            self.listener = socket.create_server(("", address.port))
        self.directory = tempfile.mkdtemp(prefix="hornbeam-metrics-")
        from .metrics_workers import worker_socket

        self.paths = [worker_socket(self.directory, n) for n in range(1, workers + 1)]
        name = self.listener.getsockname()
        shown = f"[{name[0]}]" if ":" in name[0] else name[0]
        logger.info("Metrics on http://%s:%d/metrics", shown, name[1])

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Supervisor:
    def __init__(
        self,
        app: ASGIApp,
        config: Config,
        listeners: list[socket.socket],
        metrics: _Metrics | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.listeners = listeners
        self.metrics = metrics
        self.workers: dict[int, tuple[int, float]] = {}
        """pid -> (worker number, start time)."""
        self.signals = 0
        self.code: int | None = None

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if self.metrics is not None:
                self._start(COLLECTOR)
            for number in range(1, self.config.workers + 1):
                self._start(number)
            while self.workers:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                if pid not in self.workers:
                    continue
                number, started = self.workers.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                self._exited(number, pid, code, started)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.code or 0

    def _exited(self, number: int, pid: int, code: int, started: float) -> None:
        if self.signals:  # shutting down: collect the codes
            if code != 0 and self.code is None:
                self.code = code if code > 0 else 1
            return
        if code in (EXIT_USAGE, EXIT_STARTUP_FAILED):  # it says it cannot start: stop all
            logger.error(
                "%s (pid %d) could not start (exit %d): stopping", _name(number), pid, code
            )
            self.code = code
            self.signals = 1
            self._forward(signal.SIGTERM)
            return
        logger.error("%s (pid %d) exited with %d: starting another", _name(number), pid, code)
        if time.monotonic() - started < RESTART_DELAY:
            time.sleep(RESTART_DELAY)  # no hot loop of a worker that dies at once
            if self.signals:
                return
        self._start(number)

    def _start(self, number: int) -> None:
        freeze_startup_heap()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.setpgrp()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                code = self._child_main(number)
            except BaseException:
                logger.exception("%s failed", _name(number))
            finally:
                os._exit(code)
        self.workers[pid] = (number, time.monotonic())
        logger.info("Started %s (pid %d)", _name(number).lower(), pid)

    def _child_main(self, number: int) -> int:
        """In the forked child: its one job, with only the sockets that job needs."""
        metrics = self.metrics
        if metrics is None:
            return trio.run(_worker_main, self.app, self.config, self.listeners, None)
        if number == COLLECTOR:
            for sock in self.listeners:
                sock.close()
            return trio.run(_collector_main, metrics.listener, metrics.paths)
        metrics.listener.close()
        return trio.run(
            _worker_main, self.app, self.config, self.listeners, metrics.paths[number - 1]
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            logger.info("Received %s: stopping %d workers gracefully", name, len(self.workers))
        else:
            logger.warning("Received %s again: stopping the workers now", name)
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


async def _check_backend(config: Config) -> str | None:
    """Connect to the backend once, in the parent, before any worker exists."""
    runtime = _make_runtime(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.backend.run, runtime.hub.deliver_local)
            nursery.cancel_scope.cancel()
    except BaseException as exc:
        unavailable = only_exception(exc, BackendUnavailable)
        if unavailable is None:
            raise
        return str(unavailable)
    return None


async def _collector_main(listener: socket.socket, paths: list[str]) -> int:
    """The metrics collector: serve scrapes on the inherited socket until SIGINT/SIGTERM."""
    from .metrics_workers import serve_collector

    serve_scope = trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signals, signals, serve_scope)
            with serve_scope:
                await serve_collector(listener, paths)
            nursery.cancel_scope.cancel()
    return EXIT_OK


async def _worker_main(
    app: ASGIApp, config: Config, listeners: list[socket.socket], metrics_socket: str | None
) -> int:
    """One worker: serve on the inherited listeners until SIGINT/SIGTERM."""
    server = Server(app, config, _make_runtime(config))
    server.metrics_socket = metrics_socket
    serve_scope = trio.CancelScope()
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on_signals, signals, serve_scope)
                with serve_scope:
                    # The parent owns a unix socket's path and unlinks it at the end.
                    await serve_server(server, listeners, unlink_unix=False)
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        code = startup_failure_code(exc)
        if code is not None:
            return code
        raise
    return EXIT_OK
