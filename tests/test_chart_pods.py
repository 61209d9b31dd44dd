"""The pods charts/edm renders, run here as a kubelet would run them (issue 11).

`edm chart values` writes the values of a topology, `helm template` renders the StatefulSet,
and tests/helpers/pods.py starts each pod's container as a process: its command and args, its
env (downward-API values filled in, `$(VAR)` expanded), its ConfigMap written as the mounted
directory, its state volume kept across restarts, its probes run as the kubelet runs them.
On Kafka, three pods form one group, a SIGTERM drains within the grace period and a pod
restarted under the same name gets its tasks back without a rebalance (static membership).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edm_runner.deploy.chart import CHART_ENV
from helpers.helm import CHART, Helm, helm_binary
from helpers.http_calls import call
from helpers.pods import Pod, expand, pods_of
from helpers.serve_flow import ASSIGNMENT, READY, settled, wait_for_line

KAFKA_BROKER = """\
broker:
  kind: kafka
  bootstrap_servers: "{{ env.KAFKA_BOOTSTRAP }}"
  consumer: {session_timeout_ms: "{{ env.EDM_SESSION_TIMEOUT_MS }}"}
"""

TOPOLOGY = """\
kind: microservice
name: %(name)s
%(broker)s
processing: {shutdown_grace: 20s}
http:
  listen: "{{ env.POD_IP }}:{{ env.EDM_HTTP_PORT }}"
  advertised_url: "{{ env.EDM_ADVERTISED_URL }}"
  serve: [counts]
streams:
  events: {topic: %(name)s-events, partitions: 3, key: string, value: json}
stores: {counts: {type: key_value}}
pipelines:
  count: {from: events, steps: [{group_by_key: {}}, {count: {store: counts}}]}
"""


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_binary(), tmp_path_factory.mktemp("helm-home"))


def _free_port() -> int:
    """A port free on every 127.0.0.x address (a pod binds its own IP and the chart's port)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _render(helm: Helm, tmp_path: Path, topology: str, *sets: str) -> list[Pod]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "topology.yaml").write_text(topology)
    written = subprocess.run([sys.executable, "-m", "edm_runner", "chart", "values",
                              str(tmp_path / "src" / "topology.yaml"), "-o", str(tmp_path / "values")],
                             capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    manifests = helm.template(CHART, "-f", str(tmp_path / "values" / "values.yaml"),
                              "--set", f"http.port={_free_port()}", *sets)
    return pods_of(manifests, tmp_path)


def _until(pod: Pod, kind: str) -> None:
    """Until the pod's ``kind`` probe succeeds, polling faster than the kubelet would: a startup
    probe within what the kubelet allows before it kills the pod (periodSeconds x
    failureThreshold); readiness within 120 s, as the kubelet kills no pod for being unready (it
    only keeps it out of the Service) and joining a group of three takes longer on a loaded CI."""
    spec = pod.container[f"{kind}Probe"]
    allowed = spec["periodSeconds"] * spec["failureThreshold"] if kind == "startup" else 120
    deadline = time.monotonic() + allowed
    while not pod.probe(kind):
        assert pod.alive(), f"{pod.name} exited {pod.proc.returncode}:\n{pod.stderr()}"
        assert time.monotonic() < deadline, f"{pod.name}: {kind} probe still failing:\n{pod.stderr()}"
        time.sleep(0.1)  # the probe is polled, as the kubelet polls it


def _revocations(pod: Pod) -> int:
    """How often the pod gave its tasks up for a rebalance. edm logs it in the rebalance
    listener, which the consumer awaits before it rejoins; a rebalance that a rejoining member
    triggers hands that member its assignment only after every other member has rejoined, so
    has logged this line."""
    return len(re.findall(r"revoked \d+ partition\(s\)", pod.stderr()))


def _last_assignment(pod: Pod) -> dict:
    found = list(ASSIGNMENT.finditer(pod.stderr()))
    return json.loads(found[-1]["doc"]) if found else {}


def _counted(pods: list[Pod]) -> int:
    """The sum of the counts the pods hold, each asked for its own tasks' partitions (/local)."""
    total = 0
    for pod in pods:
        port = pod.container["ports"][0]["containerPort"]
        for task in _last_assignment(pod)["active"]:
            partition = task.split("_")[1]
            status, _, body = call(f"http://{pod.ip}:{port}/local/stores/counts/keys?partition={partition}&limit=1000")
            assert status == 200, body
            total += sum(entry["value"] for entry in body["entries"])
    return total


def _until_counted(pods: list[Pod], expected: int) -> None:
    deadline = time.monotonic() + 120
    while (counted := _counted(pods)) != expected:
        assert counted < expected and time.monotonic() < deadline, \
            f"{counted} counted, {expected} expected\n" + "\n".join(p.stderr() for p in pods)
        time.sleep(0.1)  # processing is another process' work


def test_env_expansion_is_kubernetes_own() -> None:
    env = {"POD_NAME": "r-edm-0", "NS": "apps"}
    assert expand("$(POD_NAME).pods.$(NS).svc", env) == "r-edm-0.pods.apps.svc"
    assert expand("$(UNDEFINED)-$$(POD_NAME)", env) == "$(UNDEFINED)-$(POD_NAME)"


def test_a_rendered_pod_runs_probes_answer_and_sigterm_drains(helm: Helm, tmp_path: Path) -> None:
    """The embedded broker, one pod: the chart's wiring alone (no Kafka needed)."""
    (pod,) = _render(helm, tmp_path, TOPOLOGY % {"name": "chart-pod", "broker": ""})
    pod.start()
    try:
        _until(pod, "startup")
        assert pod.probe("liveness")
        _until(pod, "readiness")
        # The state is on the claim's volume, the files where the ConfigMap mount put them.
        assert any((tmp_path / "pvc" / f"state-{pod.name}").iterdir())
        assert pod.stop() == 0
        assert "chart-pod: 0 in" in pod.stderr()
    finally:
        pod.kill()


@pytest.mark.kafka
def test_three_pods_form_one_group_and_a_restarted_pod_keeps_its_tasks(
        helm: Helm, tmp_path: Path, kafka_bootstrap: str) -> None:
    name = f"chart-pods-{uuid.uuid4().hex[:8]}"
    pods = _render(helm, tmp_path, TOPOLOGY % {"name": name, "broker": KAFKA_BROKER},
                   "--set", "replicas=3", "--set", f"kafka.bootstrapServers={kafka_bootstrap}")
    assert [p.name for p in pods] == ["r-edm-0", "r-edm-1", "r-edm-2"]
    events = "".join(json.dumps({"key": f"u-{i % 10}", "value": {"n": i}}) + "\n" for i in range(30))
    produced = subprocess.run([sys.executable, "-m", "edm_runner", "produce", "events", "-t",
                               str(tmp_path / "src" / "topology.yaml")], input=events, text=True,
                              capture_output=True, env={**os.environ, **CHART_ENV, "KAFKA_BOOTSTRAP": kafka_bootstrap})
    assert produced.returncode == 0, produced.stderr
    try:
        for pod in pods:
            pod.start()
        for pod in pods:
            _until(pod, "startup")
            _until(pod, "readiness")
            assert pod.probe("liveness")
        # One group: the last assignments of the three pods cover the three tasks, one each, with
        # the pod names as instance ids.
        deadline = time.monotonic() + 120
        while not settled(pods, {"0_0", "0_1", "0_2"}):
            assert time.monotonic() < deadline, "\n".join(p.stderr() for p in pods)
            time.sleep(0.1)  # the next assignment is a line another process writes
        last = [_last_assignment(p) for p in pods]
        assert [a["instance"] for a in last] == [p.name for p in pods]
        assert all(len(a["active"]) == 1 for a in last)
        tasks = last[1]["active"]
        _until_counted(pods, 30)  # the group processes every event once

        # SIGTERM as the kubelet sends it: a clean drain within terminationGracePeriodSeconds.
        before = [_revocations(p) for p in pods]
        assert pods[1].stop() == 0
        # Back under the same name with the same volume: its tasks, the same generation.
        pods[1].start()
        _until(pods[1], "startup")
        _until(pods[1], "readiness")
        wait_for_line(pods[1], READY)
        # Static membership: the coordinator hands the rejoining member its assignment, the
        # others never rejoin (no rebalance).
        assert _last_assignment(pods[1])["active"] == tasks, pods[1].stderr()
        for i in (0, 2):
            assert _revocations(pods[i]) == before[i], pods[i].stderr()
        assert _counted(pods) == 30  # its counts came back from its volume, nothing counted twice
        for pod in pods:
            assert pod.stop() == 0
    finally:
        for pod in pods:
            pod.kill()
