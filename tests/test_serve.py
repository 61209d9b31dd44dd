"""The request-response side (issue 10) on the embedded broker: real `edm run` processes,
real HTTP."""
from __future__ import annotations

import http.client
import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from cli_helpers import ROOT, TOPOLOGIES, edm, ok
from helpers.kafka_flow import Runner
from helpers.http_calls import call as get
from helpers.serve_flow import READY, serving_urls, settled, wait_for_line
from helpers.topologies import write_service


def _with_http(path: Path, http: str) -> Path:
    path.write_text(path.read_text() + "\nhttp:\n" + http)
    return path


@pytest.fixture
def join_topology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """users-activity-join, which serves its users table, on any free port."""
    monkeypatch.delenv("EDM_HTTP_LISTEN", raising=False)
    shutil.copytree(TOPOLOGIES / "users-activity-join", tmp_path / "t")
    return tmp_path / "t" / "topology.yaml"


def test_run_serves_healthz_and_stops_on_sigterm(join_topology: Path) -> None:
    runner = Runner(join_topology)
    try:
        url = serving_urls(runner)["users-activity-join"]
        assert url.startswith("http://127.0.0.1:")
        status, headers, body = get(f"{url}/healthz")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert body["status"] == "ok" and body["service"] == "users-activity-join"
        status, _, body = get(f"{url}/no/such/path")
        assert (status, body["error"]) == (404, "unknown_path")
        status, _, body = get(f"{url}/healthz", method="POST")
        assert (status, body["error"]) == (405, "method_not_allowed")
    finally:
        code = runner.stop()
    assert code == 0, runner.stderr()
    assert "Traceback" not in runner.stderr()
    with pytest.raises(urllib.error.URLError):  # the port is released
        urllib.request.urlopen(f"{url}/healthz", timeout=5)


def test_business_topology_serves_every_service(tmp_path: Path) -> None:
    shutil.copytree(TOPOLOGIES / "payroll", tmp_path / "t" / "payroll")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    for name in ("payments", "notifications"):
        _with_http(tmp_path / "t" / "payroll" / f"{name}.yaml", '  listen: "127.0.0.1:0"\n')
    runner = Runner(tmp_path / "t" / "payroll" / "payroll.yaml")
    try:
        urls = serving_urls(runner, 2)
        assert set(urls) == {"payments", "notifications"}
        assert len(set(urls.values())) == 2
        for service, url in urls.items():
            status, _, body = get(f"{url}/healthz")
            assert (status, body["service"]) == (200, service)
    finally:
        assert runner.stop() == 0, runner.stderr()


def test_a_port_in_use_is_a_clear_error(join_topology: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        join_topology.write_text(join_topology.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        result = edm("run", join_topology, "--until-idle")
    assert result.code == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"{join_topology}:" in result.stderr and "Traceback" not in result.stderr


def test_the_listen_address_is_templated(join_topology: Path) -> None:
    ok("validate", join_topology, env={"EDM_HTTP_LISTEN": "10.1.2.3:8081", "PATH": ""})
    result = edm("validate", join_topology, env={"EDM_HTTP_LISTEN": "10.1.2.3", "PATH": ""})
    assert result.code == 1 and "invalid http.listen '10.1.2.3'" in result.stderr, result.stderr


def test_the_readme_queries_the_users_table(join_topology: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's queries of topologies/users-activity-join, answered as the README shows."""
    example = join_topology.parent
    ok("produce", "users", "-t", join_topology, "-f", example / "users.jsonl")
    runner = Runner(join_topology)
    try:
        url = serving_urls(runner)["users-activity-join"]
        wait_for_line(runner, READY)
        assert get(f"{url}/stores/users-table/keys/u-1")[2] == {
            "store": "users-table", "key": "u-1", "value": {"name": "Ada", "plan": "pro"}}
        status, _, body = get(f"{url}/stores/users-table/keys/u-3")  # deleted by its tombstone
        assert (status, body["error"]) == (404, "not_found")
        _, _, page = get(f"{url}/stores/users-table/keys?prefix=u-&limit=2")
        assert [e["key"] for e in page["entries"]] == ["u-1", "u-2"] and page["next"] == "InUtMiI"
        _, _, page = get(f"{url}/stores/users-table/keys?prefix=u-&limit=2&after=InUtMiI")
        assert [e["key"] for e in page["entries"]] == ["u-4"] and page["next"] is None
    finally:
        assert runner.stop() == 0, runner.stderr()


def _reference_counts(events: Path) -> Counter[str]:
    return Counter(json.loads(line)["key"] for line in events.read_text().splitlines() if line.strip())


@pytest.fixture
def counted(tmp_path: Path) -> Path:
    """user-counts, its events counted by a first `edm run --until-idle`, its counts served."""
    shutil.copytree(TOPOLOGIES / "user-counts", tmp_path / "t")
    topology = _with_http(tmp_path / "t" / "topology.yaml", '  listen: "127.0.0.1:0"\n  serve: [counts]\n')
    ok("produce", "user-events", "-t", topology, "-f", tmp_path / "t" / "user-events.jsonl")
    ok("run", topology, "--until-idle")
    return topology


def test_every_key_and_every_page_on_the_embedded_broker(counted: Path) -> None:
    expected = _reference_counts(counted.parent / "user-events.jsonl")
    runner = Runner(counted)
    try:
        url = serving_urls(runner)["user-counts"]
        wait_for_line(runner, READY)
        for key, count in expected.items():
            for prefix in ("", "/local"):
                status, headers, body = get(f"{url}{prefix}/stores/counts/keys/{key}")
                assert (status, body) == (200, {"store": "counts", "key": key, "value": count})
                assert headers["X-Edm-Source"] == "active"
        status, _, body = get(f"{url}/stores/counts/keys/nobody")
        assert (status, body["error"], body["key"]) == (404, "not_found", "nobody")
        status, _, body = get(f"{url}/stores/users/keys/u-1")
        assert (status, body["error"], body["served"]) == (404, "unknown_store", ["counts"])
        status, _, body = get(f"{url}/stores")
        assert body["stores"] == [{"name": "counts", "type": "key_value", "global": False, "partitions": 4,
                                   "key_format": "string"}]
        # pages of 3 cover every key once, in stored order
        seen, cursor = [], None
        while True:
            status, _, page = get(f"{url}/stores/counts/keys?limit=3" + (f"&after={cursor}" if cursor else ""))
            assert status == 200 and len(page["entries"]) <= 3
            seen += [(e["key"], e["value"]) for e in page["entries"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert [k for k, _ in seen] == sorted(k for k, _ in seen) and dict(seen) == dict(expected)
        assert len(seen) == len(expected)
        status, _, page = get(f"{url}/stores/counts/keys?prefix=u-1")
        assert {e["key"] for e in page["entries"]} == {k for k in expected if k.startswith("u-1")}
        status, _, page = get(f"{url}/stores/counts/keys?from=u-2&to=u-4")
        assert {e["key"] for e in page["entries"]} == {k for k in expected if "u-2" <= k < "u-4"}
        status, _, body = get(f"{url}/stores/counts/keys?limit=0")
        assert (status, body["error"]) == (400, "bad_request")
    finally:
        assert runner.stop() == 0, runner.stderr()


BAD_PARAMETERS = [  # (query, the parameter named, its value as given, words of what is accepted)
    ("after=garbage", "after", "garbage", "`next` cursor"),
    ("after=%21%21", "after", "!!", "`next` cursor"),
    ("from=u-4&to=u-2", "from", "u-4", "give from at or before to"),
    ("stale=maybe", "stale", "maybe", "true or false"),
    ("limit=0", "limit", "0", "from 1 to 1000"),
    ("limit=%C2%B2", "limit", "\u00b2", "from 1 to 1000"),  # a superscript 2: a digit to str.isdigit
    ("limit=10&limit=20", "limit", "20", "once"),
    ("partition=4", "partition", "4", "from 0 to 3"),
    ("colour=red", "colour", "red", "stale, prefix, from, to, after, limit, partition"),
    ("redirect=true", "redirect", "true", "stale, prefix"),  # a scan merges pages: nothing to redirect to
]


def test_a_bad_query_parameter_is_a_400_naming_it_and_what_is_accepted(counted: Path) -> None:
    """Every parameter of every query endpoint goes through one parser: a value it does not take
    is a 400 bad_request that repeats it and says what is accepted, never a 200 or a 500."""
    runner = Runner(counted)
    try:
        url = serving_urls(runner)["user-counts"]
        wait_for_line(runner, READY)
        for query, parameter, given, accepted in BAD_PARAMETERS:
            for prefix in ("", "/local"):
                status, _, body = get(f"{url}{prefix}/stores/counts/keys?{query}")
                assert (status, body["error"], body["parameter"], body["value"]) == (
                    400, "bad_request", parameter, given), (query, body)
                assert repr(given) in body["message"] and accepted in body["message"], (query, body)
        status, _, body = get(f"{url}/stores/counts/keys/u-1?stale=maybe")  # a key's GET: the same parser
        assert (status, body["parameter"], body["value"]) == (400, "stale", "maybe"), body
        assert "true or false" in body["message"]
        status, _, body = get(f"{url}/stores/counts/keys/u-1?limit=3")  # a key_value store's GET has no limit
        assert (status, body["parameter"]) == (400, "limit"), body
        assert get(f"{url}/stores/counts/keys/u-1?stale=TRUE&redirect=no")[0] == 200
        status, _, body = get(f"{url}/stores/counts/keys/u-1?redirect=2")
        assert (status, body["parameter"]) == (400, "redirect") and "true or false" in body["message"], body
        status, _, body = get(f"{url}/local/stores/counts/keys/u-1?redirect=true")  # /local never forwards
        assert (status, body["parameter"]) == (400, "redirect"), body
    finally:
        assert runner.stop() == 0, runner.stderr()


def test_window_fetches_and_json_keys(tmp_path: Path) -> None:
    """hourly-revenue groups by customer through a repartition topic whose keys are JSON: a key
    is given as JSON, and a window store answers a key's windows in a time range."""
    shutil.copytree(TOPOLOGIES / "hourly-revenue", tmp_path / "t")
    topology = _with_http(tmp_path / "t" / "topology.yaml", '  listen: "127.0.0.1:0"\n  serve: [hourly]\n')
    orders = tmp_path / "t" / "customer-orders.jsonl"
    ok("produce", "customer-orders", "-t", topology, "-f", orders)
    ok("run", topology, "--until-idle")
    hourly: dict[str, dict[int, int]] = {}  # the oracle: `edm state` reads the same LMDB offline
    for row in ok("state", topology, "scan", "hourly").lines():
        hourly.setdefault(row["key"], {})[row["start"]] = row["value"]
    assert set(hourly) == {json.loads(line)["value"]["customer"] for line in orders.read_text().splitlines()}
    runner = Runner(topology)
    try:
        url = serving_urls(runner)["hourly-revenue"]
        wait_for_line(runner, READY)
        for customer, sums in hourly.items():
            status, _, body = get(f"{url}/stores/hourly/keys/{quote(json.dumps(customer))}")
            assert status == 200, body
            assert body["windows"] == [{"start": s, "end": s + 3_600_000, "value": v} for s, v in sorted(sums.items())]
            first = min(sums)
            status, _, body = get(f"{url}/stores/hourly/keys/{quote(json.dumps(customer))}?from={first}&to={first}")
            assert [w["start"] for w in body["windows"]] == [first]
        status, _, body = get(f"{url}/stores/hourly/keys/alice")
        assert (status, body["error"]) == (400, "bad_key") and '"alice"' in body["message"]
        status, _, body = get(f"{url}/stores/hourly/keys")
        assert (status, body["error"]) == (400, "bad_request")
        status, _, body = get(f"{url}/stores/hourly/keys/%22alice%22?from=yesterday")
        assert (status, body["error"]) == (400, "bad_request")
        first = min(min(sums) for sums in hourly.values())
        status, _, body = get(f"{url}/stores/hourly/keys/%22alice%22?from={first + 1}&to={first}")
        assert (status, body["error"], body["parameter"]) == (400, "bad_request", "from"), body
        assert f"from='{first + 1}' is after to='{first}'" in body["message"]
        status, _, body = get(f"{url}/stores/hourly/keys/%22alice%22?from=2026-11-30T10:00:00")
        assert (status, body["value"]) == (400, "2026-11-30T10:00:00") and "add Z" in body["message"], body
    finally:
        assert runner.stop() == 0, runner.stderr()


# -- three instances on Kafka ----------------------------------------------------------------

PARTITIONS = 6
KEYS = 60
ANSWERED = {200, 404, 503}
TYPED_503 = {"not_active", "restoring", "unknown_owner", "owner_unreachable"}


def _users_service(tmp_path: Path, name: str, kafka_bootstrap: str) -> Path:
    return write_service(tmp_path, name, kafka_bootstrap, f"""\
streams:
  users: {{topic: {name}-users, partitions: {PARTITIONS}, type: entity, key: string, value: json}}
tables:
  users-table: {{from: users}}
http:
  listen: "127.0.0.1:0"
  serve: [users-table]
""")


def _check(url: str, key: str, answers: Counter[str]) -> None:
    """One query; a 200 must be the right value, a 503 typed and retryable; nothing else."""
    status, headers, body = get(f"{url}/stores/users-table/keys/{key}", timeout_s=15)
    assert status in ANSWERED, (status, body)
    if status == 200:
        assert body == {"store": "users-table", "key": key, "value": {"n": int(key[2:])}}, body
    elif status == 503:
        assert body["error"] in TYPED_503 and headers["Retry-After"] == "1", body
    answers[f"{status} {body['error']}" if status != 200 else "200"] += 1


@pytest.mark.kafka
def test_three_instances_answer_every_key_and_survive_a_kill(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Every key of a table answered right from each of three instances (proxied to the owner
    where needed); an instance SIGKILLed mid-queries gives only 200 (right), 404 or 503 with
    Retry-After; once the group settled again, every answer is right from every survivor."""
    name = f"serve-{uuid.uuid4().hex[:8]}"
    topology = _users_service(tmp_path, name, kafka_bootstrap)
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"key": f"u-{i}", "value": {"n": i}}) + "\n" for i in range(KEYS)))
    ok("produce", "users", "-t", topology, "-f", users)
    tasks = {f"0_{p}" for p in range(PARTITIONS)}
    runners = [Runner(topology, "--state-dir", str(tmp_path / f"pod-{i}"), "--instance-id", f"pod-{i}")
               for i in range(3)]
    try:
        urls = [serving_urls(r)[name] for r in runners]
        _until(lambda: settled(runners, tasks), runners, "three instances share the tasks")
        # Settled means restored: the table is then filled by processing its stream, awaited here.
        _until(lambda: all(get(f"{urls[0]}/stores/users-table/keys/u-{i}")[0] == 200 for i in range(KEYS)),
               runners, "every user is in the table")
        proxied = 0
        for url in urls:
            for i in range(KEYS):
                status, headers, body = get(f"{url}/stores/users-table/keys/u-{i}")
                assert (status, body.get("value")) == (200, {"n": i}), body
                proxied += headers["X-Edm-Instance"] != get(f"{url}/healthz")[2]["instance"]
        assert proxied > KEYS  # two thirds of the keys live elsewhere, from every instance
        for url in urls:  # a scan asks each partition's owner for its page (forwarded), and merges them
            seen, cursor = [], None
            while True:
                status, _, page = get(f"{url}/stores/users-table/keys?limit=7&stale=false"
                                      + (f"&after={cursor}" if cursor else ""))
                assert status == 200, page
                seen += [(e["key"], e["value"]["n"]) for e in page["entries"]]
                if (cursor := page["next"]) is None:
                    break
            assert seen == sorted((f"u-{i}", i) for i in range(KEYS))
        runners[2].kill()
        survivors, answers = runners[:2], Counter[str]()
        deadline = time.monotonic() + 120
        while not settled(survivors, tasks):
            assert time.monotonic() < deadline, f"the survivors did not settle: {answers}"
            for i in range(KEYS):
                for url in urls[:2]:
                    _check(url, f"u-{i}", answers)
        for url in urls[:2]:
            for i in range(KEYS):
                status, _, body = get(f"{url}/stores/users-table/keys/u-{i}")
                assert (status, body.get("value")) == (200, {"n": i}), body
        print(f"answers while the group rebalanced: {dict(answers)}")
        assert answers["200"] > 0 and any(a.startswith("503") for a in answers), answers
    finally:
        for runner in runners:
            if runner.alive():
                runner.stop()


def _unfollowed(url: str) -> tuple[int, str | None]:
    """The status and Location of a GET, not following a redirect (urllib would)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def _until(done, runners: list[Runner], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        for runner in runners:
            assert runner.alive(), runner.stderr()
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}\n" + runners[0].stderr()
        time.sleep(0.1)  # the event happens in other processes: polled with a deadline


@pytest.mark.kafka
def test_redirects_local_queries_hops_and_stale_reads_from_a_standby(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Two instances, a count store with one standby: a key owned by the other instance is a 307
    to it with ?redirect=true, a 421 naming it on /local, a 503 not_active when it already hopped
    once (no loop), and with ?stale=true the standby here answers it, saying so and its lag."""
    name = f"stale-{uuid.uuid4().hex[:8]}"
    topology = write_service(tmp_path, name, kafka_bootstrap, f"""\
streams:
  events: {{topic: {name}-events, partitions: 4, key: string, value: json}}
stores:
  counts: {{type: key_value, standby_replicas: 1}}
pipelines:
  count:
    from: events
    steps: [{{group_by_key: {{}}}}, {{count: {{store: counts}}}}]
http:
  listen: "127.0.0.1:0"
  serve: [counts]
""")
    events = tmp_path / "events.jsonl"
    expected = Counter[str]()
    with events.open("w") as out:
        for i in range(200):
            key = f"u-{i % 20}"
            expected[key] += 1
            out.write(json.dumps({"key": key, "value": {"i": i}}) + "\n")
    ok("produce", "events", "-t", topology, "-f", events)
    runners = [Runner(topology, "--state-dir", str(tmp_path / f"pod-{i}"), "--instance-id", f"pod-{i}")
               for i in range(2)]
    try:
        urls = [serving_urls(r)[name] for r in runners]
        _until(lambda: settled(runners, {f"0_{p}" for p in range(4)}), runners, "two instances share the tasks")
        _until(lambda: all(get(f"{urls[0]}/stores/counts/keys/{k}")[2].get("value") == n for k, n in expected.items()),
               runners, "every count is processed")
        owner_of = {k: get(f"{urls[0]}/stores/counts/keys/{k}")[1]["X-Edm-Instance"] for k in expected}
        key = next(k for k, owner in owner_of.items() if owner == "pod-1")
        status, location = _unfollowed(f"{urls[0]}/stores/counts/keys/{key}?redirect=true")
        assert (status, location) == (307, f"{urls[1]}/stores/counts/keys/{key}?redirect=true")
        status, _, body = get(f"{urls[0]}/local/stores/counts/keys/{key}")
        assert (status, body["error"], body["owner"], body["owner_url"]) == (421, "not_local", "pod-1", urls[1])
        status, headers, body = get(f"{urls[0]}/stores/counts/keys/{key}", headers={"X-Edm-Hop": "1"})
        assert (status, body["error"], headers["Retry-After"]) == (503, "not_active", "1"), body

        def stale_read_is_current() -> bool:
            status, headers, body = get(f"{urls[0]}/local/stores/counts/keys/{key}?stale=true")
            assert status in (200, 404) and headers["X-Edm-Source"] == "standby", body
            return status == 200 and body["value"] == expected[key] and headers.get("X-Edm-Lag") == "0"
        _until(stale_read_is_current, runners, "the standby caught up")
        status, headers, body = get(f"{urls[0]}/stores/counts/keys/{key}?stale=true")
        assert (status, body["value"], headers["X-Edm-Instance"]) == (200, expected[key], "pod-0")
    finally:
        for runner in runners:
            if runner.alive():
                runner.stop()


def test_a_global_table_answers_where_it_is_asked(tmp_path: Path) -> None:
    topology = write_service(tmp_path, "geo", None, """\
streams:
  countries: {topic: countries, partitions: 3, type: entity, key: string, value: json}
  orders: {topic: orders, partitions: 3, key: string, value: json}
  out: {topic: out, partitions: 3, key: string, value: json}
global_tables:
  countries-table: {from: countries}
pipelines:
  enrich:
    from: orders
    steps:
      - join: {global_table: countries-table, key: value.country, value: "{'country': other.name}"}
    to: out
http:
  listen: "127.0.0.1:0"
  serve: [countries-table]
""")
    countries = tmp_path / "countries.jsonl"
    countries.write_text("".join(json.dumps({"key": code, "value": {"name": name}}) + "\n"
                                 for code, name in (("be", "Belgium"), ("fr", "France"), ("nl", "Netherlands"))))
    ok("produce", "countries", "-t", topology, "-f", countries)
    runner = Runner(topology)
    try:
        url = serving_urls(runner)["geo"]
        wait_for_line(runner, READY)
        for prefix in ("", "/local"):
            status, headers, body = get(f"{url}{prefix}/stores/countries-table/keys/fr")
            assert (status, body["value"], headers["X-Edm-Source"]) == (200, {"name": "France"}, "global")
        _, _, page = get(f"{url}/stores/countries-table/keys")
        assert [e["key"] for e in page["entries"]] == ["be", "fr", "nl"]
        assert get(f"{url}/stores")[2]["stores"][0]["global"] is True
    finally:
        assert runner.stop() == 0, runner.stderr()


def test_an_openapi_document_describes_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDM_HTTP_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("EDM_TEST_TOKENS", "secret")
    shutil.copytree(TOPOLOGIES / "click-ingest", tmp_path / "t" / "click-ingest")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    topology = tmp_path / "t" / "click-ingest" / "topology.yaml"
    auth = "  auth: {queries: {tokens_env: EDM_TEST_TOKENS}}\n"
    topology.write_text(topology.read_text().replace("  serve: [page-counts]\n", "  serve: [page-counts]\n" + auth))
    runner = Runner(topology)
    try:
        url = serving_urls(runner)["click-ingest"]
        status, _, doc = get(f"{url}/openapi.json")  # open, although queries need a token
        assert status == 200 and doc["openapi"] == "3.1.0"
        click = json.loads((ROOT / "schemas" / "click.json").read_text())
        assert doc["paths"]["/clicks"]["post"]["requestBody"]["content"]["application/json"]["schema"] == click
        get_key = doc["paths"]["/stores/{store}/keys/{key}"]["get"]
        assert get_key["parameters"][0]["schema"] == {"enum": ["page-counts"]}
        assert get_key["security"] == [{"bearer": []}] and "security" not in doc["paths"]["/clicks"]["post"]
        assert {"/healthz", "/readyz", "/metrics", "/stores", "/local/stores/{store}/keys"} <= set(doc["paths"])
    finally:
        assert runner.stop() == 0, runner.stderr()


def test_a_stale_read_of_a_copy_being_restored_says_how_far_behind_it_is(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy restored from an old snapshot of the state is held mid-restore (EDM_HOLD_AT): a
    plain read is a 503 `restoring`, a stale read answers the snapshot's value with X-Edm-Lag =
    the changelog records it has yet to apply; once restored, the current value, no lag."""
    topology = write_service(tmp_path, "tally", None, """\
streams:
  clicks: {partitions: 1, key: string, value: json}
  tallies: {partitions: 1, key: string, value: json}
stores:
  counts: {type: key_value}
pipelines:
  count: {from: clicks, steps: [{group_by_key: {}}, {count: {store: counts}}], to: tallies}
http:
  listen: "127.0.0.1:0"
  serve: [counts]
""")
    broker = ["--broker", f"local:{tmp_path / 'broker'}"]

    def changelog_end() -> int:
        listed = ok("topics", "-t", topology, *broker).stdout
        return int(next(line for line in listed.splitlines() if "counts-changelog" in line).split()[-1])

    def count(events: int, state: str) -> None:
        lines = "".join('{"key": "u-1", "value": {"page": "/"}}\n' for _ in range(events))
        (tmp_path / "events.jsonl").write_text(lines)
        ok("produce", "clicks", "-t", topology, "-f", tmp_path / "events.jsonl", *broker)
        ok("run", topology, "--until-idle", "--state-dir", tmp_path / state, *broker)

    count(3, "state")
    shutil.copytree(tmp_path / "state", tmp_path / "snapshot")  # its checkpoint: the changelog so far
    snapshot_end = changelog_end()
    count(2, "state")
    behind = changelog_end() - snapshot_end
    assert behind >= 1
    go = tmp_path / "go"
    monkeypatch.setenv("EDM_HOLD_AT", f"restore:{go}")
    runner = Runner(topology, "--state-dir", str(tmp_path / "snapshot"), *broker)
    try:
        url = serving_urls(runner)["tally"]
        deadline = time.monotonic() + 60
        while (answer := get(f"{url}/stores/counts/keys/u-1"))[0] != 503 or answer[2]["error"] != "restoring":
            assert time.monotonic() < deadline and runner.alive(), (answer, runner.stderr())
            time.sleep(0.05)  # until the copy is opened for its restore (held there), in another process
        assert "Retry-After" in answer[1], answer
        status, headers, body = get(f"{url}/stores/counts/keys/u-1?stale=true")
        assert (status, body["value"]) == (200, 3), body
        assert (headers["X-Edm-Source"], headers["X-Edm-Lag"]) == ("restoring", str(behind)), headers
        go.touch()
        wait_for_line(runner, READY)
        status, headers, body = get(f"{url}/stores/counts/keys/u-1")
        assert (status, body["value"], headers["X-Edm-Source"]) == (200, 5, "active"), body
        assert "X-Edm-Lag" not in headers
    finally:
        go.touch()
        assert runner.stop() == 0, runner.stderr()
