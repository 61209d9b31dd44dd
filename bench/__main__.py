"""``python -m bench [SCENARIO...]``: run benchmark scenarios (all without arguments) and print
one JSON object per line per scenario. Exit code 1 when a scenario failed, 2 for unknown names.
"""
from __future__ import annotations

import importlib
import json
import sys

from bench import Skipped

# Scenario name -> module exposing ``run() -> dict``. Adding a scenario is one line here.
SCENARIOS: dict[str, str] = {
    "expressions": "bench.expressions",
    "startup": "bench.startup",
    "local-stateless": "bench.local_stateless",
    "kafka-stateless": "bench.kafka_stateless",
    "local-count": "bench.local_count",
    "loop-lag": "bench.loop_lag",
    "kafka-restore": "bench.kafka_restore",
    "rebalance": "bench.rebalance",
    "kafka-eos": "bench.kafka_eos",
    "serve-get": "bench.serve_get",
    "ingest": "bench.ingest",
    "call-concurrency": "bench.call_concurrency",
    "call-step": "bench.call_step",
}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; available: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    status = 0
    for name in argv or list(SCENARIOS):
        try:
            result = importlib.import_module(SCENARIOS[name]).run()
        except Skipped as why:
            result = {"skipped": str(why)}
        except Exception as exc:  # report and go on with the other scenarios
            result = {"error": f"{type(exc).__name__}: {exc}"}
            status = 1
        print(json.dumps({"scenario": name, **result}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
