"""state.query: what HTTP queries read of an open task, on real LMDB: committed data only, in
stored order, bounded, the operators' bookkeeping record never shown."""
from __future__ import annotations

from pathlib import Path

from edm_runner.state import Checkpoint, TaskState, task_dir
from edm_runner.state.api import encode_json
from edm_runner.state.keys import META


def _open(tmp_path: Path) -> TaskState:
    return TaskState.open(task_dir(tmp_path, "svc", 0, 0))


def test_key_value_get_and_scan_read_committed_data_in_stored_order(tmp_path: Path) -> None:
    with _open(tmp_path) as st:
        kv = st.register("counts", "key_value")
        for key, value in (("u-1", 1), ("u-10", 10), ("u-2", 2), ("v-1", 5), (7, "seven")):
            kv.put(key, value)
        st.commit(Checkpoint())
        kv.put("u-3", 3)  # buffered, not committed: queries do not see it
        query = st.query("counts")
        assert query.get("u-10") == 10 and query.get("u-3") is None and query.get(7) == "seven"
        everything = [r.key for r in query.scan(limit=100)]
        assert everything == ["u-1", "u-10", "u-2", "v-1", 7]  # the bytes of each key's JSON: '"' < '7'
        prefix = encode_json("u-1")[:-1]
        assert [r.key for r in query.scan(prefix=prefix, limit=100)] == ["u-1", "u-10"]
        page = query.scan(prefix=encode_json("u-")[:-1], limit=2)
        assert [r.key for r in page] == ["u-1", "u-10"]
        rest = query.scan(prefix=encode_json("u-")[:-1], after=page[-1].key_bytes, limit=2)
        assert [r.key for r in rest] == ["u-2"]
        assert [r.key for r in query.scan(lo=encode_json("u-10"), hi=encode_json("v"), limit=100)] == ["u-10", "u-2"]


def test_window_and_session_fetches_by_time_without_the_bookkeeping_record(tmp_path: Path) -> None:
    with _open(tmp_path) as st:
        w = st.register("hourly", "window")
        for start in (0, 3600, 7200):
            w.put("alice", start, start + 1)
        w.put("bob", 3600, 99)
        w.put(META, 0, {"stream_time": 7200})
        s = st.register("visits", "session")
        s.put("alice", 0, 10, "a")
        s.put("alice", 20, 25, "b")
        s.put("alice", 40, 50, "c")
        st.commit(Checkpoint())
        windows = st.query("hourly")
        assert [(r.start, r.value) for r in windows.windows("alice", None, None, 100)] == [
            (0, 1), (3600, 3601), (7200, 7201)]
        assert [r.start for r in windows.windows("alice", 3600, 3600, 100)] == [3600]
        assert [r.start for r in windows.windows("alice", None, None, 2)] == [0, 3600]
        assert windows.windows(META, None, None, 100) == []
        sessions = st.query("visits")
        # sessions overlapping [22, 45]: end >= 22 and start <= 45
        assert [(r.start, r.end, r.value) for r in sessions.sessions("alice", 22, 45, 100)] == [
            (20, 25, "b"), (40, 50, "c")]
        assert [r.value for r in sessions.sessions("alice", None, None, 100)] == ["a", "b", "c"]
        assert sessions.sessions("bob", None, None, 100) == []
