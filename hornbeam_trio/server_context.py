"""What a connection may use of its server: the narrow interface between the two.

``server.Server`` provides it; ``http_conn`` (and whatever a connection hands on)
sees only this.  So the connection modules never import ``server``, and the server
can be replaced in their tests by anything with these attributes.  Imports nothing
of ours at run time (the types are for the checker only): a leaf of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .config import Config
    from .runtime import Runtime
    from .timers import TimerSweeper
    from .transport import Transport
    from .types import ASGIApp, Scope
    from .ws_send import DeliveryBatcher


class LifespanView(Protocol):
    """What a request reads of the lifespan: whether it runs, and the state it set up."""

    @property
    def supported(self) -> bool: ...

    @property
    def state(self) -> dict[str, Any]: ...


class RequestHead(Protocol):
    """What a scope is built from: an HTTP/1.1 ``Request`` or an HTTP/2 ``RequestReceived``."""

    @property
    def http_version(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def raw_path(self) -> bytes: ...
    @property
    def query_string(self) -> bytes: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...


class ServerContext(Protocol):
    """The server, as one of its connections sees it."""

    @property
    def app(self) -> ASGIApp: ...

    @property
    def config(self) -> Config: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def timers(self) -> TimerSweeper:
        """The clocks of every connection, in one task."""

    @property
    def batcher(self) -> DeliveryBatcher:
        """Coalesces the pub/sub deliveries of every WebSocket of the server."""

    @property
    def lifespan(self) -> LifespanView: ...

    @property
    def http_scheme(self) -> str: ...

    @property
    def shutting_down(self) -> bool:
        """Set once when shutdown begins; a connection then serves no further request."""

    def base_scope(self, request: RequestHead, transport: Transport, kind: str) -> Scope: ...

    def report_app_error(self, exc: BaseException) -> None: ...
