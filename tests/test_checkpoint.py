"""The commit path (runtime.checkpoint) is chosen once, by what the broker declares it can do
(``atomic_append``, ``transactions``), never by the broker's class: one implementation per
guarantee. The crash tests (test_reliability, test_eos, test_kill_loop, test_kafka_faults) check
each path's order; this checks the choice."""
from __future__ import annotations

from pathlib import Path

import pytest

from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from edm_runner.errors import EdmError
from edm_runner.language import load_file
from edm_runner.runtime.checkpoint import AtLeastOnceCheckpointer, EmbeddedCheckpointer, checkpointer
from edm_runner.runtime.eos import KafkaTransactions
from edm_runner.runtime.processing import CompiledService
from edm_runner.runtime.stats import ServiceStats
from helpers.reliability_flow import write_topology


class NoAtomicAppend(LocalBroker):
    """The embedded broker declaring neither capability: the choice follows the declaration."""

    atomic_append = False
    transactions = False


def compiled(tmp_path: Path, guarantee: str) -> CompiledService:
    (tmp_path / guarantee).mkdir(exist_ok=True)
    topology = load_file(write_topology(tmp_path / guarantee, "svc", processing={"guarantee": guarantee}))
    return CompiledService(topology, ServiceStats())


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_embedded_broker_appends_and_commits_in_one_transaction(tmp_path: Path, guarantee: str) -> None:
    broker = LocalBroker(tmp_path / "broker")
    chosen = checkpointer(compiled(tmp_path, guarantee), broker, None)
    assert type(chosen) is EmbeddedCheckpointer and chosen.broker is broker


def test_kafka_at_least_once_gets_the_flush_then_commit_path(tmp_path: Path) -> None:
    broker = KafkaBroker({"bootstrap_servers": "localhost:1"})  # never connected
    chosen = checkpointer(compiled(tmp_path, "at_least_once"), broker, None)
    assert type(chosen) is AtLeastOnceCheckpointer and chosen.broker is broker


def test_kafka_exactly_once_uses_transactions_and_reads_committed(tmp_path: Path) -> None:
    broker = KafkaBroker({"bootstrap_servers": "localhost:1"})
    chosen = checkpointer(compiled(tmp_path, "exactly_once"), broker, None)
    assert type(chosen) is KafkaTransactions
    assert chosen.broker._consumer_options["isolation_level"] == "read_committed"


def test_the_choice_follows_the_declaration_not_the_class(tmp_path: Path) -> None:
    broker = NoAtomicAppend(tmp_path / "broker")
    assert type(checkpointer(compiled(tmp_path, "at_least_once"), broker, None)) is AtLeastOnceCheckpointer
    with pytest.raises(EdmError, match="exactly_once needs a broker with transactions, and local broker .* has none"):
        checkpointer(compiled(tmp_path, "exactly_once"), broker, None)
