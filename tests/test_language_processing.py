"""`processing:` settings reach the model with their defaults and units."""
from __future__ import annotations

from pathlib import Path

import pytest

from edm_runner.errors import ConfigError
from edm_runner.language import load_file

BASE = """kind: microservice
name: svc
streams:
  a: {partitions: 1}
  b: {partitions: 1}
pipelines:
  p: {from: a, to: b}
"""


def test_shutdown_grace_defaults_to_30s_and_takes_a_duration(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(BASE)
    assert load_file(path).processing.shutdown_grace_ms == 30_000
    path.write_text(BASE + "processing: {shutdown_grace: 2m}\n")
    assert load_file(path).processing.shutdown_grace_ms == 120_000


def test_a_bad_shutdown_grace_points_at_the_value(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(BASE + "processing: {shutdown_grace: soon}\n")
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert [(d.line, d.col) for d in error.value.diagnostics] == [(8, 30)]
    assert "'soon' is not a duration" in error.value.diagnostics[0].message
