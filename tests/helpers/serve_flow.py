"""Real `edm run` processes answering real HTTP, for the request-response tests.

``serving_urls`` waits for the log line each server writes once bound (an event, with a
deadline: no sleep stands for it); ``get`` is a plain HTTP GET that returns the status, the
headers and the decoded JSON body whatever the status."""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

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


def get(url: str, *, headers: dict[str, str] | None = None, method: str = "GET",
        timeout_s: float = 30) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, dict(error.headers), error.read()
    return status, head, json.loads(raw) if raw else None
