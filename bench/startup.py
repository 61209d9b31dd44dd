"""Scenario ``startup``: how long ``edm run topologies/quickstart/topology.yaml --until-idle``
takes, on the embedded broker with a fresh state directory holding the quickstart's six orders,
from launching the process to its first output event (the quickstart's ``log`` step writes a
line on stderr per large order; the first such line marks the first output event processed).

edm starts as an installed package does, from cached bytecode: the scenario compiles the
``edm_runner`` sources it runs (``compileall``, into their ``__pycache__``) before timing. pip
writes the bytecode of an installed package; an editable checkout gets it on its first import,
unless ``PYTHONDONTWRITEBYTECODE`` is set, as in some development shells, where every start
would compile all of edm's modules again (about 0.09 s on the bench machine) and the figure
would measure the compiler, not edm.

Baseline, in the same run: a hand-written program started the same way that imports lmdb,
opens the same broker directory and reads the first record of the input topic (the floor for
any program that reads the log); the bare interpreter start (``python -c pass``) is reported
too. Each side runs ``RUNS`` times, interleaved, on a fresh copy of the state directory; the
best run of each is the figure least disturbed by other processes (the median is reported
beside it). ``ratio`` = baseline seconds / edm seconds (higher is better).

The import breakdown comes from one more run under ``python -X importtime``: the sum of every
module's own import time, and the heaviest top-level packages. ``-X importtime`` slows imports
down a little, so ``import_seconds`` is an upper bound.

Target (issue 9): less than 0.3 s before the first event.
"""
from __future__ import annotations

import compileall
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = "topologies/quickstart/topology.yaml"
INPUT_FILE = ROOT / "topologies/quickstart/orders.jsonl"
FIRST_OUTPUT = "large order "  # the quickstart's log step, once per output event
RUNS = 7
TARGET_SECONDS = 0.3
TOP_PACKAGES = 8

# The baseline: start, open the broker's LMDB, read the first record of the input topic.
_READER = """
import struct, sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, max_dbs=8, subdir=True)
topics, log = env.open_db(b"topics", create=False), env.open_db(b"log", create=False)
with env.begin() as txn:
    import json
    topic_id = json.loads(txn.get(b"orders", db=topics))["id"]
    cursor = txn.cursor(db=log)
    cursor.set_range(struct.pack(">IIQ", topic_id, 0, 0))
    print("first record", len(cursor.value()), flush=True)
"""


def _edm_command() -> list[str]:
    """``edm`` as a user runs it: the console script beside this interpreter."""
    script = Path(sys.executable).parent / "edm"
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "edm_runner"]


def _compile_edm() -> None:
    """The bytecode of every edm module, as an installed package has it (see the module doc)."""
    spec = importlib.util.find_spec("edm_runner")  # finds the package without importing it
    for location in spec.submodule_search_locations if spec else []:
        if not compileall.compile_dir(location, quiet=1):
            raise RuntimeError(f"compiling {location} failed")


def _prepare(template: Path) -> None:
    """A state directory with the quickstart's orders in its embedded broker."""
    proc = subprocess.run([*_edm_command(), "produce", "orders", "-t", TOPOLOGY, "--state-dir", str(template),
                           "-f", str(INPUT_FILE)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"edm produce failed:\n{proc.stderr[-4000:]}")


def _time_to_line(command: list[str], marker: str, stream: str) -> tuple[float, float]:
    """Launches ``command``; returns the seconds until a line containing ``marker`` appears on
    ``stream`` ("stdout" or "stderr") and the seconds until the process exits."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE if stream == "stdout" else
                            subprocess.DEVNULL, stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    first = None
    seen: list[str] = []
    for line in pipe:
        if first is None and marker in line:
            first = time.perf_counter() - start
        seen.append(line)
    proc.wait()
    total = time.perf_counter() - start
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode} without {marker!r}:\n"
                           f"{''.join(seen)[-4000:]}")
    return first, total


def _exit_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def _import_breakdown(command: list[str]) -> tuple[float, dict[str, float]]:
    """Runs ``command`` under ``-X importtime``: total seconds of imports (the sum of every
    module's own time) and the top-level packages that take the most."""
    proc = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"edm run under -X importtime failed:\n{proc.stderr[-4000:]}")
    by_package: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = (part.strip() for part in line[len("import time:"):].split("|"))
        by_package[name.split(".")[0]] += int(own) / 1e6
    top = {name: round(seconds, 3) for name, seconds in by_package.most_common(TOP_PACKAGES)}
    return sum(by_package.values()), top


def run() -> dict:
    edm = _edm_command()
    _compile_edm()
    with tempfile.TemporaryDirectory(prefix="edm-bench-startup-") as tmp:
        template = Path(tmp) / "template"
        _prepare(template)
        firsts, exits, reads, bare = [], [], [], []
        for i in range(RUNS):
            state = Path(tmp) / f"run-{i}"
            shutil.copytree(template, state)
            first, total = _time_to_line([*edm, "run", TOPOLOGY, "--until-idle", "--state-dir", str(state)],
                                         FIRST_OUTPUT, "stderr")
            firsts.append(first)
            exits.append(total)
            reads.append(_time_to_line([sys.executable, "-c", _READER, str(template / "broker")],
                                       "first record", "stdout")[0])
            bare.append(_exit_seconds([sys.executable, "-c", "pass"]))
        state = Path(tmp) / "importtime"
        shutil.copytree(template, state)
        import_seconds, top = _import_breakdown([*edm, "run", TOPOLOGY, "--until-idle", "--state-dir", str(state)])
    best, base = min(firsts), min(reads)
    return {
        "runs": RUNS,
        "edm_first_event_seconds": round(best, 3),
        "edm_first_event_median_seconds": round(statistics.median(firsts), 3),
        "edm_exit_seconds": round(min(exits), 3),
        "import_seconds": round(import_seconds, 3),
        "import_seconds_by_package": top,
        "baseline_first_record_seconds": round(base, 3),
        "interpreter_start_seconds": round(min(bare), 3),
        "ratio": round(base / best, 3),
        "target_seconds": TARGET_SECONDS,
        "ok": best < TARGET_SECONDS,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
