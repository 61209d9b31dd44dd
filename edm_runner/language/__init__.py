"""The topology language: loading, templating, the JSON Schema, validation, the typed model.

``load_file`` is the one entry point: it returns the typed model of a valid file, or raises
``ConfigError`` carrying every diagnostic of the file (and, for a business topology, of its
service files) at once. It never raises anything else for bad input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from edm_runner.errors import ConfigError, Diagnostic
from edm_runner.language.business import check_business
from edm_runner.language.model import BusinessTopology, Topology
from edm_runner.language.report import Report
from edm_runner.language.schema import topology_schema, write_schema
from edm_runner.language.service_file import check_service, document_kind
from edm_runner.language.yaml_loader import read_source

__all__ = ["Validation", "load_file", "topology_schema", "validate_file", "write_schema"]


@dataclass
class Validation:
    """What validating a file found: ``model`` is set exactly when there is no error;
    ``warnings`` (lint findings, e.g. open content models on output streams) never make it invalid."""

    model: Topology | BusinessTopology | None
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)


def load_file(path: Path, *, no_code: bool = False,
              env: Mapping[str, str] | None = None) -> Topology | BusinessTopology:
    """Load and validate a topology file.

    ``no_code``: refuse Python function references (and never import user code).
    ``env``: the variables templates see as ``env`` (default: the process environment).
    """
    validation = validate_file(path, no_code=no_code, env=env)
    if validation.model is None:
        raise ConfigError(validation.errors)
    return validation.model


def validate_file(path: Path, *, no_code: bool = False, env: Mapping[str, str] | None = None) -> Validation:
    """Validate a topology file (as ``load_file``), returning its errors and warnings."""
    env = os.environ if env is None else env
    path = Path(path)
    source = read_source(path, env)
    report = Report(source.smap, list(source.diagnostics))
    if source.data is None:
        return Validation(None, report.diagnostics)
    kind = document_kind(source.data, report)
    if kind == "business":
        business, diagnostics, warnings = check_business(source, report, no_code, env)
        return Validation(business, diagnostics, sorted(warnings))
    if kind is None:
        return Validation(None, report.diagnostics)
    service = check_service(source, report, no_code)
    return Validation(service.topology, [] if service.topology else report.diagnostics, sorted(report.warnings))
