"""The values of charts/edm for a microservice, and an umbrella chart for a business topology.

What ``edm chart values FILE -o DIR`` writes, computed here from the loaded (valid) topology:

- Every file a service needs at run time goes into ``topology.files`` (the chart's ConfigMap,
  mounted at /etc/edm): the topology file itself, byte for byte (the file ``edm validate``
  checked is the file that runs), its value schemas and the Python modules its functions and
  custom assignor name, with the modules beside the topology that those modules import (followed
  through their import statements, transitively). Paths are kept relative to the deepest directory holding them all, so
  ``schema: ../../schemas/order.json`` resolves in the pod as it does here.
- What the chart must mirror from the topology: ``groupId`` (its name), ``tasks`` (the task
  count: the most pods that get work), ``shutdownGraceSeconds`` (processing.shutdown_grace),
  ``standbyReplicas`` and ``http`` (port, TLS).
- A business topology becomes an umbrella chart: one dependency on charts/edm per service
  (aliased by its name) with that service's values, all ``partOf`` the business topology.

Secrets (TLS keys, token files, SASL passwords) are never copied: the chart takes them from
Secret references. A module imported only at run time by name (importlib, __import__) is not
found: name it in the topology or import it with an import statement.
"""
from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from edm_runner.errors import EdmError
from edm_runner.graph.dag import build_dag
from edm_runner.language.model import BusinessTopology, Topology
from edm_runner.runtime.assignment.strategies import task_standbys

MOUNT = "/etc/edm"
# What the chart's pods see in their environment: a topology that templates these loads here
# as it will there (values a pod fills in at run time get a stand-in).
CHART_ENV = {
    "POD_NAME": "edm-0", "POD_NAMESPACE": "default", "POD_IP": "127.0.0.1", "EDM_INSTANCE_ID": "edm-0",
    "EDM_SESSION_TIMEOUT_MS": "60000", "EDM_HTTP_PORT": "8080", "EDM_HTTP_LISTEN": "0.0.0.0:8080",
    "EDM_ADVERTISED_URL": "http://edm-0.edm-pods.default.svc:8080", "KAFKA_BOOTSTRAP": "kafka:9092",
}
CONFIGMAP_LIMIT = 1_000_000  # bytes: a ConfigMap holds at most 1 MiB, metadata included


def chart_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to load a topology with for the chart: the chart's variables, then the
    caller's (which win, so a user may set EDM_HTTP_PORT to what the values will say)."""
    return {**CHART_ENV, **(os.environ if environ is None else environ)}


@dataclass
class ChartValues:
    """What ``write`` puts in a directory: ``values`` (values.yaml), ``chart`` (an umbrella's
    Chart.yaml, None for a microservice) and ``warnings`` about the deployment."""

    name: str
    values: dict[str, Any]
    chart: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def service_files(topology: Topology) -> list[Path]:
    """The files a service reads at run time, the topology file first (absolute paths)."""
    files = [topology.source_file.resolve()]
    for stream in topology.streams.values():
        for serde in (stream.key, stream.value):
            if serde.schema is not None:
                files.append(Path(serde.schema).resolve())
    refs = [f.python for f in topology.functions.values()]
    if topology.processing.assignment.custom:
        refs.append(topology.processing.assignment.custom)
    files += _modules_with_imports([ref.split(":", 1)[0] for ref in refs], topology.base_dir.resolve())
    return list(dict.fromkeys(files))


def _modules_with_imports(modules: list[str], base: Path) -> list[Path]:
    """The files of ``modules`` and of every module beside the topology they import, transitively
    (each file once; a module installed elsewhere has no file here and is not followed)."""
    found: list[Path] = []
    pending, seen = list(modules), set()
    while pending:
        module = pending.pop(0)
        if module in seen:
            continue
        seen.add(module)
        for file in _module_files(module, base):
            if file not in found:
                found.append(file)
                pending += _imported_modules(file, base)
    return found


def _imported_modules(file: Path, base: Path) -> list[str]:
    """The modules ``file`` (under ``base``, the import root) names in its import statements,
    relative imports resolved; for ``from M import N`` both M and M.N (N may be a submodule).
    A file that does not parse imports nothing here (running it reports the error)."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError):
        return []
    package = list(file.relative_to(base).parent.parts)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    continue
                parent = package[:len(package) - (node.level - 1)]
                origin = ".".join(parent + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin:
                names.append(origin)
            names += [f"{origin}.{alias.name}" if origin else alias.name for alias in node.names]
    return names


def _module_files(module: str, base: Path) -> list[Path]:
    """The source files of ``module`` as resolved next to the topology file: the module (a
    package: every .py file under it) and the ``__init__.py`` of the packages above it. A
    module found elsewhere (installed) needs no file."""
    parts = module.split(".")
    found: list[Path] = []
    for depth in range(1, len(parts)):
        init = base.joinpath(*parts[:depth], "__init__.py")
        if init.is_file():
            found.append(init)
    single = base.joinpath(*parts[:-1], parts[-1] + ".py")
    package = base.joinpath(*parts)
    if single.is_file():
        found.append(single)
    elif (package / "__init__.py").is_file():
        found += sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    return found


def _rooted(files: list[Path]) -> dict[str, Path]:
    """``files`` by their path relative to the deepest directory holding them all."""
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return {f.relative_to(root).as_posix(): f for f in files}


def service_values(topology: Topology, *, part_of: str = "") -> ChartValues:
    """The charts/edm values of one microservice."""
    files = _rooted(service_files(topology))
    contents = {}
    for rel, path in files.items():
        try:
            contents[rel] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EdmError(f"{topology.source_file}: cannot read {path} for the chart's ConfigMap: {e}") from None
    size = sum(len(c.encode()) for c in contents.values())
    if size > CONFIGMAP_LIMIT:
        raise EdmError(f"{topology.source_file}: the files of service {topology.name} ({size} bytes: "
                       f"{', '.join(contents)}) exceed what a ConfigMap holds ({CONFIGMAP_LIMIT} bytes); "
                       "ship large schemas or modules in the image instead")
    dag = build_dag(topology)
    tasks = sum(sub.tasks for sub in dag.subtopologies)
    standbys = max(task_standbys(topology, dag).values(), default=0)
    values: dict[str, Any] = {
        "groupId": topology.name,
        "partOf": part_of,
        "tasks": tasks,
        "replicas": 1,
        "shutdownGraceSeconds": max(1, math.ceil(topology.processing.shutdown_grace_ms / 1000)),
        "standbyReplicas": standbys,
        "brokerKind": topology.broker.kind,
        "topology": {"file": next(iter(files)), "files": contents},
    }
    warnings = []
    if topology.http is not None:
        values["http"] = {"enabled": True, "port": topology.http.port or 8080,
                          "tls": topology.http.tls_cert is not None}
        if topology.http.port == 0:
            warnings.append(f"{topology.name}: http.listen has port 0 (any free port), which a probe cannot "
                            "reach; listen on \"0.0.0.0:{{ env.EDM_HTTP_PORT }}\" (the chart sets it)")
    else:
        warnings.append(f"{topology.name}: no http: section, so the pods have no probes and no /metrics; add "
                        "http: {listen: \"0.0.0.0:{{ env.EDM_HTTP_PORT }}\", advertised_url: "
                        "\"{{ env.EDM_ADVERTISED_URL }}\"}")
    if "session_timeout_ms" not in (topology.broker.options.get("consumer") or {}):
        warnings.append(f"{topology.name}: broker.consumer.session_timeout_ms is not set, so a restarted pod "
                        "comes back after its session expired and the group rebalances; add broker: {consumer: "
                        "{session_timeout_ms: \"{{ env.EDM_SESSION_TIMEOUT_MS | default(45000) }}\"}} "
                        "(the chart sets EDM_SESSION_TIMEOUT_MS)")
    return ChartValues(topology.name, values, None, warnings)


def business_chart(business: BusinessTopology, chart_dir: Path, out: Path) -> ChartValues:
    """An umbrella chart for ``business``: Chart.yaml depending on ``chart_dir`` once per
    service (``file://`` relative to ``out``), and the values of each service under its name."""
    chart_meta = _chart_meta(chart_dir)
    services = [service_values(s, part_of=business.name) for s in business.services]
    if business.broker.kind == "kafka":
        for service, result in zip(business.services, services):
            if service.broker.options != business.broker.options:
                result.warnings.append(
                    f"{service.name}: its pods run {service.source_file.name} alone, with that file's broker "
                    f"({service.broker.kind}), not the broker of {business.source_file.name}; give the service "
                    "file the same broker: section (security and client settings; the chart sets the servers)")
    chart = {
        "apiVersion": "v2",
        "name": business.name,
        "description": business.description or f"The business topology {business.name}: "
                                              + ", ".join(s.name for s in services),
        "type": "application",
        "version": "0.1.0",
        "appVersion": str(chart_meta.get("appVersion", "")),
        "dependencies": [{"name": chart_meta["name"], "alias": s.name, "version": str(chart_meta["version"]),
                          "repository": "file://" + os.path.relpath(chart_dir.resolve(), out.resolve())}
                         for s in services],
    }
    values: dict[str, Any] = {"global": {"kafka": {"bootstrapServers": ""}}}
    values.update({s.name: s.values for s in services})
    return ChartValues(business.name, values, chart, [w for s in services for w in s.warnings])


def _chart_meta(chart_dir: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise EdmError(f"{chart_dir} is not the edm chart (cannot read its Chart.yaml: {e}); "
                       "give --chart the directory of charts/edm") from None
    if not isinstance(meta, dict) or "name" not in meta or "version" not in meta:
        raise EdmError(f"{chart_dir}/Chart.yaml has no name or version; give --chart the directory of charts/edm")
    return meta


def default_chart_dir() -> Path | None:
    """charts/edm beside the package, in a source checkout (None elsewhere)."""
    candidate = Path(__file__).resolve().parents[2] / "charts" / "edm"
    return candidate if (candidate / "Chart.yaml").is_file() else None


class _Dumper(yaml.SafeDumper):
    """YAML that keeps multi-line strings (the files) readable, as literal blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # The emitter falls back to a quoted scalar where a literal block cannot hold the text.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def _umbrella_notes(result: ChartValues) -> str:
    services = [name for name in result.values if name != "global"]
    lines = [f"Business topology {result.name}: {len(services)} services, each a StatefulSet labelled",
             f"app.kubernetes.io/part-of={result.name}.",
             "",
             f"  kubectl -n {{{{ .Release.Namespace }}}} get pods -l app.kubernetes.io/part-of={result.name}"]
    lines += [f"  {name}: {{{{ index .Values \"{name}\" \"tasks\" }}}} task(s), "
              f"{{{{ index .Values \"{name}\" \"replicas\" }}}} pod(s)" for name in services]
    return "\n".join(lines) + "\n"


def write(result: ChartValues, out: Path, header: str) -> list[Path]:
    """Writes values.yaml (and an umbrella's Chart.yaml) into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if result.chart is not None:
        (out / "Chart.yaml").write_text(dump(result.chart), encoding="utf-8")
        (out / "templates").mkdir(exist_ok=True)
        (out / "templates" / "NOTES.txt").write_text(_umbrella_notes(result), encoding="utf-8")
        written += [out / "Chart.yaml", out / "templates" / "NOTES.txt"]
    (out / "values.yaml").write_text(header + dump(result.values), encoding="utf-8")
    written.append(out / "values.yaml")
    return written
