"""The latency bench scenarios measure what they say (their figures are the bench's business,
not a test's): the quickstart run that ``startup`` times does print the marker it waits for,
its import breakdown parses ``-X importtime``, and ``loop-lag``'s monitor sees the loop held."""
from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import loop_lag, serve_get, startup  # noqa: E402


def test_startup_sees_the_quickstart_first_output_and_its_imports(tmp_path: Path) -> None:
    startup._prepare(tmp_path / "template")
    command = [*startup._edm_command(), "run", startup.TOPOLOGY, "--until-idle", "--state-dir"]
    shutil.copytree(tmp_path / "template", tmp_path / "run")
    first, total = startup._time_to_line([*command, str(tmp_path / "run")], startup.FIRST_OUTPUT, "stderr")
    assert 0 < first <= total
    shutil.copytree(tmp_path / "template", tmp_path / "imports")
    seconds, top = startup._import_breakdown([*command, str(tmp_path / "imports")])
    assert seconds > 0 and "edm_runner" in top


def test_startup_times_edm_from_cached_bytecode_as_installed() -> None:
    """Not the compiler: under PYTHONDONTWRITEBYTECODE an editable checkout would compile every
    module at each start; the scenario writes the bytecode first, as pip does on install."""
    import importlib.util

    startup._compile_edm()
    sources = list((ROOT / "edm_runner").rglob("*.py"))
    stale = [s for s in sources if not Path(importlib.util.cache_from_source(str(s))).exists()]
    assert sources and stale == []


def test_loop_lag_monitor_records_a_held_loop() -> None:
    async def hold() -> None:
        await asyncio.sleep(0)
        time.sleep(0.05)  # blocks the loop on purpose: the stall the monitor must see

    lags, _ = asyncio.run(loop_lag._monitored(hold()))
    assert max(lags) >= 0.05 - loop_lag.TICK
    assert loop_lag._percentile([0.001, 0.002, 0.010], 50) == 2.0


def test_serve_get_measures_answered_lookups(tmp_path: Path, monkeypatch) -> None:
    """``serve-get``'s local side, shortened: every lookup of its client is a 200 from the store."""
    monkeypatch.setattr(serve_get, "KEYS", 50)
    monkeypatch.setattr(serve_get, "WARMUP_S", 0.1)
    monkeypatch.setattr(serve_get, "SECONDS", 0.3)
    result = serve_get._local(tmp_path)
    assert result["requests"] > 0 and result["statuses"] == {"200": result["requests"]}
    assert result["sequential"]["statuses"] == {"200": result["sequential"]["requests"]}
    assert 0 < result["p50_ms"] <= result["p99_ms"]

