"""hornbeam_trio: a structured-concurrency ASGI and WebSocket server on Trio,
with Hornbeam's pub/sub and shared state (``from hornbeam_erlang import ...``)."""

from . import state
from .api import (
    History,
    HistoryUnavailable,
    Message,
    Position,
    SlowConsumer,
    decr,
    delete,
    get,
    history,
    incr,
    presence,
    presence_join,
    presence_leave,
    presence_topic,
    publish,
    set,
    state_decr,
    state_delete,
    state_get,
    state_get_multi,
    state_incr,
    state_keys,
    state_set,
    stats,
    subscribe,
    subscription,
    unsubscribe,
)
from .backends.base import BackendUnavailable, SyncUnavailable
from .config import Config, ConfigError
from .lifespan import StartupFailed
from .server import serve
from .types import ClientDisconnected, ConnectionEnded

__version__ = "0.1.0"


def run(app: object, **options: object) -> None:
    """Run a server in the foreground until SIGINT/SIGTERM (see ``hornbeam_trio.runner``)."""
    from .runner import run as _run

    _run(app, **options)  # type: ignore[arg-type]


__all__ = [
    "BackendUnavailable",
    "ClientDisconnected",
    "Config",
    "ConfigError",
    "ConnectionEnded",
    "History",
    "HistoryUnavailable",
    "Message",
    "Position",
    "SlowConsumer",
    "StartupFailed",
    "SyncUnavailable",
    "decr",
    "delete",
    "get",
    "history",
    "incr",
    "presence",
    "presence_join",
    "presence_leave",
    "presence_topic",
    "publish",
    "run",
    "serve",
    "set",
    "state",
    "state_decr",
    "state_delete",
    "state_get",
    "state_get_multi",
    "state_incr",
    "state_keys",
    "state_set",
    "stats",
    "subscribe",
    "subscription",
    "unsubscribe",
]
