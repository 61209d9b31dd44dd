"""Loading one microservice file: read, check the kind, validate, build the model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edm_runner.language.build import build_topology
from edm_runner.language.model import Topology
from edm_runner.language.report import Report, describe_value, did_you_mean
from edm_runner.language.validate import Checked, check_microservice
from edm_runner.language.yaml_loader import Source, read_source

KINDS = ("microservice", "business")


@dataclass
class Service:
    """A microservice file after validation. ``topology`` is set only when the file has no
    diagnostics; ``checked`` whenever its document could be validated at all. ``kind`` is
    "business" (and nothing is checked) when the file turned out to be a business topology,
    a mistake of the file that lists it."""

    path: Path
    report: Report
    data: Any
    checked: Checked | None = None
    topology: Topology | None = None
    kind: str = "microservice"


def document_kind(data: Any, report: Report) -> str | None:
    """The document's kind, or None (reported) when it cannot be told."""
    if not isinstance(data, dict):
        report.error((), f"a topology file is a mapping of keys (kind, name, ...), not {describe_value(data)}",
                     "start the file with `kind: microservice` or `kind: business`")
        return None
    kind = data.get("kind", "microservice")  # a missing kind is reported by the schema
    if kind not in KINDS:
        hint = did_you_mean(str(kind), KINDS)
        report.error(("kind",), f"kind must be 'microservice' or 'business', not {describe_value(kind)}",
                     hint if hint.startswith("did") else "")
        return None
    return kind


def check_service(source: Source, report: Report, no_code: bool) -> Service:
    """Validate a parsed microservice document and build its model when it is clean."""
    service = Service(source.path, report, source.data)
    service.checked = check_microservice(source.data, report, source.path.parent, no_code)
    if not report.diagnostics:
        service.topology = build_topology(source.data, report.smap, source.path.resolve())
    return service


def load_service(path: Path, no_code: bool, env: Mapping[str, str]) -> tuple[Service | None, Report]:
    """Read and validate a file that must be a microservice (a business topology's service).
    A business topology is returned unchecked with ``kind="business"``: the caller reports it
    where the fix belongs, at the ``services:`` entry that lists it."""
    source = read_source(path, env)
    report = Report(source.smap, list(source.diagnostics))
    if source.data is None:
        return None, report
    kind = document_kind(source.data, report)
    if kind == "business":
        return Service(path, report, source.data, kind="business"), report
    if kind is None:
        return None, report
    return check_service(source, report, no_code), report
