"""Shared pytest fixtures. Each section belongs to one area; append new sections, keep them apart."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edm_runner import devkafka
from edm_runner.brokers.local import LocalBroker
from edm_runner.testing.harness import Harness
from helpers.brokers import RunLocal, run_on
from helpers.tls import BrokerTls, SecureKafka, make_broker_tls


# --- Kafka --------------------------------------------------------------------------------------
# `kafka_bootstrap`: a real Apache Kafka broker for the whole session. EDM_KAFKA_BOOTSTRAP=host:port
# uses an existing broker; otherwise a dev broker (edm_runner.devkafka) is started in a temp dir
# and stopped by PID at the end. Without Java/Maven the Kafka tests skip, except in CI (CI=true)
# where they fail. Mark Kafka tests with `@pytest.mark.kafka`.

@pytest.fixture(scope="session")
def kafka_tools() -> None:
    """Skips (fails in CI) when a dev broker cannot run here: Java or Maven missing."""
    missing = devkafka.missing_tools()
    if not missing:
        return
    message = (f"Kafka tests need {' and '.join(missing)}: install a JDK (17+) and Maven, "
               "or set EDM_KAFKA_BOOTSTRAP=host:port to use a running broker")
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_dev(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[devkafka.KafkaInfo | None]:
    """The session's dev broker, or None when EDM_KAFKA_BOOTSTRAP names an external one. It
    also has SASL_SSL and SSL (client certificate) listeners (see `kafka_secure`) with the
    certificates of `kafka_tls`: they cost a fraction of a second, where a second broker only
    for the security tests would cost ~10 s."""
    if os.environ.get("EDM_KAFKA_BOOTSTRAP"):
        yield None
        return
    request.getfixturevalue("kafka_tools")
    workdir = tmp_path_factory.mktemp("kafka")
    tls: BrokerTls = request.getfixturevalue("kafka_tls")
    info = devkafka.start(workdir, tls=devkafka.TlsListeners(tls.keystore, tls.password, tls.ca_file))
    try:
        yield info
    finally:
        devkafka.stop(workdir)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_dev: devkafka.KafkaInfo | None) -> str:
    """``host:port`` of a real Kafka broker."""
    return kafka_dev.bootstrap if kafka_dev is not None else os.environ["EDM_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def kafka_tls(tmp_path_factory: pytest.TempPathFactory) -> BrokerTls:
    """The certificates of the session broker's secure listeners and of a client."""
    return make_broker_tls(tmp_path_factory.mktemp("kafka-tls"))


@pytest.fixture(scope="session")
def kafka_secure(kafka_dev: devkafka.KafkaInfo | None, kafka_tls: BrokerTls) -> SecureKafka:
    """The session broker's secure listeners (certificates signed by a CA made for the session):
    SASL_SSL with SCRAM-SHA-512 and a user created with the broker's admin tool, and SSL with a
    client certificate. Skips with an external broker."""
    if kafka_dev is None or kafka_dev.sasl_ssl_bootstrap is None or kafka_dev.ssl_bootstrap is None:
        pytest.skip("EDM_KAFKA_BOOTSTRAP names an external broker; the security tests need the dev broker")
    secure = SecureKafka(kafka_dev.sasl_ssl_bootstrap, kafka_dev.ssl_bootstrap, kafka_tls,
                         "edm-test", "scram-secret-" + os.urandom(4).hex())
    devkafka.add_scram_user(kafka_dev, secure.username, secure.password, secure.mechanism)
    secure.wait_until_accepted()
    return secure

# --- end Kafka ----------------------------------------------------------------------------------


# --- Kafka cluster ------------------------------------------------------------------------------
# `kafka_cluster`: a three-node dev cluster (edm_runner.devkafka, each node a broker and a
# controller; topics get 3 replicas, min.insync.replicas 2) for the whole session, started only
# when a test asks for it (three JVMs are heavy on a small machine) and stopped by PID at the end.
# Tests may stop a node; `devkafka.start(info.workdir)` brings it back for the next test.

CLUSTER_NODES = 3


@pytest.fixture(scope="session")
def kafka_cluster(kafka_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[devkafka.KafkaInfo]:
    workdir = tmp_path_factory.mktemp("kafka-cluster")
    info = devkafka.start(workdir, nodes=CLUSTER_NODES)
    try:
        yield info
    finally:
        devkafka.stop(workdir)

# --- end Kafka cluster --------------------------------------------------------------------------


# --- Local broker -------------------------------------------------------------------------------
# `run_local(body)`: runs `await body(broker)` (returning its result) on the test's own embedded
# broker under tmp_path/broker, started before and closed after; every call opens the same broker
# (its data stays between calls). Inside a coroutine, `helpers.brokers.started` does the same.

@pytest.fixture
def run_local(tmp_path: Path) -> RunLocal:
    return lambda body: run_on(LocalBroker(tmp_path / "broker"), body)

# --- end Local broker ---------------------------------------------------------------------------


# --- Both brokers -------------------------------------------------------------------------------
# `broker_url`: a test that takes it runs twice, on the embedded broker (under tmp_path/broker)
# and on the session's real Kafka broker (that run is marked `kafka`); the value is a broker URL
# as `--broker` takes it.

@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f"local:{tmp_path / 'broker'}"
    return "kafka://" + request.getfixturevalue("kafka_bootstrap")

# --- end Both brokers ---------------------------------------------------------------------------


# --- Test driver --------------------------------------------------------------------------------
# `harness(topology, **options)`: a topology on the in-process driver of `edm test`
# (edm_runner.testing.harness.Harness: the compiled operators of `edm run` on real LMDB stores,
# no broker), closed after the test. `topology`: a file, or the text of a microservice (dedented,
# written to tmp_path/topology.yaml); `options` as Harness takes them (clock_ms, functions, ...).
# For what a topology computes; what the runtime does (commits, restarts, batches) runs on
# `run_local` or `broker_url`.

@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(topology: str | Path, **options: Any) -> Harness:
        if isinstance(topology, str):
            path = tmp_path / "topology.yaml"
            path.write_text(textwrap.dedent(topology))
            topology = path
        made.append(Harness.load(topology, **options))
        return made[-1]
    yield make
    for h in made:
        h.close()

# --- end Test driver ----------------------------------------------------------------------------
