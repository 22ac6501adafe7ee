"""Presence: which connections are in a topic, with what info, and the events saying so.

The member model, shared by every backend:

* A **member** is a connection.  Its id is a string the backend makes from the
  server's connection id (:meth:`Backend.member_id`): the connection id itself on
  the memory backend, prefixed by the process's lease token over Redis, so ids are
  unique among all processes that share one store.  The app never invents ids, so a
  client cannot pose as another one.
* A connection is in a topic **at most once**: joining again replaces its info (and
  says so with another join event); a leave of a non-member changes nothing.
* Every change is published on the derived topic ``presence:<topic>``
  (:func:`events_topic`), *after* it is visible to ``presence(topic)``:
  ``{"type": "presence.join", "topic", "member", "info"}`` and
  ``{"type": "presence.leave", "topic", "member"}``.  Applying them to a snapshot is
  idempotent (join: ``members[member] = info``; leave: ``members.pop(member)``), so
  "subscribe to the events, then read ``presence()``, then apply each event" renders
  the member list with nothing missed: an event that the snapshot already contains
  changes nothing when applied again.

This module imports nothing of ours but the value checks: the memory backend keeps a
:class:`PresenceBook`; the Redis backend keeps a hash per topic and builds the same
events.
"""

from __future__ import annotations

from typing import Any

from .values import checked_copy

EVENTS_PREFIX = "presence:"


def events_topic(topic: str) -> str:
    """The topic on which ``topic``'s join and leave events are published."""
    return EVENTS_PREFIX + topic


def join_event(topic: str, member: str, info: Any) -> dict[str, Any]:
    return {"type": "presence.join", "topic": topic, "member": member, "info": info}


def leave_event(topic: str, member: str) -> dict[str, Any]:
    return {"type": "presence.leave", "topic": topic, "member": member}


def checked_topic(topic: str) -> str:
    if not isinstance(topic, str):
        raise TypeError(f"presence topics must be str, got {type(topic).__name__}")
    return topic


class PresenceBook:
    """topic -> member -> info, in this process (the memory backend's store).

    Invariant: no topic maps to an empty dict (the last leave removes the topic), so
    the book holds nothing for a topic nobody is in.  Infos are kept as copies and
    handed out as copies: a caller mutating one changes nothing here.
    """

    def __init__(self) -> None:
        self._topics: dict[str, dict[str, Any]] = {}

    def join(self, topic: str, member: str, info: Any) -> None:
        self._topics.setdefault(topic, {})[member] = info

    def leave(self, topic: str, member: str) -> bool:
        """Remove; True if ``member`` was in ``topic``."""
        members = self._topics.get(topic)
        if members is None or member not in members:
            return False
        del members[member]
        if not members:
            del self._topics[topic]
        return True

    def members(self, topic: str) -> dict[str, Any]:
        return {member: checked_copy(info) for member, info in self._topics.get(topic, {}).items()}

    def clear(self) -> None:
        self._topics.clear()
