"""Concurrency inside a partition (issue 12, docs/design/concurrency.md): a pipeline whose
Python function is declared `async def` and whose `processing` lets many events of a task be
in flight, on real brokers (embedded LMDB and Kafka) through the real `edm` CLI.

The user functions sleep a random few milliseconds: that is the workload (an API call), not
synchronization; nothing here asserts on time.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from cli_helpers import edm, ok
from edm_runner.brokers.base import OutRecord, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.language import load_file
from edm_runner.runtime import run_services
from helpers import concurrency_gate
from helpers.brokers import started
from helpers.topologies import write_service

KEYS = 300
PER_KEY = 5

ENRICH = '''
import asyncio
import random

in_flight = 0
most = 0


async def enrich(value):
    """An API call: a random small latency; reports how many calls were in flight at its start."""
    global in_flight, most
    in_flight += 1
    most = max(most, in_flight)
    try:
        await asyncio.sleep(random.random() * 0.005)
        return {**value, "most_in_flight": most}
    finally:
        in_flight -= 1
'''


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def service(tmp_path: Path, name: str, kafka_bootstrap: str | None, processing: str,
            guarantee: str = "at_least_once", on_error: str = "") -> Path:
    (tmp_path / "api.py").write_text(ENRICH)
    body = f"""streams:
  orders: {{topic: {name}-orders, partitions: 1, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 1, key: string, value: json}}
  dlq: {{topic: {name}-dlq, partitions: 1, key: bytes, value: bytes}}
functions:
  enrich: {{python: api:enrich}}
pipelines:
  enrich:
    from: orders
    processing: {processing}
    steps:
      - map_values: enrich(value)
    to: enriched
{on_error}"""
    return write_service(tmp_path, name, kafka_bootstrap, body, processing=f"{{guarantee: {guarantee}}}")


def produce_orders(topology: Path, state: Path) -> list[tuple[str, int]]:
    """Events interleaved over KEYS keys (key k's n-th event has seq n), as one partition holds them."""
    inputs = [(f"k{k}", n) for n in range(PER_KEY) for k in range(KEYS)]
    ok("produce", "orders", "-t", topology, "--state-dir", state,
       stdin="".join(json.dumps({"key": k, "value": {"seq": n}}) + "\n" for k, n in inputs))
    return inputs


def key_order_scenario(tmp_path: Path, kafka_bootstrap: str | None, guarantee: str = "at_least_once") -> None:
    name = unique("conc")
    topology = service(tmp_path, name, kafka_bootstrap, "{ordering: key, max_in_flight: 1000}", guarantee)
    state = tmp_path / "state"
    inputs = produce_orders(topology, state)
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    out = ok("consume", "enriched", "-t", topology, "--state-dir", state, "--from-beginning").lines()
    assert sorted((e["key"], e["value"]["seq"]) for e in out) == sorted(inputs)  # each once: nothing lost
    by_key: dict[str, list[int]] = {}
    for e in out:
        by_key.setdefault(e["key"], []).append(e["value"]["seq"])
    assert all(seqs == list(range(PER_KEY)) for seqs in by_key.values()), \
        {k: s for k, s in by_key.items() if s != list(range(PER_KEY))}
    most = max(e["value"]["most_in_flight"] for e in out)
    assert most >= KEYS // 2, f"at most {most} calls were in flight at once; the keys were not handled concurrently"


def test_per_key_order_holds_with_hundreds_of_keys_in_flight_on_the_embedded_broker(tmp_path: Path) -> None:
    key_order_scenario(tmp_path, None)


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_per_key_order_holds_with_hundreds_of_keys_in_flight_on_kafka(tmp_path: Path, kafka_bootstrap: str,
                                                                      guarantee: str) -> None:
    key_order_scenario(tmp_path, kafka_bootstrap, guarantee)


def test_partition_ordering_awaits_one_event_at_a_time(tmp_path: Path) -> None:
    name = unique("serial")
    topology = service(tmp_path, name, None, "{ordering: partition}")
    state = tmp_path / "state"
    inputs = produce_orders(topology, state)
    ok("run", topology, "--until-idle", "--state-dir", state, timeout=300)
    out = ok("consume", "enriched", "-t", topology, "--state-dir", state, "--from-beginning").lines()
    assert [(e["key"], e["value"]["seq"]) for e in out] == inputs  # offset order
    assert max(e["value"]["most_in_flight"] for e in out) == 1


FLAKY = '''
async def deliver(value, event):
    """Fails the first two deliveries of odd events; the attempt number is in the headers."""
    attempt = int(event.header_map["edm.delivery.attempt"])
    if value["seq"] % 2 and (attempt < 3 or value.get("always")):
        raise RuntimeError(f"unavailable (attempt {attempt})")
    return {**value, "attempt": attempt}
'''


def test_a_queue_retries_with_the_attempt_in_headers_and_dead_letters_after_the_last(tmp_path: Path) -> None:
    name = unique("queue")
    (tmp_path / "worker.py").write_text(FLAKY)
    body = f"""streams:
  jobs: {{topic: {name}-jobs, partitions: 1, key: string, value: json}}
  done: {{topic: {name}-done, partitions: 1, key: string, value: json}}
  dlq: {{topic: {name}-dlq, partitions: 1, key: bytes, value: bytes}}
functions:
  deliver: {{python: worker:deliver}}
pipelines:
  work:
    from: jobs
    processing: {{ordering: none, max_in_flight: 50, attempts: 3, retry_backoff_ms: 1}}
    on_error: {{dead_letter: dlq}}
    steps:
      - map_values: deliver(value, event)
    to: done
"""
    topology = write_service(tmp_path, name, None, body)
    state = tmp_path / "state"
    jobs = [{"seq": n, **({"always": True} if n in (5, 7) else {})} for n in range(20)]
    ok("produce", "jobs", "-t", topology, "--state-dir", state,
       stdin="".join(json.dumps({"key": f"j{j['seq']}", "value": j}) + "\n" for j in jobs))
    ok("run", topology, "--until-idle", "--state-dir", state)
    done = ok("consume", "done", "-t", topology, "--state-dir", state, "--from-beginning").lines()
    assert sorted((e["value"]["seq"], e["value"]["attempt"]) for e in done) == \
        [(n, 3 if n % 2 else 1) for n in range(20) if n not in (5, 7)]
    dead = ok("consume", "dlq", "-t", topology, "--state-dir", state, "--from-beginning").lines()
    values = [d["value"] if isinstance(d["value"], dict) else json.loads(d["value"]) for d in dead]
    assert sorted(v["seq"] for v in values) == [5, 7]
    for d in dead:
        headers = d["headers"]
        assert headers["edm.delivery.attempts"] == "3"
        assert "unavailable (attempt 3)" in headers["edm.error"]


def test_a_store_writing_step_in_a_concurrent_pipeline_is_refused_with_its_place_and_a_hint(tmp_path: Path) -> None:
    (tmp_path / "api.py").write_text(ENRICH)
    topology = tmp_path / "svc.yaml"
    topology.write_text("""kind: microservice
name: svc
streams:
  orders: {partitions: 1, key: string, value: json}
  totals: {partitions: 1, key: string, value: json}
stores:
  counts: {type: key_value}
functions:
  enrich: {python: api:enrich}
pipelines:
  enrich:
    from: orders
    processing: {ordering: key, max_in_flight: 50}
    steps:
      - map_values: enrich(value)
      - group_by_key: {}
      - count: {store: counts}
    to: totals
""")
    result = edm("validate", topology)
    assert result.code == 1, result.stdout + result.stderr
    assert f"{topology}:16:9: step 'group_by_key' writes a store" in result.stderr, result.stderr
    assert "processing: {ordering: key, max_in_flight: 50}" in result.stderr
    assert "hint: put the stateful steps after a group_by or repartition" in result.stderr
    assert "Traceback" not in result.stderr
    # After a group_by the next sub-topology runs in partition order: allowed.
    topology.write_text(topology.read_text().replace("group_by_key: {}", "group_by: {key: value.seq, name: by-seq}"))
    ok("validate", topology)


def test_a_concurrent_pipeline_reading_a_table_is_refused(tmp_path: Path) -> None:
    topology = tmp_path / "svc.yaml"
    topology.write_text("""kind: microservice
name: svc
streams:
  users: {type: entity, partitions: 1, key: string, value: json}
  out: {partitions: 1, key: string, value: json}
tables:
  user_table: {from: users}
pipelines:
  changes:
    from: user_table
    processing: {ordering: none}
    to: out
""")
    result = edm("validate", topology)
    assert result.code == 1
    assert f"{topology}:11:5: pipeline 'changes' reads table 'user_table'" in result.stderr, result.stderr
    assert "(processing: {ordering: none})" in result.stderr


def test_an_async_call_inside_a_larger_expression_is_refused(tmp_path: Path) -> None:
    (tmp_path / "api.py").write_text(ENRICH)
    topology = tmp_path / "svc.yaml"
    topology.write_text("""kind: microservice
name: svc
streams:
  orders: {partitions: 1, key: string, value: json}
  out: {partitions: 1, key: string, value: json}
functions:
  enrich: {python: api:enrich}
pipelines:
  p:
    from: orders
    steps:
      - map_values: enrich(value).seq
      - flat_map_values: "[enrich(value)]"
    to: out
""")
    result = edm("validate", topology)
    assert result.code == 1
    assert f"{topology}:12:21: the expression calls the async function 'enrich' inside a larger" in result.stderr, \
        result.stderr
    assert "step 'flat_map_values' calls the async function 'enrich'" in result.stderr
    assert "hint: call it in a map_values before this step" in result.stderr


GATED = '''
from helpers import concurrency_gate
from helpers.brokers import started


async def gate(value):
    return await concurrency_gate.passing(value)
'''


async def committed_offset_scenario(tmp_path: Path) -> None:
    """One event held (its call does not return) while the events after it in its batch finish:
    the committed offset stays at or before the held event until it is released."""
    name = unique("gate")
    (tmp_path / "gated.py").write_text(GATED)
    body = f"""streams:
  orders: {{topic: {name}-orders, partitions: 1, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 1, key: string, value: json}}
functions:
  gate: {{python: gated:gate}}
pipelines:
  enrich:
    from: orders
    processing: {{ordering: none, max_in_flight: 100}}
    steps:
      - map_values: gate(value)
    to: enriched
"""
    path = write_service(tmp_path, name, None, body, processing="{max_batch: 100}")
    state = tmp_path / "state"
    topology = load_file(path)
    broker = LocalBroker(tmp_path / "broker")
    tp = TopicPartition(f"{name}-orders", 0)
    gate = concurrency_gate.reset(held_seq=150, batch=range(100, 200))
    await broker.start()
    stop = asyncio.Event()
    running = None
    try:
        await broker.ensure_topics([TopicSpec(tp.topic, 1)])
        async with started(broker.producer()) as producer:
            for n in range(200):
                producer.send(OutRecord(tp.topic, 0, f"k{n}".encode(), json.dumps({"seq": n}).encode(), n))
            await producer.flush()
        running = asyncio.create_task(run_services([topology], broker, stop=stop, state_dir=state))
        await concurrency_gate.until(gate.others_done, running)
        committed = await broker.group_offsets(name, [tp.topic])
        assert committed.get(tp, 0) <= 150, committed  # every event after 150 finished, 150 did not
        gate.release.set()
        while (await broker.group_offsets(name, [tp.topic])).get(tp) != 200:
            assert not running.done(), running.result()
            await asyncio.sleep(0.05)  # the broker's offsets are polled: there is no event to await
    finally:
        stop.set()
        if running is not None:
            await running
        await broker.close()


def test_the_committed_offset_never_passes_an_unfinished_event(tmp_path: Path) -> None:
    asyncio.run(committed_offset_scenario(tmp_path))


HELD = '''
import asyncio
import os
import random

CALLS = os.environ["EDM_TEST_CALLS"]
HOLD = int(os.environ.get("EDM_TEST_HOLD", "-1"))


async def call(value):
    """An API call, counted at the "server" (a line per call); from seq HOLD on it never answers."""
    with open(CALLS, "a") as calls:
        calls.write(f"{value['seq']}\\n")
    if 0 <= HOLD <= value["seq"]:
        await asyncio.Event().wait()
    await asyncio.sleep(random.random() * 0.002)
    return value
'''
TOTAL = 600
MAX_BATCH = 100
HOLD = 300


def calls_of(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def sigkill_scenario(tmp_path: Path, kafka_bootstrap: str | None) -> None:
    name = unique("kill")
    (tmp_path / "held.py").write_text(HELD)
    body = f"""streams:
  orders: {{topic: {name}-orders, partitions: 1, key: string, value: json}}
  enriched: {{topic: {name}-enriched, partitions: 1, key: string, value: json}}
functions:
  call: {{python: held:call}}
pipelines:
  enrich:
    from: orders
    processing: {{ordering: key, max_in_flight: 1000}}
    steps:
      - map_values: call(value)
    to: enriched
"""
    topology = write_service(tmp_path, name, kafka_bootstrap, body, processing=f"{{max_batch: {MAX_BATCH}}}")
    state, calls = tmp_path / "state", tmp_path / "calls.txt"
    env = {**os.environ, "EDM_TEST_CALLS": str(calls)}
    ok("produce", "orders", "-t", topology, "--state-dir", state, env=env,
       stdin="".join(json.dumps({"key": f"k{n % 40}", "value": {"seq": n}}) + "\n" for n in range(TOTAL)))
    runner = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology), "--state-dir", str(state)],
                              env={**env, "EDM_TEST_HOLD": str(HOLD)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # The held batch: every key's first event from HOLD on is in flight (the others of a key wait behind it).
        in_flight = set(range(HOLD, HOLD + 40))
        while not in_flight <= set(calls_of(calls)):
            assert runner.poll() is None, runner.stderr.read()
            assert time.monotonic() < deadline, f"the calls from {HOLD} on never started: {calls_of(calls)[-5:]}"
            time.sleep(0.05)  # another process writes the calls: polled, there is no event to await
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    before = len(calls_of(calls))
    ok("run", topology, "--until-idle", "--state-dir", state, env=env, timeout=300)
    out = ok("consume", "enriched", "-t", topology, "--state-dir", state, "--from-beginning", env=env).lines()
    seen = Counter(e["value"]["seq"] for e in out)
    assert set(seen) == set(range(TOTAL)), f"lost: {sorted(set(range(TOTAL)) - set(seen))[:20]}"
    called = Counter(calls_of(calls))
    repeated = sorted(seq for seq, n in called.items() if n > 1)
    print(f"{before} calls before the kill, {sum(called.values()) - before} after; {len(repeated)} repeated; "
          f"{sum(n - 1 for n in seen.values())} duplicate outputs")
    # Repeated: only what was in flight (the held batch). What was processed before it was committed
    # before it started (on Kafka too, where commits otherwise wait for the commit interval), and
    # nothing of the held batch was written: no output is duplicated.
    assert repeated and all(HOLD <= seq < HOLD + MAX_BATCH for seq in repeated), repeated
    assert max(seen.values()) == 1, {s: n for s, n in seen.items() if n > 1}


def test_sigkill_with_many_events_in_flight_loses_nothing_on_the_embedded_broker(tmp_path: Path) -> None:
    sigkill_scenario(tmp_path, None)


@pytest.mark.kafka
def test_sigkill_with_many_events_in_flight_loses_nothing_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    sigkill_scenario(tmp_path, kafka_bootstrap)


def test_drive_bounds_the_events_in_flight_keeps_each_keys_order_and_raises_the_first_failure() -> None:
    from edm_runner.runtime.inflight import drive

    async def scenario() -> None:
        in_flight, most, done = 0, 0, []

        async def run(item: tuple[int, int]) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0)  # every started run yields before it finishes
            in_flight -= 1
            done.append(item)

        items = [(n % 50, n) for n in range(200)]  # (key, seq): 50 keys, 4 events each
        await drive(items, run, "key", 20, lambda item: item[0])
        assert most == 20
        for key in range(50):
            assert [seq for k, seq in done if k == key] == [n for n in range(200) if n % 50 == key]

        async def failing(item: tuple[int, int]) -> None:
            await asyncio.sleep(0)
            if item[1] == 7:
                raise ValueError("seven")

        with pytest.raises(ValueError, match="seven"):
            await drive(items, failing, "none", 100, lambda item: item[0])

    asyncio.run(scenario())
