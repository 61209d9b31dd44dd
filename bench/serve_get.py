"""Scenario ``serve-get``: key lookups over HTTP (issue 10), requests/s and latency.

A count-per-key service holds ``KEYS`` keys (4 partitions) and serves its store. A client
process (``python -m bench.serve_get client URL KEYS_FILE CONCURRENCY WARMUP_S SECONDS``: aiohttp, that many
requests in flight, ``SECONDS`` of measurement after a warm-up) asks for random keys and reports
requests/s and the p50/p99 latency; a process of its own, so that its CPU is not the server's
(on 2 cores it still competes with the servers for them). Each figure is measured twice: with
``CONCURRENCY`` requests in flight (throughput: the servers saturated) and with one
(``*_sequential``: latency without queueing, what one hop adds to one request).

- ``local``: one instance on the embedded broker answers every key from its own store.
- ``proxied`` (Kafka; skipped without Java/Maven unless EDM_KAFKA_BOOTSTRAP is set): two
  instances share the tasks; keys the other instance owns are asked of the first one, which
  forwards each request (one proxy hop). ``local_on_kafka``, measured in the same run, asks the
  first instance for its own keys.

Targets: local >= 5,000 requests/s on this machine's 2 cores (client included), and the proxy
hop costs at most 2x a local lookup: ``hop_cost`` = proxied p50 / local p50 one request at a
time (``hop_cost_saturated``, the same under ``CONCURRENCY``, is reported beside it: there the
first instance does a client's work and a server's for each request, and three processes share
two cores).
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import Skipped, kafka_bootstrap

ROOT = Path(__file__).resolve().parent.parent
KEYS = 10_000
PARTITIONS = 4
CONCURRENCY = 32
WARMUP_S = 1.0
SECONDS = 5.0
TARGET_RPS = 5000
TARGET_HOP_COST = 2.0
TIMEOUT_S = 180.0
POLL_S = 0.05  # other processes' logs have no event to await: they are polled
SERVING = re.compile(r"serving HTTP on (\S+)")
READY = re.compile(r"assigned \d+ partition\(s\); processing after")
ASSIGNMENT = re.compile(r"edm\.assignment: assignment (\{.*\})")


def _topology(directory: Path, name: str, broker: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"""\
kind: microservice
name: {name}
broker: {json.dumps(broker)}
streams:
  in: {{topic: {name}-events, partitions: {PARTITIONS}, key: string, value: json}}
stores:
  counts: {{type: key_value}}
pipelines:
  count:
    from: in
    steps: [{{group_by_key: {{}}}}, {{count: {{store: counts}}}}]
http:
  listen: "127.0.0.1:0"
  serve: [counts]
""")
    return path


def _edm(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "edm_runner", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"edm {' '.join(args)} failed:\n{proc.stderr[-4000:]}")


class _Instance:
    """``edm run`` serving HTTP, its log in a file."""

    def __init__(self, topology: Path, *args: str) -> None:
        self.log = topology.parent / f"run-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "edm_runner", "run", str(topology), *args],
                                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, pattern: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + TIMEOUT_S
        while (match := pattern.search(self.text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edm run: no {pattern.pattern!r}:\n{self.text()[-4000:]}")
            time.sleep(POLL_S)
        return match

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _load(url: str, keys: list[str], concurrency: int = CONCURRENCY) -> dict:
    """Runs the client process against ``url`` for ``keys``; its JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(keys, file)
        file.flush()
        proc = subprocess.run([sys.executable, "-m", "bench.serve_get", "client", url, file.name, str(concurrency),
                               str(WARMUP_S), str(SECONDS)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the client failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def _prepare(directory: Path, topology: Path, *extra: str) -> None:
    events = directory / "events.jsonl"
    events.write_text("".join(json.dumps({"key": f"u-{i}", "value": {"i": i}}) + "\n" for i in range(KEYS)))
    _edm("produce", "in", "-t", str(topology), "-f", str(events), *extra)


def _local(directory: Path) -> dict:
    topology = _topology(directory, "serve-get-local", {"kind": "local"})
    _prepare(directory, topology)
    _edm("run", str(topology), "--until-idle")
    instance = _Instance(topology)
    try:
        url = instance.wait(SERVING)[1]
        instance.wait(READY)
        keys = [f"u-{i}" for i in range(KEYS)]
        return {**_load(url, keys), "sequential": _load(url, keys, 1)}
    finally:
        instance.stop()


def _proxied(directory: Path, bootstrap: str) -> dict:
    name = f"serve-get-{uuid.uuid4().hex[:8]}"
    broker = {"kind": "kafka", "bootstrap_servers": bootstrap,
              "consumer": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}}
    topology = _topology(directory, name, broker)
    _prepare(directory, topology)
    pods = [_Instance(topology, "--state-dir", str(directory / f"pod-{i}"), "--instance-id", f"pod-{i}")
            for i in range(2)]
    try:
        urls = [pod.wait(SERVING)[1] for pod in pods]
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # both instances hold half of the tasks, restored
            lasts = [ASSIGNMENT.findall(pod.text()) for pod in pods]
            if all(lasts) and all(READY.search(pod.text().rsplit("edm.assignment: assignment", 1)[1])
                                  for pod in pods):
                active = [json.loads(last[-1])["active"] for last in lasts]
                if sorted(active[0] + active[1]) == [f"0_{p}" for p in range(PARTITIONS)]:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the two instances did not share the tasks:\n{pods[0].text()[-3000:]}")
            time.sleep(POLL_S)
        owned = asyncio.run(_owners(urls[0], [f"u-{i}" for i in range(KEYS)]))
        here = [k for k, who in owned.items() if who == "pod-0"]
        there = [k for k, who in owned.items() if who == "pod-1"]
        return {"local_on_kafka": {**_load(urls[0], here), "sequential": _load(urls[0], here, 1)},
                "proxied": {**_load(urls[0], there), "sequential": _load(urls[0], there, 1)}}
    finally:
        for pod in pods:
            pod.stop()


async def _owners(url: str, keys: list[str]) -> dict[str, str]:
    """Which instance answers each key (``X-Edm-Instance``), once every key has a count."""
    import aiohttp

    owners: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while len(owners) < len(keys):
            for key in [k for k in keys if k not in owners]:
                async with session.get(f"{url}/stores/counts/keys/{key}") as response:
                    if response.status == 200:
                        owners[key] = response.headers["X-Edm-Instance"]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(keys) - len(owners)} keys never answered")
    return owners


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="edm-bench-serve-") as tmp:
        (Path(tmp) / "local").mkdir()
        local = _local(Path(tmp) / "local")
        result: dict = {"concurrency": CONCURRENCY, "seconds": SECONDS, "keys": KEYS,
                        "local": local, "target_rps": TARGET_RPS, "target_hop_cost": TARGET_HOP_COST}
        try:
            with kafka_bootstrap() as bootstrap:
                (Path(tmp) / "kafka").mkdir()
                kafka = _proxied(Path(tmp) / "kafka", bootstrap)
            result.update(kafka)
            local_on_kafka, proxied = kafka["local_on_kafka"], kafka["proxied"]
            result["hop_cost"] = round(proxied["sequential"]["p50_ms"] / local_on_kafka["sequential"]["p50_ms"], 2)
            result["hop_cost_saturated"] = round(proxied["p50_ms"] / local_on_kafka["p50_ms"], 2)
        except Skipped as why:
            result["proxied"] = {"skipped": str(why)}
        result["ok"] = local["requests_per_s"] >= TARGET_RPS and result.get("hop_cost", 0) <= TARGET_HOP_COST
        return result


# -- the client process ---------------------------------------------------------------------

async def _client(url: str, keys: list[str], concurrency: int, warmup_s: float, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        warm_until, stop_at = start + warmup_s, start + warmup_s + seconds

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while (now := time.perf_counter()) < stop_at:
                async with session.get(f"{url}/stores/counts/keys/{rng.choice(keys)}") as response:
                    await response.read()
                    done = time.perf_counter()
                    if now >= warm_until:
                        latencies.append(done - now)
                        statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.sort()
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / seconds),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    url, keys_file, concurrency, warmup_s, seconds = sys.argv[2:7]
    print(json.dumps(asyncio.run(_client(url, json.loads(Path(keys_file).read_text()), int(concurrency),
                                         float(warmup_s), float(seconds)))))
