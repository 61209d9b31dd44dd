"""The resource-bomb corpus and what each payload costs.

``load/*.yaml``: files that `edm validate` must refuse (first line ``# expect: LINE:COL: TEXT``).
``events.yaml``: expressions that meet an event that would exhaust the runner; the event must
be dead-lettered with the error (``edm.error``) and the runner go on.

``python tests/bombs/measure.py`` prints, for each payload, the wall time and the peak RSS of
the `edm validate` or `edm run --until-idle` that meets it (run as a child process, measured
with wait4). tests/test_bombs.py runs the same payloads under resource limits.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

HERE = Path(__file__).parent
LOAD = sorted((HERE / "load").glob("*.yaml"))
EDM = [sys.executable, "-m", "edm_runner"]


def event_cases() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((HERE / "events.yaml").read_text())


def event_topology(cases: dict[str, dict[str, Any]], prefix: str = "") -> str:
    """One microservice with a pipeline per case (events pick theirs by ``value.case``), each
    dead-lettering to ``dlq``, and a pipeline ``ok`` that passes ordinary events to ``out``.
    ``prefix`` starts the service's and the topics' names (tests sharing one Kafka broker)."""
    pipelines = {"ok": {"from": "in", "steps": [{"filter": "value.case == 'ok'"}], "to": "out"}}
    for name, case in cases.items():
        pipelines[name] = {"from": "in", "on_error": {"dead_letter": "dlq"},
                           "steps": [{"filter": f"value.case == {name!r}"},
                                     {"map_values": case["expression"]}],
                           "to": "out"}
    return yaml.safe_dump({
        "kind": "microservice", "name": f"{prefix}bombs",
        "streams": {"in": {"topic": f"{prefix}in"}, "out": {"topic": f"{prefix}out"},
                    "dlq": {"topic": f"{prefix}dlq", "key": "bytes", "value": "bytes"}},
        "pipelines": pipelines}, sort_keys=False)


def event_lines(cases: dict[str, dict[str, Any]]) -> str:
    """The events of ``cases`` (key = case name) and one ordinary event (key ``ok``) after them."""
    lines = [{"key": name, "value": {"case": name, **case["event"]}} for name, case in cases.items()]
    lines.append({"key": "ok", "value": {"case": "ok"}})
    return "".join(json.dumps(line) + "\n" for line in lines)


def limits(address_space: int | None = None, data: int | None = None,
           cpu_s: int = 60) -> Callable[[], None]:
    """A preexec_fn that bounds the child's address space and/or data segment (bytes) and CPU."""
    def apply() -> None:
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if data:
            resource.setrlimit(resource.RLIMIT_DATA, (data, data))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    return apply


def run(args: list[str], cwd: Path, preexec: Callable[[], None] | None = None,
        stdin: str | None = None) -> tuple[int, str, float, int]:
    """Run edm ``args``: (exit code, stdout + stderr, seconds, peak RSS in KiB of the largest
    child this process has run so far: measure in a fresh process to get this child's)."""
    start = time.monotonic()
    done = subprocess.run(EDM + args, cwd=cwd, preexec_fn=preexec, text=True, input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    return (done.returncode, done.stdout, seconds,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def prepare_event_run(directory: Path, cases: dict[str, dict[str, Any]], broker: Sequence[str] = (),
                      prefix: str = "") -> Path:
    """Write the topology of ``cases`` in ``directory`` and produce their events (``broker``:
    extra options of edm, e.g. ``["--broker", URL]``); the topology's path."""
    topology = directory / "topology.yaml"
    topology.write_text(event_topology(cases, prefix))
    code, out, _, _ = run(["produce", "in", "-t", str(topology), *broker], directory,
                          stdin=event_lines(cases))
    if code != 0:
        raise RuntimeError(f"edm produce failed: {out}")
    return topology


def _measure_alone(label: str, args: list[str], cwd: Path) -> None:
    # A fresh interpreter per measurement, so RUSAGE_CHILDREN holds this child's peak only.
    script = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from measure import run; "
              f"from pathlib import Path; code, _, s, rss = run({args!r}, Path({str(cwd)!r})); "
              f"print(f'{{code}} {{s:.2f}} {{rss / 1024:.0f}}')")
    code, seconds, rss = subprocess.run([sys.executable, "-c", script], text=True,
                                        capture_output=True, check=True).stdout.split()
    print(f"{label:<40} exit {code}  {float(seconds):5.2f} s  {rss:>5} MiB peak RSS")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path in LOAD:
            _measure_alone(f"validate {path.name}", ["validate", str(path)], root)
        cases = event_cases()
        baseline = root / "baseline"
        baseline.mkdir()
        prepare_event_run(baseline, {})
        _measure_alone("run (an ordinary event only)", ["run", "topology.yaml", "--until-idle"],
                       baseline)
        for name in cases:
            directory = root / name
            directory.mkdir()
            topology = prepare_event_run(directory, {name: cases[name]})
            _measure_alone(f"validate events.yaml:{name}", ["validate", str(topology)], directory)
            _measure_alone(f"run meeting {name}", ["run", "topology.yaml", "--until-idle"],
                           directory)


if __name__ == "__main__":
    main()
