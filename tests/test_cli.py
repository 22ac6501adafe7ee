"""The command line, app import, run() and the process around serve().

Error cases run the real ``python -m hornbeam_trio`` so they see what a user sees:
exit status 2, exactly one line on stderr naming the culprit, never a traceback.
The flag <-> Config mapping is checked field by field so the two cannot drift.
Signal handling is exercised in-process against a stand-in for ``server.serve``;
end-to-end tests against the real server run once ``hornbeam_trio.server`` exists.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import typing
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hornbeam_trio import cli, logs, runner
from hornbeam_trio.config import BindAddress, Config, ConfigError, flag_name
from hornbeam_trio.importer import ImportFromStringError, load_app

ROOT = Path(__file__).resolve().parent.parent

try:
    import hornbeam_trio.server  # noqa: F401

    server_ready = True
except ImportError:
    server_ready = False

needs_server = pytest.mark.skipif(not server_ready, reason="hornbeam_trio.server not written yet")

LISTENING = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hornbeam_trio", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def broken_app_dir(tmp_path: Path) -> Path:
    (tmp_path / "broken_on_import.py").write_text(
        "import os\n\nraise RuntimeError('database URL not set')\n"
    )
    return tmp_path


# --- errors: one line, exit 2 ------------------------------------------------------

ERROR_CASES = [
    pytest.param(["tests.apps.simple:hello", "--no-such-flag"], "--no-such-flag", id="bad-flag"),
    pytest.param(
        ["tests.apps.simple:hello", "--websocket-timeout", "abc"],
        "--websocket-timeout: expected an integer >= 0, got 'abc'",
        id="bad-int",
    ),
    pytest.param(["tests.apps.simple:hello", "--keepalive", "soon"], "--keepalive", id="bad-float"),
    pytest.param(
        ["tests.apps.simple:hello", "--busy-poll-us", "-1"],
        "--busy-poll-us: expected an integer >= 0, got -1",
        id="busy-poll-negative",
    ),
    pytest.param(
        ["tests.apps.simple:hello", "--busy-poll-us", "20000"],
        "--busy-poll-us: expected at most 10000",
        id="busy-poll-too-long",
    ),
    pytest.param(["tests.apps.simple:hello", "--lifespan", "maybe"], "--lifespan", id="bad-choice"),
    pytest.param(
        ["nosuch:app"], "cannot import 'nosuch:app': No module named 'nosuch'", id="no-module"
    ),
    pytest.param(
        ["tests.apps.simple:nope"],
        "cannot import 'tests.apps.simple:nope': "
        "module 'tests.apps.simple' has no attribute 'nope'",
        id="no-attribute",
    ),
    pytest.param(
        ["tests.apps.simple:NOT_AN_APP"],
        "'tests.apps.simple:NOT_AN_APP' is not callable",
        id="not-callable",
    ),
    pytest.param(["main"], "expected 'module:attribute'", id="no-colon"),
    pytest.param([], "APP", id="no-app"),
    pytest.param(
        ["tests.apps.simple:hello", "--certfile", "cert.pem"], "--certfile", id="cert-without-key"
    ),
    pytest.param(
        ["tests.apps.simple:hello", "--workers", "2"], "--workers", id="workers-memory-backend"
    ),
    pytest.param(
        ["tests.apps.simple:hello", "--workers", "2", "--backend", "redis://localhost:6379/0",
         "--reload"],
        "--workers: --reload runs one server process",
        id="workers-with-reload",
    ),
    pytest.param(
        ["tests.apps.simple:hello", "--app-dir", "/no/such/dir"], "--app-dir", id="bad-app-dir"
    ),
]


@pytest.mark.parametrize(("argv", "named"), ERROR_CASES)
def test_a_user_error_is_one_line_and_exit_2(argv: list[str], named: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hornbeam-trio: error: ")
    assert named in lines[0]


def test_a_module_that_raises_on_import_is_named_with_its_error(broken_app_dir: Path) -> None:
    result = run_cli("broken_on_import:app", "--app-dir", str(broken_app_dir))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("hornbeam-trio: error: cannot import 'broken_on_import:app': ")
    assert "RuntimeError: database URL not set" in line
    assert "broken_on_import.py:3" in line


def test_help_lists_every_flag_and_nothing_else() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))
    expected = {flag_name(f.name) for f in dataclasses.fields(Config)} | {"--help", "--version"}
    # A switch that is on by default has its --no- form too (--http2/--no-http2).
    expected |= {
        "--no-" + flag_name(f.name)[2:] for f in dataclasses.fields(Config) if f.default is True
    }
    assert flags == expected


# --- the flag <-> Config mapping ---------------------------------------------------

FULL_COMMAND_LINE = [
    "pkg.module:factory",
    "--bind", "127.0.0.1:9000",
    "--bind", "unix:/tmp/hornbeam.sock",
    "--backlog", "64",
    "--workers", "2",
    "--root-path", "/api",
    "--certfile", "cert.pem",
    "--keyfile", "key.pem",
    "--cacertfile", "ca.pem",
    "--tls-handshake-timeout", "2.5",
    "--limit-concurrency", "500",
    "--busy-poll-us", "0",
    "--lifespan", "off",
    "--factory",
    "--app-dir", "src",
    "--reload",
    "--keepalive", "5.5",
    "--timeout", "1000",
    "--max-request-line-size", "8192",
    "--max-header-size", "16384",
    "--max-headers", "50",
    "--max-request-head-size", "32768",
    "--max-request-body-size", "1048576",
    "--shutdown-timeout", "3",
    "--no-http2",
    "--http2-max-concurrent-streams", "7",
    "--websocket-timeout", "0",
    "--websocket-max-frame-size", "65536",
    "--websocket-compress",
    "--websocket-max-queue-bytes", "262144",
    "--websocket-ping-interval", "5000",
    "--websocket-allowed-origins", "https://example.com",
    "--websocket-allowed-origins", "https://*.example.com",
    "--backend", "redis://localhost:6379/0",
    "--slow-consumer", "drop-oldest",
    "--subscriber-queue-size", "16",
    "--subscriber-queue-bytes", "65536",
    "--history", "chat:*=100,300s",
    "--metrics-bind", "127.0.0.1:9100",
    "--log-level", "debug",
    "--access-log",
]  # fmt: skip

FULL_CONFIG = Config(
    bind=("127.0.0.1:9000", "unix:/tmp/hornbeam.sock"),
    backlog=64,
    workers=2,
    root_path="/api",
    certfile="cert.pem",
    keyfile="key.pem",
    cacertfile="ca.pem",
    tls_handshake_timeout=2.5,
    limit_concurrency=500,
    busy_poll_us=0,
    lifespan="off",
    factory=True,
    app_dir="src",
    reload=True,
    keepalive=5.5,
    timeout=1000,
    max_request_line_size=8192,
    max_header_size=16384,
    max_headers=50,
    max_request_head_size=32768,
    max_request_body_size=1048576,
    shutdown_timeout=3.0,
    http2=False,
    http2_max_concurrent_streams=7,
    websocket_timeout=0,
    websocket_max_frame_size=65536,
    websocket_compress=True,
    websocket_max_queue_bytes=262144,
    websocket_ping_interval=5000,
    websocket_allowed_origins=("https://example.com", "https://*.example.com"),
    backend="redis://localhost:6379/0",
    slow_consumer="drop-oldest",
    subscriber_queue_size=16,
    subscriber_queue_bytes=65536,
    history=("chat:*=100,300s",),
    metrics_bind="127.0.0.1:9100",
    log_level="debug",
    access_log=True,
)


def test_a_full_command_line_gives_the_expected_config() -> None:
    app_ref, config = cli.parse_args(FULL_COMMAND_LINE)
    assert app_ref == "pkg.module:factory"
    assert config == FULL_CONFIG


def test_the_full_command_line_sets_every_field_away_from_its_default() -> None:
    # So that a new Config field makes the test above incomplete, and fails here.
    unchanged = [
        f.name
        for f in dataclasses.fields(Config)
        if getattr(FULL_CONFIG, f.name) == getattr(Config(), f.name)
    ]
    assert unchanged == []


def test_no_flags_gives_configs_own_defaults() -> None:
    app_ref, config = cli.parse_args(["main:app"])
    assert app_ref == "main:app"
    assert config == Config()


def test_every_field_has_a_help_line() -> None:
    assert set(cli.HELP) == {f.name for f in dataclasses.fields(Config)}


def test_types_are_converted_so_config_gets_numbers() -> None:
    _, config = cli.parse_args(["m:a", "--keepalive", "3", "--backlog", "7"])
    assert config.keepalive == 3.0 and isinstance(config.keepalive, float)
    assert config.backlog == 7 and isinstance(config.backlog, int)


NUMERIC_FIELDS = [
    f.name
    for f in dataclasses.fields(Config)
    if typing.get_type_hints(Config)[f.name] in (int, float)
]


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
@pytest.mark.parametrize("text", ["abc", "1e999", "nan", ""])
def test_text_that_is_not_a_number_is_refused_naming_the_field(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cli.parse_args(["m:a", flag_name(name), text])
    assert caught.value.option == name
    assert repr(text) in caught.value.message


def test_run_refuses_an_unknown_option_before_starting() -> None:
    with pytest.raises(ConfigError, match="websocket_timout: unknown option"):
        runner.run("tests.apps.simple:hello", websocket_timout=5)


def test_reload_needs_an_import_string() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(ConfigError) as caught:
        runner.run(app, reload=True)
    assert caught.value.option == "reload"


# --- importing the app -------------------------------------------------------------


@pytest.fixture
def clean_import_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("hb_cli_"):
            del sys.modules[name]


@pytest.mark.usefixtures("clean_import_state")
def test_load_app_follows_a_dotted_attribute() -> None:
    app = load_app("tests.apps.simple:apps.echo", factory=False, app_dir=str(ROOT))
    assert app is sys.modules["tests.apps.simple"].echo


@pytest.mark.usefixtures("clean_import_state")
def test_load_app_calls_a_factory() -> None:
    app = load_app("tests.apps.simple:create_app", factory=True, app_dir=str(ROOT))
    assert app is sys.modules["tests.apps.simple"].hello


@pytest.mark.usefixtures("clean_import_state")
def test_load_app_imports_from_app_dir_first(tmp_path: Path) -> None:
    (tmp_path / "hb_cli_module.py").write_text("async def app(scope, receive, send): pass\n")
    app = load_app("hb_cli_module:app", factory=False, app_dir=str(tmp_path))
    assert sys.path[0] == str(tmp_path)
    assert app.__module__ == "hb_cli_module"


@pytest.mark.usefixtures("clean_import_state")
def test_a_failing_factory_is_reported_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "hb_cli_factory.py").write_text("def make():\n    raise KeyError('SECRET')\n")
    expected = r"factory 'hb_cli_factory:make' failed: KeyError: 'SECRET' \(.*hb_cli_factory.py:2\)"
    with pytest.raises(ImportFromStringError, match=expected):
        load_app("hb_cli_factory:make", factory=True, app_dir=str(tmp_path))


@pytest.mark.usefixtures("clean_import_state")
def test_a_missing_dependency_is_told_apart_from_a_missing_module(tmp_path: Path) -> None:
    (tmp_path / "hb_cli_dep.py").write_text("import hb_cli_not_installed\napp = None\n")
    with pytest.raises(ImportFromStringError) as caught:
        load_app("hb_cli_dep:app", factory=False, app_dir=str(tmp_path))
    message = str(caught.value)
    assert "ModuleNotFoundError: No module named 'hb_cli_not_installed'" in message
    assert "hb_cli_dep.py:1" in message


# --- logging -----------------------------------------------------------------------


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    saved = [
        (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled)
        for lg in (logs.logger, logs.access_logger)
    ]
    yield
    for lg, handlers, level, propagate, disabled in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


@pytest.mark.usefixtures("restore_loggers")
def test_log_lines_look_like_uvicorns_and_access_log_is_opt_in() -> None:
    import io

    stream = io.StringIO()
    logs.setup_logging("info", access_log=False, stream=stream)
    logs.logger.info("Listening on %s", "http://127.0.0.1:8000")
    logs.logger.debug("not at info")
    logs.access_logger.info("GET / 200")
    assert stream.getvalue() == "INFO:     Listening on http://127.0.0.1:8000\n"
    assert not logs.access_logger.isEnabledFor(logging.INFO)

    logs.setup_logging("trace", access_log=True, stream=stream)  # replaces, never doubles
    logs.access_logger.info("GET / 200")
    logs.logger.log(logs.TRACE, "frame")
    assert stream.getvalue().splitlines()[1:] == ["INFO:     GET / 200", "TRACE:    frame"]


# --- the process around serve(), with a stand-in server -----------------------------


class StartupFailed(Exception):
    pass


class FakeServer:
    """Stands in for hornbeam_trio.server: listens nowhere, records how it was stopped."""

    def __init__(self, *, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.listening = trio.Event()
        self.shutting_down = trio.Event()
        self.may_finish = trio.Event()
        self.may_finish.set()
        self.module = types.ModuleType("hornbeam_trio.server")
        self.module.serve = self.serve  # type: ignore[attr-defined]
        self.module.StartupFailed = StartupFailed  # type: ignore[attr-defined]

    async def serve(
        self, app: Any, config: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self.fail is not None:
            raise self.fail
        task_status.started([BindAddress("tcp", host="127.0.0.1", port=12345)])
        self.listening.set()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):  # a graceful shutdown outlives the cancel
                self.shutting_down.set()
                await self.may_finish.wait()


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer()
    monkeypatch.setitem(sys.modules, "hornbeam_trio.server", server.module)
    return server


async def _app(scope: Any, receive: Any, send: Any) -> None: ...


async def test_first_signal_shuts_down_gracefully_and_exits_0(
    fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logs.LOGGER_NAME)
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def main() -> None:
            codes.append(await runner._main(_app, Config()))

        nursery.start_soon(main)
        await fake_server.listening.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    assert codes == [runner.EXIT_OK]
    assert fake_server.shutting_down.is_set()
    assert "Listening on http://127.0.0.1:12345" in caplog.messages


async def test_second_signal_during_shutdown_exits_at_once(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server.may_finish = trio.Event()  # the graceful shutdown hangs
    forced: list[int] = []

    def fake_exit(code: int) -> None:
        forced.append(code)
        fake_server.may_finish.set()  # a real os._exit would never return

    monkeypatch.setattr(os, "_exit", fake_exit)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner._main, _app, Config())
        await fake_server.listening.wait()
        os.kill(os.getpid(), signal.SIGINT)
        await fake_server.shutting_down.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    assert forced == [runner.EXIT_FORCED]


async def test_lifespan_startup_failure_exits_3(
    fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.fail = StartupFailed("database unreachable")
    assert await runner._main(_app, Config()) == runner.EXIT_STARTUP_FAILED
    assert "Application startup failed: database unreachable" in caplog.messages


async def test_an_address_in_use_exits_1_in_one_line(
    fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.fail = OSError(98, "Address already in use")
    assert await runner._main(_app, Config()) == runner.EXIT_CANNOT_LISTEN
    assert caplog.messages == ["Cannot listen: [Errno 98] Address already in use"]


def test_listening_addresses_are_urls() -> None:
    tls = Config(certfile="c.pem", keyfile="k.pem")
    assert runner.describe_address(BindAddress("tcp", "::1", 8443), tls) == "https://[::1]:8443"
    assert runner.describe_address(BindAddress("unix", path="/run/s"), Config()) == "unix:/run/s"


# --- end to end, with the real server -----------------------------------------------


class Lines:
    """stderr of a child process, line by line, waited on with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: typing.TextIO) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError("process ended before: " + pattern.pattern + "\n" + self.text)
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match

    def rest(self) -> str:
        while (line := self._queue.get(timeout=20)) is not None:
            self.seen.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.seen)


def start_cli(*args: str) -> tuple[subprocess.Popen[str], Lines]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hornbeam_trio", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, Lines(process)


def get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        body: bytes = response.read()
        return body


@needs_server
def test_serves_http_and_stops_cleanly_on_sigterm() -> None:
    process, lines = start_cli("tests.apps.simple:hello", "--bind", "127.0.0.1:0")
    try:
        port = int(lines.wait_for(LISTENING).group(1))
        assert get(port) == b"hello"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in lines.rest()


@needs_server
def test_shutdown_timeout_bounds_the_whole_shutdown_of_the_process() -> None:
    """A response that never ends and a lifespan that never answers its shutdown share one
    --shutdown-timeout: the process exits after 1.5 s, not 1.5 s for each (3 s)."""
    process, lines = start_cli(
        "tests.apps.simple:stuck", "--bind", "127.0.0.1:0", "--shutdown-timeout", "1.5"
    )
    try:
        port = int(lines.wait_for(LISTENING).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert b"stuck:" in client.recv(4096)  # the response has begun, and hangs
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    assert 1.5 <= took < 2.6, took
    assert "lifespan shutdown did not complete" in lines.rest()


@needs_server
def test_a_lifespan_startup_failure_exits_3() -> None:
    result = run_cli("tests.apps.simple:failing_startup", "--bind", "127.0.0.1:0")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "database unreachable" in result.stderr


@needs_server
def test_reload_restarts_the_server_when_a_file_changes(tmp_path: Path) -> None:
    module = tmp_path / "hb_reload_app.py"
    source = textwrap.dedent(
        """
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"VERSION"})
        """
    )
    module.write_text(source.replace("VERSION", "one"))
    process, lines = start_cli(
        "hb_reload_app:app", "--reload", "--app-dir", str(tmp_path),
        "--bind", "127.0.0.1:0", "--lifespan", "off",
    )  # fmt: skip
    try:
        port = int(lines.wait_for(LISTENING).group(1))
        assert get(port) == b"one"
        module.write_text(source.replace("VERSION", "two"))
        port = int(lines.wait_for(LISTENING).group(1))
        assert get(port) == b"two"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # lets the parent stop its child
            process.wait(timeout=30)
    assert "Traceback" not in lines.rest()
