"""Serdes: how keys and values are turned into bytes and back (json, string, bytes), with
optional JSON Schema validation of the values."""
from edm_runner.serde.core import Serde, SerdeError, Violation, make_serde, schema_violations
from edm_runner.serde.spec import Format, SerdeSpec

__all__ = ["Format", "Serde", "SerdeError", "SerdeSpec", "Violation", "make_serde", "schema_violations"]
