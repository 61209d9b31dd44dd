"""The `call` step (issue 12) end to end: `edm run` (a subprocess, the real CLI) calls a real
HTTP server (tests/helpers/fake_api.py, in a thread of the test) on the embedded broker and on
Kafka. Limits are checked where they matter, at the server: the most calls it saw in any one
second, and the spacing of the breaker's probes. Nothing here asserts on speed."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from cli_helpers import edm, ok
from edm_runner.state.calls import CallMemory
from helpers.fake_api import FakeApi
from helpers.topologies import KAFKA_CONSUMER, broker_yaml, write_service


@pytest.fixture
def api():
    server = FakeApi().start_in_thread()
    yield server
    server.stop_thread()


def service(tmp_path: Path, api: FakeApi, call: str, *, kafka: str | None = None, resources: str = "",
            processing: str = "{ordering: key, max_in_flight: 50}") -> Path:
    name = f"call-{uuid.uuid4().hex[:8]}"
    body = f"""{resources}
streams:
  signups: {{topic: {name}-signups, partitions: 2, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 2, key: string, value: json}}
  dlq: {{topic: {name}-dlq, partitions: 1, key: bytes, value: bytes}}
pipelines:
  enrich:
    from: signups
    processing: {processing}
    on_error: {{dead_letter: dlq}}
    steps:
      - call: {{url: "'{api.url}/items/' ~ key", {call}}}
    to: enriched
"""
    return write_service(tmp_path, name, kafka, body)


def produce(topology: Path, state: Path, keys: list[str]) -> None:
    ok("produce", "signups", "-t", topology, "--state-dir", state,
       stdin="".join(json.dumps({"key": k, "value": {"user": k}}) + "\n" for k in keys))


def consume(topology: Path, state: Path, stream: str) -> list[dict]:
    return ok("consume", stream, "-t", topology, "--state-dir", state, "--from-beginning").lines()


RATE = "resources: {api: {rate: {requests: 20, per: 1s, burst: 5}, max_in_flight: 8}}"


def rate_limit_scenario(tmp_path: Path, api: FakeApi, kafka: str | None) -> None:
    api.latency = 0.01
    topology = service(tmp_path, api, "resources: api, response_headers: [content-type]", kafka=kafka,
                       resources=RATE)
    state = tmp_path / "state"
    keys = [f"u{i % 40}" for i in range(60)]
    produce(topology, state, keys)
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    out = consume(topology, state, "enriched")
    assert sorted(e["key"] for e in out) == sorted(keys)
    for e in out:
        response = e["value"]["response"]
        assert response["status"] == 200 and response["body"]["key"] == e["key"]
        assert response["headers"] == {"content-type": "application/json; charset=utf-8"}
    assert len(api.calls) == 60
    assert api.max_in_window(1.0) <= 25  # burst + rate: the limit holds at the server
    assert api.open_peak <= 8
    keys_sent = [c.headers["Idempotency-Key"] for c in api.calls]
    assert len(set(keys_sent)) == 60 and all(k.startswith(f"{topology.stem}/") for k in keys_sent)

    # A replay after `edm reset` calls again, under the same limit, with the same idempotency keys.
    first = len(api.calls)
    ok("reset", topology, "--state-dir", state)
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    replay = api.calls[first:]
    assert len(replay) == 60
    assert FakeApi(calls=replay).max_in_window(1.0) <= 25
    assert sorted(c.headers["Idempotency-Key"] for c in replay) == sorted(keys_sent)


def test_the_rate_limit_holds_at_the_server_including_a_replay_after_reset(tmp_path: Path, api: FakeApi) -> None:
    rate_limit_scenario(tmp_path, api, None)


@pytest.mark.kafka
def test_the_rate_limit_holds_at_the_server_on_kafka(tmp_path: Path, api: FakeApi, kafka_bootstrap: str) -> None:
    rate_limit_scenario(tmp_path, api, kafka_bootstrap)


def test_retries_exhaust_into_dead_letters_with_the_last_status_and_body(tmp_path: Path, api: FakeApi) -> None:
    api.fail_keys = {"down": 503, "bad": 400}
    topology = service(tmp_path, api, "retry: {attempts: 3, backoff: 1ms}, breaker: false")
    state = tmp_path / "state"
    produce(topology, state, ["ok1", "down", "bad", "ok2"])
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    assert sorted(e["key"] for e in consume(topology, state, "enriched")) == ["ok1", "ok2"]
    assert (api.per_key["down"], api.per_key["bad"]) == (3, 1)  # 503 retried, 400 failed at once
    dead = {d["key"] if isinstance(d["key"], str) else json.loads(d["key"]): d["headers"]
            for d in consume(topology, state, "dlq")}
    assert set(dead) == {"down", "bad"}, dead
    assert dead["down"]["edm.call.status"] == "503" and dead["down"]["edm.call.attempts"] == "3"
    assert "status 503" in dead["down"]["edm.call.body"]
    assert "failed after 3 attempt(s)" in dead["down"]["edm.error"]
    assert dead["bad"]["edm.call.status"] == "400" and dead["bad"]["edm.call.attempts"] == "1"
    assert "answered HTTP 400, which fails the event" in dead["bad"]["edm.error"]


def outage_scenario(tmp_path: Path, api: FakeApi, kafka: str | None) -> None:
    """An outage longer than the consumer's max_poll_interval_ms (3 s; on Kafka a member that
    does not poll within it leaves its group): the breaker opens after 3 failures and pauses the
    partitions of `signups` at the consumer; while it is open only probes reach the server, one
    per open_for, and another input of the same consumer keeps flowing; once the API is back a
    probe succeeds, the partitions resume and every event goes through exactly once, with no
    rebalance and nothing dead-lettered."""
    api.outage = True
    name = f"call-{uuid.uuid4().hex[:8]}"
    broker = broker_yaml(tmp_path, kafka)
    if kafka is not None:
        broker = json.dumps({**json.loads(broker), "consumer": {**KAFKA_CONSUMER, "max_poll_interval_ms": 3000}})
    topology = tmp_path / f"{name}.yaml"
    topology.write_text(f"""kind: microservice
name: {name}
broker: {broker}
resources: {{api: {{max_in_flight: 2}}}}
streams:
  signups: {{topic: {name}-signups, partitions: 2, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 2, key: string, value: json}}
  dlq: {{topic: {name}-dlq, partitions: 1, key: bytes, value: bytes}}
  other: {{topic: {name}-other, partitions: 1, key: string, value: json}}
  copied: {{topic: {name}-copied, partitions: 1, key: string, value: json}}
pipelines:
  enrich:
    from: signups
    processing: {{ordering: none, max_in_flight: 50}}
    on_error: {{dead_letter: dlq}}
    steps:
      - call: {{url: "'{api.url}/items/' ~ key", resources: api, retry: {{attempts: 20, backoff: 1ms}},
                breaker: {{failures: 3, open_for: 500ms}}}}
    to: enriched
  copy:
    from: other
    to: copied
""")
    state = tmp_path / "state"
    keys = [f"u{i}" for i in range(30)]
    produce(topology, state, keys)
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        runner = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology), "--until-idle",
                                   "--state-dir", str(state)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert api.reached(6).wait(120), log.read_text()  # the breaker opened: a probe came
        # The other input flows while `signups` is paused.
        ok("produce", "other", "-t", topology, "--state-dir", state,
           stdin="".join(json.dumps({"key": f"o{i}", "value": {"i": i}}) + "\n" for i in range(5)))
        deadline = time.monotonic() + 120  # bounds a failing run, asserts no speed
        while len(consume(topology, state, "copied")) < 5:
            assert runner.poll() is None and time.monotonic() < deadline, log.read_text()
        # Probes are at least open_for apart: 16 calls span well over max_poll_interval_ms.
        assert api.reached(16).wait(120), log.read_text()
        api.outage = False
        runner.wait(300)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    stderr_text = log.read_text()
    assert runner.returncode == 0, stderr_text
    assert sorted(e["key"] for e in consume(topology, state, "enriched")) == sorted(keys)  # each once
    assert consume(topology, state, "dlq") == []
    assert api.answered[200] == 30
    failed = sorted(c.at for c in api.calls if c.status == 503)
    # after the first failures (3 to open it, plus the 2 that were in flight), the probes are
    # at least open_for apart: nothing spins while the breaker is open
    probes = failed[5:]
    assert len(probes) >= 10
    assert all(b - a >= 0.5 * 0.9 for a, b in zip(probes, probes[1:]))
    # The member stayed in its group: one assignment (Kafka: generation 1 only), nothing revoked.
    assert stderr_text.count("partition(s); processing after") == 1, stderr_text
    assert "(generation 2)" not in stderr_text and ": revoked " not in stderr_text, stderr_text
    # The outage is logged once per partition, not once per probe.
    assert stderr_text.count("WARNING edm.runtime") == stderr_text.count(": paused ") >= 1, stderr_text
    assert stderr_text.count("processed again after") == 2, stderr_text


def test_the_breaker_pauses_during_an_outage_and_resumes_after_a_probe(tmp_path: Path, api: FakeApi) -> None:
    outage_scenario(tmp_path, api, None)


@pytest.mark.kafka
def test_the_breaker_pauses_the_partitions_on_kafka_without_leaving_the_group(
        tmp_path: Path, api: FakeApi, kafka_bootstrap: str) -> None:
    outage_scenario(tmp_path, api, kafka_bootstrap)


def store_scenario(tmp_path: Path, api: FakeApi, kafka: str | None) -> None:
    """`ordering: partition` allows a store before the call: a function counts the events of a
    key, then the call meets the outage. Each pause gives the event up with its count rolled
    back, so after the outage the outputs count 1..10, each once (a write left behind by a
    pause would skip a number). On Kafka under exactly_once."""
    api.outage = True
    name = f"tally-{uuid.uuid4().hex[:8]}"
    (tmp_path / "tally_rules.py").write_text(
        "def tally(key, value, *, stores):\n"
        "    n = (stores['counts'].get(key) or 0) + 1\n"
        "    stores['counts'].put(key, n)\n"
        "    return {**value, 'n': n}\n")
    topology = write_service(tmp_path, name, kafka, f"""
streams:
  signups: {{topic: {name}-signups, partitions: 1, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 1, key: string, value: json}}
stores:
  counts: {{type: key_value}}
functions:
  tally: {{python: tally_rules:tally, stores: [counts]}}
pipelines:
  enrich:
    from: signups
    steps:
      - map_values: tally(key, value)
      - call: {{url: "'{api.url}/items/' ~ key", retry: {{attempts: 20, backoff: 1ms}},
                breaker: {{failures: 3, open_for: 300ms}}}}
    to: enriched
""", processing="{guarantee: exactly_once}" if kafka else None)
    state = tmp_path / "state"
    produce(topology, state, ["k"] * 10)
    back = threading.Thread(target=lambda: (api.reached(8).wait(120), setattr(api, "outage", False)))
    back.start()
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    back.join()
    assert [e["value"]["n"] for e in consume(topology, state, "enriched")] == list(range(1, 11))
    assert api.answered[503] >= 5 and api.answered[200] == 10


def test_a_paused_event_leaves_no_store_write_behind(tmp_path: Path, api: FakeApi) -> None:
    store_scenario(tmp_path, api, None)


@pytest.mark.kafka
def test_a_paused_event_leaves_no_store_write_behind_on_kafka_exactly_once(
        tmp_path: Path, api: FakeApi, kafka_bootstrap: str) -> None:
    store_scenario(tmp_path, api, kafka_bootstrap)


def two_topics_scenario(tmp_path: Path, api: FakeApi, kafka: str | None) -> None:
    """A join with a table puts `users` and `signups` in one task, processed in timestamp order
    (runtime.ordering): user i, then its signup, and so on. The call pauses the task at the
    first signup: both its partitions are sought back (the table updates fetched but not
    processed are read again), so after the outage every signup is joined with its user."""
    api.outage = True
    name = f"join-{uuid.uuid4().hex[:8]}"
    topology = write_service(tmp_path, name, kafka, f"""
streams:
  users: {{topic: {name}-users, partitions: 1, type: entity, key: string, value: json}}
  signups: {{topic: {name}-signups, partitions: 1, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 1, key: string, value: json}}
tables: {{users-table: {{from: users}}}}
pipelines:
  enrich:
    from: signups
    steps:
      - join: {{table: users-table, kind: left, value: "{{'user': key, 'name': other.name}}"}}
      - call: {{url: "'{api.url}/items/' ~ key", retry: {{attempts: 20, backoff: 1ms}},
                breaker: {{failures: 3, open_for: 300ms}}}}
    to: enriched
""")
    state = tmp_path / "state"
    t0 = 1_700_000_000_000
    ok("produce", "users", "-t", topology, "--state-dir", state, stdin="".join(
        json.dumps({"key": f"u{i}", "value": {"name": f"User {i}"}, "timestamp": t0 + 2 * i}) + "\n"
        for i in range(10)))
    ok("produce", "signups", "-t", topology, "--state-dir", state, stdin="".join(
        json.dumps({"key": f"u{i}", "value": {"i": i}, "timestamp": t0 + 2 * i + 1}) + "\n" for i in range(10)))
    back = threading.Thread(target=lambda: (api.reached(8).wait(120), setattr(api, "outage", False)))
    back.start()
    result = ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    back.join()
    assert "paused " in result.stderr
    out = consume(topology, state, "enriched")
    assert sorted((e["key"], e["value"]["name"]) for e in out) == sorted((f"u{i}", f"User {i}") for i in range(10))


def test_a_paused_task_reading_two_topics_seeks_both_back(tmp_path: Path, api: FakeApi) -> None:
    two_topics_scenario(tmp_path, api, None)


@pytest.mark.kafka
def test_a_paused_task_reading_two_topics_seeks_both_back_on_kafka(
        tmp_path: Path, api: FakeApi, kafka_bootstrap: str) -> None:
    two_topics_scenario(tmp_path, api, kafka_bootstrap)


def test_events_finished_past_the_lowest_unfinished_one_are_written_once(tmp_path: Path, api: FakeApi) -> None:
    """`ordering: none`: the first event's key fails until the test clears it, the 29 after it
    succeed. When the breaker opens, the run is given up from its first event: the outputs of
    the events that finished after it are dropped and they are processed again after the pause,
    so each key is written exactly once (and nothing is dead-lettered)."""
    api.fail_keys = {"bad": 503}
    name = f"cut-{uuid.uuid4().hex[:8]}"
    topology = write_service(tmp_path, name, None, f"""
streams:
  signups: {{topic: {name}-signups, partitions: 1, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 1, key: string, value: json}}
  dlq: {{topic: {name}-dlq, partitions: 1, key: bytes, value: bytes}}
pipelines:
  enrich:
    from: signups
    processing: {{ordering: none, max_in_flight: 50}}
    on_error: {{dead_letter: dlq}}
    steps:
      - call: {{url: "'{api.url}/items/' ~ key", retry: {{attempts: 50, backoff: 1ms, max_backoff: 5ms}},
                breaker: {{failures: 3, open_for: 200ms}}}}
    to: enriched
""")
    state = tmp_path / "state"
    keys = ["bad", *(f"g{i}" for i in range(29))]
    produce(topology, state, keys)
    back = threading.Thread(target=lambda: (api.reached(40).wait(120), api.fail_keys.clear()))
    back.start()
    result = ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    back.join()
    assert "paused " in result.stderr
    assert sorted(e["key"] for e in consume(topology, state, "enriched")) == sorted(keys)
    assert consume(topology, state, "dlq") == []
    assert api.per_key["bad"] >= 3


def test_sigkill_with_calls_in_flight_loses_nothing_and_repeats_at_most_the_calls_in_flight(
        tmp_path: Path, api: FakeApi) -> None:
    """SIGKILL `edm run` while 40 calls are open at the server: after the restart every event
    has its output, and the calls made twice (counted at the server by idempotency key) are at
    most the events that were in flight (max_in_flight): a completed call is remembered
    before its event finishes (state.calls), so the restart calls again only for the events
    whose answer had not arrived. One fetch holds every event (max_batch 300): before that
    memory, the kill repeated every call made for it (the bound was the fetch in flight)."""
    api.latency = 0.05
    topology = service(tmp_path, api, "retry: {attempts: 2}", processing="{ordering: none, max_in_flight: 40}")
    topology.write_text(topology.read_text().replace("\nstreams:", "\nprocessing: {max_batch: 300}\nstreams:", 1))
    state = tmp_path / "state"
    keys = [f"u{i}" for i in range(300)]
    produce(topology, state, keys)
    runner = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology), "--state-dir", str(state)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert api.reached(120).wait(120), runner.stderr.read() if runner.poll() is not None else "no calls"
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    out = consume(topology, state, "enriched")
    assert set(e["key"] for e in out) == set(keys)
    sent = Counter(c.headers["Idempotency-Key"] for c in api.calls)
    repeated = sum(n - 1 for n in sent.values())
    assert len(sent) == 300 and repeated <= 40, repeated


def crash_after_the_calls_scenario(tmp_path: Path, api: FakeApi, kafka: str | None, guarantee: str) -> None:
    """SIGKILL `edm run` after the first batch's calls completed, before anything of the batch
    was produced or its offsets committed (EDM_CRASH_AT=before_produce:1): the restart
    processes the batch again with the outcomes remembered, so the server sees each event's call
    once (a final failure, HTTP 400, is remembered too: dead-lettered again with its status),
    and every event has its output (exactly once under exactly_once)."""
    api.fail_keys = {"u7": 400}
    topology = service(tmp_path, api, "retry: {attempts: 2}", kafka=kafka)
    topology.write_text(topology.read_text().replace(
        "\nstreams:", f"\nprocessing: {{guarantee: {guarantee}}}\nstreams:", 1))
    state = tmp_path / "state"
    keys = [f"u{i}" for i in range(60)]
    produce(topology, state, keys)
    crashed = edm("run", topology, "--until-idle", "--state-dir", state, timeout=300,
                  env={**os.environ, "EDM_CRASH_AT": "before_produce:1"})
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    assert len(api.calls) == (60 if kafka is None else len(api.calls)) > 0  # embedded: one batch holds all
    assert consume(topology, state, "enriched") == []
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    out = [e["key"] for e in consume(topology, state, "enriched")]
    assert set(out) == set(keys) - {"u7"}
    if guarantee == "exactly_once" or kafka is None:
        assert len(out) == 59
    dead = [d["headers"] for d in consume(topology, state, "dlq")]
    assert dead and all(d["edm.call.status"] == "400" for d in dead)
    sent = Counter(c.headers["Idempotency-Key"] for c in api.calls)
    assert len(sent) == 60 and max(sent.values()) == 1, [k for k, n in sent.items() if n > 1]


def test_a_restart_after_a_crash_does_not_call_again_for_the_calls_completed(tmp_path: Path, api: FakeApi) -> None:
    crash_after_the_calls_scenario(tmp_path, api, None, "at_least_once")


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_restart_after_a_crash_does_not_call_again_for_the_calls_completed_on_kafka(
        tmp_path: Path, api: FakeApi, kafka_bootstrap: str, guarantee: str) -> None:
    crash_after_the_calls_scenario(tmp_path, api, kafka_bootstrap, guarantee)


def test_the_quota_count_survives_a_crash_loop(tmp_path: Path, api: FakeApi) -> None:
    """A quota of 5 per 30 days: a first run makes 3 calls; then twice a run is started with 3
    more events and SIGKILLed once it says the quota is used up: the server saw 5 calls in the
    period across the three runs (each restart continued the count; in memory, each would
    have made 3)."""
    topology = service(tmp_path, api, "resources: api", resources="resources: {api: {quota: {requests: 5, per: 30d}}}")
    state = tmp_path / "state"
    produce(topology, state, ["a", "b", "c"])
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    assert len(api.calls) == 3
    produce(topology, state, ["d", "e", "f"])
    for _ in range(2):
        runner = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology), "--until-idle",
                                   "--state-dir", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        try:
            said = next((line for line in runner.stderr if "quota of 5" in line), "")  # read until it says so
            assert "used up" in said, said
            assert api.reached(5).wait(60)  # the requests of the last units taken may still be on their way
        finally:
            runner.send_signal(signal.SIGKILL)
            runner.wait()
        assert len(api.calls) == 5, [c.key for c in api.calls]  # the 5th may still be on its way


def test_the_cache_makes_one_call_per_key_even_with_many_events_of_a_key_in_flight(
        tmp_path: Path, api: FakeApi) -> None:
    api.latency = 0.05
    topology = service(tmp_path, api, "cache: {ttl: 10m, key: value.ip}",
                       processing="{ordering: none, max_in_flight: 50}")
    state = tmp_path / "state"
    ok("produce", "signups", "-t", topology, "--state-dir", state,
       stdin="".join(json.dumps({"key": f"k{i}", "value": {"ip": f"ip{i % 4}"}}) + "\n" for i in range(40)))
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    out = consume(topology, state, "enriched")
    assert len(out) == 40 and all(e["value"]["response"]["status"] == 200 for e in out)
    assert len(api.calls) == 4  # one per key: the events that missed it meanwhile waited for its answer


def test_probes_that_keep_failing_use_up_the_events_attempts_and_dead_letter_it(tmp_path: Path) -> None:
    """While the breaker is open the partition pauses and the event is tried again as the probe;
    a probe that fails counts as an attempt of that event, so an endpoint that never recovers
    dead-letters each event after its attempts (it looped for ever, the breaker opening again
    at every probe)."""
    (tmp_path / "topology.yaml").write_text("""\
kind: microservice
name: down
streams:
  ins: {partitions: 1, key: string, value: json}
  outs: {partitions: 1, key: string, value: json}
  dlq: {partitions: 1, key: bytes, value: bytes}
pipelines:
  lookup:
    from: ins
    steps:
      - call: {url: "'http://127.0.0.1:9/x/' ~ key", retry: {attempts: 3, backoff: 1ms},
               breaker: {failures: 2, open_for: 20ms}}
    to: outs
    on_error: {dead_letter: dlq}
""")
    (tmp_path / "topology.test.yaml").write_text("""\
cases:
  an endpoint that never recovers:
    mocks: {lookup: {raises: connection refused}}
    produce:
      ins: [{key: a, value: {}}, {key: b, value: {}}, {key: c, value: {}}]
    expect:
      streams: {outs: {count: 0}}
      dead_letters: {dlq: [{key: a}, {key: b}, {key: c}]}
      calls: {lookup: 9}
""")
    result = edm("test", tmp_path / "topology.test.yaml", timeout=30)
    assert result.code == 0, result.stdout + result.stderr


def test_the_calls_of_events_split_from_one_record_are_remembered_apart(tmp_path: Path, api: FakeApi) -> None:
    """A flat_map splits each record into two events that share its offset and call different
    URLs: a crash after their calls and a restart call none of them again (each outcome is
    remembered under its own request; they overwrote each other, so all but the last called again)."""
    topology = service(tmp_path, api, "retry: {attempts: 2}")
    topology.write_text(topology.read_text().replace(
        "    steps:\n", "    steps:\n      - flat_map_values: \"[{'n': 1}, {'n': 2}]\"\n", 1).replace(
        "/items/' ~ key", "/items/' ~ key ~ '-' ~ value.n", 1))
    state = tmp_path / "state"
    keys = [f"u{i}" for i in range(20)]
    produce(topology, state, keys)
    crashed = edm("run", topology, "--until-idle", "--state-dir", state, timeout=300,
                  env={**os.environ, "EDM_CRASH_AT": "before_produce:1"})
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    assert len(api.calls) == 40 and consume(topology, state, "enriched") == []
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    assert sorted(e["key"] for e in consume(topology, state, "enriched")) == sorted(keys * 2)
    called = Counter(c.key for c in api.calls)
    assert len(called) == 40 and max(called.values()) == 1, [k for k, n in called.items() if n > 1]


def test_a_cached_answer_is_not_written_to_the_memory_of_completed_calls(tmp_path: Path, api: FakeApi) -> None:
    """Ten events answered by one cached call: one request, one outcome remembered (an fsynced
    write per cache hit would cost more than the call it saved)."""
    topology = service(tmp_path, api, "cache: {ttl: 10m, key: \"'all'\"}", processing="{ordering: partition}")
    state = tmp_path / "state"
    produce(topology, state, [f"u{i}" for i in range(10)])
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    assert len(consume(topology, state, "enriched")) == 10 and len(api.calls) == 1

    async def remembered() -> int:
        memory = await CallMemory.open(state, topology.stem)
        try:
            with memory.env.begin() as txn:
                return txn.stat(memory.results)["entries"]
        finally:
            await memory.aclose()

    assert asyncio.run(remembered()) == 1
