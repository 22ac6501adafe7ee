"""The life of one WebSocket connection as one state machine, with no I/O.

Rule: every decision about what a connection may do next lives here: which ASGI
``send`` message is allowed in which state, when a timer is due and what it
means, and the single point where the connection leaves ``OPEN``.  The Trio
shell (``ws_conn.WebSocketConnection``, a subclass) only reads, writes and
schedules; the readiness hub, the timer task and the delivery batcher all ask
:attr:`WebSocketSession.state` before they touch the connection.

The states and who moves between them::

    HANDSHAKE --app accepts------------------------------> OPEN
    HANDSHAKE --app denies / returns / raises / shutdown-> REJECTED  (HTTP answer)
    HANDSHAKE --client gone before the answer-----------> CLOSED
    OPEN      --we send Close (app, idle, slow consumer,
                shutdown, app returned)-----------------> CLOSING
    OPEN      --peer's Close, protocol failure, EOF,
                reset-----------------------------------> CLOSED
    CLOSING   --peer's Close, EOF, reset, close timeout--> CLOSED

Leaving ``OPEN`` (or ``HANDSHAKE``) for good goes through one method,
:meth:`WebSocketSession.end`, exactly once: it records the close code, and the
shell's :meth:`release` stops deliveries, ends the connection's subscriptions and
``subscription()`` iterators, closes its owned state and wakes whatever is parked,
in one synchronous step.  Nothing is sent after our Close frame but the bytes
already queued before it: ``send`` refuses data frames outside ``OPEN``.

The app's own life (running, then done) is a separate fact, :attr:`app_done`: an
app may outlive its connection by a grace period, and a connection may outlive
its app while it waits for the peer's Close.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

CLOSE_TIMEOUT = 5.0
"""Seconds we wait for the peer's close frame after sending ours."""
APP_EXIT_GRACE = 5.0
"""Seconds an app gets to return after its client is gone, before it is cancelled."""


class ConnState(enum.Enum):
    HANDSHAKE = "handshake"
    """The upgrade request is in; the app has not answered it."""
    REJECTED = "rejected"
    """Answered with HTTP (a denial response, 403, 500 or 503): never a WebSocket."""
    OPEN = "open"
    """Accepted: both directions carry messages."""
    CLOSING = "closing"
    """Our Close frame is out: reading on for the peer's, sending nothing more."""
    CLOSED = "closed"
    """Nothing more is read or sent."""


HANDSHAKE = ConnState.HANDSHAKE
REJECTED = ConnState.REJECTED
OPEN = ConnState.OPEN
CLOSING = ConnState.CLOSING
CLOSED = ConnState.CLOSED


class TimerAction(enum.Enum):
    """What a due deadline means; the shell carries it out."""

    NONE = "none"
    CANCEL_APP = "cancel app"
    """The client is gone and the app outstayed its grace."""
    CLOSE_TIMED_OUT = "close timed out"
    """Our Close went unanswered: give up on the handshake (1006)."""
    IDLE = "idle"
    """No frame began for the idle timeout: close 1001."""
    FRAME_TIMEOUT = "frame timeout"
    """A frame begun an idle timeout ago is still not complete: close 1008."""
    PING = "ping"
    """Quiet for the ping interval: send a ping."""


class ProtocolOrderError(RuntimeError):
    """An ASGI ``send`` message the connection's state does not allow."""


class WebSocketSession:
    """The sans-I/O core: state, close code, clocks.  Unit-tested without sockets."""

    __slots__ = (
        "_idle_timeout",
        "_ping_interval",
        "app_done",
        "close_code",
        "close_deadline",
        "close_reason",
        "frame_started",
        "grace_deadline",
        "last_activity",
        "pinged",
        "state",
        "watching",
    )

    def __init__(self, config: Config) -> None:
        self.state = HANDSHAKE
        self.app_done = False
        self.close_code: int | None = None
        """Set once, when the connection leaves OPEN (or HANDSHAKE) for good."""
        self.close_reason = ""
        self.last_activity = 0.0
        """When the last complete frame other than a ping arrived: a ping proves only that
        the peer writes, and a flood of them from a peer that reads nothing must not keep
        it open.  A live peer answers our pings, and a pong counts."""
        self.frame_started = math.inf
        """When the first byte of a frame still incomplete arrived (inf: none is).  From
        then the frame, not silence, is timed: it must be complete within the idle
        timeout, so bytes trickled one at a time never hold a connection open."""
        self.pinged = False
        self.watching = False
        """``pinged``, or a frame's deadline running: the bytes-in path takes its slow
        branch (one flag tested per read instead of two)."""
        self.close_deadline = math.inf
        self.grace_deadline = math.inf
        self._idle_timeout = config.idle_timeout_s
        self._ping_interval = config.ping_interval_s

    # ------------------------------------------------------------------ transitions
    def end(self, state: ConnState, code: int, reason: str = "") -> bool:
        """Move to CLOSING or CLOSED; True the first time the connection leaves OPEN.

        The caller releases what the connection holds when this returns True; CLOSED
        is final (a later CLOSING never reopens reading).
        """
        first = self.close_code is None
        if first:
            self.close_code = code
            self.close_reason = reason
        if self.state is not CLOSED and self.state is not REJECTED:
            self.state = state
        return first

    def reject(self) -> None:
        """The handshake is answered with HTTP: never a WebSocket."""
        if self.state is not HANDSHAKE:
            raise ProtocolOrderError("the handshake was answered already")
        self.state = REJECTED

    def check_accept(self) -> None:
        if self.state is not HANDSHAKE:
            raise ProtocolOrderError(
                f"websocket.accept after the handshake was answered ({self.state.value})"
            )

    def check_denial(self) -> None:
        if self.state is not HANDSHAKE:
            raise ProtocolOrderError(
                f"denial response after the handshake was answered ({self.state.value})"
            )

    def begin_close(self, now: float) -> None:
        """We sent Close: only the close handshake's timer applies from now on."""
        self.close_deadline = now + CLOSE_TIMEOUT

    def reading_over(self, now: float) -> bool:
        """CLOSED: True when the app, still running, now has its grace period."""
        if self.state is not REJECTED:
            self.state = CLOSED
        if self.app_done or self.grace_deadline != math.inf:
            return False
        self.grace_deadline = now + APP_EXIT_GRACE
        return True

    # ------------------------------------------------------------------ clocks
    def frames_parsed(self, now: float, complete: bool, partial: bool) -> bool:
        """Bytes were parsed: ``complete`` if a whole frame other than a ping came,
        ``partial`` if a frame is still arriving.  True when a deadline moved earlier
        (our ping was answered: the next one is due a ping interval from now), so the
        caller reschedules its timer.  The shell inlines the common case (complete,
        not partial, no ping out); ``test_ws_session.py`` checks both.
        """
        moved = False
        if complete:
            self.last_activity = now
            if self.pinged:
                self.pinged = False
                moved = True
        if partial:
            if complete or self.frame_started == math.inf:
                self.frame_started = now  # a frame began at the latest now
        else:
            self.frame_started = math.inf
        self.watching = self.pinged or self.frame_started != math.inf
        return moved

    def next_deadline(self) -> float:
        """The earliest instant at which :meth:`timer_action` may have work."""
        state = self.state
        if state is CLOSED or state is REJECTED:
            return math.inf if self.app_done else self.grace_deadline
        if state is HANDSHAKE:
            return math.inf
        deadline = self.close_deadline
        if state is CLOSING:
            return deadline
        idle = self._idle_timeout
        if idle is not None:
            begun = self.frame_started
            deadline = min(deadline, (self.last_activity if begun == math.inf else begun) + idle)
        ping = self._ping_interval
        if ping is not None and not self.pinged:
            deadline = min(deadline, self.last_activity + ping)
        return deadline

    def timer_action(self, now: float) -> TimerAction:
        state = self.state
        if state is CLOSED or state is REJECTED:
            if not self.app_done and now >= self.grace_deadline:
                return TimerAction.CANCEL_APP
            return TimerAction.NONE
        if state is HANDSHAKE:
            return TimerAction.NONE
        if now >= self.close_deadline:
            return TimerAction.CLOSE_TIMED_OUT
        if state is CLOSING:
            return TimerAction.NONE
        idle = self._idle_timeout
        if idle is not None:
            begun = self.frame_started
            if begun != math.inf:
                if now >= begun + idle:
                    return TimerAction.FRAME_TIMEOUT
            elif now >= self.last_activity + idle:
                return TimerAction.IDLE
        ping = self._ping_interval
        if ping is not None and not self.pinged and now >= self.last_activity + ping:
            self.pinged = True
            self.watching = True
            return TimerAction.PING
        return TimerAction.NONE
