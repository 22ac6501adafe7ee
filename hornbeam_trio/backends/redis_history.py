"""Topic history over Redis: the Lua scripts, the keys and the wire form of a kept message.

Each topic with history has two keys: ``<ns>:history:<topic>``, a hash holding the
topic's ``epoch`` and ``top`` (its newest offset), and ``<ns>:stream:<topic>``, a
Redis Stream whose entry IDs are ``<offset>-0`` with the fields ``m`` (the message as
:func:`.codec.encode_message` wrote it) and ``t`` (Redis's clock, ms).

**One position per message.**  A publish runs :data:`PUBLISH_SCRIPT`: it takes the
next offset (HINCRBY), appends the stream entry with that offset as its ID (XADD
MAXLEN ~ SIZE) and PUBLISHes the message with its position, all in one script, which
Redis runs atomically.  So the stream entry and every live delivery carry the same
position, and no reader sees the stream and the channel disagree: a message is either
in the stream before a read (its offset is at most the read's ``top``) or published
after it (above ``top``).  A MULTI of the same commands could not put the offset
INCR returns into the XADD and the PUBLISH of the same transaction; a script can.

**Epoch.**  A random token kept in the topic's hash.  The hash is created by the first
publish or read that finds it missing, with a token the caller drew: after FLUSHALL,
or a Redis restarted without persistence, the topic gets a new epoch, so a client
holding a position of before is told it may have missed messages.  A stream left
without its hash is deleted at that moment, so offsets of the new epoch start at 1.

**Limits.**  Size: ``MAXLEN ~`` bounds memory cheaply, and a read looks no further
back than ``top - SIZE + 1``, so what a reader sees is exactly SIZE messages, as in
the memory backend.  Age: a read first trims the expired head of the stream
(``XTRIM MINID``), so nothing older than AGE is ever returned.

This module does no I/O of its own: the backend sends the scripts through its writer.
"""

from __future__ import annotations

from typing import Any

from .base import HistoryRead
from .codec import decode_message
from .history import Kept, Position

KEPT_TAG = b"h"
"""First byte of a PUBLISH payload that carries a position: ``h<epoch>:<offset>:<message>``."""


def applied_once(mark: str, seq: str, ttl: str) -> bytes:
    """The opening of a script that must run once per write (redis.py, APPLIED_ONCE):
    nothing if the process's applied ``mark`` is at or past this write's ``seq``, else
    the mark moves to it.  Arguments are Lua expressions (``KEYS[3]``, ``ARGV[5]``)."""
    return (
        f"if tonumber({seq}) <= tonumber(redis.call('GET', {mark}) or '0') then\n"
        "  return false\n"
        "end\n"
        f"redis.call('SET', {mark}, {seq}, 'EX', {ttl})\n"
    ).encode()


PUBLISH_SCRIPT = (
    b"""
-- KEYS[1] the topic's hash (epoch, top), KEYS[2] its stream, KEYS[3] the publishing
-- process's applied mark (redis.py, APPLIED_ONCE)
-- ARGV: channel, message, size, epoch to use if the hash is missing, the publish's
--       sequence number in its process, the mark's time to live (s)
"""
    + applied_once("KEYS[3]", "ARGV[5]", "ARGV[6]")
    + b"""local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'm', ARGV[2], 't', now)
redis.call('PUBLISH', ARGV[1], 'h' .. epoch .. ':' .. offset .. ':' .. ARGV[2])
return offset
"""
)

READ_SCRIPT = b"""
-- KEYS[1] the topic's hash (epoch, top), KEYS[2] its stream
-- ARGV: after (offset, 0: from the start), size, max age ms (0: none), limit (-1: none),
--       epoch to use if the hash is missing, epoch of `after` ('': none)
-- Returns {epoch, top, recovered (0/1), entries (oldest first)}; `after` of another
-- epoch reads as 0 and is never recovered.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
local after = tonumber(ARGV[1])
local same_epoch = ARGV[6] == '' or ARGV[6] == epoch
if not same_epoch then after = 0 end
local age = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if age > 0 then
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  while true do
    local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 100)
    if #head == 0 then break end
    local fresh = nil
    for _, entry in ipairs(head) do
      if tonumber(entry[2][4]) > cutoff then fresh = entry[1] break end
    end
    if fresh then
      redis.call('XTRIM', KEYS[2], 'MINID', fresh)
      break
    end
    local last = tonumber(string.match(head[#head][1], '^(%d+)'))
    redis.call('XTRIM', KEYS[2], 'MINID', (last + 1) .. '-0')
  end
end
local lowest = math.max(top - tonumber(ARGV[2]) + 1, 1)
local first = top + 1
local head = redis.call('XRANGE', KEYS[2], lowest, '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local recovered = first <= after + 1 and after <= top
local start = first
if recovered then start = after + 1 end
local entries
if limit < 0 then
  entries = redis.call('XRANGE', KEYS[2], start, '+')
else
  local newest = redis.call('XREVRANGE', KEYS[2], '+', start, 'COUNT', limit + 1)
  if #newest > limit then
    recovered = false
    newest[#newest] = nil
  end
  entries = {}
  for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
end
return {epoch, top, (recovered and same_epoch) and 1 or 0, entries}
"""


def history_key(namespace: str, topic: str) -> str:
    return f"{namespace}:history:{topic}"


def stream_key(namespace: str, topic: str) -> str:
    return f"{namespace}:stream:{topic}"


def decode_published(raw: bytes) -> Any:
    """A PUBLISH payload as the hub takes it: a :class:`Kept` when it carries a position,
    else what :func:`.codec.decode_message` makes of it (ValueError for neither)."""
    if raw[:1] != KEPT_TAG:
        return decode_message(raw)
    epoch, sep, rest = raw[1:].partition(b":")
    offset, sep2, message = rest.partition(b":")
    if not sep or not sep2 or not offset.isdigit():
        raise ValueError(f"not a hornbeam_trio message: {raw[:20]!r}")
    return Kept(decode_message(message), Position(int(offset), epoch.decode()))


def parse_read(reply: Any) -> HistoryRead:
    """READ_SCRIPT's reply as a :class:`HistoryRead`."""
    raw_epoch, top, recovered, entries = reply
    epoch = raw_epoch.decode()
    messages = []
    for entry_id, fields in entries:
        message = dict(zip(fields[::2], fields[1::2], strict=True))[b"m"]
        offset = int(entry_id.partition(b"-")[0])
        messages.append(Kept(decode_message(message), Position(offset, epoch)))
    return HistoryRead(messages, Position(int(top), epoch), bool(recovered))
