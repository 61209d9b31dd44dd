"""No record above ``MAX_RECORD_BYTES`` enters a topic through the two writers that used to
skip the check (found by acceptance testing, h13): an HTTP ingest endpoint (a 1,000,100-byte
event under `http.limits.max_body` was acknowledged, then stopped the service that passed it on,
at every restart) and a `group_by` (its repartition record was written whatever its size, which
Kafka refuses with the whole batch). Both now refuse the one event: ingestion with a 413
``record_too_large``, `group_by` as an error of the event that follows `on_error`."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from cli_helpers import edm, ok
from edm_runner.records import MAX_RECORD_BYTES
from helpers.http_calls import post_json, post_ndjson
from helpers.kafka_flow import Runner
from helpers.serve_flow import serving_urls
from helpers.topologies import write_service
from test_serve_ingest import broker_of, stream_records


def ingest_scenario(tmp_path: Path, kafka_bootstrap: str | None) -> None:
    name = f"size-{uuid.uuid4().hex[:8]}"
    topology = write_service(tmp_path, name, kafka_bootstrap, f"""\
streams:
  inbox: {{topic: {name}-inbox, partitions: 1, key: string, value: json}}
  copy: {{topic: {name}-copy, partitions: 1, key: string, value: json}}
pipelines:
  copy: {{from: inbox, to: copy}}
http:
  listen: "127.0.0.1:0"
  ingest: [{{path: /in, stream: inbox, key: {{field: id}}}}]
""")
    too_large = {"id": "big", "note": "x" * MAX_RECORD_BYTES}  # under max_body (1 MiB), over the record limit
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)[name]
        status, _, body = post_json(f"{url}/in", too_large)
        assert (status, body["error"]) == (413, "record_too_large"), body
        assert f"{MAX_RECORD_BYTES}" in body["message"] and "'inbox'" in body["message"]
        assert body["message"].endswith("send smaller events")
        status, _, body = post_ndjson(f"{url}/in", [json.dumps(too_large), json.dumps({"id": "ok"})])
        assert status == 207 and [r["status"] for r in body["results"]] == [413, 200], body
        assert body["results"][0]["error"] == "record_too_large"
        assert runner.alive()
    finally:
        assert runner.stop() == 0, runner.stderr()
    found = asyncio.run(stream_records(broker_of(tmp_path, kafka_bootstrap), f"{name}-inbox"))
    assert [json.loads(r.value)["id"] for r in found.values()] == ["ok"]


def test_ingest_refuses_an_event_above_the_record_limit_on_the_embedded_broker(tmp_path: Path) -> None:
    ingest_scenario(tmp_path, None)


@pytest.mark.kafka
def test_ingest_refuses_an_event_above_the_record_limit_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    ingest_scenario(tmp_path, kafka_bootstrap)


def test_a_group_by_record_above_the_limit_is_an_error_of_its_event(tmp_path: Path) -> None:
    # Each input record is ~600 KB; the value its steps build, and so its group_by record, ~1.2 MB
    # (on Kafka: a MessageSizeTooLarge failing the whole batch, whatever `on_error` says).
    (tmp_path / "topology.yaml").write_text("""\
kind: microservice
name: grouped
streams:
  events: {partitions: 1, key: string, value: json}
  counts: {partitions: 1, key: string, value: json}
  dlq: {partitions: 1, key: bytes, value: bytes}
stores:
  per-key: {type: key_value}
pipelines:
  count:
    from: events
    steps:
      - map_values: "{'twice': [value.pad, value.pad]}"
      - group_by: {key: key, name: by-key}
      - count: {store: per-key}
    to: counts
    on_error: {dead_letter: dlq}
""")
    pad = "p" * 600_000
    (tmp_path / "topology.test.yaml").write_text(f"""\
cases:
  an oversize repartition record is dead-lettered, a small one counted:
    produce:
      events:
        - {{key: a, value: {{pad: {pad}}}}}
        - {{key: b, value: {{pad: small}}}}
    expect:
      dead_letters: {{dlq: 1}}
      streams:
        counts: [{{key: b, value: 1}}]
""")
    result = edm("test", tmp_path / "topology.yaml")
    assert result.code == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    ok("validate", tmp_path / "topology.yaml")
