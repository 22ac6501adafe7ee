"""Hornbeam's ``hornbeam_erlang`` module, backed by hornbeam_trio.

Apps written for Hornbeam import from here and run unchanged.
"""

from hornbeam_trio.api import (
    decr,
    delete,
    get,
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
    subscribe,
    unsubscribe,
)

__all__ = [
    "decr",
    "delete",
    "get",
    "incr",
    "presence",
    "presence_join",
    "presence_leave",
    "presence_topic",
    "publish",
    "set",
    "state_decr",
    "state_delete",
    "state_get",
    "state_get_multi",
    "state_incr",
    "state_keys",
    "state_set",
    "subscribe",
    "unsubscribe",
]
