"""`processing.start`: where a service starts on input streams its group has no committed
offset for. Both brokers, through the real CLI: with `latest` the events written before the
first start are not processed, those written after are, and tables still read their whole
source; the default (`earliest`) processes everything already there. The run summary counts
the user's streams, with the repartition topic's traffic apart."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cli_helpers import ok

BROKERS = [pytest.param("local", id="local"), pytest.param("kafka", id="kafka", marks=pytest.mark.kafka)]

TOPOLOGY = """\
kind: microservice
name: starts-{suffix}
processing: {{start: {start}}}
streams:
  users: {{topic: users-{suffix}, partitions: 2, type: entity, key: string, value: json}}
  clicks: {{topic: clicks-{suffix}, partitions: 2, type: keyed, key: string, value: json}}
  enriched: {{topic: enriched-{suffix}, partitions: 2, type: keyed, key: string, value: json}}
  counts: {{topic: counts-{suffix}, partitions: 2, type: entity, key: string, value: json}}
tables: {{users-table: {{from: users}}}}
stores: {{clicked: {{type: key_value}}}}
pipelines:
  enrich:
    from: clicks
    steps: [{{join: {{table: users-table, kind: left, value: "{{'page': value.page, 'name': other.name}}"}}}}]
    to: enriched
  count:
    from: clicks
    steps: [{{group_by: {{key: key, name: by-user}}}}, {{count: {{store: clicked}}}}]
    to: counts
"""


def _clicks(pages: list[str]) -> str:
    return "".join(f'{{"key": "u{i % 3}", "value": {{"page": "{p}"}}}}\n' for i, p in enumerate(pages))


@pytest.mark.parametrize("start", ["latest", "earliest"])
@pytest.mark.parametrize("kind", BROKERS)
def test_start_decides_where_a_new_group_begins(kind: str, start: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    topology = tmp_path / "starts.yaml"
    topology.write_text(TOPOLOGY.format(suffix=uuid.uuid4().hex[:8], start=start))
    broker = (f"kafka://{request.getfixturevalue('kafka_bootstrap')}" if kind == "kafka"
              else f"local:{tmp_path / 'broker'}")
    where = ["-t", topology, "--broker", broker, "--state-dir", tmp_path / "state"]
    ok("produce", "users", *where, stdin="".join(f'{{"key": "u{i}", "value": {{"name": "N{i}"}}}}\n'
                                                 for i in range(3)))
    ok("produce", "clicks", *where, stdin=_clicks(["/before-1", "/before-2"]))
    # Topics exist and hold events before the service ever ran.
    first = ok("run", topology, "--until-idle", *where[2:])
    ok("produce", "clicks", *where, stdin=_clicks(["/after-1", "/after-2", "/after-3"]))
    second = ok("run", topology, "--until-idle", *where[2:])

    enriched = ok("consume", "enriched", "--from-beginning", *where).lines()
    pages = sorted(e["value"]["page"] for e in enriched)
    after = ["/after-1", "/after-2", "/after-3"]
    assert pages == (after if start == "latest" else sorted(["/before-1", "/before-2", *after]))
    assert all(e["value"]["name"] == f"N{e['key'][1]}" for e in enriched)  # the table has every user
    counts = {e["key"]: e["value"] for e in ok("consume", "counts", "--from-beginning", *where).lines()}
    assert sum(counts.values()) == len(pages)  # the counts saw the same clicks
    # the first run: the 3 users into the table, and the 2 clicks only from the beginning
    assert ("3 in, 0 out" if start == "latest" else "5 in, 4 out") in first.stderr
    # the run summary counts the user's streams; the group_by's repartition topic apart
    assert "3 in, 6 out" in second.stderr and "(internal topics: 3 in, 3 out)" in second.stderr
