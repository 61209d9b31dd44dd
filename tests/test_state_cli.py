"""The stateful examples run through the real CLI on the embedded broker, with their outputs
and their stores (read offline with `edm state`) asserted; and `edm state`'s errors."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path

from cli_helpers import TOPOLOGIES, edm, ok


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(hhmm: str) -> int:
    return int(datetime.fromisoformat(f"2026-11-23T{hhmm}:00+00:00").timestamp() * 1000)


def test_user_counts_survive_a_restart_and_a_wiped_state_directory(tmp_path: Path) -> None:
    example = TOPOLOGIES / "user-counts"
    topology = example / "topology.yaml"
    common = ["-t", topology, "--state-dir", tmp_path]
    inputs = _events(example / "user-events.jsonl")
    expected = Counter(e["key"] for e in inputs)

    ok("produce", "user-events", "-f", example / "user-events.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    scanned = ok("state", topology, "scan", "counts", "--state-dir", tmp_path).lines()
    assert {e["key"]: e["value"] for e in scanned} == expected
    assert all(e["task"] in {f"0_{p}" for p in range(4)} for e in scanned)
    latest = {e["key"]: e["value"] for e in ok("consume", "user-counts", "--from-beginning", *common).lines()}
    assert latest == expected  # the last change of each key is its count

    got = ok("state", topology, "get", "counts", "u-1", "--state-dir", tmp_path).lines()
    assert [(e["key"], e["value"]) for e in got] == [("u-1", expected["u-1"])]
    prefixed = ok("state", topology, "scan", "counts", "--prefix", "u-1", "--state-dir", tmp_path).lines()
    assert [e["key"] for e in prefixed] == ["u-1"]
    stats = json.loads(ok("state", topology, "stats", "--state-dir", tmp_path).stdout)
    assert stats["service"] == "user-counts"
    assert sum(s["entries"] for t in stats["tasks"] for s in t["stores"] if s["store"] == "counts") == len(expected)
    assert sum(sum(t["checkpoint"]["inputs"].values()) for t in stats["tasks"]) == len(inputs)

    # A restart with new events continues from the stored counts.
    ok("produce", "user-events", "-f", example / "user-events.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    twice = {k: 2 * n for k, n in expected.items()}
    assert {e["key"]: e["value"] for e in ok("state", topology, "scan", "counts", "--state-dir",
                                              tmp_path).lines()} == twice

    # The state directory deleted: the counts come back from the changelog, then continue.
    shutil.rmtree(tmp_path / "state" / "user-counts")
    ok("produce", "user-events", "-f", example / "user-events.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    assert {e["key"]: e["value"] for e in ok("state", topology, "scan", "counts", "--state-dir",
                                              tmp_path).lines()} == {k: 3 * n for k, n in expected.items()}


def test_users_activity_join_enriches_activity_with_the_current_profile(tmp_path: Path) -> None:
    example = TOPOLOGIES / "users-activity-join"
    topology = example / "topology.yaml"
    common = ["-t", topology, "--state-dir", tmp_path]
    ok("produce", "users", "-f", example / "users.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    table = ok("state", topology, "scan", "users-table", "--state-dir", tmp_path).lines()
    assert {e["key"]: e["value"] for e in table} == {  # u-3 was deleted by its tombstone
        "u-1": {"name": "Ada", "plan": "pro"}, "u-2": {"name": "Brian", "plan": "pro"},
        "u-4": {"name": "Dmitri", "plan": "free"}}
    gone = edm("state", topology, "get", "users-table", "u-3", "--state-dir", tmp_path)
    assert gone.code == 1 and "no key 'u-3'" in gone.stderr and "Traceback" not in gone.stderr

    ok("produce", "user-activity", "-f", example / "user-activity.jsonl", *common)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    out = ok("consume", "enriched-activity", "--from-beginning", *common).lines()
    assert sorted((e["key"], e["value"]["page"], e["value"]["name"], e["value"]["plan"]) for e in out) == [
        ("u-1", "/checkout", "Ada", "pro"), ("u-1", "/pricing", "Ada", "pro"),
        ("u-2", "/docs", "Brian", "pro"), ("u-3", "/home", None, None),
        ("u-4", "/blog", "Dmitri", "free"), ("u-9", "/signup", None, None)]
    assert all(e["value"]["user"] == e["key"] for e in out)


def test_hourly_revenue_emits_each_closed_hour_once_without_late_orders(tmp_path: Path) -> None:
    example = TOPOLOGIES / "hourly-revenue"
    topology = example / "topology.yaml"
    common = ["-t", topology, "--state-dir", tmp_path]
    ok("produce", "customer-orders", "-f", example / "customer-orders.jsonl", *common)
    summary = ok("run", topology, "--until-idle", "--state-dir", tmp_path).stderr
    # The user's streams are counted (12 orders in, 5 hours out); the repartition apart.
    assert "hourly-revenue: 12 in, 5 out, 0 skipped, 0 dead-lettered, 1 late" in summary
    assert "(internal topics: 12 in, 12 out)" in summary
    assert "1 late event(s) dropped" in summary and "grace period" in summary
    out = ok("consume", "hourly-revenue", "--from-beginning", *common).lines()
    hour = 3_600_000
    # Stream time reaches 12:30 on both tasks: the 10:00 and 11:00 hours are final, 12:00 is
    # open. Bob's 10:55 order is within the grace period; his 10:50 order, read after 12:30,
    # is late and dropped.
    assert sorted((e["key"], e["value"]["start"], e["value"]["end"], e["value"]["value"]) for e in out) == [
        ("alice", _ms("10:00"), _ms("10:00") + hour, 50), ("alice", _ms("11:00"), _ms("11:00") + hour, 5),
        ("bob", _ms("10:00"), _ms("10:00") + hour, 25), ("bob", _ms("11:00"), _ms("11:00") + hour, 40),
        ("frank", _ms("11:00"), _ms("11:00") + hour, 20)]

    windows = ok("state", topology, "scan", "hourly", "--state-dir", tmp_path).lines()
    open_hour = {e["key"]: e["value"] for e in windows if e["start"] == _ms("12:00")}
    assert open_hour == {"alice": 7, "bob": 3, "frank": 1}
    # The operator's bookkeeping (stream time, last sweep) never shows: only the user's windows.
    assert all(e["key"] is not None and isinstance(e["value"], int) for e in windows), windows
    stats = json.loads(ok("state", topology, "stats", "--state-dir", tmp_path).stdout)
    assert sum(s["entries"] for t in stats["tasks"] for s in t["stores"]) == len(windows)
    assert edm("state", topology, "get", "hourly", "null", "--json", "--state-dir", tmp_path).code == 1


def test_state_errors_name_the_declared_stores_and_missing_state(tmp_path: Path) -> None:
    topology = TOPOLOGIES / "user-counts" / "topology.yaml"
    missing = edm("state", topology, "scan", "counts", "--state-dir", tmp_path)
    assert missing.code == 1 and "Traceback" not in missing.stderr
    assert "no local state" in missing.stderr and str(tmp_path) in missing.stderr

    ok("produce", "user-events", "-f", TOPOLOGIES / "user-counts" / "user-events.jsonl",
       "-t", topology, "--state-dir", tmp_path)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    unknown = edm("state", topology, "get", "cunts", "u-1", "--state-dir", tmp_path)
    assert unknown.code == 1 and "Traceback" not in unknown.stderr
    assert "cunts" in unknown.stderr and "counts" in unknown.stderr
    bad_json = edm("state", topology, "get", "counts", "{", "--json", "--state-dir", tmp_path)
    assert bad_json.code == 1 and "not JSON" in bad_json.stderr


def test_a_declared_store_nothing_wrote_yet_is_said_empty_not_missing(tmp_path: Path) -> None:
    """Run over no events, the service had no `counts` yet: `edm state` said it had no store
    'counts' (stores: none). It says the store is declared and empty; scan prints nothing."""
    topology = TOPOLOGIES / "user-counts" / "topology.yaml"
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    scanned = ok("state", topology, "scan", "counts", "--state-dir", tmp_path)
    assert scanned.stdout == "" and "store 'counts' of service 'user-counts' is declared but empty" in scanned.stderr
    got = edm("state", topology, "get", "counts", "u-1", "--state-dir", tmp_path)
    assert got.code == 1 and "is declared but empty: nothing has been written to it yet" in got.stderr
    assert f"`edm run {topology} --state-dir {tmp_path}` fills it" in got.stderr


def test_a_bad_broker_says_it_came_from_edm_broker(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    topology = TOPOLOGIES / "user-counts" / "topology.yaml"
    done = subprocess.run([sys.executable, "-m", "edm_runner", "topics", "-t", str(topology)],
                          env={**os.environ, "EDM_BROKER": "bogus"}, capture_output=True, text=True, timeout=60)
    flat = " ".join(done.stderr.replace("│", " ").split())
    assert done.returncode == 2 and "unknown broker 'bogus'" in flat
    assert "from the environment variable EDM_BROKER" in flat
    given = edm("topics", "-t", topology, "--broker", "bogus")
    assert given.code == 2 and "from the environment variable" not in given.stderr


def test_the_readme_state_section_runs_as_written(tmp_path: Path) -> None:
    """The README's `edm state` block ran the service without producing its input first, so
    every command after it read nothing. Its commands, run in order, now show the counts."""
    from cli_helpers import ROOT
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## State"):]
    block = section[section.index("```bash\n") + 8:section.index("\n```", section.index("```bash"))]
    shutil.copytree(TOPOLOGIES / "user-counts", tmp_path / "topologies" / "user-counts")
    outputs = [ok(*line.split("#")[0].split()[1:], cwd=tmp_path) for line in block.splitlines()]
    assert outputs[-3].lines() and outputs[-2].lines()[0]["key"] == "u-1"


def test_state_options_work_before_and_after_the_command(tmp_path: Path) -> None:
    topology = TOPOLOGIES / "user-counts" / "topology.yaml"
    ok("produce", "user-events", "-f", TOPOLOGIES / "user-counts" / "user-events.jsonl",
       "-t", topology, "--state-dir", tmp_path)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    placements = [
        ["state", "--state-dir", tmp_path, topology, "scan", "counts", "--prefix", "u-1"],
        ["state", topology, "--state-dir", tmp_path, "scan", "counts", "--prefix", "u-1"],
        ["state", topology, f"--state-dir={tmp_path}", "--service", "user-counts", "scan", "counts",
         "--prefix", "u-1"],
        ["state", topology, "scan", "counts", "--state-dir", tmp_path, "--prefix", "u-1",
         "--service", "user-counts"],
        ["state", topology, "scan", "--prefix", "u-1", "counts", "--state-dir", tmp_path],
        ["state", topology, "--prefix", "u-1", "scan", "counts", "--state-dir", tmp_path],
        ["state", topology, "--prefix=u-1", "--state-dir", tmp_path, "scan", "counts"],
        ["state", topology, "--json", "--state-dir", tmp_path, "get", "counts", '"u-1"'],
    ]
    for args in placements:
        assert [e["key"] for e in ok(*args).lines()] == ["u-1"], args
    for args in (["state", topology, "--state-dir", tmp_path, "stats"],
                 ["state", topology, "stats", "--state-dir", tmp_path, "--service", "user-counts"]):
        assert json.loads(ok(*args).stdout)["service"] == "user-counts"
    unknown = edm("state", topology, "--bogus", "scan", "counts", "--state-dir", tmp_path)
    assert unknown.code == 2 and "No such option: --bogus" in unknown.stderr
    # a hint that names a command repeats the options in effect
    missing = edm("state", topology, "--state-dir", tmp_path, "get", "counts", "nobody")
    assert missing.code == 1
    assert f"`edm state {topology} scan counts --state-dir {tmp_path}` lists its keys" in missing.stderr


def test_the_incompatible_store_hint_repeats_broker_and_state_dir_and_works_as_given(tmp_path: Path) -> None:
    """Followed literally, the `edm reset` the refusal names resets the state and broker the
    user runs with, so the next run starts."""
    import shlex
    import subprocess
    import sys
    source = (TOPOLOGIES / "user-counts" / "topology.yaml").read_text()
    topology = tmp_path / "counts.yaml"
    topology.write_text(source)
    state_dir, broker = tmp_path / "my state", f"local:{tmp_path / 'my broker'}"
    where = ["--broker", broker, "--state-dir", state_dir]
    ok("produce", "user-events", "-f", TOPOLOGIES / "user-counts" / "user-events.jsonl", "-t", topology, *where)
    ok("run", topology, "--until-idle", *where)
    topology.write_text(source.replace("counts: {type: key_value}", "counts: {type: window}").replace(
        "      - count: {store: counts}", "      - window: {type: tumbling, size: 1h}\n"
        "      - count: {store: counts}"))
    refused = edm("run", topology, "--until-idle", *where)
    assert refused.code == 1 and "Traceback" not in refused.stderr
    hint = re.search(r"run `(edm reset [^`]*)`", refused.stderr)
    assert hint, refused.stderr
    assert hint.group(1) == shlex.join(["edm", "reset", str(topology), "--broker", broker,
                                        "--state-dir", str(state_dir)])
    reset = subprocess.run([sys.executable, "-m", "edm_runner", *shlex.split(hint.group(1))[1:]],
                           capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stderr
    ok("run", topology, "--until-idle", *where)
