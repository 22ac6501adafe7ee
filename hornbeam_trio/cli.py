"""Command line: ``hornbeam-trio module:app [flags]``, also ``python -m hornbeam_trio``.

The flags are generated from ``dataclasses.fields(Config)``, so the CLI, ``run()`` and
Config cannot drift apart: field ``websocket_timeout`` is flag ``--websocket-timeout``.
Text is converted only as far as argparse must (to int or float); every rule about
which values are allowed lives in Config, and its ConfigError is reported naming the
flag.  A value that is not even a number is handed to Config unconverted, so it gets
the same message as one out of range (``expected an integer >= 0, got 'abc'``).

Every user error (bad flag, bad value, an app that does not import) is one line on
stderr and exit status 2: no usage dump, no traceback, so it reads well in a terminal
and in a service manager's journal alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from hornbeam_trio import runner
from hornbeam_trio.config import LOG_LEVELS, Config, ConfigError, flag_name
from hornbeam_trio.importer import ImportFromStringError

PROG = "hornbeam-trio"

# One help line per Config field; tests check the keys against the fields.
HELP: dict[str, str] = {
    "bind": "address to listen on: host:port, [v6]:port or unix:/path; repeat for several",
    "backlog": "listen() backlog of each listening socket",
    "workers": "worker processes sharing the listening sockets (more than 1 needs --backend redis://)",
    "root_path": "ASGI root_path, for an app mounted below a URL prefix",
    "certfile": "TLS certificate chain (PEM); with --keyfile serves https and wss",
    "keyfile": "TLS private key (PEM)",
    "cacertfile": "CA certificates (PEM) for TLS",
    "tls_handshake_timeout": "seconds a TLS client gets to finish its handshake (0: no limit)",
    "limit_concurrency": "most connections served at once; beyond it requests get 503",
    "busy_poll_us": (
        "microseconds a lone connection polls for its next bytes before sleeping, when its"
        " peer answered fast last time (0: never poll)"
    ),
    "lifespan": "ASGI lifespan protocol: auto, on (fail if the app lacks it) or off",
    "factory": "APP names a function that returns the application",
    "app_dir": "directory put first on sys.path before APP is imported",
    "reload": "development: restart when a *.py file under --app-dir changes",
    "keepalive": "seconds an idle keep-alive HTTP connection is held open",
    "timeout": (
        "ms to receive a request head, between body chunks, and for a client to take"
        " any of its response (0: no limit)"
    ),
    "max_request_line_size": "longest request line accepted, in bytes",
    "max_header_size": "longest single header accepted, in bytes",
    "max_headers": "most headers accepted in one request",
    "max_request_head_size": "largest request line plus headers, in bytes; more gets 431",
    "max_request_body_size": "largest request body, in bytes; more gets 413 (default: no limit)",
    "shutdown_timeout": (
        "seconds the whole shutdown may take: open connections, then lifespan shutdown"
    ),
    "http2": "serve HTTP/2 (ALPN h2 over TLS, h2c by prior knowledge on cleartext)",
    "http2_max_concurrent_streams": "requests one HTTP/2 connection may have in flight",
    "websocket_timeout": "ms without any frame from the peer before a WebSocket closes (0: never)",
    "websocket_max_frame_size": "largest WebSocket frame, and message, accepted, in bytes",
    "websocket_compress": "negotiate permessage-deflate compression",
    "websocket_max_queue_bytes": (
        "decoded bytes of received WebSocket messages queued for an app away from "
        "receive() before reading stops"
    ),
    "websocket_ping_interval": "ms between server pings on a quiet WebSocket (0: no pings)",
    "websocket_allowed_origins": (
        "origin (or fnmatch pattern) a WebSocket handshake may come from; repeat for several;"
        " others get 403 (default: any)"
    ),
    "backend": "pub/sub and state backend: memory, or redis://host:port/db",
    "slow_consumer": "a subscriber whose queue is full is closed, or loses its oldest message",
    "subscriber_queue_size": (
        "messages queued per subscriber before the slow-consumer policy applies"
    ),
    "subscriber_queue_bytes": (
        "bytes of messages queued per subscriber before the slow-consumer policy applies"
    ),
    "history": (
        "PATTERN=SIZE[,AGEs]: topics matching the fnmatch PATTERN keep their last SIZE"
        " messages (at most AGE seconds old) for recovery; repeatable"
    ),
    "metrics_bind": (
        "host:port of a separate listener serving Prometheus metrics at /metrics"
        " (needs the metrics extra; default: off)"
    ),
    "log_level": "lowest level logged",
    "access_log": "log one line per HTTP request and WebSocket session",
}

_EXTRA_CHOICES: dict[str, tuple[str, ...]] = {"log_level": LOG_LEVELS}


class UsageError(Exception):
    """A command line argparse rejected; the message is one line."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block first; one line is easier to read.
        raise UsageError(message)


def _number(convert: Callable[[str], int | float]) -> Callable[[str], object]:
    """Convert if possible; otherwise keep the text so that Config words the error."""

    def parse(text: str) -> object:
        try:
            value = convert(text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text

    parse.__name__ = convert.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The parser, one flag per Config field, none of them with a default of its own:
    an absent flag leaves the field to Config's default."""
    parser = _OneLineParser(
        prog=PROG,
        description="Serve an ASGI 3 application (HTTP/1.1, HTTP/2 and WebSocket) on Trio.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "app", metavar="APP", help="the application as module:attribute (attribute may be dotted)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        _add_flag(parser, field, hints[field.name])
    return parser


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field[Any], hint: Any) -> None:
    default = field.default
    help_text = HELP.get(field.name, "").replace("%", "%%")
    flag = flag_name(field.name)
    if hint is bool:
        if default:  # on by default: --NAME and --no-NAME
            parser.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(flag, dest=field.name, action="store_true", help=help_text)
        return
    if default not in (None, ""):
        shown = ", ".join(default) if isinstance(default, tuple) else default
        help_text += f" (default: {shown})"
    kwargs: dict[str, Any] = {"dest": field.name, "help": help_text}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int or _is_optional(origin, args, int):
        # Config keeps Hornbeam's units: integer timeouts and intervals are milliseconds.
        timing = "timeout" in field.name or "interval" in field.name
        kwargs.update(type=_number(int), metavar="MS" if timing else "INT")
    elif hint is float:
        kwargs.update(type=_number(float), metavar="SECONDS")
    elif hint is str or _is_optional(origin, args, str):
        choices = _EXTRA_CHOICES.get(field.name)
        kwargs["metavar"] = "{" + ",".join(choices) + "}" if choices else field.name.upper()
    elif origin is Literal and all(isinstance(arg, str) for arg in args):
        kwargs["metavar"] = "{" + ",".join(args) + "}"
    elif origin is tuple and args == (str, Ellipsis):
        kwargs.update(action="append", metavar=field.name.upper())
    else:
        raise TypeError(f"Config.{field.name}: no command-line form for {hint!r}")
    parser.add_argument(flag, **kwargs)


def _is_optional(origin: Any, args: tuple[Any, ...], kind: type) -> bool:
    return origin in (typing.Union, types.UnionType) and set(args) == {kind, type(None)}


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, Config]:
    """The app reference and the Config a command line asks for.

    Raises UsageError for what argparse rejects and ConfigError for a bad value.
    """
    namespace = build_parser().parse_args(argv)
    options = vars(namespace)
    app_ref: str = options.pop("app")
    if "bind" in options:
        options["bind"] = tuple(options["bind"])
    return app_ref, Config.from_options(**options)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hornbeam-trio`` and ``python -m hornbeam_trio``; returns the exit code."""
    try:
        app_ref, config = parse_args(argv)
        runner.check_supported(app_ref, config)
        if config.reload:
            runner.run_with_reload(app_ref, config)
            return runner.EXIT_OK
        app = runner.resolve_app(app_ref, config)
    except UsageError as exc:
        return _fail(str(exc))
    except ConfigError as exc:
        return _fail(f"{flag_name(exc.option)}: {exc.message}")
    except ImportFromStringError as exc:
        return _fail(str(exc))
    try:
        return runner.serve_app(app, config)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return runner.EXIT_USAGE


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hornbeam_trio")
    except PackageNotFoundError:  # running from a source checkout
        return "(not installed)"


__all__ = ["HELP", "PROG", "UsageError", "build_parser", "main", "parse_args"]
