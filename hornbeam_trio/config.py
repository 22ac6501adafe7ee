"""The one frozen configuration object.

Every option has one name everywhere: the ``Config`` field, the keyword of
``hornbeam_trio.run()`` and the CLI flag (``websocket_timeout`` <->
``--websocket-timeout``).  Names, units and defaults follow Hornbeam's documented
options (milliseconds where Hornbeam uses milliseconds) so a ported deployment
reads the same.  Validation happens once, here, so the rest of the server can
trust every value.  This module imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

LifespanMode = Literal["auto", "on", "off"]
SlowConsumerPolicy = Literal["close", "drop-oldest"]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(ValueError):
    """An option has a bad value; ``option`` names it the way the user spelled it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def flag_name(option: str) -> str:
    return "--" + option.replace("_", "-")


BUSY_POLL_US_MAX = 10_000
"""The longest --busy-poll-us accepted: 10 ms, far beyond any wakeup it could save."""


@dataclass(frozen=True)
class Config:
    # --- listening -------------------------------------------------------
    bind: tuple[str, ...] = ("127.0.0.1:8000",)
    """host:port, [v6]:port or unix:/path; several are allowed."""
    backlog: int = 1024
    workers: int = 1
    root_path: str = ""
    certfile: str | None = None
    keyfile: str | None = None
    cacertfile: str | None = None
    tls_handshake_timeout: float = 10.0
    """Seconds a TLS client gets to finish its handshake before it is dropped (0: no limit)."""
    limit_concurrency: int | None = None
    """Connections (HTTP and WebSocket) served at once; a request on one more gets 503
    and a WebSocket handshake is refused with 503 before the app runs.  None: no limit."""
    busy_poll_us: int = 50
    """Microseconds a lone connection's wait polls for its next bytes before it sleeps,
    when its last wait was short (within twice that) and did not poll in vain (0: always
    sleep).  Waking a sleeping process costs ~20 us each way on a VM; a peer that answers
    within the window is served without it.  CPU is spent only while such a peer keeps
    answering (see readiness.py, "Busy polling")."""

    # --- app ---------------------------------------------------------------
    lifespan: LifespanMode = "auto"
    factory: bool = False
    app_dir: str = "."
    reload: bool = False

    # --- HTTP --------------------------------------------------------------
    keepalive: float = 2.0
    """Seconds an idle keep-alive connection is held open (Hornbeam: 2 s)."""
    timeout: int = 30000
    """Milliseconds to receive a complete request head, and between body chunks; also how
    long a client may take none of its response (it stopped reading) before it is dropped."""
    max_request_line_size: int = 4094
    max_header_size: int = 8190
    max_headers: int = 100
    max_request_head_size: int = 64 * 1024
    """Bytes of a request line plus its headers (and, apart, of chunked trailers); more
    gets 431 as soon as it is seen.  Bounds what an unfinished head can hold: 64 KiB is
    Envoy's default (60 KiB) rounded up, above nginx's 4 x 8 KiB and Node's 16 KiB, and
    far above what browsers send (cookies included); max_headers x max_header_size alone
    would allow 800 KiB per connection."""
    max_request_body_size: int | None = None
    """Bytes of one request body; more gets 413 (a Content-Length before the app runs,
    a chunked body as it arrives).  None: no limit (the app reads the body as it comes)."""
    shutdown_timeout: float = 10.0
    """Seconds in-flight HTTP responses get to finish after shutdown begins."""
    http2: bool = True
    """Serve HTTP/2: ALPN ``h2`` over TLS (``http/1.1`` still offered) and h2c by prior
    knowledge on cleartext ports.  Off: HTTP/1.1 only."""
    http2_max_concurrent_streams: int = 100
    """SETTINGS_MAX_CONCURRENT_STREAMS: requests one HTTP/2 connection may have in flight."""

    # --- WebSocket ---------------------------------------------------------
    websocket_timeout: int = 60000
    """Idle timeout in ms: no frame at all from the peer for this long closes it."""
    websocket_max_frame_size: int = 16 * 1024 * 1024
    """Largest frame, and largest reassembled message, accepted (bytes)."""
    websocket_compress: bool = False
    websocket_max_queue_bytes: int = 1024 * 1024
    """Decoded bytes of received messages (text: characters) queued for an app that is
    not calling receive() before reading stops (TCP backpressure), besides the 64-message
    bound.  The message that crosses it is queued whole."""
    websocket_ping_interval: int = 20000
    """ms between server pings on a quiet connection (0 disables)."""
    websocket_allowed_origins: tuple[str, ...] = ()
    """Origin header values a WebSocket handshake may carry: exact origins or fnmatch
    patterns (``https://*.example.com``).  Empty: any origin.  A handshake whose Origin
    matches none gets 403 before the app runs; one without Origin (not a browser) passes."""

    # --- pub/sub and state -------------------------------------------------
    backend: str = "memory"
    slow_consumer: SlowConsumerPolicy = "close"
    subscriber_queue_size: int = 1024
    """Deliveries queued per subscriber before the slow-consumer policy applies."""
    subscriber_queue_bytes: int = 4 * 1024 * 1024
    """Bytes of deliveries queued per subscriber before the policy applies: 1,024
    messages of 4 KiB.  What a subscriber holds are references to frames every
    subscriber shares, so this bounds the accounting more than the memory; a message
    larger than this still reaches a subscriber with nothing queued."""
    history: tuple[str, ...] = ()
    """``PATTERN=SIZE[,AGEs]``: topics matching the fnmatch PATTERN keep their last SIZE
    messages (for at most AGE seconds) for recovery; the first matching entry wins.
    Over Redis the history is shared by every process, which should agree on these."""

    # --- metrics -----------------------------------------------------------
    metrics_bind: str | None = None
    """host:port of a listener of its own serving Prometheus text at ``/metrics``
    (needs ``prometheus-client``, the ``metrics`` extra).  None: no metrics, and the
    server pays nothing for them."""

    # --- logging -----------------------------------------------------------
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bind, str):
            object.__setattr__(self, "bind", (self.bind,))
        else:
            object.__setattr__(self, "bind", tuple(self.bind))
        if not self.bind:
            raise ConfigError("bind", "at least one address is required")
        for address in self.bind:
            parse_bind(address)
        origins = self.websocket_allowed_origins
        origins = (origins,) if isinstance(origins, str) else tuple(origins)
        object.__setattr__(self, "websocket_allowed_origins", origins)
        history = (self.history,) if isinstance(self.history, str) else tuple(self.history)
        object.__setattr__(self, "history", history)
        for entry in history:
            parse_history(entry)
        for origin in origins:
            if not isinstance(origin, str) or not origin:
                raise ConfigError(
                    "websocket_allowed_origins", f"expected an origin or pattern, got {origin!r}"
                )
        if self.limit_concurrency is not None:
            _require_int("limit_concurrency", self.limit_concurrency, minimum=1)
        if self.max_request_body_size is not None:
            _require_int("max_request_body_size", self.max_request_body_size, minimum=0)
        for name in (
            "workers",
            "backlog",
            "max_request_line_size",
            "max_header_size",
            "max_headers",
            "max_request_head_size",
            "http2_max_concurrent_streams",
            "websocket_max_frame_size",
            "websocket_max_queue_bytes",
            "subscriber_queue_size",
            "subscriber_queue_bytes",
        ):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("timeout", "websocket_timeout", "websocket_ping_interval"):
            _require_int(name, getattr(self, name), minimum=0)
        _require_int("busy_poll_us", self.busy_poll_us, minimum=0)
        if self.busy_poll_us > BUSY_POLL_US_MAX:
            raise ConfigError(
                "busy_poll_us",
                f"expected at most {BUSY_POLL_US_MAX} (a longer poll is a busy server, not a"
                f" shorter wait), got {self.busy_poll_us}",
            )
        for name in ("keepalive", "shutdown_timeout", "tls_handshake_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(name, f"expected a number of seconds >= 0, got {value!r}")
        _require_choice("lifespan", self.lifespan, ("auto", "on", "off"))
        _require_choice("slow_consumer", self.slow_consumer, ("close", "drop-oldest"))
        _require_choice("log_level", self.log_level, LOG_LEVELS)
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("certfile", "--certfile and --keyfile go together")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError("root_path", "must start with '/' and not end with '/'")
        if not (self.backend == "memory" or self.backend.startswith(("redis://", "rediss://"))):
            raise ConfigError(
                "backend", f"expected 'memory' or redis://host:port/db, got {self.backend!r}"
            )
        if self.metrics_bind is not None:
            parse_metrics_bind(self.metrics_bind, self.bind)
        if self.workers > 1 and self.backend == "memory":
            raise ConfigError(
                "workers",
                "the in-process (memory) backend keeps pub/sub and state inside one process, "
                "so --workers > 1 needs --backend redis://...",
            )

    @classmethod
    def from_options(cls, **options: Any) -> Config:
        """Build from keyword options, naming any unknown one (``run()`` uses this)."""
        known = {f.name for f in dataclasses.fields(cls)}
        for name in options:
            if name not in known:
                raise ConfigError(name, "unknown option")
        return cls(**options)

    @property
    def history_rules(self) -> tuple[tuple[str, int, float | None], ...]:
        """``history`` parsed: (pattern, size, max age in seconds or None), in order."""
        return tuple(parse_history(entry) for entry in self.history)

    @property
    def ssl_enabled(self) -> bool:
        return self.certfile is not None

    @property
    def idle_timeout_s(self) -> float | None:
        return self.websocket_timeout / 1000 if self.websocket_timeout else None

    @property
    def ping_interval_s(self) -> float | None:
        return self.websocket_ping_interval / 1000 if self.websocket_ping_interval else None

    @property
    def request_timeout_s(self) -> float | None:
        return self.timeout / 1000 if self.timeout else None


@dataclass(frozen=True)
class BindAddress:
    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""


def parse_bind(address: str) -> BindAddress:
    """``host:port``, ``[::]:port`` or ``unix:/path``."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ConfigError("bind", f"empty unix socket path in {address!r}")
        if not hasattr(socket, "AF_UNIX"):  # Windows' Python has none
            raise ConfigError("bind", f"unix sockets are not available on {sys.platform}")
        return BindAddress("unix", path=path)
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError("bind", f"expected host:port, [v6]:port or unix:/path, got {address!r}")
    port = int(port_text)
    if port > 65535:
        raise ConfigError("bind", f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return BindAddress("tcp", host=host or "0.0.0.0", port=port)


def parse_metrics_bind(address: object, app_binds: tuple[str, ...] = ()) -> BindAddress:
    """``host:port`` (or ``[v6]:port``) for the metrics listener: TCP only, and never a
    port the app listens on (port 0, a free port, excepted)."""
    form = f"expected host:port or [v6]:port, got {address!r}"
    if not isinstance(address, str) or address.startswith("unix:"):
        raise ConfigError("metrics_bind", form)
    try:
        parsed = parse_bind(address)
    except ConfigError as exc:
        out_of_range = exc.message.startswith("port out of range")
        raise ConfigError("metrics_bind", exc.message if out_of_range else form) from None
    for app_bind in app_binds:
        app = parse_bind(app_bind)
        if parsed.port and app.kind == "tcp" and app.port == parsed.port:
            raise ConfigError(
                "metrics_bind",
                f"{address!r} is the app's port too ({app_bind}); metrics need a port of their own",
            )
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            "metrics_bind",
            "needs prometheus-client: pip install 'hornbeam_trio[metrics]'",
        )
    return parsed


_HISTORY_FORM = "expected PATTERN=SIZE[,AGEs] such as 'chat:*=100,300s'"


def parse_history(entry: object) -> tuple[str, int, float | None]:
    """``chat:*=100,300s`` -> ("chat:*", 100, 300.0); ``feed=50`` -> ("feed", 50, None)."""
    if not isinstance(entry, str):
        raise ConfigError("history", f"{_HISTORY_FORM}, got {entry!r}")
    pattern, sep, limits = entry.rpartition("=")
    size_text, comma, age_text = limits.partition(",")
    if not sep or not pattern or not size_text.isdigit() or int(size_text) < 1:
        raise ConfigError("history", f"{_HISTORY_FORM}, got {entry!r}")
    if not comma:
        return pattern, int(size_text), None
    number = age_text.removesuffix("s")
    try:
        age = float(number)
    except ValueError:
        age = -1.0
    if not number or not age > 0 or age == float("inf"):
        raise ConfigError("history", f"{_HISTORY_FORM} (AGE: seconds > 0), got {entry!r}")
    return pattern, int(size_text), age


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"expected an integer >= {minimum}, got {value!r}")


def _require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, f"expected one of {', '.join(choices)}; got {value!r}")


DEFAULT_CONFIG = Config()

__all__ = [
    "DEFAULT_CONFIG",
    "BindAddress",
    "Config",
    "ConfigError",
    "flag_name",
    "parse_bind",
    "parse_history",
    "parse_metrics_bind",
]
