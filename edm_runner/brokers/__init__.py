"""Brokers: one protocol (``base``), two implementations (``local``, ``kafka``)."""
from __future__ import annotations

from pathlib import Path

from edm_runner.brokers.base import Broker
from edm_runner.errors import EdmError
from edm_runner.spec.model import BrokerSpec

_FORMS = "'local', 'local:PATH' or 'kafka://HOST:PORT[,HOST:PORT...]'"


def open_broker(spec: BrokerSpec, state_dir: Path, override: str | None = None) -> Broker:
    """The broker a topology runs on: ``spec`` unless ``override`` (a URL: ``local``,
    ``local:PATH`` or ``kafka://HOST:PORT[,HOST:PORT]``; empty means none) replaces it.
    A local broker without a path lives in ``state_dir / "broker"``. An override of the same
    kind as ``spec`` keeps the spec's other settings (e.g. Kafka security)."""
    kind, path, options = spec.kind, spec.path, dict(spec.options)
    if override:
        if override == "local" or override.startswith("local:"):
            if spec.kind != "local":
                path = None
            if override != "local":
                if not override[6:]:
                    raise EdmError(f"broker {override!r} has an empty path; use {_FORMS}")
                path = Path(override[6:]).expanduser()
            kind = "local"
        elif override.startswith("kafka://"):
            if spec.kind != "kafka":
                options = {}
            options["bootstrap_servers"] = _bootstrap_servers(override)
            kind = "kafka"
        else:
            raise EdmError(f"unknown broker {override!r}; use {_FORMS}")
    if kind == "local":
        from edm_runner.brokers.local import LocalBroker

        return LocalBroker(path if path is not None else state_dir / "broker")
    from edm_runner.brokers.kafka import KafkaBroker  # aiokafka is only imported when needed

    return KafkaBroker(options)


def _bootstrap_servers(url: str) -> str:
    servers = url[len("kafka://"):].rstrip("/").split(",")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise EdmError(f"broker {url!r}: {server!r} is not HOST:PORT; use {_FORMS}")
    return ",".join(servers)
