"""Offline reading (`edm state`) and deletion (`edm reset`) of a service's local state."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edm_runner.brokers.base import TopicPartition
from edm_runner.errors import EdmError
from edm_runner.state import (Checkpoint, TaskState, global_dir, open_readonly, state_paths,
                              task_dir, wipe)
from edm_runner.state.offline import Entry

CL0 = TopicPartition("svc-counts-changelog", 0)
CL1 = TopicPartition("svc-counts-changelog", 1)


def build(tmp_path: Path) -> None:
    """Two tasks of sub-topology 0 with a counts store, a window store on task 1, a global env."""
    with TaskState.open(task_dir(tmp_path, "svc", 0, 0)) as t0:
        kv = t0.register("counts", "key_value")
        for k, v in [("alice", 3), ("al", 1), ("bob", 2), (42, 7), (420, 8)]:
            kv.put(k, v)
        t0.commit(Checkpoint({CL0: 5}, {TopicPartition("events", 0): 17}))
    with TaskState.open(task_dir(tmp_path, "svc", 0, 1)) as t1:
        t1.register("counts", "key_value").put("carol", 1)
        w = t1.register("hourly", "window", {"size": 3_600_000})
        w.put("carol", 0, 10)
        w.put("carol", 3_600_000, 20)
        w.put("carl", 0, 5)
        t1.commit(Checkpoint({CL1: 1}, {}))
    with TaskState.open(global_dir(tmp_path, "svc")) as g:
        g.register("countries", "key_value", changelog=False).put("fr", {"name": "France"})
        g.commit(Checkpoint(inputs={TopicPartition("countries", 0): 1}))


def test_get_scan_and_stats_across_tasks(tmp_path: Path) -> None:
    build(tmp_path)
    with open_readonly(tmp_path, "svc") as state:
        assert [t.task for t in state.tasks] == ["0_0", "0_1", "global"]
        assert state.store_names() == ["countries", "counts", "hourly"]
        assert state.get("counts", "alice") == [("0_0", Entry("alice", 3))]
        assert state.get("counts", "carol") == [("0_1", Entry("carol", 1))]
        assert state.get("counts", "nobody") == []
        assert state.get("hourly", "carol") == [("0_1", Entry("carol", 10, 0)),
                                                ("0_1", Entry("carol", 20, 3_600_000))]
        assert [e.key for _, e in state.scan("counts", "al")] == ["al", "alice"]
        assert [e.key for _, e in state.scan("counts", "42")] == [42, 420]
        assert len(list(state.scan("counts"))) == 6
        assert [(e.key, e.start) for _, e in state.scan("hourly", "car")] == [
            ("carl", 0), ("carol", 0), ("carol", 3_600_000)]
        stats = {s.task: s for s in state.stats()}
        assert {s.name: s.entries for s in stats["0_0"].stores} == {"counts": 5}
        assert {(s.name, s.type, s.entries) for s in stats["0_1"].stores} == {
            ("counts", "key_value", 1), ("hourly", "window", 3)}
        assert stats["0_1"].stores[1].params == {"size": 3_600_000}
        assert stats["0_0"].checkpoint == Checkpoint({CL0: 5}, {TopicPartition("events", 0): 17})
        assert all(s.size_bytes > 0 for s in stats.values())
        with pytest.raises(EdmError, match="no store .nope.*countries, counts, hourly"):
            state.get("nope", "x")


def test_reading_while_a_runner_holds_the_task(tmp_path: Path) -> None:
    build(tmp_path)
    # The owner runs in another process (LMDB allows one environment handle per process).
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom edm_runner.state import TaskState, Checkpoint\n"
         "st = TaskState.open(sys.argv[1]); kv = st.register('counts', 'key_value')\n"
         "kv.put('alice', 4); st.commit(Checkpoint()); print('ok', flush=True); sys.stdin.read()",
         str(task_dir(tmp_path, "svc", 0, 0))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "ok\n"
        with open_readonly(tmp_path, "svc") as state:
            assert state.get("counts", "alice") == [("0_0", Entry("alice", 4))]
        with pytest.raises(EdmError, match="is running"):
            wipe(tmp_path, "svc")
    finally:
        owner.communicate("", timeout=30)
    assert task_dir(tmp_path, "svc", 0, 0).is_dir()


def test_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EdmError, match="no local state for service 'svc'.*--state-dir"):
        open_readonly(tmp_path / "nowhere", "svc")


def test_unreadable_task_is_a_clear_error(tmp_path: Path) -> None:
    build(tmp_path)
    (task_dir(tmp_path, "svc", 0, 1) / "data.mdb").write_bytes(b"\0garbage" * 4096)
    with pytest.raises(EdmError, match=r"0_1 is unreadable.*edm run"):
        open_readonly(tmp_path, "svc")


def test_wipe_removes_every_task(tmp_path: Path) -> None:
    build(tmp_path)
    paths = state_paths(tmp_path, "svc")
    assert [p.name for p in paths] == ["0_0", "0_1", "global"]
    assert wipe(tmp_path, "svc") == paths
    assert not any(p.exists() for p in paths)
    assert wipe(tmp_path, "svc") == []
    with TaskState.open(task_dir(tmp_path, "svc", 0, 0)) as st:
        assert st.fresh
