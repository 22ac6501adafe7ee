"""``--metrics-bind`` with ``--workers N``: one listener, the sum of every worker.

Each worker keeps its own counters (metrics.py) and answers, on a private unix socket
(:func:`worker_socket`, in a directory only the server's parent created), with its own
Prometheus text: one connection, the whole exposition, then EOF.  A collector process,
forked by the parent like a worker (and replaced like one if it dies), serves the
``--metrics-bind`` socket the parent bound; at each scrape it asks every worker and
answers with :func:`merge` of what they said.  No worker task, no thread and nothing on
any hot path takes part until a scrape; prometheus-client's multiprocess mode is not
used because it cannot aggregate custom collectors, which is what most of ours are.

How samples merge, worker by worker, per (name, labels):

* summed: counters, gauges of things each worker holds (connections, subscribers,
  presence members, queue depths), histogram buckets, counts and sums (cumulative
  buckets stay cumulative);
* ``hornbeam_redis_up``: the minimum (0 if any worker sees Redis down);
  ``hornbeam_redis_outages``: the maximum (the workers share one Redis, so they see the
  same outages); a ``*_created`` timestamp: the earliest.

A worker that does not answer within ``ASK_TIMEOUT`` (restarting, say) is left out of
that scrape; ``hornbeam_workers_scraped`` says how many answered.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .metrics_http import handle_scrape

ASK_TIMEOUT = 5.0
"""Seconds a worker has to answer one scrape."""
MAX_ANSWER = 64 * 1024 * 1024
"""Bytes read from one worker at most: its series are bounded (per pattern, not topic)."""

_MIN_SAMPLES = frozenset({"hornbeam_redis_up"})
_MAX_SAMPLES = frozenset({"hornbeam_redis_outages_total"})


def worker_socket(directory: str, number: int) -> str:
    """Where worker ``number`` answers the collector (the same path for its replacement)."""
    return os.path.join(directory, f"worker-{number}.sock")


# -- worker side ----------------------------------------------------------------
async def serve_snapshots(
    render: Callable[[], bytes], path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer every connection to ``path`` with ``render()`` until cancelled."""
    try:
        os.unlink(path)  # left by the worker this one replaces
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    task_status.started()
    await trio.serve_listeners(partial(_answer, render), [trio.SocketListener(sock)])


async def _answer(render: Callable[[], bytes], stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(ASK_TIMEOUT):
            await stream.send_all(render())
    except (trio.BrokenResourceError, OSError):
        pass  # the collector gave up on this scrape: nothing to tell it
    finally:
        await trio.aclose_forcefully(stream)


# -- collector side ---------------------------------------------------------------
async def ask(path: str) -> str | None:
    """One worker's exposition, or None if it does not answer (in time)."""
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(ASK_TIMEOUT):
        try:
            stream = await trio.open_unix_socket(path)
        except OSError:
            return None  # not started yet, or being replaced
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    chunks.append(data)
                    size += len(data)
                    if size > MAX_ANSWER:
                        return None
            except (trio.BrokenResourceError, OSError):
                return None
            return b"".join(chunks).decode("utf-8")
    return None


def _combine(name: str, old: float, new: float) -> float:
    if name.endswith("_created"):
        return min(old, new)
    if name in _MIN_SAMPLES:
        return min(old, new)
    if name in _MAX_SAMPLES:
        return max(old, new)
    return old + new


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge(texts: Sequence[str]) -> bytes:
    """The Prometheus text of every worker's exposition in ``texts``, merged (see above)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = merged.get(key)
                merged[key] = (
                    sample.value if old is None else _combine(sample.name, old, sample.value)
                )
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    scraped = GaugeMetricFamily(
        "hornbeam_workers_scraped", "Workers whose metrics this scrape includes", value=len(texts)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*families.values(), scraped]))
    return generate_latest(registry)


async def render_all(paths: Sequence[str]) -> bytes:
    """Ask every worker at once; merge the answers."""
    answers: list[str | None] = [None] * len(paths)

    async def one(index: int) -> None:
        answers[index] = await ask(paths[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(paths)):
            nursery.start_soon(one, index)
    return merge([answer for answer in answers if answer is not None])


async def serve_collector(listener: socket.socket, paths: Sequence[str]) -> None:
    """Serve scrapes on ``listener`` (bound by the parent) until cancelled."""
    sock = trio.socket.from_stdlib_socket(listener)
    await trio.serve_listeners(
        partial(handle_scrape, partial(render_all, paths)), [trio.SocketListener(sock)]
    )


__all__ = ["ask", "merge", "render_all", "serve_collector", "serve_snapshots", "worker_socket"]
