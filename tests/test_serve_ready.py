"""``/readyz`` (issue 10): not ready before the first assignment is restored, ready from then on,
and not flapping when another instance joins (a rebalance); ``/healthz`` answers all along.
Real `edm run` processes, on the embedded broker and on Kafka."""
from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path

import pytest

from edm_runner.state.task import task_dir
from helpers.http_calls import call
from helpers.kafka_flow import Runner
from helpers.reliability_flow import write_topology
from helpers.serve_flow import serving_urls

DEADLINE_S = 60.0


def with_http(path: Path) -> Path:
    path.write_text(path.read_text() + 'http:\n  listen: "127.0.0.1:0"\n  serve: [counts]\n')
    return path


def until_ready(url: str, runner: Runner) -> dict:
    """Polls /readyz until it answers 200 (the restore ends in another process: no event to await)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, _, body = call(f"{url}/readyz")
        if status == 200:
            return body
        assert status == 503 and body["error"] == "not_ready", body
        assert runner.alive(), runner.stderr()
        assert time.monotonic() < deadline, f"not ready after {DEADLINE_S} s: {body}"
        time.sleep(0.05)


def test_not_ready_until_the_first_assignment_is_restored(tmp_path: Path) -> None:
    name = f"ready-{uuid.uuid4().hex[:8]}"
    topology = with_http(write_topology(tmp_path, name))
    state_dir = tmp_path / "state"
    lock_file = task_dir(state_dir, name, 0, 0).with_suffix(".lock")
    lock_file.parent.mkdir(parents=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # task 0_0 cannot be opened: the first assignment is not restored
    runner = Runner(topology, "--state-dir", str(state_dir))
    try:
        url = serving_urls(runner)[name]
        assert call(f"{url}/healthz")[0] == 200
        status, headers, body = call(f"{url}/readyz")
        assert (status, body["error"], body["phase"]) == (503, "not_ready", "starting"), body
        assert headers["Retry-After"] == "1"
        os.close(fd)  # releases the task: it opens, restores, and the service processes
        fd = -1
        body = until_ready(url, runner)
        assert body["phase"] == "running" and body["tasks"]["active"] == 2
    finally:
        if fd >= 0:
            os.close(fd)
        assert runner.stop() == 0, runner.stderr()


@pytest.mark.kafka
def test_ready_does_not_flap_when_an_instance_joins(tmp_path: Path, kafka_bootstrap: str) -> None:
    name = f"ready-{uuid.uuid4().hex[:8]}"
    topology = with_http(write_topology(tmp_path, name, kafka_bootstrap))
    first = Runner(topology, "--state-dir", str(tmp_path / "a"), "--instance-id", "a")
    second = None
    try:
        url = serving_urls(first)[name]
        assert until_ready(url, first)["tasks"]["active"] == 2
        second = Runner(topology, "--state-dir", str(tmp_path / "b"), "--instance-id", "b")
        other = serving_urls(second)[name]
        answers = []
        deadline = time.monotonic() + DEADLINE_S
        # Until the newcomer is ready (after the rebalance that gave it its tasks), the first
        # instance is asked again and again: it stays ready.
        while call(f"{other}/readyz")[0] != 200:
            answers.append(call(f"{url}/readyz")[0])
            assert second.alive(), second.stderr()
            assert time.monotonic() < deadline, "the second instance never got ready"
        answers.append(call(f"{url}/readyz")[0])
        assert set(answers) == {200}, answers
        _, _, body = call(f"{other}/readyz")
        assert body["tasks"]["active"] == 1
    finally:
        if second is not None:
            assert second.stop() == 0, second.stderr()
        assert first.stop() == 0, first.stderr()
