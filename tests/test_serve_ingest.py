"""Ingestion over HTTP (issue 10): real `edm run` processes, real HTTP, on the embedded broker
and on Kafka. Valid, malformed, schema-violating and batch requests get their statuses; the
stream holds exactly the acknowledged events, at the partitions and offsets the answers gave;
an Idempotency-Key makes a retried request write once; an event acknowledged with a 2xx is in
the stream even when the instance is SIGKILLed right after the answer; back-pressure is a 429
with Retry-After while the broker does not acknowledge."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_helpers import ROOT, ok
from edm_runner.brokers.base import Broker, Record
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.records.partitioner import default_partition
from helpers.brokers import started
from helpers.http_calls import call, post_json, post_ndjson
from helpers.kafka_flow import Runner
from helpers.serve_flow import READY, serving_urls, settled, wait_for_line
from helpers.topologies import write_service

PARTITIONS = 3


def click(user: str, page: str = "/home", **extra: object) -> dict:
    return {"user_id": user, "page": page, "at": "2026-11-30T10:00:00Z", **extra}


def write_ingest_topology(directory: Path, name: str, kafka_bootstrap: str | None, *,
                          http_extra: str = "") -> Path:
    """``name`` ingests clicks (schemas/click.json) at /clicks keyed by user_id, and by a header
    at /clicks-by-header; nothing consumes them (the test reads the stream)."""
    (directory / "click.json").write_text((ROOT / "schemas" / "click.json").read_text())
    return write_service(directory, name, kafka_bootstrap, f"""\
streams:
  clicks: {{topic: {name}-clicks, partitions: {PARTITIONS}, key: string, value: {{format: json, schema: click.json}}}}
  out: {{topic: {name}-out, partitions: 1, key: string, value: json}}
pipelines:
  copy: {{from: clicks, to: out}}
http:
  listen: "127.0.0.1:0"
  ingest:
    - {{path: /clicks, stream: clicks, key: {{field: user_id}}}}
    - {{path: /clicks-by-header, stream: clicks, key: {{header: X-User}}}}
  limits: {{max_body: 4KiB}}
{http_extra}""")


async def stream_records(broker: Broker, topic: str) -> dict[tuple[int, int], Record]:
    """(partition, offset) -> record, for every record of ``topic``."""
    async with started(broker):
        async with started(broker.consumer(None, [topic])) as reader:
            tps = sorted(reader.assignment())
            ends = await reader.end_offsets(tps)
            found: dict[tuple[int, int], Record] = {}
            while sum(1 for tp in tps for p, _ in found if p == tp.partition) < sum(ends.values()):
                for records in (await reader.getmany(timeout_ms=1000, max_records=1000)).values():
                    for r in records:
                        found[(r.partition, r.offset)] = r
            return found


def broker_of(tmp_path: Path, kafka_bootstrap: str | None) -> Broker:
    if kafka_bootstrap is None:
        return LocalBroker(tmp_path / "broker")
    return KafkaBroker({"bootstrap_servers": kafka_bootstrap})


def ingestion_scenario(tmp_path: Path, kafka_bootstrap: str | None) -> None:
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    topology = write_ingest_topology(tmp_path, name, kafka_bootstrap)
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    acknowledged: dict[tuple[int, int], dict] = {}  # (partition, offset) -> the click
    try:
        url = serving_urls(runner)[name]
        if kafka_bootstrap is not None:  # an Idempotency-Key goes to its holder among the members: known by then
            wait_for_line(runner, READY)

        # One valid event: 200 once written, on the partition of its key.
        status, _, body = post_json(f"{url}/clicks", click("u-1"))
        assert status == 200, body
        assert body["stream"] == "clicks" and body["topic"] == f"{name}-clicks"
        assert body["partition"] == default_partition(b"u-1", PARTITIONS)
        acknowledged[(body["partition"], body["offset"])] = click("u-1")

        # The key from a header.
        status, _, body = post_json(f"{url}/clicks-by-header", click("u-9"), headers={"X-User": "h-1"})
        assert status == 200 and body["partition"] == default_partition(b"h-1", PARTITIONS), body
        acknowledged[(body["partition"], body["offset"])] = click("u-9")
        status, _, body = post_json(f"{url}/clicks-by-header", click("u-9"))
        assert (status, body["error"]) == (400, "bad_key") and "X-User" in body["message"]

        # Malformed: not JSON, not UTF-8, empty.
        for raw in (b'{"user_id": "u-1", ', b"\xff\xfe", b"  "):
            status, _, body = call(f"{url}/clicks", method="POST", body=raw,
                                   headers={"Content-Type": "application/json"})
            assert (status, body["error"]) == (400, "malformed"), (raw, body)
            assert "b'" not in body["message"], body  # the text sent, not a Python bytes repr
        status, _, body = call(f"{url}/clicks", method="POST", body=b'{"user_id": "u-1", ',
                               headers={"Content-Type": "application/json"})
        assert body["message"].endswith(""" in '{"user_id": "u-1", '"""), body
        status, _, body = post_json(f"{url}/clicks?dry_run=1", click("u-1"))  # nothing written
        assert (status, body["error"], body["parameter"]) == (400, "bad_request", "dry_run"), body

        # A schema violation: every failing path, as JSON pointers.
        status, _, body = post_json(f"{url}/clicks", {"user_id": 7, "at": "2026-11-30T10:00:00Z",
                                                      "page": "no-slash"})
        assert (status, body["error"]) == (422, "schema_violation"), body
        assert {v["pointer"] for v in body["violations"]} == {"/user_id", "/page"}
        status, _, body = post_json(f"{url}/clicks", {"page": "/x", "at": "2026-11-30T10:00:00Z"})
        assert status == 422 and [v["pointer"] for v in body["violations"]] == [""]
        assert "user_id" in body["violations"][0]["message"]

        # A batch: valid events written, the others reported one by one (207); blank lines are no
        # events, and each result names its event's line.
        lines = [json.dumps(click("u-2")), "", "{not json", json.dumps(click("u-3", page="home")), "  \r",
                 json.dumps(click("u-4", "/docs", client="ios", app_version="2.1"))]
        status, _, body = post_ndjson(f"{url}/clicks", lines)
        assert status == 207, body
        assert (body["accepted"], body["rejected"]) == (2, 2)
        results = body["results"]
        assert [(r["line"], r["status"]) for r in results] == [(1, 200), (3, 400), (4, 422), (6, 200)]
        assert results[1]["error"] == "malformed"
        assert [v["pointer"] for v in results[2]["violations"]] == ["/page"]
        for line, result in zip([line for line in lines if line.strip()], results):
            if result["status"] == 200:
                value = json.loads(line)
                assert result["partition"] == default_partition(value["user_id"].encode(), PARTITIONS)
                acknowledged[(result["partition"], result["offset"])] = value
        status, _, body = post_ndjson(f"{url}/clicks", [json.dumps(click(f"u-{i}")) for i in range(5, 8)])
        assert status == 200 and body["accepted"] == 3, body
        for i, result in zip(range(5, 8), body["results"]):
            acknowledged[(result["partition"], result["offset"])] = click(f"u-{i}")
        status, _, body = post_ndjson(f"{url}/clicks", ["{", json.dumps({"page": "/x"})])
        assert (status, body["accepted"]) == (400, 0), body

        # Idempotency: a retried request writes once and gets the first answer again.
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = post_json(f"{url}/clicks", click("u-42"), headers=key)
        again = post_json(f"{url}/clicks", click("u-42"), headers=key)
        assert first[0] == again[0] == 200 and first[2] == again[2]
        assert again[1].get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first[1]
        acknowledged[(first[2]["partition"], first[2]["offset"])] = click("u-42")
        batch_key = {"Idempotency-Key": uuid.uuid4().hex}
        lines = [json.dumps(click("u-50")), json.dumps(click("u-51"))]
        first = post_ndjson(f"{url}/clicks", lines, headers=batch_key)
        again = post_ndjson(f"{url}/clicks", lines, headers=batch_key)
        assert first[0] == again[0] == 200 and first[2] == again[2]
        for line, result in zip(lines, first[2]["results"]):
            acknowledged[(result["partition"], result["offset"])] = json.loads(line)
        status, _, body = post_json(f"{url}/clicks", click("u-43"), headers=key)  # same key, other body
        assert (status, body["error"]) == (422, "idempotency_key_reused"), body

        # Limits and media types: clear JSON errors.
        status, _, body = post_json(f"{url}/clicks", click("u-1", page="/" + "x" * 5000))
        assert (status, body["error"]) == (413, "body_too_large"), body
        status, _, body = call(f"{url}/clicks", method="POST", body="user_id=u-1",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert (status, body["error"]) == (415, "unsupported_media_type") and "x-ndjson" in body["message"]

        # Every request is counted by endpoint (the route) and status, with its latency.
        status, _, text = call(f"{url}/metrics")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}

        def requests(endpoint: str, code: int) -> float:
            return samples.get(("edm_http_requests_total", (("endpoint", endpoint), ("method", "POST"),
                                                            ("service", name), ("status", str(code)))), 0)
        assert requests("/clicks", 200) == 6 and requests("/clicks", 207) == 1 and requests("/clicks", 413) == 1
        assert requests("/clicks", 422) == 3 and requests("/clicks", 400) == 6
        assert requests("/clicks-by-header", 400) == 1
        assert samples[("edm_http_request_duration_seconds_count",
                        (("endpoint", "/clicks"), ("method", "POST"), ("service", name)))] >= 15
        assert samples[("edm_ingest_events_total", (("endpoint", "/clicks"), ("outcome", "written"),
                                                    ("service", name)))] == len(acknowledged) - 1
    finally:
        code = runner.stop()
    assert code == 0, runner.stderr()
    assert "Traceback" not in runner.stderr()

    # The stream holds exactly the acknowledged events.
    found = asyncio.run(stream_records(broker_of(tmp_path, kafka_bootstrap), f"{name}-clicks"))
    assert {at: json.loads(r.value) for at, r in found.items()} == acknowledged


def test_ingestion_on_the_embedded_broker(tmp_path: Path) -> None:
    ingestion_scenario(tmp_path, None)


@pytest.mark.kafka
def test_ingestion_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    ingestion_scenario(tmp_path, kafka_bootstrap)


@pytest.mark.kafka
def test_a_retry_with_an_idempotency_key_writes_once_whichever_instance_it_reaches(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    """Three instances behind a (simulated) load balancer: the same request with one
    Idempotency-Key sent to each of them writes its events once; each gets the first answer."""
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    topology = write_ingest_topology(tmp_path, name, kafka_bootstrap)
    runners = [Runner(topology, "--state-dir", str(tmp_path / f"pod-{i}"), "--instance-id", f"pod-{i}")
               for i in range(3)]
    try:
        urls = [serving_urls(r)[name] for r in runners]
        deadline = time.monotonic() + 120
        while not settled(runners, {f"0_{p}" for p in range(PARTITIONS)}):
            assert time.monotonic() < deadline and all(r.alive() for r in runners), runners[0].stderr()
            time.sleep(0.1)  # the assignment happens in other processes: polled with a deadline
        single = {"Idempotency-Key": f"one-{uuid.uuid4().hex}"}
        answers = [post_json(f"{url}/clicks", click("u-once"), headers=single) for url in urls]
        assert [a[0] for a in answers] == [200] * 3 and answers[0][2] == answers[1][2] == answers[2][2], answers
        assert sum(a[1].get("Idempotent-Replayed") == "true" for a in answers) == 2, [a[1] for a in answers]
        lines = [json.dumps(click("u-batch-1")), json.dumps(click("u-batch-2"))]
        batch = {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
        answers = [post_ndjson(f"{url}/clicks", lines, headers=batch) for url in reversed(urls)]
        assert [a[0] for a in answers] == [200] * 3 and answers[0][2] == answers[1][2] == answers[2][2], answers
        status, _, body = post_json(f"{urls[1]}/clicks", click("u-other"), headers=single)  # another body
        assert (status, body["error"]) == (422, "idempotency_key_reused"), body
    finally:
        codes = [runner.stop() for runner in runners]
    assert codes == [0, 0, 0], [r.stderr() for r in runners]
    found = asyncio.run(stream_records(broker_of(tmp_path, kafka_bootstrap), f"{name}-clicks"))
    users = sorted(json.loads(r.value)["user_id"] for r in found.values())
    assert users == ["u-batch-1", "u-batch-2", "u-once"], users


@pytest.mark.parametrize("kafka_guarantee", [None, pytest.param("at_least_once", marks=pytest.mark.kafka),
                                             pytest.param("exactly_once", marks=pytest.mark.kafka)])
def test_a_service_that_only_ingests_runs_without_a_group(tmp_path: Path, kafka_guarantee: str | None,
                                                         request: pytest.FixtureRequest) -> None:
    """No pipeline, so no topic to read: the service joins no group (Kafka refuses a member that
    subscribes to nothing, and there is nothing to share out), is ready, writes what it accepts,
    remembers its Idempotency-Keys and stops cleanly."""
    kafka_bootstrap = None if kafka_guarantee is None else request.getfixturevalue("kafka_bootstrap")
    name = f"intake-{uuid.uuid4().hex[:8]}"
    (tmp_path / "click.json").write_text((ROOT / "schemas" / "click.json").read_text())
    topology = write_service(tmp_path, name, kafka_bootstrap, f"""\
streams:
  clicks: {{topic: {name}-clicks, partitions: {PARTITIONS}, key: string, value: {{format: json, schema: click.json}}}}
http:
  listen: "127.0.0.1:0"
  ingest:
    - {{path: /clicks, stream: clicks, key: {{field: user_id}}}}
""", processing=None if kafka_guarantee is None else f"{{guarantee: {kafka_guarantee}}}")
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)[name]
        wait_for_line(runner, READY)
        status, _, ready = call(f"{url}/readyz")
        assert (status, ready["tasks"]["active"]) == (200, 0), ready
        once = {"Idempotency-Key": "k-1"}
        answers = [post_json(f"{url}/clicks", click("u-1"), headers=once) for _ in range(2)]
        assert [a[0] for a in answers] == [200, 200] and answers[0][2] == answers[1][2], answers
        assert answers[1][1].get("Idempotent-Replayed") == "true"
        status, _, body = post_json(f"{url}/clicks", click("u-2", page=7))
        assert status == 422, body
    finally:
        code = runner.stop()
    assert code == 0, runner.stderr()
    assert "Traceback" not in runner.stderr() and "internal error" not in runner.stderr()
    found = asyncio.run(stream_records(broker_of(tmp_path, kafka_bootstrap), f"{name}-clicks"))
    assert [json.loads(r.value)["user_id"] for r in found.values()] == ["u-1"]


def sigkill_scenario(tmp_path: Path, kafka_bootstrap: str | None) -> None:
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    topology = write_ingest_topology(tmp_path, name, kafka_bootstrap)
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)[name]
        status, _, body = post_json(f"{url}/clicks", click("u-kill"))
        runner.proc.kill()  # SIGKILL right after the answer
        assert status == 200, body
    finally:
        runner.kill()
    found = asyncio.run(stream_records(broker_of(tmp_path, kafka_bootstrap), f"{name}-clicks"))
    assert json.loads(found[(body["partition"], body["offset"])].value) == click("u-kill")


def test_an_acknowledged_event_survives_a_sigkill_on_the_embedded_broker(tmp_path: Path) -> None:
    sigkill_scenario(tmp_path, None)


@pytest.mark.kafka
def test_an_acknowledged_event_survives_a_sigkill_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    sigkill_scenario(tmp_path, kafka_bootstrap)


# Holds the embedded broker's LMDB write lock until a line arrives on stdin: appends wait.
_HOLD_WRITES = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, map_size=64 << 30)
txn = env.begin(write=True)
print("holding", flush=True)
sys.stdin.readline()
txn.abort()
"""


def pending_bytes(url: str, service: str) -> float:
    status, _, text = call(f"{url}/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edm_ingest_pending_bytes" and sample.labels.get("service") == service:
                return sample.value
    return 0.0


def test_back_pressure_is_a_429_with_retry_after_while_the_broker_does_not_acknowledge(tmp_path: Path) -> None:
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    topology = write_ingest_topology(tmp_path, name, None)
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    holder = None
    try:
        url = serving_urls(runner)[name]
        assert post_json(f"{url}/clicks", click("u-0"))[0] == 200  # the topic and the producer are ready
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_WRITES, str(tmp_path / "broker")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        lines = [json.dumps(click(f"u-{i}", page="/" + "p" * 250)) for i in range(13)]  # ~3.7 KiB
        blocked = []
        with ThreadPoolExecutor(20) as pool:
            while True:  # one request at a time: accepted ones wait for the broker, until one is refused
                before = pending_bytes(url, name)
                request = pool.submit(post_ndjson, f"{url}/clicks", lines, timeout_s=120)
                while not request.done() and pending_bytes(url, name) == before:
                    time.sleep(0.01)  # polling the gauge: the accepted request waits on the broker
                if request.done():
                    break
                blocked.append(request)
                assert len(blocked) < 20, "never refused"
            status, headers, body = request.result()
            assert (status, body["error"]) == (429, "overloaded"), body
            assert headers["Retry-After"] == "1"
            assert blocked, "the first request is always accepted"
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert [b.result()[0] for b in blocked] == [200] * len(blocked)
        assert pending_bytes(url, name) == 0
        assert post_ndjson(f"{url}/clicks", lines)[0] == 200
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        assert runner.stop() == 0, runner.stderr()
    found = asyncio.run(stream_records(LocalBroker(tmp_path / "broker"), f"{name}-clicks"))
    assert len(found) == 1 + (len(blocked) + 1) * len(lines)


def test_the_click_ingest_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """topologies/click-ingest as the README runs it: a batch of clicks over HTTP, counted per page."""
    example = tmp_path / "topologies" / "click-ingest"
    shutil.copytree(ROOT / "topologies" / "click-ingest", example)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    monkeypatch.setenv("EDM_HTTP_LISTEN", "127.0.0.1:0")
    topology = example / "topology.yaml"
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)["click-ingest"]
        status, _, body = call(f"{url}/clicks", method="POST", body=(example / "clicks.ndjson").read_bytes(),
                               headers={"Content-Type": "application/x-ndjson"})
        assert (status, body["accepted"], body["rejected"]) == (207, 5, 1), body
        assert {v["pointer"] for v in body["results"][5]["violations"]} == {"/page", ""}
        status, _, body = post_json(f"{url}/clicks", {"user_id": "u-5", "page": "/home", "at": "2026-11-30T10:01:00Z",
                                                      "client": "web"})
        assert status == 200, body
    finally:
        assert runner.stop() == 0, runner.stderr()
    ok("run", topology, "--until-idle", "--state-dir", tmp_path / "state")
    counts = {e["key"]: e["value"] for e in ok("consume", "clicks-per-page", "-t", topology, "--from-beginning",
                                               "--state-dir", tmp_path / "state").lines()}
    assert counts == {"/home": 4, "/pricing": 1, "/docs": 1}


def test_a_write_outlives_its_request_timeout_and_a_retry_with_the_key_writes_once(tmp_path: Path) -> None:
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    topology = write_ingest_topology(tmp_path, name, None)
    topology.write_text(topology.read_text().replace("limits: {max_body: 4KiB}",
                                                     "limits: {max_body: 4KiB, request_timeout: 300ms}"))
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    holder = None
    try:
        url = serving_urls(runner)[name]
        assert post_json(f"{url}/clicks", click("u-0"))[0] == 200  # the topic and the producer are ready
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_WRITES, str(tmp_path / "broker")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        key = {"Idempotency-Key": "retry-me"}
        status, headers, body = post_json(f"{url}/clicks", click("u-1"), headers=key)  # the broker waits
        assert (status, body["error"]) == (503, "timeout") and headers["Retry-After"] == "1", body
        holder.stdin.write("go\n")
        holder.stdin.flush()
        status, headers, body = post_json(f"{url}/clicks", click("u-1"), headers=key)
        assert status == 200 and headers.get("Idempotent-Replayed") == "true", body
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        assert runner.stop() == 0, runner.stderr()
    found = asyncio.run(stream_records(LocalBroker(tmp_path / "broker"), f"{name}-clicks"))
    assert sorted(json.loads(r.value)["user_id"] for r in found.values()) == ["u-0", "u-1"]
    assert found[(body["partition"], body["offset"])].value == json.dumps(click("u-1"), separators=(",", ":")).encode()


def test_a_write_the_broker_refuses_is_a_503_with_retry_after(tmp_path: Path) -> None:
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    topology = write_ingest_topology(tmp_path, name, None)
    # Nothing of the service reads the ingested stream: deleting its topic stops only the writes.
    topology.write_text(topology.read_text().replace("copy: {from: clicks, to: out}",
                                                     "copy: {from: out, to: out-copy}").replace(
        "  out: {", f"  out-copy: {{topic: {name}-out-copy, partitions: 1, key: string, value: json}}\n  out: {{"))
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)[name]
        assert post_json(f"{url}/clicks", click("u-0"))[0] == 200

        async def delete() -> None:
            async with started(LocalBroker(tmp_path / "broker")) as broker:
                assert await broker.delete_topic(f"{name}-clicks")
        asyncio.run(delete())
        status, headers, body = post_json(f"{url}/clicks", click("u-1"))
        assert (status, body["error"]) == (503, "broker_unavailable"), body
        assert headers["Retry-After"] == "1" and f"{name}-clicks" in body["message"]
        assert call(f"{url}/healthz")[0] == 200 and runner.alive()
    finally:
        assert runner.stop() == 0, runner.stderr()
