"""Production Kafka security, proven on a real listener: the session broker's SASL_SSL listener
(TLS with a certificate signed by a CA the session makes, SCRAM-SHA-512 logins of a user created
with the broker's admin tool). An example topology, the exactly-once flow and the CLI run through
it with the secrets in environment variables; wrong credentials and an untrusted certificate are
one clear line each, exit 1, no traceback."""
from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cli_helpers import TOPOLOGIES, Result, edm, ok
from edm_runner.language import load_file
from helpers import eos_flow
from helpers.brokers import run_on
from helpers.tls import SecureKafka, make_ca

# How a deployment passes the connection: the topology reads it from the environment.
TEMPLATED_BROKER = {
    "kind": "kafka",
    "bootstrap_servers": "{{ env.KAFKA_BOOTSTRAP }}",
    "security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                 "username": "{{ env.KAFKA_USERNAME }}", "password": "{{ env.KAFKA_PASSWORD }}",
                 "ssl_cafile": "{{ env.KAFKA_CA_FILE }}"},
}


def _env(secure: SecureKafka, **changes: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP": secure.bootstrap, "KAFKA_USERNAME": secure.username,
            "KAFKA_PASSWORD": secure.password, "KAFKA_CA_FILE": str(secure.ca_file), **changes}


def _user_counts(directory: Path) -> Path:
    """The user-counts example on its own group and topics, with the templated broker."""
    suffix = uuid.uuid4().hex[:8]
    doc = yaml.safe_load((TOPOLOGIES / "user-counts" / "topology.yaml").read_text())
    doc["name"] += f"-{suffix}"
    for name, stream in doc["streams"].items():
        stream["topic"] = f"{name}-{suffix}"
    doc["broker"] = TEMPLATED_BROKER
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _last_value_per_key(result: Result) -> dict[str, int]:
    return {line["key"]: line["value"] for line in result.lines()}


@pytest.mark.kafka
def test_an_example_and_the_cli_run_through_sasl_ssl(kafka_secure: SecureKafka, tmp_path: Path) -> None:
    """produce, run, consume, topics, state and reset of the user-counts example, secrets
    from the environment; the reset's rerun rebuilds the same counts from the inputs."""
    topology = _user_counts(tmp_path)
    env = _env(kafka_secure)
    events = TOPOLOGIES / "user-counts" / "user-events.jsonl"
    expected = Counter(json.loads(line)["key"] for line in events.read_text().splitlines() if line.strip())

    ok("produce", "user-events", "-t", topology, "-f", events, env=env)
    run = ok("run", topology, "--until-idle", env=env)
    assert f"{sum(expected.values())} in, {sum(expected.values())} out" in run.stderr
    assert _last_value_per_key(ok("consume", "user-counts", "-t", topology, "--from-beginning",
                                  env=env)) == expected
    topics = {line.split()[0] for line in ok("topics", "-t", topology, env=env).stdout.splitlines()[1:]}
    service = yaml.safe_load(topology.read_text())["name"]
    assert f"{service}-counts-changelog" in topics

    plan = ok("reset", topology, "--dry-run", env=env)
    assert f"{service}-counts-changelog" in plan.stdout + plan.stderr
    ok("reset", topology, env=env)
    rerun = ok("run", topology, "--until-idle", env=env)
    assert f"{sum(expected.values())} in" in rerun.stderr
    counts = [json.loads(line) for line in ok("state", topology, "scan", "counts", env=env).stdout.splitlines()]
    assert {c["key"]: c["value"] for c in counts} == expected  # rebuilt, not added to the old counts


@pytest.mark.kafka
def test_exactly_once_runs_through_sasl_ssl(kafka_secure: SecureKafka, tmp_path: Path) -> None:
    """Transactions (producer ids, offsets sent to the transaction, commits) over SASL_SSL: the
    read-committed output holds every input once."""
    name = f"eos-sec-{uuid.uuid4().hex[:8]}"
    topology = eos_flow.write_topology(tmp_path, name, kafka_secure.bootstrap, "exactly_once")
    doc = yaml.safe_load(topology.read_text())
    doc["broker"] = TEMPLATED_BROKER
    topology.write_text(yaml.safe_dump(doc, sort_keys=False))
    events = 500
    run_on(kafka_secure.broker(), lambda b: eos_flow.produce(b, name, 0, events))

    ok("run", topology, "--until-idle", "--state-dir", tmp_path / "state", env=_env(kafka_secure))
    seen = run_on(kafka_secure.broker(), lambda b: eos_flow.read_outputs(b, name, committed=True))
    assert seen == Counter(range(events))


def _one_line(result: Result) -> str:
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _each_command(topology: Path, env: dict[str, str]) -> dict[str, Result]:
    return {
        "run": edm("run", topology, "--until-idle", env=env),
        "produce": edm("produce", "user-events", "-t", topology, stdin='{"key": "u", "value": 1}\n', env=env),
        "consume": edm("consume", "user-counts", "-t", topology, "--from-beginning", env=env),
        "topics": edm("topics", "-t", topology, env=env),
        "reset": edm("reset", topology, env=env),
    }


@pytest.mark.kafka
def test_wrong_credentials_are_one_clear_line(kafka_secure: SecureKafka, tmp_path: Path) -> None:
    topology = _user_counts(tmp_path)
    wrong = "not-" + kafka_secure.password
    for command, result in _each_command(topology, _env(kafka_secure, KAFKA_PASSWORD=wrong)).items():
        line = _one_line(result)
        assert line.startswith(f"edm: Kafka at {kafka_secure.bootstrap} refused the login of user "
                               f"'{kafka_secure.username}' with SCRAM-SHA-512"), (command, line)
        assert "check broker.security.username and password" in line, (command, line)
        assert (f"you gave security: {{protocol: SASL_SSL, sasl_mechanism: SCRAM-SHA-512, username: "
                f"{kafka_secure.username}, password: (hidden), ssl_cafile: {kafka_secure.ca_file}}}") in line
        assert wrong not in result.stderr


@pytest.mark.kafka
def test_an_untrusted_certificate_is_one_clear_line(kafka_secure: SecureKafka, tmp_path: Path) -> None:
    """Another CA in ssl_cafile, and none (the system's CAs): both name the fix."""
    topology = _user_counts(tmp_path)
    _, _, other_ca = make_ca(tmp_path, "other-ca")
    for command, result in _each_command(topology, _env(kafka_secure, KAFKA_CA_FILE=str(other_ca))).items():
        line = _one_line(result)
        assert line.startswith(f"edm: the TLS certificate of Kafka at {kafka_secure.bootstrap} is not "
                               f"trusted"), (command, line)
        assert f"it is not signed by the CA in ssl_cafile '{other_ca}'" in line, (command, line)
        assert "set broker.security.ssl_cafile to the CA certificate" in line, (command, line)

    doc = yaml.safe_load(topology.read_text())
    del doc["broker"]["security"]["ssl_cafile"]
    topology.write_text(yaml.safe_dump(doc, sort_keys=False))
    line = _one_line(edm("topics", "-t", topology, env=_env(kafka_secure)))
    assert "no ssl_cafile is set, so the system's CAs were used" in line
    assert "you gave security: {protocol: SASL_SSL," in line


@pytest.mark.kafka
def test_a_client_certificate_runs_through_ssl(kafka_secure: SecureKafka, tmp_path: Path) -> None:
    """Mutual TLS: protocol SSL with ssl_certfile and an encrypted ssl_keyfile (its password from
    the environment); without a client certificate the broker's refusal is one clear line."""
    topology = _user_counts(tmp_path)
    doc = yaml.safe_load(topology.read_text())
    doc["broker"]["security"] = {"protocol": "SSL", "ssl_cafile": "{{ env.KAFKA_CA_FILE }}",
                                 "ssl_certfile": str(kafka_secure.tls.client_cert),
                                 "ssl_keyfile": str(kafka_secure.tls.client_key),
                                 "ssl_key_password": "{{ env.KAFKA_KEY_PASSWORD }}"}
    topology.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = _env(kafka_secure, KAFKA_BOOTSTRAP=kafka_secure.ssl_bootstrap,
               KAFKA_KEY_PASSWORD=kafka_secure.tls.client_key_password)
    ok("produce", "user-events", "-t", topology, stdin='{"key": "u-1", "value": {}}\n', env=env)
    ok("run", topology, "--until-idle", env=env)
    assert _last_value_per_key(ok("consume", "user-counts", "-t", topology, "--from-beginning", env=env)) == {"u-1": 1}

    wrong_key = _one_line(edm("topics", "-t", topology, env={**env, "KAFKA_KEY_PASSWORD": "wrong"}))
    assert "cannot load the kafka TLS files" in wrong_key and "ssl_key_password opens the key" in wrong_key
    for option in ("ssl_certfile", "ssl_keyfile", "ssl_key_password"):
        del doc["broker"]["security"][option]
    topology.write_text(yaml.safe_dump(doc, sort_keys=False))
    line = _one_line(edm("topics", "-t", topology, env=env))
    assert line.startswith(f"edm: Kafka at {kafka_secure.ssl_bootstrap} refused a connection without a client "
                           "certificate (no ssl_certfile is set)"), line
    assert "set broker.security.ssl_certfile and ssl_keyfile" in line
    assert "you gave security: {protocol: SSL, ssl_cafile: " in line


def test_security_files_are_relative_to_the_topology_and_sasl_needs_a_login(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "certs").mkdir()
    topology = tmp_path / "topology.yaml"
    security = {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "username": "u",
                "password": "{{ env.EDM_TEST_KAFKA_PASSWORD }}", "ssl_cafile": "certs/ca.pem",
                "ssl_certfile": "/etc/edm/tls/client.pem"}
    doc = {"kind": "microservice", "name": "sec", "streams": {"a": {}, "b": {}},
           "pipelines": {"p": {"from": "a", "to": "b"}},
           "broker": {"kind": "kafka", "bootstrap_servers": "h:9093", "security": security}}
    topology.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("EDM_TEST_KAFKA_PASSWORD", "from-env")
    loaded = load_file(topology).broker.options["security"]
    assert loaded["ssl_cafile"] == str(tmp_path / "certs" / "ca.pem")
    assert loaded["ssl_certfile"] == "/etc/edm/tls/client.pem"
    assert loaded["password"] == "from-env"

    del security["password"]
    topology.write_text(yaml.safe_dump(doc, sort_keys=False))
    refused = edm("validate", topology)
    assert refused.code == 1
    assert "missing required key 'password' in broker.security" in refused.stdout + refused.stderr


def test_a_missing_tls_file_names_its_option(tmp_path: Path) -> None:
    """Checked when the broker is opened, not by `edm validate` (in a pod the file is a mounted
    secret that CI does not have)."""
    topology = _user_counts(tmp_path)
    env = {**os.environ, "KAFKA_BOOTSTRAP": "127.0.0.1:1", "KAFKA_USERNAME": "u", "KAFKA_PASSWORD": "p",
           "KAFKA_CA_FILE": "missing/ca.pem"}
    ok("validate", topology, env=env)
    line = _one_line(edm("topics", "-t", topology, env=env))
    assert f"broker.security.ssl_cafile '{tmp_path / 'missing' / 'ca.pem'}' is not a readable file" in line


def test_the_dev_broker_records_its_secure_listeners(tmp_path: Path) -> None:
    """A node started again (``devkafka.start(workdir)`` without ``tls``) gets the same listeners:
    they are part of the recorded state, with their ports."""
    from edm_runner import devkafka
    tls = devkafka.TlsListeners(tmp_path / "broker.p12", "pw", tmp_path / "ca.pem")
    node = devkafka.KafkaNode(1, 123, 9092, 9093, tmp_path, sasl_ssl_port=9094, ssl_port=9095)
    info = devkafka.KafkaInfo("127.0.0.1:9092", (node,), tmp_path, tls=tls)
    devkafka._write_state(info)
    assert devkafka._read_state(tmp_path) == info
    assert (info.sasl_ssl_bootstrap, info.ssl_bootstrap) == ("127.0.0.1:9094", "127.0.0.1:9095")
