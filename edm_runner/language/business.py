"""Business topologies: several microservice files checked together.

Checks across services (each diagnostic lands in the file where the fix belongs, naming the
other file and position when two places disagree):
- service files exist, are microservices, and have distinct names;
- single-writer principle: a topic is written by exactly one service;
- every consumed topic is written by a service or declared in ``external_streams``, and an
  external topic is not written by a service;
- services sharing a topic agree on its partitions, type and formats;
- no cycle through several services (a cycle inside one service is that service's error);
- tables read streams like pipelines do (they need a writer or must be external);
- internal topics (changelogs, repartition topics) belong to their service: no other service
  declares them;
- services with an ``http:`` section listen on addresses one process can bind together
  (``edm run`` of a business topology runs them all in one process);
- a service reading a topic another service writes can read every event the writer's schema
  allows (``language.compat``; not when either side's ``compatibility`` is NONE).
Cross-service checks use what validation could extract from every service file (the
streams, reads and writes that are themselves valid), so one mistake is reported once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edm_runner.errors import Diagnostic
from edm_runner.language import structure
from edm_runner.language.build import build_broker
from edm_runner.language.compat import readable
from edm_runner.language.cycles import find_cycles
from edm_runner.language.flows import Ref
from edm_runner.language.http import listen_clash
from edm_runner.language.model import BusinessTopology
from edm_runner.language.report import Report
from edm_runner.language.schema import validation_schema
from edm_runner.language.service_file import Service, load_service
from edm_runner.language.yaml_loader import Source


@dataclass(frozen=True)
class _Use:
    """A stream use by a service."""

    service: Service
    ref: Ref

    @property
    def name(self) -> str:
        return self.service.checked.name or "?"

    def location(self) -> str:
        pos = self.service.report.smap.value(self.ref.path)
        return f"{self.service.path}:{pos.line}:{pos.col}"

    def error(self, message: str, hint: str = "") -> None:
        self.service.report.error(self.ref.path, message, hint)


def check_business(source: Source, report: Report, no_code: bool, env: Mapping[str, str]
                   ) -> tuple[BusinessTopology | None, list[Diagnostic], list[Diagnostic]]:
    """Validate a business document and its services: the model when there is no error, the
    errors, and the warnings of every file."""
    data = source.data
    schema = validation_schema()
    structure.check({"$defs": schema["$defs"], "$ref": "#/$defs/business"}, data, report)
    services: list[tuple[int, Service]] = []
    reports: list[Report] = []
    paths = data.get("services")
    for i, rel in enumerate(paths if isinstance(paths, list) else []):
        if not isinstance(rel, str) or not rel:
            continue
        file = source.path.parent / rel
        if not file.is_file():
            report.error(("services", i), f"service file not found: {rel}",
                         f"paths are relative to the business file's directory ({source.path.parent.resolve()})")
            continue
        service, service_report = load_service(file, no_code, env)
        reports.append(service_report)
        if service is not None and service.kind == "business":
            kind = service.report.smap.value(("kind",))
            what = ("this business topology itself" if file.resolve() == source.path.resolve()
                    else f"a business topology ({file}:{kind.line}:{kind.col})")
            report.error(("services", i), f"service '{rel}' is {what}, not a microservice file",
                         "list the microservice files themselves under `services:` "
                         "(business topologies do not nest)")
        elif service is not None and service.checked is not None:
            services.append((i, service))
    _check_names(services, report)
    _check_listen([s for _, s in services])
    _check_topics(data, [s for _, s in services], report)
    _check_cycles([s for _, s in services], {id(s): i for i, s in services}, report)
    _check_schemas([s for _, s in services])
    diagnostics = report.diagnostics + [d for r in reports for d in r.diagnostics]
    warnings = report.warnings + [w for r in reports for w in r.warnings]
    if diagnostics:
        return None, diagnostics, warnings
    external = data.get("external_streams", [])
    return BusinessTopology(
        name=data["name"], source_file=source.path.resolve(),
        services=[s.topology for _, s in services], external_streams=list(external),
        description=data.get("description", ""),
        broker=build_broker(data, report.smap, source.path.resolve())), [], warnings


def _check_names(services: list[tuple[int, Service]], report: Report) -> None:
    seen: dict[str, Service] = {}
    for i, service in services:
        name = service.checked.name
        if name in seen:
            report.error(("services", i), f"duplicate service name '{name}': {service.path} and "
                                          f"{seen[name].path} are both named '{name}'",
                         "a service name is its consumer group and topic prefix: rename one")
        else:
            seen[name] = service


def _check_listen(services: list[Service]) -> None:
    bound: list[Service] = []
    for service in services:
        listen = service.checked.listen
        if listen is None:
            continue
        for other in bound:
            if listen_clash(listen, other.checked.listen):
                http = service.data["http"]
                path = ("http", "listen") if "listen" in http else ("http",)
                pos = (other.report.smap.value(("http", "listen")) if "listen" in other.data["http"]
                       else other.report.smap.key(("http",)))
                host, port = listen
                service.report.error(
                    path, f"service '{service.checked.name}' listens on {host}:{port}, as service "
                          f"'{other.checked.name}' does ({other.path}:{pos.line}:{pos.col}); `edm run` of "
                          "a business topology runs every service in one process",
                    "give each service its own port (`listen: \"0.0.0.0:8081\"`), or port 0 for any free port",
                    key="listen" not in http)
                break
        bound.append(service)


def _writes(service: Service) -> list[Ref]:
    checked = service.checked
    reads = {ref.stream for flow in checked.flows for ref in flow.reads}
    reads.update(ref.stream for ref in checked.table_reads)
    refs = [ref for flow in checked.flows for ref in flow.writes + flow.dead_letters]
    return refs + [ref for stream, ref in checked.stream_dead_letters.items() if stream in reads]


def _check_topics(data: dict, services: list[Service], report: Report) -> None:
    writers: dict[str, _Use] = {}
    for service in services:
        for ref in _writes(service):
            first = writers.setdefault(ref.topic, _Use(service, ref))
            if first.service is not service:
                _Use(service, ref).error(
                    f"topic '{ref.topic}' is written by two services: '{first.name}' "
                    f"({first.location()}) and '{service.checked.name}'",
                    f"each stream has exactly one writer (single-writer principle): let "
                    f"'{first.name}' own '{ref.topic}' and have '{service.checked.name}' read it")
    external = data.get("external_streams")
    external = [t for t in external if isinstance(t, str)] if isinstance(external, list) else []
    for i, topic in enumerate(external):
        if topic in writers:
            report.error(("external_streams", i),
                         f"'{topic}' is declared external but service '{writers[topic].name}' writes it "
                         f"({writers[topic].location()})",
                         "remove it from external_streams: it has a writer here")
    internal = {topic for service in services for topic in service.checked.internal_topics}
    for service in services:
        reported = set(internal)  # reading another service's internal topic: see _check_internal
        reads = service.checked.table_reads + [ref for flow in service.checked.flows for ref in flow.reads]
        for ref in reads:
            if ref.topic in writers or ref.topic in external or ref.topic in reported:
                continue
            reported.add(ref.topic)
            _Use(service, ref).error(
                f"service '{service.checked.name}' reads topic '{ref.topic}', which no service of "
                f"business topology '{data.get('name')}' writes",
                f"add the service that writes it to `services:`, or list '{ref.topic}' in "
                f"`external_streams:` of {report.file}")
    _check_shared(services)
    _check_internal(services)


def _check_internal(services: list[Service]) -> None:
    owners = {topic: (service, what) for service in services
              for topic, what in service.checked.internal_topics.items()}
    for service in services:
        for stream, cfg in service.checked.streams.items():
            topic = cfg.get("topic", stream)
            owner, what = owners.get(topic, (service, ""))
            if owner is service:
                continue  # its own internal topics are checked with the service
            service.report.error(
                ("streams", stream, "topic") if "topic" in cfg else ("streams", stream),
                f"topic '{topic}' is internal to service '{owner.checked.name}' ({what}): internal "
                f"topics are never shared between services",
                f"have '{owner.checked.name}' write what you need to a declared stream (`to:`) and "
                f"read that stream", key="topic" not in cfg)


def _stream_shape(cfg: dict) -> dict[str, Any]:
    def fmt(serde: Any, default: str) -> str:
        if serde is None:
            return default
        return serde if isinstance(serde, str) else serde.get("format", "json")
    return {"partitions": cfg.get("partitions", 1), "type": cfg.get("type", "keyed"),
            "key": fmt(cfg.get("key"), "string"), "value": fmt(cfg.get("value"), "json")}


def _check_shared(services: list[Service]) -> None:
    first: dict[str, tuple[Service, str, dict]] = {}
    for service in services:
        for stream, cfg in service.checked.streams.items():
            topic = cfg.get("topic", stream)
            shape = _stream_shape(cfg)
            if topic not in first:
                first[topic] = (service, stream, shape)
                continue
            other, other_stream, other_shape = first[topic]
            if other is service:
                continue
            for attr, value in shape.items():
                if value == other_shape[attr]:
                    continue
                path = ("streams", stream, attr)
                other_path = ("streams", other_stream, attr)
                pos = (other.report.smap.value(other_path) if attr in other.checked.streams[other_stream]
                       else other.report.smap.key(other_path[:-1]))
                service.report.error(
                    path if attr in cfg else path[:-1],
                    f"topic '{topic}' has {attr} {value!r} here but {other_shape[attr]!r} in service "
                    f"'{other.checked.name}' ({other.path}:{pos.line}:{pos.col})",
                    f"services sharing a topic must agree on its {attr}", key=attr not in cfg)


def _check_cycles(services: list[Service], index: dict[int, int], report: Report) -> None:
    nodes = [(service, flow) for service in services for flow in service.checked.flows]
    readers: dict[str, list[int]] = {}
    for n, (_, flow) in enumerate(nodes):
        for ref in flow.reads:
            readers.setdefault(ref.topic, []).append(n)
    edges: dict[int, dict[int, Ref]] = {n: {} for n in range(len(nodes))}
    for n, (_, flow) in enumerate(nodes):
        for ref in flow.writes:
            for m in readers.get(ref.topic, []):
                edges[n].setdefault(m, ref)
    for cycle in find_cycles(len(nodes), {n: list(e) for n, e in edges.items()}):
        if len({id(nodes[n][0]) for n in cycle}) < 2:
            continue  # inside one service: that service's own check reports it

        def label(n: int) -> str:
            service, flow = nodes[n]
            return f"'{service.checked.name}/{flow.pipeline}'"
        steps = [f"{label(a)} writes '{edges[a][b].topic}', read by {label(b)}"
                 for a, b in zip(cycle, cycle[1:])]
        report.error(("services", index[id(nodes[cycle[0]][0])]),
                     "services form a cycle, so events would loop: " + "; ".join(steps),
                     "a pipeline must not read, through other services, a topic it writes")


def _check_schemas(services: list[Service]) -> None:
    """Each consumer's declared schema of a topic against its producer's, at the consumer's
    ``schema:`` (the producer is the topic's one writer in the topology)."""
    writers: dict[str, _Use] = {}
    for service in services:
        for ref in _writes(service):
            writers.setdefault(ref.topic, _Use(service, ref))
    for service in services:
        reads = service.checked.table_reads + [ref for flow in service.checked.flows for ref in flow.reads]
        for topic, stream in dict((ref.topic, ref.stream) for ref in reads).items():
            writer = writers.get(topic)
            if writer is None or writer.service is service:
                continue
            _check_consumer(service, stream, writer.service, writer.ref.stream, topic)


def _check_consumer(consumer: Service, stream: str, producer: Service, pstream: str, topic: str) -> None:
    ccfg, pcfg = consumer.checked.streams.get(stream, {}), producer.checked.streams.get(pstream, {})
    if "NONE" in (ccfg.get("compatibility"), pcfg.get("compatibility")):
        return
    for part in ("key", "value"):
        if (stream, part) not in consumer.checked.event_schemas:
            continue
        reader = consumer.checked.event_schemas[(stream, part)]
        path = ("streams", stream, part, "schema")
        pname, cname = producer.checked.name, consumer.checked.name
        ppath = ("streams", pstream, part, "schema")
        if (pstream, part) not in producer.checked.event_schemas:
            pos = producer.report.smap.key(("streams", pstream))
            if not isinstance(pcfg.get(part), dict) or "schema" not in pcfg.get(part, {}):
                consumer.report.error(
                    path, f"service '{cname}' reads topic '{topic}' with the {part} schema "
                          f"{ccfg[part]['schema']}, but its producer '{pname}' ({producer.path}:{pos.line}:"
                          f"{pos.col}) declares none, so it may write {part}s this schema refuses",
                    f"declare the {part} schema in '{pname}' too (`{part}: {{format: json, schema: ...}}`)")
            continue  # the producer's schema is unreadable: reported in its file
        pos = producer.report.smap.value(ppath)
        where = f"{producer.path}:{pos.line}:{pos.col}"
        for problem in readable(producer.checked.event_schemas[(pstream, part)], reader):
            what, why, fix = problem.render(writer=f"the producer's schema ({pcfg[part]['schema']})",
                                            reader="this schema")
            consumer.report.error(
                path, f"service '{cname}' cannot read every {part} that service '{pname}' ({where}) writes to "
                      f"topic '{topic}': {problem.path}: {what}; its events {why}", fix)
