"""Push subscribers that recover: ``subscribe(topic, since=position)``.

The push form has no iterator through which the app could read positions, so what
reaches the WebSocket client carries them itself.  First one *recovery frame*::

    {"topic": "chat:lobby", "recovered": true, "position": "EPOCH-OFFSET"}

(``position``: the topic's newest when its history was read; ``recovered``: as
``Subscription.recovered``), then every message, replayed and live, as::

    {"topic": "chat:lobby", "position": "EPOCH-OFFSET", "data": <the message>}

(a bytes message comes as ``"base64"`` instead of ``"data"``).  The client keeps the
last position it saw and sends it back as ``since`` when it reconnects.

Invariants of :class:`PositionedPush`: until the history read arrives (at once on the
memory backend, a round trip over Redis) live deliveries are held, not pushed; then the
recovery frame, the replay and the held deliveries go out in that order, each message
once: a live delivery at or below the read's position is in the replay already.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from .backends.base import HistoryRead
from .backends.codec import EncodedJSON
from .backends.history import Position
from .pubsub import Delivery, Subscriber, replayed

logger = logging.getLogger("hornbeam_trio")

HELD_LIMIT = 4096
"""Live deliveries held while the history read is on its way; past this many the
connection is closed as a slow consumer (1013) rather than held without bound."""


class PositionedPush:
    """``target`` (the WebSocket connection) as a subscriber of ``topic`` since a position.

    It stands for its target in the connection's and the hub's subscriber sets (same
    hash, equal to it), so a connection has one push subscription per topic and
    ``unsubscribe(topic)`` and the connection's end find this one as they find a plain one.
    """

    __slots__ = ("_held", "_through", "target", "topic")

    def __init__(self, topic: str, target: Subscriber) -> None:
        self.topic = topic
        self.target = target
        self._held: list[Delivery] | None = []
        """Live deliveries waiting for the history read; None once it has arrived."""
        self._through: Position | None = None

    def __hash__(self) -> int:
        return hash(self.target)

    def __eq__(self, other: object) -> bool:
        return other is self or other is self.target

    def deliver(self, delivery: Delivery) -> bool:
        held = self._held
        if held is not None:
            if len(held) >= HELD_LIMIT:
                self._close(1013, "slow consumer")
                return False
            held.append(delivery)
            return True
        through = self._through
        if through is not None and replayed(delivery, through):
            return True
        return self.target.deliver(positioned(self.topic, delivery))

    def replay(self, result: HistoryRead | BaseException) -> None:
        """The history read (or what stopped it) has arrived: push it, then go live."""
        held, self._held = self._held, None
        if isinstance(result, BaseException):
            logger.warning("closing WebSocket: history of %r unavailable: %s", self.topic, result)
            self._close(1011, "topic history unavailable")
            return
        self._through = result.position
        recovery = {
            "topic": self.topic,
            "recovered": result.recovered,
            "position": str(result.position),
        }
        self.target.deliver(Delivery(EncodedJSON(json.dumps(recovery))))
        for kept in result.messages:
            self.target.deliver(positioned(self.topic, Delivery(kept)))
        for delivery in held or ():
            self.deliver(delivery)

    def _close(self, code: int, reason: str) -> None:
        close_now = getattr(self.target, "close_now", None)
        if close_now is not None:
            close_now(code, reason)


_last: tuple[Delivery | None, str, Delivery | None] = (None, "", None)
"""The last message framed for positioned push: the hub hands one delivery to every
subscriber of a topic in turn, so all of them share one envelope, encoded once."""


def positioned(topic: str, delivery: Delivery) -> Delivery:
    """``delivery`` in its envelope with its position (as is if it has none: the topic's
    history was configured away)."""
    global _last
    source, last_topic, envelope = _last
    if source is delivery and last_topic == topic and envelope is not None:
        return envelope
    position = delivery.position
    if position is None:
        return delivery
    message: Any = delivery.message
    head = f'{{"topic":{json.dumps(topic)},"position":{json.dumps(str(position))},'
    if isinstance(message, bytes):
        text = head + f'"base64":"{base64.b64encode(message).decode()}"}}'
    elif isinstance(message, str):
        text = head + f'"data":{json.dumps(message)}}}'
    elif isinstance(message, EncodedJSON):
        text = head + f'"data":{message.text}}}'
    else:
        text = head + f'"data":{json.dumps(message, separators=(",", ":"))}}}'
    envelope = Delivery(EncodedJSON(text))
    _last = (delivery, topic, envelope)
    return envelope
