"""`edm test`: a window store's expected windows may give `start` (and `end`) as ISO 8601
date-times, like the records' timestamps (found by acceptance testing, h13: the same instant
written as a date-time was reported as a difference from its milliseconds)."""
from __future__ import annotations

from pathlib import Path

from cli_helpers import edm

TOPOLOGY = """\
kind: microservice
name: hourly
streams:
  clicks: {partitions: 2, key: string, value: json}
  counts: {partitions: 2, key: string, value: json}
stores:
  per-hour: {type: window}
pipelines:
  count:
    from: clicks
    steps:
      - group_by_key: {}
      - window: {type: tumbling, size: 1h}
      - count: {store: per-hour}
    to: counts
"""

CASE = """\
cases:
  one hour:
    produce:
      clicks:
        - {key: u-1, value: {}, timestamp: "2026-11-30T10:00:00Z"}
        - {key: u-1, value: {}, timestamp: "2026-11-30T10:59:59.999Z"}
        - {key: u-1, value: {}, timestamp: 1796036400000}
    expect:
      stores:
        per-hour:
          u-1: [{start: "2026-11-30T10:00:00Z", value: 2}, {start: %s, value: 1}]
"""


def run(tmp_path: Path, second_start: str) -> tuple[int, str]:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    (tmp_path / "topology.test.yaml").write_text(CASE % second_start)
    result = edm("test", tmp_path / "topology.yaml")
    return result.code, result.stdout + result.stderr


def test_window_starts_as_date_times_or_milliseconds(tmp_path: Path) -> None:
    for start in ('"2026-11-30T11:00:00Z"', "1796036400000", '"2026-11-30T12:00:00+01:00"'):
        code, out = run(tmp_path, start)
        assert code == 0 and "1 passed" in out, out


def test_a_wrong_window_start_still_fails_and_a_bad_one_is_broken(tmp_path: Path) -> None:
    code, out = run(tmp_path, '"2026-11-30T12:00:00Z"')
    assert code == 1 and "store per-hour: 1 key(s) differ" in out, out
    code, out = run(tmp_path, '"eleven"')
    assert code == 2 and "topology.test.yaml:10:9: stores: start 'eleven' is not a time" in out, out
