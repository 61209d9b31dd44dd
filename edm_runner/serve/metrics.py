"""Prometheus metrics of one ``edm run`` process (``GET /metrics``).

One registry per process (``Metrics``), shared by the HTTP servers of every service the process
runs. The runtime is not instrumented with prometheus-client: it keeps plain counters and
histograms (``runtime.stats.ServiceStats``, updated per batch), and ``RuntimeCollector`` turns
them into metric families when the endpoint is scraped. What needs I/O (consumer lag, store
sizes) is read by ``Metrics.render`` just before the families are generated, bounded in time;
a figure that cannot be read then is left out of that scrape rather than reported stale.

Every name starts with ``edm_``; labels: ``service`` always, and ``pipeline``, ``step``,
``task``, ``store``, ``topic``, ``partition`` where they apply (docs/design/http.md,
"Metrics", lists them all).

Invariants:
- Nothing here runs in the processing hot path: scraping reads what the runtime counted.
- The consumer lag of a partition is its end offset minus the group's committed offset (the
  last stable offset under exactly-once), for the partitions assigned to this instance; each
  instance reports its own partitions, so the sum over instances is the group's lag.
- Store sizes are read synchronously on the loop (``ServiceView.store_sizes``): a task leaves
  the runtime's maps before it closes, so no closing environment is read.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Awaitable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from edm_runner.brokers.base import TopicPartition
from edm_runner.runtime.stats import LATENCY_BUCKETS, Latency
from edm_runner.runtime.view import Lag, ServiceView
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError

log = logging.getLogger("edm.serve")

# How long a scrape may spend reading lag and store sizes (Prometheus' default scrape timeout
# is 10 s); past it the figures not read are left out of this scrape.
REFRESH_TIMEOUT_S = 5.0

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RuntimeCollector(Collector):
    """The runtime's figures as metric families, for the services ``views()`` returns."""

    def __init__(self, views: Callable[[], Iterable[ServiceView]]) -> None:
        self.views = views
        self.lag: dict[str, dict[TopicPartition, Lag]] = {}
        self.sizes: dict[str, dict[tuple[str, str, str], tuple[int, int]]] = {}

    async def refresh(self, timeout_s: float = REFRESH_TIMEOUT_S) -> None:
        """Reads lag and store sizes of every service (each within ``timeout_s``)."""
        views = list(self.views())
        self.lag, self.sizes = {}, {}

        async def one(view: ServiceView) -> None:
            try:
                self.lag[view.name] = await asyncio.wait_for(view.lag(), timeout_s)
            except Exception as exc:  # the scrape goes on without it
                log.warning("metrics: the consumer lag of %s could not be read: %s", view.name, exc)
            self.sizes[view.name] = view.store_sizes()

        await asyncio.gather(*(one(v) for v in views))

    def describe(self) -> list[Metric]:
        return []  # unchecked: the families depend on the topology

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        for view in self.views():
            service, stats = view.name, view.stats
            f.gauge("ready", "1 once the service's first assignment is restored and it processes, until it stops",
                    ("service",)).add_metric([service], 1.0 if view.phase == "running" else 0.0)
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
            tasks = f.gauge("tasks", "tasks this instance holds, by role (active, restoring, standby)",
                            ("service", "role"))
            for role, n in view.task_counts().items():
                tasks.add_metric([service, role], n)
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
        self.ingested = Counter("edm_ingest_events", "events received by an ingest endpoint, by outcome "
                                "(written, malformed, schema_violation, bad_key)",
                                ["service", "endpoint", "outcome"], registry=registry)
        self.pending = Gauge("edm_ingest_pending_bytes", "bytes of ingested events waiting for the "
                             "broker's acknowledgement (back-pressure refuses beyond a bound)",
                             ["service"], registry=registry)

    def observe(self, service: str, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(service, endpoint, method, str(status)).inc()
        self.latency.labels(service, endpoint, method).observe(seconds)


class Metrics:
    """The registry of one process: the runtime's figures, HTTP figures and the process'
    own (CPU, memory, open files). ``watch`` adds services as they start."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._views: list[ServiceView] = []
        self.runtime = RuntimeCollector(lambda: self._views)
        self.registry.register(self.runtime)
        ProcessCollector(registry=self.registry)
        self.http = HttpMetrics(self.registry)

    def watch(self, view: ServiceView) -> None:
        if all(v.name != view.name for v in self._views):
            self._views.append(view)

    def forget(self, view: ServiceView) -> None:
        self._views = [v for v in self._views if v is not view]

    async def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        await self.runtime.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_PROCESS: Metrics | None = None


def process_metrics() -> Metrics:
    """The registry of this process (every service's ``/metrics`` shows all of them)."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = Metrics()
    return _PROCESS


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status(error: BaseException) -> int:
    if isinstance(error, (HttpError, web.HTTPException)):
        return error.status
    if isinstance(error, (TimeoutError, asyncio.CancelledError)):
        return 503  # the request timeout (serve.server answers 503 timeout)
    return 500


def add_routes(ctx: ServeContext) -> None:
    """``GET /metrics``, and the middleware that counts every request of the service."""
    metrics = process_metrics()
    view = ctx.view
    metrics.watch(view)
    service, http = view.name, metrics.http

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except BaseException as error:
            http.observe(service, endpoint, request.method, _status(error), time.perf_counter() - started)
            raise
        http.observe(service, endpoint, request.method, response.status, time.perf_counter() - started)
        return response

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = await metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def forget(app: web.Application) -> None:
        metrics.forget(view)

    ctx.app.middlewares.append(observe)
    ctx.app.router.add_get("/metrics", scrape)
    ctx.app.on_cleanup.append(forget)
