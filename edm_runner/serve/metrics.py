"""Prometheus metrics of one ``edm run`` process (``GET /metrics``).

One registry per process (``Metrics``), shared by the HTTP servers of every service the process
runs. The runtime is not instrumented with prometheus-client: it keeps plain counters and
histograms (``runtime.stats.ServiceStats``, updated per batch), and ``RuntimeCollector`` turns
them into metric families when the endpoint is scraped. What needs I/O (consumer lag, store
sizes) is read by ``Metrics.render`` just before the families are generated, bounded in time;
a figure that cannot be read then is left out of that scrape rather than reported stale.

Every name starts with ``edm_``; labels: ``service`` always, and ``pipeline``, ``step``,
``task``, ``store``, ``topic``, ``partition`` where they apply (docs/serve.md lists them all).

Invariants:
- Nothing here runs in the processing hot path: scraping reads what the runtime counted.
- The consumer lag of a partition is its end offset minus the group's committed offset (the
  last stable offset under exactly-once), for the partitions assigned to this instance; each
  instance reports its own partitions, so the sum over instances is the group's lag.
- Store sizes are read under the runner's batch lock (a task never closes while it is read).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from edm_runner.brokers.base import TopicPartition
from edm_runner.runtime.service import ServiceRunner
from edm_runner.runtime.stats import LATENCY_BUCKETS, Latency

log = logging.getLogger("edm.serve")

# How long a scrape may spend reading lag and store sizes (Prometheus' default scrape timeout
# is 10 s); past it the figures not read are left out of this scrape.
REFRESH_TIMEOUT_S = 5.0
# How long a scrape waits for a runner's batch to finish before reading store sizes.
SIZES_LOCK_TIMEOUT_S = 1.0

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Lag:
    """``records`` behind the end of a partition; ``seconds``: the age of the oldest record
    not committed yet (now minus its timestamp), 0 when ``records`` is 0, None when unknown."""

    records: int
    seconds: float | None


async def consumer_lag(runner: ServiceRunner) -> dict[TopicPartition, Lag]:
    """The lag of every partition assigned to ``runner`` (empty before it joined)."""
    consumer = runner.consumer
    if consumer is None or runner.phase not in ("running", "starting"):
        return {}
    tps = sorted(consumer.assignment())
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    committed = await runner.broker.group_offsets(runner.name, sorted({tp.topic for tp in tps}))
    behind = {tp: max(0, ends[tp] - committed.get(tp, 0)) for tp in tps}
    lagging = {tp: committed.get(tp, 0) for tp, n in behind.items() if n > 0}
    ages = await _oldest_ages(runner, lagging) if lagging else {}
    return {tp: Lag(n, ages.get(tp) if n else 0.0) for tp, n in behind.items()}


async def _oldest_ages(runner: ServiceRunner, positions: dict[TopicPartition, int]) -> dict[TopicPartition, float]:
    """Per partition, now minus the timestamp of the record at ``positions[tp]`` (the first
    one not committed), read with a group-less reader of just those partitions."""
    reader = runner.broker.consumer(None, sorted({tp.topic for tp in positions}), partitions=sorted(positions))
    await reader.start()
    try:
        for tp, offset in positions.items():
            reader.seek(tp, offset)
        ages: dict[TopicPartition, float] = {}
        while len(ages) < len(positions):
            fetched = await reader.getmany(timeout_ms=500, max_records=len(positions) * 10)
            if not fetched:
                break
            now_ms = time.time() * 1000
            for tp, records in fetched.items():
                if tp not in ages and records:
                    ages[tp] = max(0.0, now_ms - records[0].timestamp_ms) / 1000
        return ages
    finally:
        await reader.close()


async def store_sizes(runner: ServiceRunner) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(store, task, role) -> (entries, bytes) of the stores open in ``runner``: its active
    tasks, its standbys and its global tables. Empty when its batch lock stays busy (a restore)."""
    if runner.phase != "running":
        return {}
    lock = runner.batch_lock
    try:
        await asyncio.wait_for(lock.acquire(), SIZES_LOCK_TIMEOUT_S)
    except TimeoutError:
        return {}
    try:
        out: dict[tuple[str, str, str], tuple[int, int]] = {}
        tasks = list(runner.tasks.tasks.values()) if runner.tasks is not None else []
        standbys = list(runner.standbys.tasks.values()) if runner.standbys is not None else []
        for role, group in (("active", tasks), ("standby", standbys)):
            for task in group:
                for store, size in task.state.sizes().items():
                    out[(store, task.id, role)] = size
        if runner.globals is not None and runner.globals.state is not None:
            for store, size in runner.globals.state.sizes().items():
                out[(store, "global", "global")] = size
        return out
    finally:
        lock.release()


class RuntimeCollector(Collector):
    """The runtime's figures as metric families, for the runners ``runners()`` returns."""

    def __init__(self, runners: Callable[[], Iterable[ServiceRunner]]) -> None:
        self.runners = runners
        self.lag: dict[str, dict[TopicPartition, Lag]] = {}
        self.sizes: dict[str, dict[tuple[str, str, str], tuple[int, int]]] = {}

    async def refresh(self, timeout_s: float = REFRESH_TIMEOUT_S) -> None:
        """Reads lag and store sizes of every runner (each within ``timeout_s``)."""
        runners = list(self.runners())
        self.lag, self.sizes = {}, {}

        async def one(runner: ServiceRunner) -> None:
            try:
                self.lag[runner.name] = await asyncio.wait_for(consumer_lag(runner), timeout_s)
            except Exception as exc:  # the scrape goes on without it
                log.warning("metrics: the consumer lag of %s could not be read: %s", runner.name, exc)
            self.sizes[runner.name] = await store_sizes(runner)

        await asyncio.gather(*(one(r) for r in runners))

    def describe(self) -> list[Metric]:
        return []  # unchecked: the families depend on the topology

    def collect(self) -> Iterator[Metric]:
        runners = list(self.runners())
        f = _Families()
        for runner in runners:
            service, stats = runner.name, runner.stats
            f.gauge("ready", "1 once the service's first assignment is restored and it processes, until it stops",
                    ("service",)).add_metric([service], 1.0 if runner.phase == "running" else 0.0)
            f.counter("events_in", "records read from the topology's declared streams",
                      ("service",)).add_metric([service], stats.events_in)
            f.counter("events_out", "records written to the topology's declared streams (dead letters apart)",
                      ("service",)).add_metric([service], stats.events_out)
            f.counter("internal_in", "records read from the service's repartition topics",
                      ("service",)).add_metric([service], stats.internal_in)
            f.counter("internal_out", "records written to the service's repartition topics",
                      ("service",)).add_metric([service], stats.internal_out)
            records_in = f.counter("records_in", "records a pipeline read, per source topic",
                                   ("service", "pipeline", "topic"))
            for (pipeline, topic), n in sorted(stats.in_by_pipeline.items()):
                records_in.add_metric([service, pipeline, topic], n)
            for name, doc, counts in (
                    ("records_out", "records a pipeline's sinks wrote (internal topics included)",
                     stats.out_by_pipeline),
                    ("records_skipped", "events a pipeline skipped (on_error: skip)", stats.skipped_by_pipeline),
                    ("records_dead_lettered", "events a pipeline wrote to its dead-letter stream",
                     stats.dead_lettered_by_pipeline),
                    ("records_late", "window events a pipeline dropped or dead-lettered as late",
                     stats.late_by_pipeline)):
                family = f.counter(name, doc, ("service", "pipeline"))
                for pipeline, n in sorted(counts.items()):
                    family.add_metric([service, pipeline], n)
            errors = f.counter("step_errors", "events a step failed on, by the on_error policy applied",
                               ("service", "pipeline", "step", "policy"))
            for (pipeline, step, policy), n in sorted(stats.errors_by_step.items()):
                errors.add_metric([service, pipeline, step, policy], n)
            _histogram(f.histogram("batch_processing_seconds", "time to process one fetched batch",
                                   ("service",)), [service], stats.processing)
            _histogram(f.histogram("commit_seconds",
                                   "time of one commit: flush outputs and changelogs, write stores, commit offsets",
                                   ("service",)), [service], stats.commit)
            f.counter("rebalances", "assignments this instance received (the first one included)",
                      ("service",)).add_metric([service], stats.rebalances)
            restored = f.counter("restored_records", "changelog (or table source) records applied by restores",
                                 ("service", "store"))
            for store, n in sorted(stats.restored_by_store.items()):
                restored.add_metric([service, store], n)
            remaining = f.gauge("restore_remaining_offsets", "changelog offsets the latest restore of a store "
                                "in a task still has to read (0 when done)", ("service", "store", "task"))
            progress = f.gauge("restore_progress_ratio", "share of the latest restore of a store in a task done "
                               "(1 when done)", ("service", "store", "task"))
            rate = f.gauge("restore_rate", "offsets per second of the latest restore of a store in a task",
                           ("service", "store", "task"))
            for (store, task), restore in sorted(stats.restores.items()):
                labels = [service, store, task]
                done = restore.finished is not None or restore.done >= restore.total
                remaining.add_metric(labels, 0 if done else restore.total - restore.done)
                progress.add_metric(labels, 1.0 if done or not restore.total else restore.done / restore.total)
                rate.add_metric(labels, restore.rate)
            tasks = f.gauge("tasks", "tasks this instance holds, active or standby", ("service", "role"))
            active = len(runner.tasks.tasks) if runner.tasks is not None else 0
            standby = len(runner.standbys.tasks) if runner.standbys is not None else 0
            tasks.add_metric([service, "active"], active)
            tasks.add_metric([service, "standby"], standby)
            entries = f.gauge("store_entries", "entries of a store in a task, as committed",
                              ("service", "store", "task", "role"))
            size = f.gauge("store_bytes", "bytes of the pages of a store in a task",
                           ("service", "store", "task", "role"))
            for (store, task, role), (n, nbytes) in sorted(self.sizes.get(service, {}).items()):
                entries.add_metric([service, store, task, role], n)
                size.add_metric([service, store, task, role], nbytes)
            lag_records = f.gauge("consumer_lag_records", "end offset minus the group's committed offset, per "
                                  "partition assigned to this instance", ("service", "topic", "partition"))
            lag_seconds = f.gauge("consumer_lag_seconds", "age of the oldest record not committed yet (now minus "
                                  "its timestamp; 0 when caught up)", ("service", "topic", "partition"))
            for tp, lag in sorted(self.lag.get(service, {}).items()):
                labels = [service, tp.topic, str(tp.partition)]
                lag_records.add_metric(labels, lag.records)
                if lag.seconds is not None:
                    lag_seconds.add_metric(labels, lag.seconds)
        yield from f.families.values()


class _Families:
    """Metric families by name, so every service adds its samples to the same family."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def _get(self, cls: type, name: str, doc: str, labels: Sequence[str]) -> Metric:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = cls(f"edm_{name}", doc, labels=list(labels))
        return family

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
        return self._get(CounterMetricFamily, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
        return self._get(GaugeMetricFamily, name, doc, labels)

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
        return self._get(HistogramMetricFamily, name, doc, labels)


def _histogram(family: HistogramMetricFamily, labels: list[str], latency: Latency) -> None:
    cumulative, buckets = 0, []
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), latency.counts):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family.add_metric(labels, buckets, latency.sum)


class HttpMetrics:
    """Requests served, by service, endpoint (the route as declared, e.g.
    ``/stores/{store}/keys/{key}``, never the raw path), method and status; their latency;
    requests proxied to the instance that owns a key; requests refused (401, 403) by scope."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("edm_http_requests", "HTTP requests served",
                                ["service", "endpoint", "method", "status"], registry=registry)
        self.latency = Histogram("edm_http_request_duration_seconds", "time to answer an HTTP request",
                                 ["service", "endpoint", "method"], buckets=HTTP_BUCKETS, registry=registry)
        self.proxied = Counter("edm_http_proxied_requests", "requests forwarded to the instance owning the key",
                               ["service", "endpoint", "status"], registry=registry)
        self.refused = Counter("edm_http_refused_requests", "requests refused by authentication",
                               ["service", "scope", "status"], registry=registry)

    def observe(self, service: str, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(service, endpoint, method, str(status)).inc()
        self.latency.labels(service, endpoint, method).observe(seconds)


class Metrics:
    """The registry of one process: the runtime's figures, HTTP figures and the process'
    own (CPU, memory, open files). ``watch`` adds runners as services start."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._runners: list[ServiceRunner] = []
        self.runtime = RuntimeCollector(lambda: self._runners)
        self.registry.register(self.runtime)
        ProcessCollector(registry=self.registry)
        self.http = HttpMetrics(self.registry)

    def watch(self, runners: Iterable[ServiceRunner]) -> None:
        for runner in runners:
            if runner not in self._runners:
                self._runners.append(runner)

    async def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        await self.runtime.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
