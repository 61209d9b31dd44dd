"""Serdes: how keys and values are turned into bytes and back (json, string, bytes), with
optional JSON Schema validation of the values."""
from edm_runner.serde.core import Serde, SerdeError, make_serde

__all__ = ["Serde", "SerdeError", "make_serde"]
