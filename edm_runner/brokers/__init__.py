"""Brokers: one protocol (``base``), two implementations (``local``, ``kafka``)."""
from __future__ import annotations

from pathlib import Path

from edm_runner.brokers.base import Broker
from edm_runner.errors import EdmError
from edm_runner.language.model import BrokerSpec

_FORMS = "'local', 'local:PATH' or 'kafka://HOST:PORT[,HOST:PORT...]'"


def open_broker(spec: BrokerSpec, state_dir: Path, override: str | None = None) -> Broker:
    """The broker a topology runs on: ``spec`` unless ``override`` (a URL: ``local``,
    ``local:PATH`` or ``kafka://HOST:PORT[,HOST:PORT]``; empty means none) replaces it.
    A local broker without a path lives in ``state_dir / "broker"``. An override of the same
    kind as ``spec`` keeps the spec's other settings (e.g. Kafka security)."""
    kind, path, options = spec.kind, spec.path, dict(spec.options)
    if override:
        kind, override_path, servers = parse_url(override)
        if kind == "local":
            if override_path is not None or spec.kind != "local":
                path = override_path
        else:
            if spec.kind != "kafka":
                options = {}
            options["bootstrap_servers"] = servers
    if kind == "local":
        from edm_runner.brokers.local import LocalBroker

        return LocalBroker(path if path is not None else state_dir / "broker")
    from edm_runner.brokers.kafka import KafkaBroker  # aiokafka is only imported when needed

    return KafkaBroker(options)


def parse_url(url: str) -> tuple[str, Path | None, str | None]:
    """(kind, local path or None, Kafka bootstrap servers or None) of a broker URL; EdmError
    when it is none of the forms."""
    if url == "local":
        return "local", None, None
    if url.startswith("local:"):
        if not url[6:]:
            raise EdmError(f"broker {url!r} has an empty path; use {_FORMS}")
        return "local", Path(url[6:]).expanduser(), None
    if url.startswith("kafka://"):
        return "kafka", None, _bootstrap_servers(url)
    raise EdmError(f"unknown broker {url!r}; use {_FORMS}")


def _bootstrap_servers(url: str) -> str:
    servers = url[len("kafka://"):].rstrip("/").split(",")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise EdmError(f"broker {url!r}: {server!r} is not HOST:PORT; use {_FORMS}")
    return ",".join(servers)
