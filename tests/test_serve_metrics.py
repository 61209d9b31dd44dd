"""The Prometheus metrics of a real run (serve.metrics): a count-per-user service on the embedded
broker and on Kafka, scraped before it processes anything, after it drained its input, and after
a restart that restores its store from the changelog; every scrape is parsed with
prometheus-client's own parser.

Consumer lag is the end offset minus the group's committed offset per partition: all the input
before the first batch, 0 once drained and committed, on both brokers.
"""
from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edm_runner.brokers.base import Broker
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.language import load_file
from edm_runner.runtime.service import ServiceRunner
from edm_runner.runtime.stats import ServiceStats
from edm_runner.runtime.view import ServiceView
from edm_runner.serve.metrics import Metrics
from cli_helpers import ROOT, ok
from helpers.reliability_flow import PARTITIONS, events, produce, write_topology


Samples = dict[tuple[str, frozenset], float]


async def scrape(metrics: Metrics) -> Samples:
    """Every sample of one scrape, parsed by prometheus-client: (name, labels) -> value."""
    body, content_type = await metrics.render()
    assert content_type.startswith("text/plain; version=")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def values(samples: Samples, name: str, **labels: str) -> list[float]:
    wanted = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and wanted <= ls]


def one(samples: Samples, name: str, **labels: str) -> float:
    found = values(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def drained(runner: ServiceRunner) -> None:
    """Processes until every assigned partition is consumed and committed."""
    while True:
        if not await runner.poll(50):
            if runner.uncommitted:
                await runner.commit_now()
            elif await runner.caught_up():
                return


async def scenario(broker: Broker, tmp_path: Path, kafka_bootstrap: str | None) -> None:
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    topology = load_file(write_topology(tmp_path, name, kafka_bootstrap))
    inputs = events()
    keys = len({key for key, _ in inputs})
    state_dir = tmp_path / "state"
    await broker.start()
    try:
        await produce(broker, name, inputs)
        runner = ServiceRunner(topology, broker, ServiceStats(), state_dir)
        metrics = Metrics()
        metrics.watch(ServiceView(runner))
        before = await scrape(metrics)
        assert one(before, "edm_ready", service=name) == 0  # not started: no assignment yet
        await runner.provision()
        await runner.start()
        try:
            first = await scrape(metrics)
            assert one(first, "edm_ready", service=name) == 1
            lag = values(first, "edm_consumer_lag_records", service=name, topic=f"{name}-events")
            assert len(lag) == PARTITIONS and sum(lag) == len(inputs)
            ages = values(first, "edm_consumer_lag_seconds", service=name, topic=f"{name}-events")
            assert len(ages) == PARTITIONS and all(age > 0 for age in ages)  # produced with timestamp 0

            await drained(runner)
            done = await scrape(metrics)
            assert values(done, "edm_consumer_lag_records", service=name) == [0] * PARTITIONS
            assert values(done, "edm_consumer_lag_seconds", service=name) == [0] * PARTITIONS
            assert one(done, "edm_records_in_total", service=name, pipeline="count",
                       topic=f"{name}-events") == len(inputs)
            assert one(done, "edm_records_out_total", service=name, pipeline="count") == len(inputs)
            assert one(done, "edm_events_in_total", service=name) == len(inputs)
            assert sum(values(done, "edm_store_entries", service=name, store="counts", role="active")) == keys
            assert all(b > 0 for b in values(done, "edm_store_bytes", service=name, store="counts"))
            assert one(done, "edm_tasks", service=name, role="active") == PARTITIONS
            assert one(done, "edm_batch_processing_seconds_count", service=name) > 0
            assert one(done, "edm_commit_seconds_count", service=name) > 0
            assert one(done, "edm_batch_processing_seconds_bucket", service=name, le="+Inf") == \
                one(done, "edm_batch_processing_seconds_count", service=name)
            assert values(done, "edm_restored_records_total", service=name) == []
            assert values(done, "process_cpu_seconds_total")  # the process' own figures
        finally:
            await runner.close()
        assert one(await scrape(metrics), "edm_ready", service=name) == 0

        # Without its local state, a new runner restores the store from the changelog.
        shutil.rmtree(state_dir)
        again = ServiceRunner(topology, broker, ServiceStats(), state_dir)
        metrics = Metrics()
        metrics.watch(ServiceView(again))
        await again.provision()
        await again.start()
        try:
            restored = await scrape(metrics)
            changelog = one(restored, "edm_restored_records_total", service=name, store="counts")
            assert keys <= changelog <= len(inputs)
            assert values(restored, "edm_restore_progress_ratio", service=name, store="counts") == [1.0] * PARTITIONS
            assert values(restored, "edm_restore_remaining_offsets", service=name, store="counts") == [0] * PARTITIONS
            assert sum(values(restored, "edm_store_entries", service=name, store="counts")) == keys
            assert values(restored, "edm_consumer_lag_records", service=name) == [0] * PARTITIONS
            if kafka_bootstrap is not None:
                assert one(restored, "edm_rebalances_total", service=name) >= 1
        finally:
            await again.close()
    finally:
        await broker.close()


def test_metrics_of_a_run_on_the_embedded_broker(tmp_path: Path) -> None:
    asyncio.run(scenario(LocalBroker(tmp_path / "broker"), tmp_path, None))


@pytest.mark.kafka
def test_metrics_of_a_run_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    asyncio.run(scenario(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), tmp_path, kafka_bootstrap))


@pytest.mark.parametrize("example, inputs, counter, total", [
    ("quickstart", {"orders": "orders.jsonl"}, "edm_records_dead_lettered_total", "dead_lettered"),
    ("user-activity", {"clicks": "clicks.jsonl"}, "edm_records_skipped_total", "skipped"),
    ("hourly-revenue", {"customer-orders": "customer-orders.jsonl"}, "edm_records_late_total", "late"),
])
def test_per_pipeline_error_counters_of_the_examples(tmp_path: Path, example: str, inputs: dict[str, str],
                                                    counter: str, total: str) -> None:
    """Dead-lettered, skipped and late events per pipeline, on the examples that have them: the
    pipelines' figures add up to the run's totals (which the run summary prints), and the steps
    that failed are named."""
    shutil.copytree(ROOT / "topologies" / example, tmp_path / "topologies" / example)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    topology = tmp_path / "topologies" / example / "topology.yaml"
    for stream, file in inputs.items():
        ok("produce", stream, "-t", topology, "-f", topology.parent / file, "--state-dir", tmp_path)

    async def scenario() -> tuple[Samples, ServiceStats]:
        broker = LocalBroker(tmp_path / "broker")
        await broker.start()
        stats = ServiceStats()
        runner = ServiceRunner(load_file(topology), broker, stats, tmp_path)
        metrics = Metrics()
        metrics.watch(ServiceView(runner))
        try:
            await runner.provision()
            await runner.start()
            await drained(runner)
            return await scrape(metrics), stats
        finally:
            await runner.close()
            await broker.close()

    samples, stats = asyncio.run(scenario())
    expected = getattr(stats, total)
    assert expected > 0
    assert sum(values(samples, counter, service=example)) == expected
    if total != "late":  # late events are no step error: the window counts them
        assert sum(values(samples, "edm_step_errors_total", service=example)) == expected
