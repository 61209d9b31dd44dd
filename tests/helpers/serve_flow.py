"""Real `edm run` processes answering real HTTP, for the request-response tests.

``serving_urls`` waits for the log line each server writes once bound, ``wait_for_line`` for
any other line (events, with a deadline: no sleep stands for them); ``helpers.http_calls``
makes the requests."""
from __future__ import annotations

import json
import re
import time

from helpers.kafka_flow import Runner

SERVING = re.compile(r"edm\.serve: (?P<service>\S+): serving HTTP on (?P<url>\S+)")


def serving_urls(runner: Runner, count: int = 1, timeout_s: float = 60) -> dict[str, str]:
    """service -> URL, once ``count`` servers of ``runner`` logged their address."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {m["service"]: m["url"] for m in SERVING.finditer(runner.stderr())}
        if len(found) >= count:
            return found
        if not runner.alive():
            raise AssertionError(f"edm run exited {runner.proc.returncode} before serving:\n{runner.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no 'serving HTTP on' line within {timeout_s} s:\n{runner.stderr()}")
        time.sleep(0.05)  # polling the log file: the event is a line another process writes


def wait_for_line(runner: Runner, pattern: str, count: int = 1, timeout_s: float = 60) -> None:
    """Until ``runner``'s log has ``count`` lines matching ``pattern`` (e.g. its assignment restored)."""
    deadline = time.monotonic() + timeout_s
    while len(re.findall(pattern, runner.stderr())) < count:
        if not runner.alive():
            raise AssertionError(f"edm run exited {runner.proc.returncode}:\n{runner.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no line {pattern!r} within {timeout_s} s:\n{runner.stderr()}")
        time.sleep(0.05)


READY = r"assigned \d+ partition\(s\); processing after"


ASSIGNMENT = re.compile(r"edm\.assignment: assignment (?P<doc>\{.*\})")


def settled(runners: list[Runner], tasks: set[str]) -> bool:
    """True when the last assignment each runner logged gives every task of ``tasks`` to exactly
    one of them, and each restored its share since (one group generation, processing)."""
    given: list[str] = []
    for runner in runners:
        text = runner.stderr()
        found = list(ASSIGNMENT.finditer(text))
        if not found or not re.search(READY, text[found[-1].end():]):
            return False
        given += json.loads(found[-1]["doc"])["active"]
    return sorted(given) == sorted(tasks)
