"""Chat examples.

* ``examples.chat:application`` (defined in :mod:`examples.chat.guide`): the guide's
  "Chat Room with Pub/Sub" section, room from the path.
* ``examples.chat.app:app``: a complete chat application (rooms, usernames, join and
  leave notices, user list, recent history, an HTML page at ``/``).
"""

from examples.chat.guide import application

__all__ = ["application"]
