"""Prometheus metrics (``--metrics-bind``): counted on the hot paths as plain ints, read
and formatted only when Prometheus scrapes.

Most of what is exposed the server keeps anyway: open connections (and their presence
memberships) are ``Runtime.connections``, pub/sub totals ``pubsub.COUNTS``, subscribers
the hub's topic table, Redis' queue and losses the backend's ``OutageLog``.  One
:class:`ServerCollector` reads them at scrape time, so a scrape costs work and a request
or an echo costs none.

WebSocket messages in and out are counted always, by each connection (in:
``messages_in``, one slot add per message, cheaper than any switch between a counting
and a plain connection; out: ``Writer.sent``, the count that paces the app's
checkpoints anyway), and handed to ``ws_conn.WEBSOCKET_COUNTS`` when it ends.  Only
the publish-to-delivery latency runs with metrics on alone:
``DeliveryBatcher.observe_latency``, one observation per batcher round (see
:class:`ServerMetrics`), never one per delivery.

Metrics are per process; with ``--workers`` a collector process sums the workers'
expositions at scrape time (metrics_workers.py).
This module imports prometheus-client, an extra: only ``server`` imports it, and only
when ``metrics_bind`` is set (Config has checked that the package is there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .pubsub import COUNTS
from .ws_conn import WEBSOCKET_COUNTS, WebSocketConnection

if TYPE_CHECKING:
    from .config import Config
    from .runtime import Runtime

NO_PATTERN = "(none)"
"""The ``pattern`` label of topics that match no ``--history`` pattern."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def presence_members(runtime: Runtime) -> dict[str, int]:
    """Topic -> presence members held by this process's connections.

    Read from the connections themselves (``ConnectionContext.presence``, the topics a
    connection is a member of until it leaves or ends), so it is the same on every
    backend and costs nothing until a scrape.  Over Redis it counts this process's
    members, as the other gauges count its subscribers; members of other processes
    sharing the store are theirs to report.
    """
    counts: dict[str, int] = {}
    for context in list(runtime.connections.values()):
        for topic in context.presence:
            counts[topic] = counts.get(topic, 0) + 1
    return counts


class ServerCollector(Collector):
    """Reads the server's counters at scrape time (see the module docstring)."""

    def __init__(
        self, runtime: Runtime, config: Config, busy_poll_seconds: Callable[[], float]
    ) -> None:
        self.runtime = runtime
        self.busy_poll_seconds = busy_poll_seconds
        self.patterns = tuple(pattern for pattern, _, _ in config.history_rules)

    def pattern_of(self, topic: str) -> str:
        """The first ``--history`` pattern ``topic`` matches: the label that keeps the
        number of series bounded whatever the number of topics."""
        for pattern in self.patterns:
            if fnmatchcase(topic, pattern):
                return pattern
        return NO_PATTERN

    def per_pattern(
        self, name: str, documentation: str, counts: dict[str, int], *, unmatched: bool = True
    ) -> Metric:
        """A gauge per pattern (and ``NO_PATTERN`` for the rest, if ``unmatched``)."""
        totals = dict.fromkeys((*self.patterns, NO_PATTERN) if unmatched else self.patterns, 0)
        for topic, count in counts.items():
            pattern = self.pattern_of(topic)
            if pattern in totals:
                totals[pattern] += count
        family = GaugeMetricFamily(name, documentation, labels=["pattern"])
        for pattern, total in totals.items():
            family.add_metric([pattern], total)
        return family

    def collect(self) -> Iterable[Metric]:
        runtime = self.runtime
        kinds = {"http": 0, "websocket": 0}
        received, sent = WEBSOCKET_COUNTS.received, WEBSOCKET_COUNTS.sent  # ended ones'
        for context in list(runtime.connections.values()):
            kinds[context.kind] = kinds.get(context.kind, 0) + 1
            ws = context.pusher
            if isinstance(ws, WebSocketConnection):
                received += ws.messages_in
                sent += ws.writer.sent
        connections = GaugeMetricFamily(
            "hornbeam_connections", "Open connections by kind", labels=["kind"]
        )
        for kind, count in kinds.items():
            connections.add_metric([kind], count)
        yield connections
        yield CounterMetricFamily(
            "hornbeam_websocket_messages_received",
            "WebSocket messages received from clients and queued for the app",
            value=received,
        )
        yield CounterMetricFamily(
            "hornbeam_websocket_messages_sent",
            "WebSocket messages the apps sent (pub/sub pushes are counted apart)",
            value=sent,
        )
        yield CounterMetricFamily(
            "hornbeam_pubsub_published",
            "publish() calls made in this process",
            value=COUNTS.published,
        )
        yield CounterMetricFamily(
            "hornbeam_pubsub_delivered",
            "Messages handed to local subscribers (one per subscriber reached)",
            value=COUNTS.delivered,
        )
        yield CounterMetricFamily(
            "hornbeam_pubsub_dropped",
            "Deliveries lost under --slow-consumer drop-oldest",
            value=COUNTS.dropped,
        )
        yield CounterMetricFamily(
            "hornbeam_pubsub_slow_consumer_closes",
            "Subscribers ended under --slow-consumer close (WebSocket close 1013, SlowConsumer)",
            value=COUNTS.slow_consumer_closes,
        )
        yield CounterMetricFamily(
            "hornbeam_busy_poll_seconds",
            "Seconds lone connections polled for their next bytes instead of sleeping"
            " (--busy-poll-us), about: CPU spent for their latency",
            value=self.busy_poll_seconds(),
        )
        yield self.per_pattern(
            "hornbeam_pubsub_subscribers",
            "Local subscribers, by the --history pattern their topic matches",
            runtime.hub.subscriber_counts(),
        )
        backend: Any = runtime.backend
        sizes = getattr(backend, "history_sizes", None)
        yield self.per_pattern(
            "hornbeam_history_messages",
            "Messages kept in topic history, by --history pattern",
            sizes() if sizes is not None else {},
            unmatched=False,  # a topic no pattern matches keeps no history
        )
        yield self.per_pattern(
            "hornbeam_presence_members",
            "Presence members, by the --history pattern their topic matches",
            presence_members(runtime),
        )
        if getattr(backend, "name", None) == "redis":
            yield from _redis_metrics(backend)


def _redis_metrics(backend: Any) -> Iterable[Metric]:
    outage = backend.outage
    yield GaugeMetricFamily(
        "hornbeam_redis_queue_depth",
        "Publishes and writes waiting for Redis (queued or in flight)",
        value=backend.queue_depth,
    )
    yield GaugeMetricFamily(
        "hornbeam_redis_up",
        "1 while Redis is reachable, 0 during an outage",
        value=0 if outage.down else 1,
    )
    yield CounterMetricFamily(
        "hornbeam_redis_outages", "Redis outages since start", value=outage.outages
    )
    yield CounterMetricFamily(
        "hornbeam_redis_lost_publishes",
        "Publishes dropped because the queue for Redis was full",
        value=outage.lost_publishes,
    )
    yield CounterMetricFamily(
        "hornbeam_redis_lost_writes",
        "State writes dropped because the queue for Redis was full",
        value=outage.lost_writes,
    )


class ServerMetrics:
    """The registry of one server: its collector and the latency histogram.

    The latency is observed once per round of the delivery batcher: from the first
    delivery that woke it (made synchronously inside publish() on the memory backend;
    on arrival from Redis over Redis) until every WebSocket it marked meanwhile had its
    deliveries handed to the kernel or queued.  So one observation covers a burst of
    publishes, is the worst latency of that burst, and costs two clock reads and one
    histogram update per round, never anything per subscriber.
    """

    def __init__(
        self, runtime: Runtime, config: Config, busy_poll_seconds: Callable[[], float]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "hornbeam_pubsub_delivery_latency_seconds",
            "From publish() to the deliveries reaching the WebSocket send path, per batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ServerCollector(runtime, config, busy_poll_seconds))

    def render(self) -> bytes:
        """The Prometheus text exposition of everything, as of now."""
        return generate_latest(self.registry)

    async def arender(self) -> bytes:
        """:meth:`render` for the listener (metrics_http.Render)."""
        return self.render()


__all__ = [
    "NO_PATTERN",
    "ServerCollector",
    "ServerMetrics",
    "presence_members",
]
