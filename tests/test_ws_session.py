"""The WebSocket session's state machine and clocks, with no sockets (ws_session.py)."""

from __future__ import annotations

import math

import pytest

from hornbeam_trio.config import Config
from hornbeam_trio.ws_session import (
    APP_EXIT_GRACE,
    CLOSE_TIMEOUT,
    CLOSED,
    CLOSING,
    HANDSHAKE,
    OPEN,
    REJECTED,
    ProtocolOrderError,
    TimerAction,
    WebSocketSession,
)


def session(**options: object) -> WebSocketSession:
    return WebSocketSession(Config.from_options(**options))


def opened(**options: object) -> WebSocketSession:
    s = session(**options)
    s.check_accept()
    s.state = OPEN
    return s


def test_a_new_session_waits_for_the_apps_answer() -> None:
    s = session()
    assert s.state is HANDSHAKE and s.close_code is None
    assert s.next_deadline() == math.inf
    assert s.timer_action(1e9) is TimerAction.NONE


def test_accept_and_denial_are_allowed_only_before_the_handshake_is_answered() -> None:
    s = opened()
    with pytest.raises(ProtocolOrderError, match="accept"):
        s.check_accept()
    with pytest.raises(ProtocolOrderError, match="denial"):
        s.check_denial()
    with pytest.raises(ProtocolOrderError):
        s.reject()
    r = session()
    r.reject()
    assert r.state is REJECTED
    with pytest.raises(ProtocolOrderError):
        r.check_accept()


def test_leaving_open_happens_once_and_keeps_the_first_code() -> None:
    s = opened()
    assert s.end(CLOSING, 1001, "idle timeout") is True
    assert s.state is CLOSING
    assert s.end(CLOSED, 1000, "peer's reply") is False
    assert (s.state, s.close_code, s.close_reason) == (CLOSED, 1001, "idle timeout")
    # CLOSED is final: a late CLOSING never reopens reading.
    assert s.end(CLOSING, 1011) is False
    assert s.state is CLOSED


def test_a_rejected_handshake_stays_rejected() -> None:
    s = session()
    s.reject()
    s.end(CLOSED, 1006)
    s.reading_over(0.0)
    assert s.state is REJECTED


def test_idle_and_ping_deadlines_follow_the_last_activity() -> None:
    s = opened(websocket_timeout=3000, websocket_ping_interval=1000)
    s.last_activity = 10.0
    assert s.next_deadline() == 11.0
    assert s.timer_action(10.5) is TimerAction.NONE
    assert s.timer_action(11.0) is TimerAction.PING
    assert s.pinged
    assert s.timer_action(11.5) is TimerAction.NONE  # one ping out at a time
    assert s.next_deadline() == 13.0
    assert s.timer_action(13.0) is TimerAction.IDLE


def test_after_our_close_only_the_close_timer_counts() -> None:
    s = opened(websocket_timeout=3000, websocket_ping_interval=1000)
    s.last_activity = 0.0
    s.begin_close(2.0)
    s.end(CLOSING, 1000)
    assert s.next_deadline() == 2.0 + CLOSE_TIMEOUT
    assert s.timer_action(4.0) is TimerAction.NONE  # no idle close or ping while closing
    assert s.timer_action(2.0 + CLOSE_TIMEOUT) is TimerAction.CLOSE_TIMED_OUT


def test_an_app_outliving_its_client_gets_the_grace_then_is_cancelled() -> None:
    s = opened()
    s.end(CLOSED, 1006)
    assert s.reading_over(5.0) is True
    assert s.reading_over(6.0) is False  # the grace starts once
    assert s.next_deadline() == 5.0 + APP_EXIT_GRACE
    assert s.timer_action(5.0 + APP_EXIT_GRACE - 0.1) is TimerAction.NONE
    assert s.timer_action(5.0 + APP_EXIT_GRACE) is TimerAction.CANCEL_APP
    s.app_done = True
    assert s.timer_action(1e9) is TimerAction.NONE
    assert s.next_deadline() == math.inf


def test_an_app_already_done_gets_no_grace() -> None:
    s = opened()
    s.app_done = True
    s.end(CLOSED, 1000)
    assert s.reading_over(1.0) is False
    assert s.grace_deadline == math.inf


def test_a_frame_begun_gets_the_idle_timeout_to_complete_then_frame_timeout() -> None:
    s = opened(websocket_timeout=10_000, websocket_ping_interval=0)
    s.frames_parsed(0.0, True, False)
    assert s.next_deadline() == 10.0
    s.frames_parsed(9.0, False, True)  # a frame's first bytes, just before the idle timeout
    s.frames_parsed(12.0, False, True)  # more bytes of it: no reset
    assert s.next_deadline() == 19.0  # its own deadline, from its first byte
    assert s.timer_action(18.9) is TimerAction.NONE
    assert s.timer_action(19.0) is TimerAction.FRAME_TIMEOUT


def test_a_completed_frame_resets_the_idle_timer_and_ends_the_frame_deadline() -> None:
    s = opened(websocket_timeout=10_000, websocket_ping_interval=0)
    s.frames_parsed(5.0, False, True)
    s.frames_parsed(7.0, True, False)
    assert s.frame_started == math.inf
    assert s.next_deadline() == 17.0
    assert s.timer_action(17.0) is TimerAction.IDLE


def test_pings_alone_are_not_activity() -> None:
    s = opened(websocket_timeout=10_000, websocket_ping_interval=0)
    s.frames_parsed(0.0, True, False)
    for t in range(1, 10):
        s.frames_parsed(float(t), False, False)  # a ping: parsed, not activity
    assert s.timer_action(10.0) is TimerAction.IDLE
