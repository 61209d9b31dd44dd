"""Every example topology gives the same outputs, partition by partition, on the embedded
broker and on Apache Kafka.

Each run gets its own topic and group names (a suffix on every topic and service name) so a
long-lived broker (EDM_KAFKA_BOOTSTRAP) never mixes runs. Inputs are the examples' own
``<stream>.jsonl`` files, encoded identically for both brokers with fixed timestamps.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from edm_runner.brokers.base import Broker, OutRecord, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.records.partitioner import default_partition
from edm_runner.runtime import run_services
from edm_runner.serde import make_serde
from edm_runner.language import load_file
from edm_runner.language.model import BusinessTopology, SerdeSpec, StreamSpec, Topology
from helpers.brokers import started

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"
# A topology file per example directory with sample input (*.jsonl, as `edm produce` reads
# it): the business topology where there is one. An example fed over HTTP only (click-ingest)
# runs in tests/test_serve_ingest.py, which tests ingestion on both brokers.
EXAMPLES = sorted(
    next((p for p in d.glob("*.yaml") if "kind: business" in p.read_text()), d / "topology.yaml")
    for d in TOPOLOGIES.iterdir() if d.is_dir() and any(d.glob("*.jsonl")))

# Topic -> partition -> [(key, value, headers, timestamp)] in offset order.
Outputs = dict[str, dict[int, list[tuple]]]


def canonical(records: list[tuple]) -> tuple[list[tuple], dict[bytes, list[tuple]]]:
    """What both brokers must agree on in one partition: the same records, and per key the
    same order. How records of different input partitions interleave is not defined (it
    depends on fetch timing), so the order across keys is not compared."""
    per_key: dict[bytes, list[tuple]] = {}
    for record in records:
        if record[0] is not None:
            per_key.setdefault(record[0], []).append(record)
    return sorted(records, key=repr), per_key


def services_of(path: Path, suffix: str) -> list[Topology]:
    """The example's services, renamed so topics and consumer groups are unique to a run."""
    model = load_file(path)
    services = model.services if isinstance(model, BusinessTopology) else [model]
    for service in services:
        service.name = f"{service.name}-{suffix}"
        for stream in service.streams.values():
            stream.topic = f"{stream.topic}-{suffix}"
    return services


def inputs_of(path: Path, services: list[Topology]) -> list[tuple[StreamSpec, list[dict]]]:
    streams = {s.name: s for service in services for s in service.streams.values()}
    found = []
    for file in sorted(path.parent.glob("*.jsonl")):
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        found.append((streams[file.stem], lines))
    return found


async def produce(broker: Broker, stream: StreamSpec, items: list[dict]) -> None:
    """As `edm produce`: murmur2 partition of the key, round robin without one."""
    key_serde = make_serde(SerdeSpec(stream.key.format))
    value_serde = make_serde(SerdeSpec(stream.value.format))
    await broker.ensure_topics([TopicSpec(stream.topic, stream.partitions, stream.compacted)])
    producer = broker.producer()
    await producer.start()
    for index, item in enumerate(items):
        key = key_serde.encode(item.get("key"))
        partition = (default_partition(key, stream.partitions) if key is not None
                     else index % stream.partitions)
        producer.send(OutRecord(stream.topic, partition, key, value_serde.encode(item["value"]),
                                item.get("timestamp", 1_700_000_000_000 + index)))
    await producer.flush()
    await producer.close()


async def read_all(broker: Broker, topic: str) -> dict[int, list[tuple]]:
    consumer = broker.consumer(None, [topic])
    await consumer.start()
    tps = sorted(consumer.assignment())
    ends = await consumer.end_offsets(tps)
    out: dict[int, list[tuple]] = {tp.partition: [] for tp in tps}
    while any([await consumer.position(tp) < ends[tp] for tp in tps]):
        for tp, records in (await consumer.getmany(timeout_ms=200, max_records=1000)).items():
            out[tp.partition].extend((r.key, r.value, r.headers, r.timestamp_ms) for r in records)
    await consumer.close()
    return out


async def run_example(broker: Broker, path: Path, suffix: str) -> Outputs:
    services = services_of(path, suffix)
    async with started(broker):
        for stream, items in inputs_of(path, services):
            await produce(broker, stream, items)
        await asyncio.wait_for(run_services(services, broker, until_idle=True), 120)
        topics = sorted({s.topic for service in services for s in service.streams.values()})
        return {t.removesuffix(f"-{suffix}"): await read_all(broker, t) for t in topics}


@pytest.mark.kafka
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_outputs_are_identical_on_both_brokers(path: Path, kafka_bootstrap: str,
                                                       tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    local = asyncio.run(run_example(LocalBroker(tmp_path / "broker"), path, suffix))
    kafka = asyncio.run(run_example(KafkaBroker({"bootstrap_servers": kafka_bootstrap}), path, suffix))
    assert any(records for partitions in local.values() for records in partitions.values())
    assert kafka.keys() == local.keys()
    for topic, partitions in local.items():
        assert kafka[topic].keys() == partitions.keys()
        for partition, records in partitions.items():
            assert canonical(kafka[topic][partition]) == canonical(records), \
                f"{topic}/{partition} differs between the brokers"
