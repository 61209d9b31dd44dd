"""charts/edm and `edm chart values`: lint, render and validate (issue 11).

`helm lint --strict` and `helm template` for several value sets (charts/edm/ci/*.yaml: defaults,
HTTP on, every optional object on) and for a business topology's umbrella chart; every rendered
object is validated against a pinned Kubernetes version, strictly (tests/helpers/helm.py). No
cluster: what a cluster adds (the pods running) is tests/test_chart_pods.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.helm import CHART, Helm, by_kind, helm_binary, validate

REPO = Path(__file__).resolve().parents[1]
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
EDM = [sys.executable, "-m", "edm_runner"]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_binary(), tmp_path_factory.mktemp("helm-home"))


def _pod_spec(manifests):
    (sts,) = by_kind(manifests, "StatefulSet")
    return sts["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_every_value_set_lints_strictly_and_renders_valid_objects(helm: Helm, values: Path) -> None:
    helm.run("lint", "--strict", str(CHART), "-f", str(values))
    manifests = helm.template(CHART, "-f", str(values))
    validate(manifests)
    kinds = {m["kind"] for m in manifests}
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"} <= kinds
    if values.stem == "all-values":
        assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ScaledObject", "Pod"} <= kinds


def test_the_pods_meet_the_restricted_pod_security_standard(helm: Helm) -> None:
    manifests = helm.template(CHART, "-f", str(CHART / "ci" / "all-values.yaml"))
    pods = [_pod_spec(manifests)] + [p["spec"] for p in by_kind(manifests, "Pod")]  # the helm test pod too
    for spec in pods:
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"] == {"drop": ["ALL"]}
    state = _pod_spec(manifests)
    mounts = {m["mountPath"]: m for m in state["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts and "/var/lib/edm" in mounts
    assert "subPath" not in mounts["/etc/edm"]  # ConfigMap edits reach the pods
    (sa,) = by_kind(manifests, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_statefulset_wiring_static_membership_probes_grace_and_state(helm: Helm) -> None:
    manifests = helm.template(CHART, "-f", str(CHART / "ci" / "http-values.yaml"),
                              "--set", "shutdownGraceSeconds=40")
    (sts,) = by_kind(manifests, "StatefulSet")
    assert sts["spec"]["podManagementPolicy"] == "Parallel" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    spec = sts["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > 40
    container = spec["containers"][0]
    assert container["command"] == ["edm"]
    assert container["args"][:4] == ["run", "/etc/edm/user-counts/topology.yaml", "--state-dir", "/var/lib/edm"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["EDM_INSTANCE_ID"]["value"] == "$(POD_NAME)"
    assert int(env["EDM_SESSION_TIMEOUT_MS"]["value"]) >= 30_000
    assert env["EDM_BROKER"]["value"] == "kafka://kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert env["EDM_HTTP_LISTEN"]["value"] == "0.0.0.0:8080"
    assert env["EDM_ADVERTISED_URL"]["value"] == "http://$(POD_NAME).r-edm-pods.$(POD_NAMESPACE).svc:8080"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never Kafka
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # Standbys: one pod per node, so a standby never shares a node with its active.
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    headless = next(s for s in by_kind(manifests, "Service") if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    (cm,) = by_kind(manifests, "ConfigMap")
    assert set(cm["data"]) == {"user-counts__topology.yaml", "schemas__user-event.json"}
    items = spec["volumes"][0]["configMap"]["items"]
    assert {i["path"] for i in items} == {"user-counts/topology.yaml", "schemas/user-event.json"}


def test_a_topology_change_rolls_the_pods(helm: Helm) -> None:
    values = str(CHART / "ci" / "default-values.yaml")

    def checksum(*args: str) -> str:
        (sts,) = by_kind(helm.template(CHART, "-f", values, *args), "StatefulSet")
        return sts["spec"]["template"]["metadata"]["annotations"]["checksum/topology"]

    assert checksum() == checksum()
    assert checksum("--set-string", "topology.files.extra\\.json=x") != checksum()


@pytest.mark.parametrize("args, message", [
    (["--set", "replicass=2"], "additional properties 'replicass' not allowed"),
    (["--set", "logLevel=verbose"], "logLevel"),
    (["--set", "antiAffinity=sometimes"], "antiAffinity"),
    (["--set", "kafka.sessionTimeoutMs=1000"], "sessionTimeoutMs"),
    (["--set", "topology.file=../etc/passwd"], "topology/file"),
    (["--set", "env[0].name=PASSWORD"], "env/0"),
    (["--set", "kafka.sasl.passwordSecret.name=only-a-name"], "passwordSecret"),
])
def test_values_that_break_the_schema_fail_with_a_clear_message(helm: Helm, args, message) -> None:
    result = helm.run("template", "r", str(CHART), "-f", str(CHART / "ci" / "default-values.yaml"), *args,
                      check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "tasks=3", "--set", "replicas=4"],
     "replicas 4 is above the service's task count 3: a pod without a task only idles"),
    (["--set", "keda.enabled=true"], "keda.enabled needs the service's task count"),
    (["--set", "brokerKind=local", "--set", "replicas=2"],
     "replicas 2 on the embedded broker: each pod would process its own copy of the streams"),
    (["--set", "topology.file=other.yaml"], 'topology.file "other.yaml" is not among topology.files (topology.yaml)'),
])
def test_the_chart_refuses_what_cannot_work_and_says_what_to_do(helm: Helm, args, message) -> None:
    result = helm.run("template", "r", str(CHART), "-f", str(CHART / "ci" / "default-values.yaml"), *args,
                      check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_network_policy_opens_the_http_port_only_to_the_release_and_the_listed_peers(helm: Helm) -> None:
    off = helm.template(CHART, "-f", str(CHART / "ci" / "default-values.yaml"), "--set", "networkPolicy.enabled=true")
    assert by_kind(off, "NetworkPolicy")[0]["spec"]["ingress"] == []  # nothing listens
    (policy,) = by_kind(helm.template(CHART, "-f", str(CHART / "ci" / "all-values.yaml")), "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"][1] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}}


def test_keda_never_scales_above_the_task_count(helm: Helm) -> None:
    manifests = helm.template(CHART, "-f", str(CHART / "ci" / "all-values.yaml"))
    (scaled,) = by_kind(manifests, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 6  # tasks, below keda.maxReplicas 20
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "clicks"
    assert "replicas" not in by_kind(manifests, "StatefulSet")[0]["spec"]  # KEDA owns the count


def test_edm_chart_values_of_a_microservice_deploys_the_checked_files(helm: Helm, tmp_path: Path) -> None:
    topology = REPO / "topologies" / "quickstart" / "topology.yaml"
    out = tmp_path / "quickstart"
    result = subprocess.run([*EDM, "chart", "values", str(topology), "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning: quickstart: broker.consumer.session_timeout_ms is not set" in result.stderr
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert values["tasks"] == 3 and values["groupId"] == "quickstart"
    files = values["topology"]["files"]
    # The schema sits outside the topology's directory: paths keep their layout, bytes unchanged.
    assert values["topology"]["file"] == "topologies/quickstart/topology.yaml"
    assert files["topologies/quickstart/topology.yaml"] == topology.read_text()
    assert files["schemas/order.json"] == (REPO / "schemas" / "order.json").read_text()
    assert values["brokerKind"] == "local"
    manifests = helm.template(CHART, "-f", str(out / "values.yaml"), "--set", "replicas=3",
                              "--set", "kafka.bootstrapServers=kafka:9092")
    validate(manifests)
    helm.run("lint", "--strict", str(CHART), "-f", str(out / "values.yaml"))


def test_a_business_topology_deploys_as_one_umbrella_release(helm: Helm, tmp_path: Path) -> None:
    business = REPO / "topologies" / "payroll" / "payroll.yaml"
    out = tmp_path / "payroll"
    result = subprocess.run([*EDM, "chart", "values", str(business), "-o", str(out), "--chart", str(CHART)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    chart = yaml.safe_load((out / "Chart.yaml").read_text())
    assert [d["alias"] for d in chart["dependencies"]] == ["payroll-calculation", "payments", "notifications"]
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert values["payroll-calculation"]["topology"]["files"]["topologies/payroll/payroll_rules.py"] == \
        (REPO / "topologies" / "payroll" / "payroll_rules.py").read_text()
    helm.run("dependency", "build", str(out))
    helm.run("lint", "--strict", str(out))
    manifests = helm.template(out, "--set", "global.kafka.bootstrapServers=kafka:9092", release="payroll")
    validate(manifests)
    statefulsets = by_kind(manifests, "StatefulSet")
    assert sorted(s["metadata"]["name"] for s in statefulsets) == \
        ["payroll-notifications", "payroll-payments", "payroll-payroll-calculation"]
    for obj in manifests:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "payroll", obj["metadata"]["name"]
    for sts in statefulsets:
        env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["EDM_BROKER"] == "kafka://kafka:9092"
    calc = next(s for s in statefulsets if s["metadata"]["name"] == "payroll-payroll-calculation")
    assert calc["spec"]["template"]["spec"]["containers"][0]["args"][1] == \
        "/etc/edm/topologies/payroll/payroll-calculation.yaml"
    # Each service's replicas stay under its own task count.
    refused = helm.run("template", "payroll", str(out), "--set", "payments.replicas=3", check=False)
    assert "replicas 3 is above the service's task count 2" in refused.stderr


def test_notes_say_how_to_reach_the_service(helm: Helm) -> None:
    result = helm.run("install", "orders", str(CHART), "-f", str(CHART / "ci" / "http-values.yaml"),
                      "--dry-run=client", "--namespace", "apps")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n apps port-forward svc/orders-edm 8080:80" in notes
    assert "helm test orders" in notes and "4 task(s)" in notes


def test_edm_chart_values_reports_a_bad_file_or_chart_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: microservice\nname: bad\nstreams:\n  s: {partitions: zero}\n")
    result = subprocess.run([*EDM, "chart", "values", str(bad), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and f"{bad}:4:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    business = REPO / "topologies" / "payroll" / "payroll.yaml"
    result = subprocess.run([*EDM, "chart", "values", str(business), "-o", str(tmp_path / "out"),
                             "--chart", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"edm: {tmp_path} is not the edm chart" in result.stderr and "give --chart" in result.stderr


def test_an_example_that_listens_on_edm_http_listen_gets_the_charts_port(tmp_path: Path) -> None:
    topology = REPO / "topologies" / "users-activity-join" / "topology.yaml"
    result = subprocess.run([*EDM, "chart", "values", str(topology), "-o", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "port 0" not in result.stderr, result.stderr
    assert yaml.safe_load((tmp_path / "values.yaml").read_text())["http"] == {"enabled": True, "port": 8080,
                                                                            "tls": False}


def test_a_business_broker_that_its_services_do_not_share_is_a_warning(tmp_path: Path) -> None:
    """Each pod runs one service file alone, so the business file's broker: does not reach it."""
    (tmp_path / "a.yaml").write_text(
        "kind: microservice\nname: a\nstreams:\n  s: {partitions: 2, key: string, value: json}\n"
        "  t: {partitions: 2, key: string, value: json}\npipelines:\n  p: {from: s, to: t}\n")
    (tmp_path / "b.yaml").write_text(
        "kind: microservice\nname: b\nbroker: {kind: kafka, bootstrap_servers: 'k:9092', client_id: b}\n"
        "streams:\n  t: {partitions: 2, key: string, value: json}\n  u: {partitions: 2, key: string, value: json}\n"
        "pipelines:\n  p: {from: t, to: u}\n")
    (tmp_path / "biz.yaml").write_text(
        "kind: business\nname: biz\nbroker: {kind: kafka, bootstrap_servers: 'k:9092'}\nservices: [a.yaml, b.yaml]\n"
        "external_streams: [s]\n")
    result = subprocess.run([*EDM, "chart", "values", str(tmp_path / "biz.yaml"), "-o", str(tmp_path / "out"),
                             "--chart", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "a: its pods run a.yaml alone, with that file's broker (local), not the broker of biz.yaml" \
        in result.stderr
    assert "b: its pods run b.yaml alone" in result.stderr


def test_edm_chart_values_ships_the_local_modules_a_function_module_imports(tmp_path: Path) -> None:
    """A function's module imports helpers beside it (absolute, relative, from a package): each is
    shipped, standard and installed modules and files nothing imports are not, and the shipped
    files alone validate (the functions resolve in the pod as here)."""
    src = tmp_path / "src"
    for name, text in {
        "fn/__init__.py": "",
        "fn/mod.py": "import json\nimport util\nfrom . import helper\nfrom .sub import twice\n\n"
                     "def score(value):\n    return twice(helper.one() + util.two()) + len(json.dumps(value))\n",
        "fn/helper.py": "def one():\n    return 1\n",
        "fn/sub.py": "def twice(x):\n    return 2 * x\n",
        "util.py": "from lib.deep import TWO\n\ndef two():\n    return TWO\n",
        "lib/__init__.py": "",
        "lib/deep.py": "TWO = 2\n",
        "unused.py": "raise SystemExit('never shipped')\n",
        "topology.yaml": "kind: microservice\nname: scored\nstreams:\n  s: {partitions: 2, key: string, value: json}\n"
                         "  t: {partitions: 2, key: string, value: json}\n"
                         "functions:\n  score: {python: 'fn.mod:score'}\n"
                         "pipelines:\n  p: {from: s, steps: [{map_values: score(value)}], to: t}\n",
    }.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    out = tmp_path / "out"
    result = subprocess.run([*EDM, "chart", "values", str(src / "topology.yaml"), "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    files = yaml.safe_load((out / "values.yaml").read_text())["topology"]["files"]
    assert sorted(files) == ["fn/__init__.py", "fn/helper.py", "fn/mod.py", "fn/sub.py", "lib/__init__.py",
                             "lib/deep.py", "topology.yaml", "util.py"]
    pod = tmp_path / "pod"
    for name, text in files.items():
        (pod / name).parent.mkdir(parents=True, exist_ok=True)
        (pod / name).write_text(text)
    check = subprocess.run([*EDM, "validate", str(pod / "topology.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
