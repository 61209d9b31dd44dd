"""Benchmark scenarios. ``python -m bench [SCENARIO...]`` prints one JSON object per scenario.

A scenario is a module with ``run() -> dict`` registered in ``bench.__main__.SCENARIOS``. Its
result holds at least ``ratio`` (edm throughput / baseline throughput, both measured in the
same run; higher is better), ``target`` (the lowest acceptable ratio) and the raw figures
behind the ratio. The latency scenarios (``startup``, ``loop-lag``) have absolute targets
(seconds, milliseconds) and report their figures against them, with a baseline measured in the
same run beside them. A scenario whose prerequisites are missing raises ``Skipped(why)``.
"""
from __future__ import annotations

import timeit
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping


class Skipped(Exception):
    """A scenario cannot run here (e.g. no Kafka); the message says why."""


def best_times(candidates: Mapping[str, Callable[[], object]], *, repeat: int = 9,
               min_seconds: float = 0.01) -> dict[str, float]:
    """Best-of-``repeat`` seconds per call of each candidate, timeit style.

    Each candidate is calibrated to run at least ``min_seconds`` per measurement, and the
    candidates' measurements are interleaved so that noise from other processes hits all of
    them alike; the minimum is the figure least disturbed by that noise.
    """
    timers = {name: timeit.Timer(fn) for name, fn in candidates.items()}
    numbers = {}
    for name, timer in timers.items():
        number = 1
        while timer.timeit(number) < min_seconds:
            number *= 2
        numbers[name] = number
    best = {name: float("inf") for name in timers}
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(numbers[name]) / numbers[name])
    return best


def run_child(module: str, *args: str) -> tuple[dict, float]:
    """Runs ``python -m module args...`` (a scenario's own side, one per process so that each
    side's memory is its own) and returns the JSON it printed and its peak RSS in MB
    (``wait4`` gives the child's own usage)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=Path(__file__).resolve().parent.parent,
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise RuntimeError(f"{module} {' '.join(args)} failed:\n{errors.read()[-4000:]}")
    return json.loads(stdout), usage.ru_maxrss / 1024


def compare(count: int, unit: str, edm: dict, baseline: dict, edm_rss_mb: float, baseline_rss_mb: float,
            *, target_ratio: float, rss_limit_mb: float | None = None) -> dict:
    """The result line of a throughput scenario: ``count`` items (``unit``: events, records)
    processed by each side in ``seconds``; ratio = edm throughput / baseline throughput."""
    edm_rate = count / edm["seconds"]
    base_rate = count / baseline["seconds"]
    ratio = edm_rate / base_rate
    result = {
        unit: count,
        "edm_seconds": round(edm["seconds"], 3),
        f"edm_{unit}_per_s": round(edm_rate),
        "baseline_seconds": round(baseline["seconds"], 3),
        f"baseline_{unit}_per_s": round(base_rate),
        "ratio": round(ratio, 3),
        "target_ratio": target_ratio,
        "edm_peak_rss_mb": round(edm_rss_mb, 1),
        "baseline_peak_rss_mb": round(baseline_rss_mb, 1),
        "ok": ratio >= target_ratio,
    }
    if rss_limit_mb is not None:
        result["rss_limit_mb"] = rss_limit_mb
        result["ok"] = result["ok"] and edm_rss_mb < rss_limit_mb
    return result


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """The broker a Kafka scenario runs on: EDM_KAFKA_BOOTSTRAP when set, else a dev broker
    (``edm_runner.devkafka``) started in a temporary directory for the scenario and stopped
    after it. Raises ``Skipped`` when neither is possible (no Java or Maven)."""
    import os
    import tempfile
    from pathlib import Path

    from edm_runner import devkafka

    bootstrap = os.environ.get("EDM_KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    if devkafka.missing_tools():
        raise Skipped(f"needs {' and '.join(devkafka.missing_tools())} for a dev Kafka broker, "
                      "or EDM_KAFKA_BOOTSTRAP=host:port")
    with tempfile.TemporaryDirectory(prefix="edm-bench-kafka-") as tmp:
        info = devkafka.start(Path(tmp))
        try:
            yield info.bootstrap
        finally:
            devkafka.stop(Path(tmp))


async def produce_keyed_events(path: Path, topic: str, events: int, keys: int, partitions: int) -> None:
    """Writes ``events`` JSON events ``{"n": i}`` to ``topic`` on the embedded broker at ``path``,
    keyed ``u<k>`` over ``keys`` keys spread by a fixed stride, partition ``k % partitions``, timestamp i."""
    from edm_runner.brokers.base import OutRecord, TopicSpec
    from edm_runner.brokers.local import LocalBroker
    broker = LocalBroker(path)
    await broker.start()
    await broker.ensure_topics([TopicSpec(topic, partitions)])
    producer = broker.producer()
    for i in range(events):
        key = (i * 7919) % keys
        producer.send(OutRecord(topic, key % partitions, f"u{key}".encode(), b'{"n":%d}' % i, i))
        if i % 50_000 == 49_999:
            await producer.flush()
    await producer.flush()
    await broker.close()
