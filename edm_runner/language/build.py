"""Building the typed model (``spec.model``) from a document that passed validation.

Precondition: the data has no diagnostics, so shapes are those of the schema; defaults are
applied here, in one place. Schema paths become absolute Paths; every element gets the
``Pos`` of its YAML key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edm_runner.language.compat import DEFAULT_MODE
from edm_runner.language.durations import parse_duration
from edm_runner.language.http import parse_size, split_listen
from edm_runner.language.limits import Limits
from edm_runner.language.model import (NOWHERE, AssignmentSpec, BranchSpec, BrokerSpec, ErrorPolicy, FunctionSpec,
                                       HttpSpec, IngestKey, IngestSpec, PipelineProcessing, PipelineSpec, Pos,
                                       ProcessingSpec, ResourceSpec, StepSpec, StoreSpec, StreamSpec, TableSpec, ToSpec,
                                       TokenSource, Topology)
from edm_runner.language.yaml_loader import SourceMap
from edm_runner.serde.spec import SerdeSpec

_SECURITY_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


class _Builder:
    def __init__(self, smap: SourceMap, base_dir: Path):
        self.smap = smap
        self.base_dir = base_dir

    def pos(self, path: tuple, key: bool = True) -> Pos:
        node = self.smap.key(path) if key else self.smap.value(path)
        return Pos(self.smap.file, node.line, node.col)

    def broker(self, cfg: dict | None, path: tuple) -> BrokerSpec:
        if cfg is None:
            return BrokerSpec()
        options = {k: v for k, v in cfg.items() if k not in ("kind", "path")}
        if "security" in options:  # its files are relative to the topology file, like schemas
            options["security"] = {k: str(self.base_dir / v) if k in _SECURITY_FILES else v
                                   for k, v in options["security"].items()}
        local_path = self.base_dir / cfg["path"] if "path" in cfg else None
        return BrokerSpec(cfg["kind"], local_path, options, self.pos(path))

    def error_policy(self, cfg: Any, path: tuple) -> ErrorPolicy | None:
        if cfg is None:
            return None
        if isinstance(cfg, dict):
            return ErrorPolicy("dead_letter", cfg["dead_letter"], self.pos(path))
        return ErrorPolicy(cfg, None, self.pos(path))

    def serde(self, cfg: Any, default: str) -> SerdeSpec:
        if cfg is None:
            return SerdeSpec(default)
        if isinstance(cfg, str):
            return SerdeSpec(cfg)
        schema = (self.base_dir / cfg["schema"]).resolve() if "schema" in cfg else None
        return SerdeSpec(cfg.get("format", "json"), schema)

    def stream(self, name: str, cfg: dict) -> StreamSpec:
        path = ("streams", name)
        return StreamSpec(
            name=name, topic=cfg.get("topic", name), partitions=cfg.get("partitions", 1),
            type=cfg.get("type", "keyed"), key=self.serde(cfg.get("key"), "string"),
            value=self.serde(cfg.get("value"), "json"),
            on_error=self.error_policy(cfg.get("on_error"), path + ("on_error",)),
            replication_factor=cfg.get("replication_factor"), retention_ms=cfg.get("retention_ms"),
            config=dict(cfg.get("config", {})), pos=self.pos(path),
            compatibility=cfg.get("compatibility", DEFAULT_MODE))

    def store(self, name: str, cfg: dict, standby_replicas: int) -> StoreSpec:
        retention = parse_duration(cfg["retention"]) if "retention" in cfg else None
        return StoreSpec(name=name, type=cfg.get("type", "key_value"), changelog=cfg.get("changelog", True),
                         retention_ms=retention, standby_replicas=cfg.get("standby_replicas", standby_replicas),
                         pos=self.pos(("stores", name)))

    def assignment(self, cfg: dict | None, path: tuple) -> AssignmentSpec:
        cfg = cfg or {}
        static = cfg.get("static", {})
        after = static.get("reassign_after")
        return AssignmentSpec(strategy=cfg.get("strategy", "balanced"),
                              instances={k: list(v) for k, v in static.get("instances", {}).items()},
                              reassign_after_ms=parse_duration(after) if after is not None else None,
                              custom=cfg.get("custom", {}).get("python"),
                              pos=self.pos(path) if cfg else NOWHERE)

    def resource(self, name: str, cfg: dict) -> ResourceSpec:
        rate, quota = cfg.get("rate", {}), cfg.get("quota", {})
        return ResourceSpec(name, rate=rate.get("requests"), per_ms=parse_duration(rate.get("per", "1s")),
                            burst=rate.get("burst"), max_in_flight=cfg.get("max_in_flight"),
                            quota=quota.get("requests"), quota_period_ms=parse_duration(quota.get("per", "1d")),
                            divide_by_instances=cfg.get("divide_by_instances", 1), pos=self.pos(("resources", name)))

    def tables(self, data: dict, section: str) -> dict[str, TableSpec]:
        return {name: TableSpec(name, cfg["from"], section == "global_tables", self.pos((section, name)))
                for name, cfg in data.get(section, {}).items()}

    def http(self, cfg: dict | None) -> HttpSpec | None:
        if cfg is None:
            return None
        host, port = split_listen(cfg.get("listen", "0.0.0.0:8080"))
        tls = cfg.get("tls")
        limits = cfg.get("limits", {})
        return HttpSpec(
            host=host, port=port,
            advertised_url=cfg["advertised_url"].rstrip("/") if "advertised_url" in cfg else None,
            serve=list(cfg.get("serve", [])),
            ingest=[IngestSpec(e["path"], e["stream"], IngestKey(**e["key"]) if "key" in e else None,
                               self.pos(("http", "ingest", i), key=False))
                    for i, e in enumerate(cfg.get("ingest", []))],
            tls_cert=(self.base_dir / tls["cert_file"]).resolve() if tls else None,
            tls_key=(self.base_dir / tls["key_file"]).resolve() if tls else None,
            tls_cert_pos=self.pos(("http", "tls", "cert_file"), key=False) if tls else NOWHERE,
            tls_key_pos=self.pos(("http", "tls", "key_file"), key=False) if tls else NOWHERE,
            auth={scope: TokenSource((self.base_dir / source["tokens_file"]).resolve()
                                     if "tokens_file" in source else None, source.get("tokens_env"))
                  for scope, source in cfg.get("auth", {}).items()},
            max_body_bytes=parse_size(limits.get("max_body", "1MiB")),
            request_timeout_ms=parse_duration(limits.get("request_timeout", "10s")),
            pos=self.pos(("http",)))

    def steps(self, steps: list | None, path: tuple) -> list[StepSpec]:
        out = []
        for i, step in enumerate(steps or []):
            (op, config), = step.items()
            out.append(StepSpec(op, config, self.pos(path + (i, op))))
        return out

    def sink(self, cfg: Any, path: tuple) -> ToSpec | None:
        if cfg is None:
            return None
        if isinstance(cfg, str):
            return ToSpec(stream=cfg, pos=self.pos(path))
        return ToSpec(select=cfg["select"], streams=list(cfg["streams"]), pos=self.pos(path))

    def pipeline(self, name: str, cfg: dict) -> PipelineSpec:
        path = ("pipelines", name)
        sources = cfg["from"]
        branches = [
            BranchSpec(when=b.get("when"), steps=self.steps(b.get("steps"), path + ("branch", i, "steps")),
                       to=self.sink(b.get("to"), path + ("branch", i, "to")),
                       pos=self.pos(path + ("branch", i), key=False))
            for i, b in enumerate(cfg.get("branch", []))]
        return PipelineSpec(
            name=name, sources=[sources] if isinstance(sources, str) else list(sources),
            steps=self.steps(cfg.get("steps"), path + ("steps",)),
            to=self.sink(cfg.get("to"), path + ("to",)), branch=branches,
            on_error=self.error_policy(cfg.get("on_error"), path + ("on_error",)), pos=self.pos(path),
            processing=self.pipeline_processing(cfg.get("processing"), path + ("processing",)))

    def pipeline_processing(self, cfg: dict | None, path: tuple) -> PipelineProcessing:
        if cfg is None:
            return PipelineProcessing()
        return PipelineProcessing(ordering=cfg.get("ordering", "partition"),
                                  max_in_flight=cfg.get("max_in_flight", 100), attempts=cfg.get("attempts", 1),
                                  retry_backoff_ms=cfg.get("retry_backoff_ms", 100), pos=self.pos(path))


def build_topology(data: dict, smap: SourceMap, source_file: Path) -> Topology:
    """The model of a valid microservice document read from ``source_file`` (absolute)."""
    b = _Builder(smap, source_file.parent)
    processing = data.get("processing", {})
    return Topology(
        name=data["name"], source_file=source_file, description=data.get("description", ""),
        broker=b.broker(data.get("broker"), ("broker",)),
        processing=ProcessingSpec(
            guarantee=processing.get("guarantee", "at_least_once"),
            commit_interval_ms=processing.get("commit_interval_ms", 100),
            max_batch=processing.get("max_batch", 1000),
            start=processing.get("start", "earliest"),
            pos=b.pos(("processing",)) if "processing" in data else ProcessingSpec().pos,
            instance_id=processing.get("instance_id") or None,
            standby_replicas=processing.get("standby_replicas", 0),
            assignment=b.assignment(processing.get("assignment"), ("processing", "assignment")),
            shutdown_grace_ms=parse_duration(processing.get("shutdown_grace", "30s")),
            expression_limits=Limits.from_config(processing.get("expression_limits"))),
        streams={name: b.stream(name, cfg) for name, cfg in data.get("streams", {}).items()},
        functions={name: FunctionSpec(name, cfg["python"], b.pos(("functions", name)), list(cfg.get("stores", [])))
                   for name, cfg in data.get("functions", {}).items()},
        pipelines={name: b.pipeline(name, cfg) for name, cfg in data.get("pipelines", {}).items()},
        stores={name: b.store(name, cfg, processing.get("standby_replicas", 0))
                for name, cfg in data.get("stores", {}).items()},
        tables=b.tables(data, "tables"),
        global_tables=b.tables(data, "global_tables"),
        http=b.http(data.get("http")),
        resources={name: b.resource(name, cfg) for name, cfg in data.get("resources", {}).items()},
    )


def build_broker(data: dict, smap: SourceMap, source_file: Path) -> BrokerSpec:
    return _Builder(smap, source_file.parent).broker(data.get("broker"), ("broker",))
