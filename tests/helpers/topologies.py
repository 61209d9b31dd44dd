"""Topology text shared by the tests: ``header`` for services written inline and loaded in
process; ``write_service`` for service files run by ``edm`` subprocesses on either broker."""
from __future__ import annotations

import json
from pathlib import Path

# The minimum the broker allows (group.min.session.timeout.ms): a SIGKILLed member is
# evicted quickly, so the restarted runner gets its partitions within seconds.
KAFKA_CONSUMER = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

# How each stream of ``header`` is declared: JSON values keyed by strings, except the dead
# letters (raw bytes) and the entity streams that tables read.
_DECLARED = {
    "dlq": "key: bytes, value: bytes",
    "users": "type: entity, key: string, value: json",
    "profiles": "type: entity, key: string, value: json",
}


def header(*streams: str, name: str = "svc", partitions: dict[str, int] | None = None) -> str:
    """The head of a microservice file (``kind``, ``name``, ``streams:``) declaring ``streams``,
    each on the topic of its own name with one partition (``partitions``: others by stream).
    Tests append ``pipelines:`` (and ``tables:``, ``stores:``) to it."""
    lines = ["", "kind: microservice", f"name: {name}", "streams:"]
    for stream in streams:
        declared = _DECLARED.get(stream, "key: string, value: json")
        count = (partitions or {}).get(stream, 1)
        lines.append(f"  {stream}: {{topic: {stream}, partitions: {count}, {declared}}}")
    return "\n".join(lines) + "\n"


def broker_yaml(directory: Path, kafka_bootstrap: str | None) -> str:
    """A topology's `broker:` value: Kafka (short session timeout, so a killed member's
    partitions move quickly) when ``kafka_bootstrap`` is given, else a local broker in
    ``directory / "broker"``."""
    if kafka_bootstrap is not None:
        return json.dumps({"kind": "kafka", "bootstrap_servers": kafka_bootstrap, "consumer": KAFKA_CONSUMER})
    return json.dumps({"kind": "local", "path": str(directory / "broker")})


def write_service(directory: Path, name: str, kafka_bootstrap: str | None, body: str, *,
                  processing: str | None = None) -> Path:
    """Writes ``directory/<name>.yaml``: the microservice ``name`` on ``broker_yaml(directory,
    kafka_bootstrap)`` with ``processing`` (a YAML flow mapping) when given, then ``body`` (its
    ``streams:``, ``stores:``, ``pipelines:``). Returns the path."""
    path = directory / f"{name}.yaml"
    head = f"kind: microservice\nname: {name}\nbroker: {broker_yaml(directory, kafka_bootstrap)}\n"
    if processing is not None:
        head += f"processing: {processing}\n"
    path.write_text(head + body)
    return path
