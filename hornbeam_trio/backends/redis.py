"""The Redis backend: state and pub/sub shared by every process that names the same Redis.

Commands go through coredis 6 (AnyIO, so it runs natively under Trio).  ``run()``
owns the client and four tasks, all inside one shielded scope so that cancelling
``run()`` means "stop gracefully", never "drop what is queued":

* the **writer** sends this process's synchronous writes and publishes, in the order
  they were made, on a connection of its own: each batch (what queued up meanwhile)
  is encoded here and sent in one write, replies parsed by hiredis (330k publishes/s
  drained, against 55k through coredis' pipeline; measured here);
* the **subscription manager** keeps one Redis SUBSCRIBE per topic that has a local
  subscriber (``topic_added`` / ``topic_removed``);
* the **subscriber** is a connection of our own (Trio stream + hiredis' parser, not
  coredis' PubSub): every message in a read is parsed and handed to ``deliver_local``
  at once, which frames it once for all of this process's subscribers.  No task
  switch per message: 800k messages/s parsed and delivered, against 24k through
  coredis' PubSub (measured here);
* the **lease keeper** refreshes this process's lease on its connection-owned keys
  and releases those of processes whose lease ran out.

Decisions (README, "Redis backend"):

* ``publish()`` stays synchronous and never blocks: the message is encoded at the
  call (a bad value raises there), queued, and sent by the writer.  Every subscriber,
  local or not, receives it from Redis, so all of them see one order per topic, and a
  process never sees its own message twice.  It returns the number of subscribers
  **in this process** (those it will reach through Redis): the count in other
  processes is not known without waiting.  Before sending a publish to a topic whose
  SUBSCRIBE is still in flight, the writer waits for it (at most
  ``subscribe_timeout``), so "subscribe, then publish" reaches the publisher too.
* Synchronous reads (``state_get``, ``state_get_multi``, ``state_keys``) and
  ``state_incr`` (it returns the new value) raise :class:`SyncUnavailable` naming the
  awaitable form (``await hornbeam_trio.state.get(key)``).  Synchronous ``state_set``
  and ``state_delete`` are fire-and-forget, queued in order with the publishes.
  Every awaitable operation goes through the writer's queue too, after what this
  process queued before it, so a process always reads its own writes, and calls from
  many tasks share one write.  One that cannot be sent fails at once (a queued write
  would be retried); one abandoned by its caller (timeout, cancellation) before it was
  sent is never sent.
* Values round-trip exactly through a type-tagged codec (:mod:`.codec`); ints are
  stored as plain decimals so INCRBY is atomic on them.  Keys are namespaced
  (``hornbeam:state:<key>``, channels ``hornbeam:topic:<topic>``); ``keys(prefix)``
  uses SCAN (never KEYS).
* Redis unreachable while running: the writer keeps what is queued (at most
  ``max_pending`` operations; beyond that new ones are dropped and counted) and
  retries with exponential backoff (up to 1 s); the subscriber reconnects (backoff up
  to 1 s) and subscribes again.  Publishes never go out while the subscriber
  connection is not subscribed to every wanted topic (``_resubscribed``): what queues
  up meanwhile is a *backlog*, which also waits until every other server process
  known from the lease registry has subscribed again (their own channels, at most
  ``lease_ttl``), and drains paced by PINGs through our subscriber connection (Redis
  holds about one batch per subscriber: no ``client-output-buffer-limit pubsub``
  drop).  A silent subscriber connection is PINGed after ``keepalive`` seconds.  The
  log lines (one when an outage starts, one when it ends with exact counts) are
  :class:`.redis_outage.OutageLog`'s.  A batch cut off mid-flight is sent again
  (at-least-once across a failure): Redis may have run it and lost only the replies.
  Sets, deletes and presence changes run twice to the same effect, and a plain publish
  may reach a subscriber twice.  What would count twice runs once (**APPLIED_ONCE**):
  an increment queued without waiting (an owned counter's release) and a publish to a
  topic that keeps history (it takes an offset) are numbered in the order queued, and
  the script that runs each first compares its number with the last one Redis ran for
  this process (``<namespace>:applied:<token>``, one key per process, dropped at a clean
  exit, else after a day) and does nothing if it is not newer.  The writer sends in
  order on one connection, so "not newer" means "ran already".  Messages published live
  by other processes while this one alone was cut off are not replayed (Redis pub/sub
  keeps nothing).
* At shutdown the writer gets ``flush_timeout`` seconds to send what is queued
  (owned keys released by the last connections included); what is left is dropped
  and ``run()`` raises :class:`BackendUnavailable` with the counts (exit 3).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import urllib.parse
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import coredis
import hiredis
import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import RedisError, ResponseError

from .base import BackendUnavailable, HistoryRead, LocalDeliver, SyncUnavailable
from .codec import decode_value, encode_message, encode_value
from .history import HistoryRule, Position, TopicRules, new_epoch
from .presence import checked_topic, events_topic, join_event, leave_event
from .redis_history import (
    PUBLISH_SCRIPT,
    READ_SCRIPT,
    applied_once,
    decode_published,
    history_key,
    parse_read,
    stream_key,
)
from .redis_outage import OutageLog, reason

logger = logging.getLogger("hornbeam_trio")

_BATCH = 512
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

# (kind, name, argument): ("P", topic, payload | _KeptPublish) | ("S", key, payload)
# | ("D", key, None) | ("I", key, _Increment) | ("R", topic, [raw commands]) (presence)
_Op = tuple[str, str, Any]

_PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT).hexdigest().encode()

INCREMENT_SCRIPT = (
    b"""
-- KEYS[1] the counter, KEYS[2] the process's applied mark (APPLIED_ONCE)
-- ARGV: delta, the increment's sequence number in its process, the mark's time to live (s)
"""
    + applied_once("KEYS[2]", "ARGV[2]", "ARGV[3]")
    + b"return redis.call('INCRBY', KEYS[1], ARGV[1])\n"
)
_INCREMENT_SHA = hashlib.sha1(INCREMENT_SCRIPT).hexdigest().encode()

APPLIED_ONCE_TTL = 86400
"""Seconds the applied mark outlives the process's last such write: longer than any
outage a backlog is kept through."""

_FAILURES = (RedisError, OSError, TimeoutError, trio.TooSlowError)
_PACE = b"hornbeam-pace"
"""The argument of the PINGs that pace a draining backlog (keepalive PINGs have none)."""


def redact(url: str) -> str:
    """The URL without its password, for logs and error lines."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "hornbeam",
        max_pending: int = 100_000,
        flush_timeout: float = 5.0,
        subscribe_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        command_timeout: float = 10.0,
        lease_ttl: float = 10.0,
    ) -> None:
        url, options = _split_options(url)
        self.url = url
        self.lease_ttl = _seconds(options, "lease_ttl", lease_ttl)
        """Seconds after which the owned keys of a process that stopped refreshing its
        lease (killed, frozen, cut off) are released by any other process."""
        self.flush_timeout = _seconds(options, "flush_timeout", flush_timeout)
        """Seconds the writer gets at shutdown to send what is queued."""
        self.token = uuid.uuid4().hex
        """This process's name in the lease registry."""
        self.namespace = namespace
        self.subscribe_timeout = subscribe_timeout
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.count_local: Callable[[str], int] = lambda topic: 0
        """topic -> subscribers in this process (set by the runtime that owns the hub)."""
        self._state_prefix = f"{namespace}:state:"
        self._leases = f"{namespace}:leases"
        self._owned_prefix = f"{namespace}:owned:"
        self._owned = self._owned_prefix + self.token
        self._applied = f"{namespace}:applied:{self.token}".encode()
        """APPLIED_ONCE: the sequence number of this process's last increment or kept
        publish that Redis ran."""
        self._once = 0
        """The sequence number of this process's last increment or kept publish queued."""
        self._topic_prefix = f"{namespace}:topic:"
        self._presence_prefix = f"{namespace}:presence:"
        """A hash per topic: member id -> encoded info."""
        self._deliver_local: LocalDeliver | None = None
        self._client: coredis.Redis[bytes] | None = None
        self._closed = False
        # the writer's queue: writes, publishes and awaited calls, in the order made
        self._queue: deque[_Op] = deque()
        self._lock = threading.Lock()
        self._work = trio.Event()
        self._stop = trio.Event()
        self._stop_deadline = float("inf")
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: int | None = None
        self.outage = OutageLog(redact(url), max_pending)
        """Outage episodes, their log lines and what was lost (redis_outage.py)."""
        self._writer_scope: trio.CancelScope | None = None
        """The writer's loop: its deadline is the end of ``flush_timeout`` at shutdown."""
        self._inflight: list[_Op] = []
        self._stopped_lost = 0
        """Operations made after the backend stopped (counted, logged once)."""
        self._resubscribed = trio.Event()
        """Set while the subscriber connection is subscribed to every wanted topic (the
        process's own channel, subscribed last, acknowledges the lot: Redis answers the
        SUBSCRIBEs of one connection in order)."""
        self._process_channel = f"{namespace}:process:{self.token}".encode()
        self._peers: set[str] = set()
        """Other server processes on this Redis (lease registry, read every lease refresh)."""
        self._peers_gate = False
        """The writer lost Redis: before its backlog goes out, the peers subscribe again."""
        self._reset_writer = False
        """The subscriber lost its connection: the writer's, idle, is likely dead too."""
        self._pace_waiters: deque[trio.Event] = deque()
        # subscriptions: wanted (local subscribers exist) vs confirmed by Redis
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._pending_subs: dict[str, trio.Event] = {}
        self._subs_changed = trio.Event()
        self._requested: set[str] = set()
        self._writer_connection: tuple[trio.abc.Stream, Any] | None = None
        """The writer's own connection and its reply parser (opened on first use)."""
        """Topics SUBSCRIBEd on the current subscriber connection (acknowledged or not)."""
        self._subscriber_send: Callable[[bytes], Awaitable[None]] | None = None
        self.keepalive = 15.0
        """Seconds of silence on the subscriber connection before a PING (and as long
        again for its answer before reconnecting)."""
        self._history = TopicRules()
        self._nursery: trio.Nursery | None = None
        """Where history reads for push subscribers run (``fetch_history``)."""

    @property
    def max_pending(self) -> int:
        """Operations kept queued while Redis is away; beyond, new ones are dropped."""
        return self.outage.max_pending

    @max_pending.setter
    def max_pending(self, value: int) -> None:
        self.outage.max_pending = value

    @property
    def lost_publishes(self) -> int:
        return self.outage.lost_publishes

    @property
    def lost_writes(self) -> int:
        return self.outage.lost_writes

    @property
    def queue_depth(self) -> int:
        """Operations waiting for Redis: queued, and sent but not yet answered."""
        return len(self._queue) + len(self._inflight)

    # -- lifecycle -----------------------------------------------------------
    def attach(self, deliver_local: LocalDeliver) -> None:
        self._deliver_local = deliver_local

    async def run(
        self, deliver_local: LocalDeliver, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect (BackendUnavailable if Redis does not answer), serve until cancelled,
        then flush what is queued for at most ``flush_timeout`` seconds."""
        self._deliver_local = deliver_local
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._stop_deadline = trio.current_time() + self.flush_timeout
                if self._writer_scope is not None:
                    self._writer_scope.deadline = self._stop_deadline
                self._enqueue(("E", self.token, None))  # a clean exit: drop our lease
                self._stop.set()
                self._work.set()

    async def _serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope(shield=True):
            client: coredis.Redis[bytes] = coredis.Redis.from_url(
                self.url, decode_responses=False, connect_timeout=self.connect_timeout
            )
            async with client:
                try:
                    with trio.fail_after(self.connect_timeout + 1):
                        await client.ping()
                except _FAILURES as exc:
                    raise BackendUnavailable(
                        f"cannot reach Redis at {redact(self.url)}: {reason(exc)}"
                    ) from None
                async with trio.open_nursery() as nursery:
                    self._client = client
                    self._nursery = nursery
                    self._token = trio.lowlevel.current_trio_token()
                    self._thread = threading.get_ident()
                    nursery.start_soon(self._subscriber, client.connection_pool)
                    nursery.start_soon(self._subscription_loop)
                    nursery.start_soon(self._lease_loop, client)
                    task_status.started()
                    try:
                        dropped = await self._write_loop(client.connection_pool)
                    finally:
                        self._closed = True
                        self._client = None
                        self._nursery = None
                        nursery.cancel_scope.cancel()
                        if self._writer_connection is not None:
                            await trio.aclose_forcefully(self._writer_connection[0])
                            self._writer_connection = None
        if dropped is not None:
            publishes, writes = dropped
            raise BackendUnavailable(
                f"Redis at {redact(self.url)} unreachable at shutdown: dropped "
                f"{publishes} queued publishes and {writes} writes "
                f"(flush_timeout {self.flush_timeout:g}s)"
            )

    # -- the writer ------------------------------------------------------------
    def _enqueue(self, op: _Op) -> None:
        with self._lock:  # the façade may be called from trio.to_thread workers too
            if self._closed:
                self._lose_stopped(op)
                return
            if len(self._queue) >= self.max_pending:
                if op[0] == "Q":
                    op[2].fail(BackendUnavailable(f"state.{op[1]}: the queue is full"))
                else:
                    self.outage.lost(op[0] == "P")
                return
            kind = op[0]
            if kind == "I" or (kind == "P" and type(op[2]) is not bytes):
                self._once += 1  # under the lock: numbered in the order queued
                op[2].seq = self._once
            self._queue.append(op)
        if not self._work.is_set():
            if self._thread is None or threading.get_ident() == self._thread:
                self._work.set()
            else:
                assert self._token is not None
                self._token.run_sync_soon(self._set_work)

    def _set_work(self) -> None:
        self._work.set()

    def _lose_stopped(self, op: _Op) -> None:
        if op[0] == "Q":  # someone awaits it: tell them
            op[2].fail(BackendUnavailable(f"state.{op[1]}: the Redis backend has stopped"))
            return
        self._stopped_lost += 1
        if self._stopped_lost == 1:
            logger.warning(
                "Redis backend: dropping a %s (and any later one): the backend has stopped",
                _describe(op),
            )

    async def _write_loop(self, pool: Any) -> tuple[int, int] | None:
        """Send the queue in batches until stopped and empty; at the end of
        ``flush_timeout`` drop what is left: (publishes, writes) dropped, or None."""
        queue = self._queue
        with trio.CancelScope(deadline=self._stop_deadline) as scope:
            self._writer_scope = scope
            while True:
                if not queue:
                    if "writer" in self.outage.down_parts:
                        self.outage.part_up("writer", trio.current_time())
                    self.outage.drained()
                    if self._stop.is_set():
                        return None
                    self._work = trio.Event()
                    await self._work.wait()
                    continue
                batch = [queue.popleft() for _ in range(min(len(queue), _BATCH))]
                await self._send(pool, batch)
        with self._lock:
            self._closed = True
            left = [*self._inflight, *queue]
            queue.clear()
        self._inflight = []
        publishes = writes = 0
        for op in left:
            if op[0] == "Q":
                op[2].fail(BackendUnavailable(f"state.{op[1]}: the Redis backend has stopped"))
            elif op[0] == "E":
                pass  # our lease record: it runs out by itself, then our keys are released
            elif op[0] == "P":
                publishes += 1
            else:
                writes += 1
        return (publishes, writes) if publishes or writes else None

    async def _await_subscriptions(self, batch: list[_Op]) -> None:
        """Before publishes go out, this process is subscribed to every topic it has
        subscribers for: after a lost subscriber connection, for as long as it takes
        (what was queued meanwhile would reach no one here otherwise); a SUBSCRIBE
        still in flight on a live connection, at most ``subscribe_timeout``."""
        if not self._resubscribed.is_set():
            if self.outage.down:  # (not at startup, before the first subscription)
                # what queues up meanwhile is a backlog: paced, and it waits for the peers
                self._enter_backlog("the subscriber connection is lost")
            await self._resubscribed.wait()
        with trio.move_on_after(self.subscribe_timeout):
            for kind, topic, _ in batch:
                if kind == "P":
                    event = self._pending_subs.get(topic)
                    if event is not None:
                        await event.wait()

    def _enter_backlog(self, why: str) -> None:
        """The writer cannot send: until the queue is empty again, it is a backlog."""
        self.outage.part_down("writer", why, trio.current_time())
        self._peers_gate = bool(self._peers)

    async def _await_peers(self, pool: Any) -> None:
        """After this process lost Redis, its backlog waits until every other server
        process it knew of has subscribed again (``PUBSUB NUMSUB`` of their own
        channels), so what it queued reaches their subscribers too; a process that does
        not come back within ``lease_ttl`` is taken for gone."""
        peers = sorted(self._peers)
        channels = [f"{self.namespace}:process:{token}" for token in peers]
        missing = channels
        with trio.move_on_after(self.lease_ttl):
            while missing:
                with trio.fail_after(self.command_timeout):
                    (reply,) = await self._roundtrip(
                        pool, [_command(b"PUBSUB", b"NUMSUB", *missing)]
                    )
                counts = _ok(reply)
                missing = [
                    channel.decode()
                    for channel, count in zip(counts[::2], counts[1::2], strict=True)
                    if not count
                ]
                if missing:
                    await trio.sleep(0.05)
        if missing:
            logger.warning(
                "Redis backend: %d other server process(es) did not subscribe again within "
                "%gs; sending the queued publishes without them",
                len(missing),
                self.lease_ttl,
            )

    async def _send(self, pool: Any, batch: list[_Op]) -> None:
        delay = 0.05
        self._inflight = batch
        publishes = any(op[0] == "P" for op in batch)
        replies: list[Any] = []
        while batch:
            if publishes:
                await self._await_subscriptions(batch)
            try:
                if publishes and self._peers_gate:
                    await self._await_peers(pool)
                    self._peers_gate = False
                with trio.fail_after(self.command_timeout):
                    replies = await self._pipeline(pool, batch)
            except (*_FAILURES, trio.BrokenResourceError, hiredis.ProtocolError) as exc:
                connection, self._writer_connection = self._writer_connection, None
                if connection is not None:
                    await trio.aclose_forcefully(connection[0])
                # Awaited calls fail now (their caller decides); the queued rest is retried.
                for op in batch:
                    if op[0] == "Q":
                        op[2].fail(exc)
                batch = self._inflight = [op for op in batch if op[0] != "Q"]
                self._enter_backlog(reason(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            break
        self._inflight = []
        if "writer" in self.outage.down_parts:
            self.outage.sent(len(batch))
            if publishes:
                await self._pace()
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                logger.error("Redis refused a command: %s", reply)

    async def _pace(self) -> None:
        """While a backlog drains, each batch waits until this process's subscriber
        connection has read every message Redis queued for it before: Redis's output
        buffer for a subscriber then holds at most about one batch, far below
        ``client-output-buffer-limit pubsub`` (the other processes read as fast)."""
        send = self._subscriber_send
        if send is None:
            return
        answered = trio.Event()
        self._pace_waiters.append(answered)
        try:
            await send(_command(b"PING", _PACE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the session ends (and wakes the waiters)
        with trio.move_on_after(self.command_timeout):
            await answered.wait()

    async def _pipeline(self, pool: Any, batch: list[_Op]) -> list[Any]:
        """Send the batch as one write on the writer's own connection; hand awaited
        calls their replies, return the others'."""
        commands: list[bytes] = []
        queries: list[tuple[_Query, int]] = []
        state, channel = self._state_prefix, self._topic_prefix
        script_loaded = increment_loaded = False
        for kind, name, argument in batch:
            if kind == "Q":
                if not argument.abandoned:
                    queries.append((argument, len(commands)))
                    commands.extend(argument.commands)
            elif kind == "P" and type(argument) is bytes:
                commands.append(_command(b"PUBLISH", channel + name, argument))
            elif kind == "P":
                if not script_loaded:  # once per batch: Redis may have restarted since
                    script_loaded = True
                    commands.append(_command(b"SCRIPT", b"LOAD", PUBLISH_SCRIPT))
                commands.append(argument.command(self.namespace, channel + name, self._applied))
            elif kind == "S":
                commands.append(_command(b"SET", state + name, argument))
            elif kind == "D":
                commands.append(_command(b"DEL", state + name))
            elif kind == "I":
                if not increment_loaded:
                    increment_loaded = True
                    commands.append(_command(b"SCRIPT", b"LOAD", INCREMENT_SCRIPT))
                commands.append(argument.command(state + name, self._applied))
            elif kind == "L":
                commands.append(_command(b"HSET", self._owned, name, argument))
            elif kind == "U":
                commands.append(_command(b"HDEL", self._owned, *argument))
            elif kind == "R":
                commands.extend(argument)
            else:  # "E"
                commands.append(_command(b"DEL", self._owned, self._applied))
                commands.append(_command(b"ZREM", self._leases, name))
        replies = await self._roundtrip(pool, commands)
        for query, start in reversed(queries):
            query.succeed(replies[start : start + len(query.commands)])
            del replies[start : start + len(query.commands)]
        return replies  # those of the queued operations (and the SCRIPT LOAD's, if sent)

    async def _roundtrip(self, pool: Any, commands: list[bytes]) -> list[Any]:
        """``commands`` in one write on the writer's own connection; their replies."""
        if self._reset_writer:
            self._reset_writer = False
            if self._writer_connection is not None:
                await trio.aclose_forcefully(self._writer_connection[0])
                self._writer_connection = None
        if self._writer_connection is None:
            stream = await _open_stream(pool)
            reader: Any = hiredis.Reader()
            try:
                await _handshake(stream, reader, pool.connection_kwargs, select_db=True)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._writer_connection = (stream, reader)
        stream, reader = self._writer_connection
        await stream.send_all(b"".join(commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is False:
                data = await stream.receive_some(65536)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(data)
            else:
                replies.append(reply)
        return replies

    # -- pub/sub -------------------------------------------------------------
    def publish(self, topic: str, message: Any) -> int:
        self._enqueue(("P", topic, encode_message(message)))
        return self.count_local(topic)

    def _publish_recording(self, topic: str, message: Any) -> int:
        """``publish`` while history is configured: a topic that keeps history is
        published by the script that gives the message its position."""
        rule = self._history.rule_for(topic)
        payload = encode_message(message)
        self._enqueue(("P", topic, payload if rule is None else _KeptPublish(topic, payload, rule)))
        return self.count_local(topic)

    # -- topic history (redis_history.py) ----------------------------------------
    def configure_history(self, rules: Iterable[HistoryRule]) -> None:
        """Keep history for the topics matching ``rules`` (the first match wins).  The
        positions live in Redis, shared by every process: each process sends its own
        limits with each publish and read, so processes should agree on the rules."""
        self._history = TopicRules(rules)
        if self._history.rules:
            self.publish = self._publish_recording  # type: ignore[method-assign]
        else:
            self.__dict__.pop("publish", None)

    def keeps_history(self, topic: str) -> bool:
        return self._history.rule_for(topic) is not None

    def history_read(
        self, topic: str, since: Position | None, limit: int | None = None
    ) -> HistoryRead:
        raise SyncUnavailable(
            "history() cannot answer without waiting for Redis (--backend redis://); "
            "use `await hornbeam_trio.state.history(topic, since, limit)` instead"
        )

    async def ahistory_read(
        self, topic: str, since: Position | None, limit: int | None = None
    ) -> HistoryRead:
        """What ``topic``'s history holds after ``since`` (see :class:`HistoryRead`).

        Read once every SUBSCRIBE this process has asked for ``topic`` is in place, so a
        subscriber registered before this call receives, live, every message published
        after the read (no gap; the ones in both are told apart by their offsets).
        LookupError for a topic that keeps no history."""
        rule = self._history.rule_for(topic)
        if rule is None:
            raise LookupError(f"topic {topic!r} keeps no history: no --history pattern matches it")
        event = self._pending_subs.get(topic)
        if event is not None:
            with self._network("history"):
                await event.wait()
        (reply,) = await self._query(
            "history",
            _command(
                b"EVAL",
                READ_SCRIPT,
                b"2",
                history_key(self.namespace, topic),
                stream_key(self.namespace, topic),
                b"0" if since is None else str(since.offset),
                str(rule.size),
                str(round(rule.max_age * 1000)) if rule.max_age else b"0",
                b"-1" if limit is None else str(limit),
                new_epoch(),
                b"" if since is None else since.epoch,
            ),
        )
        return parse_read(_ok(reply))

    def fetch_history(
        self,
        topic: str,
        since: Position | None,
        done: Callable[[HistoryRead | BaseException], None],
    ) -> None:
        """``ahistory_read`` in a task of the backend's own; ``done`` gets the read, or
        the exception that stopped it (for a push subscriber, whose call cannot wait)."""
        nursery = self._nursery
        if nursery is None:
            done(BackendUnavailable("history: the Redis backend is not running"))
            return
        nursery.start_soon(self._fetch, topic, since, done)

    async def _fetch(
        self,
        topic: str,
        since: Position | None,
        done: Callable[[HistoryRead | BaseException], None],
    ) -> None:
        try:
            read = await self.ahistory_read(topic, since)
        except Exception as exc:
            # Handed on, not swallowed: done() logs it and closes the one client.  Raised
            # here it would stop the backend's nursery, for every connection.
            done(exc)
        else:
            done(read)

    def topic_added(self, topic: str) -> None:
        self._wanted.add(topic)
        if topic not in self._subscribed and topic not in self._pending_subs:
            self._pending_subs[topic] = trio.Event()
        self._subs_changed.set()

    def topic_removed(self, topic: str) -> None:
        self._wanted.discard(topic)
        self._subs_changed.set()

    async def _subscription_loop(self) -> None:
        """SUBSCRIBE/UNSUBSCRIBE as local topics come and go (acknowledged in the reader)."""
        prefix = self._topic_prefix
        while True:
            await self._subs_changed.wait()
            self._subs_changed = trio.Event()
            send = self._subscriber_send
            if send is not None:
                add = [topic for topic in self._wanted if topic not in self._requested]
                remove = [topic for topic in self._requested if topic not in self._wanted]
                self._requested.update(add)
                self._requested.difference_update(remove)
                self._subscribed.difference_update(remove)
                commands = []
                for chunk in _chunks(add):
                    commands.append(_command(b"SUBSCRIBE", *[prefix + t for t in chunk]))
                for chunk in _chunks(remove):
                    commands.append(_command(b"UNSUBSCRIBE", *[prefix + t for t in chunk]))
                if commands:
                    try:
                        await send(b"".join(commands))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass  # the session ends; the next one subscribes to all that is wanted
            # else: not connected; the next session subscribes to all that is wanted
            for topic in list(self._pending_subs):
                if topic not in self._wanted:
                    self._pending_subs.pop(topic).set()

    # -- the subscriber connection -------------------------------------------------
    async def _subscriber(self, pool: Any) -> None:
        """Our own connection in subscribed mode: reconnects with backoff (at most 1 s)
        and subscribes to every wanted topic again each time."""
        delay = 0.05
        while True:
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await _open_stream(pool)
            except _FAILURES as exc:
                self.outage.part_down("subscriber", reason(exc), trio.current_time())
            else:
                try:
                    await self._subscriber_session(stream, pool.connection_kwargs)
                    delay = 0.05
                except (*_FAILURES, trio.BrokenResourceError, hiredis.ProtocolError) as exc:
                    # Redis gone, or it dropped this connection (its output buffer for
                    # us was over client-output-buffer-limit pubsub): the same outage.
                    self.outage.part_down("subscriber", reason(exc), trio.current_time())
                    delay = 0.05
                finally:
                    self._subscriber_send = None
                    self._requested.clear()
                    self._subscribed.clear()
                    if self._resubscribed.is_set():
                        self._resubscribed = trio.Event()
                    self._reset_writer = True
                    while self._pace_waiters:
                        self._pace_waiters.popleft().set()
                    # until subscribed again, a publish to these waits
                    for topic in self._wanted:
                        self._pending_subs.setdefault(topic, trio.Event())
                    await trio.aclose_forcefully(stream)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _subscriber_session(self, stream: trio.abc.Stream, options: Any) -> None:
        reader: Any = hiredis.Reader()  # feeds on bytearray too (its stub says bytes)
        lock = trio.Lock()

        async def send(data: bytes) -> None:
            async with lock:
                await stream.send_all(data)

        with trio.fail_after(self.command_timeout):
            await _handshake(stream, reader, options, select_db=False)
        prefix = self._topic_prefix
        wanted = list(self._wanted)
        self._requested = set(wanted)
        for chunk in _chunks(wanted):
            await send(_command(b"SUBSCRIBE", *[prefix + topic for topic in chunk]))
        # last: its acknowledgement says every SUBSCRIBE before it is in place
        await send(_command(b"SUBSCRIBE", self._process_channel))
        self._subscriber_send = send
        self._subs_changed.set()  # whatever changed while we were connecting
        await self._read_pushes(stream, reader, send)

    async def _read_pushes(
        self, stream: trio.abc.Stream, reader: Any, send: Callable[[bytes], Any]
    ) -> None:
        """Every message is delivered as soon as its bytes are parsed: many per read, no
        task switch per message."""
        cut = len(self._topic_prefix.encode())
        deliver = self._deliver_local
        assert deliver is not None
        pinged = False
        while True:
            with trio.move_on_after(self.keepalive) as quiet:
                data = await stream.receive_some(65536)
            if quiet.cancelled_caught:
                if pinged:
                    raise TimeoutError(f"no answer to PING within {self.keepalive:g}s")
                pinged = True
                await send(_command(b"PING"))
                continue
            pinged = False
            if not data:
                raise RedisConnectionError("Redis closed the subscriber connection")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if not isinstance(reply, list) or not reply:
                    if isinstance(reply, hiredis.ReplyError):
                        logger.warning("Redis subscriber connection: %s", reply)
                    continue
                kind = reply[0]
                if kind == b"message":
                    try:
                        payload = decode_published(reply[2])
                    except ValueError as exc:
                        logger.warning("ignoring a message on %r: %s", reply[1], exc)
                        continue
                    deliver(reply[1][cut:].decode(), payload)
                elif kind == b"pong":
                    if reply[1] == _PACE and self._pace_waiters:
                        self._pace_waiters.popleft().set()
                elif kind == b"subscribe" and reply[1] == self._process_channel:
                    self._resubscribed.set()
                    if "subscriber" in self.outage.down_parts:
                        self.outage.part_up("subscriber", trio.current_time())
                elif kind == b"subscribe":
                    topic = reply[1][cut:].decode()
                    if topic in self._requested:
                        self._subscribed.add(topic)
                    event = self._pending_subs.pop(topic, None)
                    if event is not None:
                        event.set()

    # -- connection-owned keys: a lease per process ----------------------------
    def note_owned(self, connection: int, key: str, give_back: int | None) -> None:
        field = f"{connection}:{key}"
        self._enqueue(("L", field, "s" if give_back is None else str(give_back)))

    def note_released(self, connection: int, keys: Iterable[str]) -> None:
        fields = [f"{connection}:{key}" for key in keys]
        if fields:
            self._enqueue(("U", fields[0], fields))

    # -- presence: a hash per topic, each member leased like an owned key -------
    # A member's lease record is the field ``p<connection>:<topic>`` of this process's
    # owned-keys hash, valued ``p<member>``: state-key fields start with a digit, so
    # the two never collide, and the lease script (below) can tell them apart.
    def member_id(self, connection: int) -> str:
        return f"{self.token[:12]}-{connection}"

    def presence_join(self, topic: str, member: str, info: Any, connection: int) -> None:
        topic = checked_topic(topic)
        encoded = encode_value(info)  # validates before anything is queued
        event = encode_message(join_event(topic, member, info))
        # the lease record first: from the HSET on, a kill -9 is cleaned up
        self._enqueue(("L", f"p{connection}:{topic}", "p" + member))
        self._enqueue(
            ("R", topic, [_command(b"HSET", self._presence_prefix + topic, member, encoded)])
        )
        self._enqueue(("P", events_topic(topic), event))

    def presence_leave(self, topic: str, member: str, connection: int) -> None:
        self._enqueue(("R", topic, [_command(b"HDEL", self._presence_prefix + topic, member)]))
        self._enqueue(("P", events_topic(topic), encode_message(leave_event(topic, member))))
        field = f"p{connection}:{topic}"
        self._enqueue(("U", field, [field]))

    def presence(self, topic: str) -> dict[str, Any]:
        raise _sync_unavailable("presence", "presence(topic)")

    async def apresence(self, topic: str) -> dict[str, Any]:
        name = self._presence_prefix + checked_topic(topic)
        pending = self._pending_subs.get(events_topic(topic))
        if pending is not None:  # subscribed to the events: none may come before that
            with trio.move_on_after(self.subscribe_timeout):
                await pending.wait()
        (reply,) = await self._query("presence", _command(b"HGETALL", name))
        flat = _ok(reply)
        return {
            flat[i].decode("utf-8", "surrogateescape"): decode_value(flat[i + 1])
            for i in range(0, len(flat), 2)
        }

    async def _lease_loop(self, client: coredis.Redis[bytes]) -> None:
        """Refresh this process's lease, and release the keys of processes whose lease
        ran out (at most a third of ``lease_ttl`` late)."""
        while True:
            try:
                with trio.fail_after(self.command_timeout):
                    answer: Any = await client.eval(
                        _LEASE_SCRIPT,
                        keys=[self._leases],
                        args=[
                            self.token,
                            int(self.lease_ttl * 1000),
                            self._owned_prefix,
                            self._state_prefix,
                            100,
                            self._presence_prefix,
                            self._topic_prefix + events_topic(""),
                        ],
                    )
            except _FAILURES as exc:
                logger.debug("lease refresh failed: %s", reason(exc))  # outages: OutageLog
            else:
                reclaimed, live = answer
                if not self.outage.down:
                    # During an outage the roster stays as it was before: a Redis back
                    # empty knows only the processes that have come back already.
                    self._peers = {token.decode() for token in live} - {self.token}
                if reclaimed:
                    logger.warning(
                        "released the owned state keys of %s server process(es) whose "
                        "lease expired",
                        reclaimed,
                    )
            await trio.sleep(self.lease_ttl / 3)

    # -- state, synchronous ----------------------------------------------------
    def get(self, key: str) -> Any:
        raise _sync_unavailable("state_get", "get(key)")

    def get_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        raise _sync_unavailable("state_get_multi", "get_multi(keys)")

    def keys(self, prefix: str | None = None) -> list[str]:
        raise _sync_unavailable("state_keys", "keys(prefix)")

    def incr(self, key: str, delta: int = 1) -> int:
        raise _sync_unavailable("state_incr", "incr(key, delta)")

    def set(self, key: str, value: Any) -> None:
        self._enqueue(("S", _checked_key(key), encode_value(value)))

    def delete(self, key: str) -> None:
        self._enqueue(("D", _checked_key(key), None))

    def incr_nowait(self, key: str, delta: int) -> None:
        self._enqueue(("I", _checked_key(key), _Increment(_checked_delta(delta))))

    # -- state, awaitable ------------------------------------------------------
    @contextmanager
    def _network(self, call: str) -> Iterator[None]:
        """Bound a call by ``command_timeout``; Redis unreachable -> BackendUnavailable."""
        try:
            with trio.fail_after(self.command_timeout):
                yield
        except (RedisConnectionError, OSError, TimeoutError, trio.TooSlowError) as exc:
            raise BackendUnavailable(
                f"state.{call}: Redis at {redact(self.url)} did not answer ({reason(exc)})"
            ) from exc

    async def _query(self, call: str, *commands: bytes) -> list[Any]:
        """Run ``commands`` through the writer, in order with everything this process
        queued before (so it reads its own writes); their replies."""
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: send nothing
        query = _Query(commands)
        self._enqueue(("Q", call, query))
        try:
            with self._network(call):
                await query.done.wait()
                if query.error is not None:
                    raise query.error
        except BaseException:
            query.abandoned = True  # not sent yet: it never will be
            raise
        return query.replies

    async def aget(self, key: str) -> Any:
        name = self._state_prefix + _checked_key(key)
        (raw,) = await self._query("get", _command(b"GET", name))
        return decode_value(_ok(raw))

    async def aset(self, key: str, value: Any) -> None:
        name = self._state_prefix + _checked_key(key)
        (reply,) = await self._query("set", _command(b"SET", name, encode_value(value)))
        _ok(reply)

    async def adelete(self, key: str) -> None:
        name = self._state_prefix + _checked_key(key)
        (reply,) = await self._query("delete", _command(b"DEL", name))
        _ok(reply)

    async def aincr(self, key: str, delta: int = 1) -> int:
        name = self._state_prefix + _checked_key(key)
        delta = _checked_delta(delta)
        (reply,) = await self._query("incr", _command(b"INCRBY", name, str(delta)))
        if not isinstance(reply, hiredis.ReplyError):
            return int(reply)
        (raw,) = await self._query("incr", _command(b"GET", name))
        current = decode_value(_ok(raw))
        if isinstance(current, int) and not isinstance(current, bool):
            raise OverflowError(f"state key {key!r}: {reply}")
        raise TypeError(f"state key {key!r} holds a {type(current).__name__}, not an int")

    async def aget_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = [_checked_key(key) for key in keys]
        if not wanted:
            await self._query("get_multi", _command(b"PING"))  # still in order, still a wait
            return {}
        prefix = self._state_prefix
        (raw,) = await self._query(
            "get_multi", _command(b"MGET", *[prefix + key for key in wanted])
        )
        return {key: decode_value(value) for key, value in zip(wanted, _ok(raw), strict=True)}

    async def akeys(self, prefix: str | None = None) -> list[str]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._state_prefix + (prefix or "")) + "*"
        strip = len(self._state_prefix)
        found: dict[str, None] = {}  # SCAN may return a key twice
        cursor = b"0"
        while True:
            (reply,) = await self._query(
                "keys", _command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"1000")
            )
            cursor, names = _ok(reply)
            for name in names:
                found[name[strip:].decode("utf-8", "surrogateescape")] = None
            if cursor == b"0":
                return list(found)


class _KeptPublish:
    """A publish to a topic that keeps history: sent as PUBLISH_SCRIPT (EVALSHA; the
    writer loads the script first in the same batch), run once (APPLIED_ONCE)."""

    __slots__ = ("payload", "rule", "seq", "topic")

    def __init__(self, topic: str, payload: bytes, rule: HistoryRule) -> None:
        self.topic = topic
        self.payload = payload
        self.rule = rule
        self.seq = 0
        """Numbered when queued (``_enqueue``)."""

    def command(self, namespace: str, channel: str, applied: bytes) -> bytes:
        return _command(
            b"EVALSHA",
            _PUBLISH_SHA,
            b"3",
            history_key(namespace, self.topic),
            stream_key(namespace, self.topic),
            applied,
            channel,
            self.payload,
            str(self.rule.size),
            new_epoch(),
            str(self.seq),
            str(APPLIED_ONCE_TTL),
        )


class _Increment:
    """An increment queued without waiting (``incr_nowait``: an owned counter's release),
    sent as INCREMENT_SCRIPT, run once (APPLIED_ONCE)."""

    __slots__ = ("delta", "seq")

    def __init__(self, delta: int) -> None:
        self.delta = delta
        self.seq = 0
        """Numbered when queued (``_enqueue``)."""

    def command(self, key: str, applied: bytes) -> bytes:
        return _command(
            b"EVALSHA",
            _INCREMENT_SHA,
            b"2",
            key,
            applied,
            str(self.delta),
            str(self.seq),
            str(APPLIED_ONCE_TTL),
        )


class _Query:
    """Commands an awaitable call sent through the writer, and their replies."""

    __slots__ = ("abandoned", "commands", "done", "error", "replies")

    def __init__(self, commands: tuple[bytes, ...]) -> None:
        self.commands = commands
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.abandoned = False
        self.done = trio.Event()

    def succeed(self, replies: list[Any]) -> None:
        self.replies = replies
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def _ok(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    return reply


def _sync_unavailable(call: str, awaitable: str) -> SyncUnavailable:
    return SyncUnavailable(
        f"{call}() cannot answer without waiting for Redis (--backend redis://); "
        f"use `await hornbeam_trio.state.{awaitable}` instead"
    )


def _checked_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"state keys must be str, got {type(key).__name__}")
    return key


def _checked_delta(delta: int) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"delta must be an int, got {type(delta).__name__}")
    return delta


def _describe(op: _Op) -> str:
    kind, name = op[0], op[1]
    if kind == "P":
        return f"publish to {name!r}"
    if kind in "LUE":
        return "lease record"
    if kind == "R":
        return f"presence change in topic {name!r}"
    return {"S": "set", "D": "delete", "I": "increment"}[kind] + f" of state key {name!r}"


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    """Our own query options (``?lease_ttl=5&flush_timeout=2``) out of the URL; the rest
    goes to coredis."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name in _OUR_OPTIONS}
    rest = urllib.parse.urlencode([(n, v) for n, v in query if n not in _OUR_OPTIONS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), ours


_OUR_OPTIONS = {"lease_ttl", "flush_timeout"}


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    try:
        value = float(options.get(name, default))
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {options[name]!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return value


_LEASE_SCRIPT = """
-- Refresh this process's lease; release what dead processes owned.  Atomic, so two
-- processes sweeping at once never give a key back twice.  Returns the number of
-- processes released and the tokens of those alive.  A presence member (field
-- 'p<connection>:<topic>', value 'p<member>') leaves its topic's hash, and its leave
-- event is published as the process itself would have.
-- KEYS[1] lease registry (sorted set: process token -> expiry, Redis clock, ms)
-- ARGV: token, lease ms, owned-hash prefix, state-key prefix, most to reclaim per call,
--       presence-hash prefix, presence-events channel prefix
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, token in ipairs(dead) do
  local owned = ARGV[3] .. token
  local fields = redis.call('HGETALL', owned)
  for i = 1, #fields, 2 do
    local field = fields[i]
    local name = string.sub(field, string.find(field, ':', 1, true) + 1)
    local key = ARGV[4] .. name
    local give_back = fields[i + 1]
    if string.sub(give_back, 1, 1) == 'p' then
      local member = string.sub(give_back, 2)
      if redis.call('HDEL', ARGV[6] .. name, member) == 1 then
        redis.call('PUBLISH', ARGV[7] .. name, 'j' .. cjson.encode(
          {type = 'presence.leave', topic = name, member = member}))
      end
    elseif give_back == 's' then
      redis.call('DEL', key)
    elseif give_back ~= '0' then
      redis.call('DECRBY', key, give_back)
    end
  end
  redis.call('DEL', owned)
  redis.call('ZREM', KEYS[1], token)
end
return {#dead, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""


def _command(*args: str | bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
    )


def _chunks(items: list[str], size: int = 1000) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def _open_stream(pool: Any) -> trio.abc.Stream:
    """A connection to where ``pool`` (coredis' parsed URL) points: TCP, TLS or Unix."""
    location = pool.location
    path = getattr(location, "path", None)
    if path is not None:
        return await trio.open_unix_socket(path)
    stream: trio.abc.Stream = await trio.open_tcp_stream(location.host, location.port)
    ssl_context = pool.connection_kwargs.get("ssl_context")
    if ssl_context is not None:
        tls = trio.SSLStream(stream, ssl_context, server_hostname=location.host)
        await tls.do_handshake()
        stream = tls
    return stream


async def _handshake(
    stream: trio.abc.Stream, reader: Any, options: Any, *, select_db: bool
) -> None:
    """AUTH (and SELECT the URL's database) on a fresh connection of ours."""
    commands = []
    if options.get("password"):
        credentials = [options["password"]]
        if options.get("username"):
            credentials.insert(0, options["username"])
        commands.append(_command(b"AUTH", *credentials))
    if select_db and options.get("db"):
        commands.append(_command(b"SELECT", str(options["db"])))
    if not commands:
        return
    await stream.send_all(b"".join(commands))
    for _ in commands:
        while (reply := reader.gets()) is False:
            data = await stream.receive_some(65536)
            if not data:
                raise RedisConnectionError("Redis closed the connection during AUTH/SELECT")
            reader.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise RedisConnectionError(f"Redis refused AUTH/SELECT: {reply}")
